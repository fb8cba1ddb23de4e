"""train_toy.py: config handling, interruption and resume, clear errors, and the end-to-end tiny run."""

import json

import numpy as np
import pytest
import torch

import train_toy
from prss_mini.checkpoint import CheckpointError, load_checkpoint, save_atomic
from prss_mini.config import make_config, parse_overrides, to_dict


def test_overrides_are_typed_like_the_config():
    assert parse_overrides(["--train_steps", "5", "--lr", "0.01", "--channel_mults", "1,2"]) == \
        {"train_steps": 5, "lr": 0.01, "channel_mults": (1, 2)}


def test_unknown_override_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown option '--nope'"):
        parse_overrides(["--nope", "1"])


def test_unknown_preset_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown preset"):
        make_config("huge")


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "unet.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(str(path))


def test_checkpoint_from_another_config_is_a_clear_error(tmp_path):
    path = str(tmp_path / "unet.pt")
    save_atomic({"model": {}, "config": {"lr": 1.0}}, path)
    with pytest.raises(CheckpointError, match="another config.*lr"):
        load_checkpoint(path, {"lr": 2.0})


def test_rerun_with_other_options_is_refused(tmp_path, capsys):
    written = json.dumps({**to_dict(make_config("tiny")), "lr": 123.0})     # the tiny preset but for lr
    (tmp_path / "config.json").write_text(written)
    with pytest.raises(SystemExit):
        train_toy.main(["--preset", "tiny", "--out", str(tmp_path)])
    assert (f"{tmp_path} holds a run made with other options (lr differ). Use the same preset and options to "
            f"resume, or another --out.") in capsys.readouterr().err
    assert (tmp_path / "config.json").read_text() == written and len(list(tmp_path.iterdir())) == 1


TINY_FAST = ["--num_general", "40", "--num_global", "2", "--global_duplicates", "4", "--title_variants", "1",
             "--num_local", "4", "--clip_steps", "5", "--train_steps", "6", "--checkpoint_every", "3",
             "--sample_every", "100", "--judge_steps", "2", "--num_inference_steps", "2"]


def test_interrupted_training_resumes_to_the_same_weights(tmp_path, monkeypatch):
    """Kill after 3 of 6 steps, rerun the same command: the weights equal an uninterrupted run's."""
    straight = tmp_path / "straight"
    train_toy.main(["--preset", "tiny", "--out", str(straight)] + TINY_FAST)

    resumed = tmp_path / "resumed"
    real_save = train_toy.save_atomic

    def save_then_die(obj, path):
        real_save(obj, path)
        if obj.get("step") == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_toy, "save_atomic", save_then_die)
    with pytest.raises(SystemExit, match="interrupted"):
        train_toy.main(["--preset", "tiny", "--out", str(resumed)] + TINY_FAST)
    assert not (resumed / "unet.pt").exists() and (resumed / "unet_train.pt").exists()
    monkeypatch.setattr(train_toy, "save_atomic", real_save)
    train_toy.main(["--preset", "tiny", "--out", str(resumed)] + TINY_FAST)

    a = torch.load(straight / "unet.pt", weights_only=True)["model"]
    b = torch.load(resumed / "unet.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_tiny_run_writes_every_artefact(tiny_run):
    for name in ("config.json", "dataset.npz", "preview.png", "text_encoder.pt", "unet.pt", "judges.pt",
                 "loss.png"):
        assert (tiny_run / name).exists(), name
    assert not (tiny_run / "unet_train.pt").exists()  # the in-progress state is removed once unet.pt is written
    # every sample_every = 200 of the tiny preset's 600 steps: a snapshot of the weights and a grid of samples
    assert sorted(p.name for p in (tiny_run / "snapshots").iterdir()) == [
        "unet_000200.pt", "unet_000400.pt", "unet_000600.pt"]
    assert sorted(p.name for p in tiny_run.glob("samples_*.png")) == [
        "samples_000200.png", "samples_000400.png", "samples_000600.png"]
    assert torch.load(tiny_run / "snapshots" / "unet_000400.pt", weights_only=True)["step"] == 400
    with np.load(tiny_run / "dataset.npz", allow_pickle=False) as data:
        assert set(data["group"]) == {"general", "global", "local"}


def test_unknown_prediction_type_is_refused_before_training():
    with pytest.raises(ValueError, match="prediction_type"):
        make_config("tiny", prediction_type="x0")


def test_ema_update_moves_the_average_one_minus_decay_of_the_way_to_the_weights():
    ema, model = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    for p, value in ((ema.weight, 0.0), (ema.bias, 0.0), (model.weight, 1.0), (model.bias, 2.0)):
        torch.nn.init.constant_(p, value)
    train_toy.ema_update(ema, model, decay=0.9, step=10_000)  # long after the warm-up: d = decay
    assert torch.allclose(ema.weight, torch.full_like(ema.weight, 0.1))
    assert torch.allclose(ema.bias, torch.full_like(ema.bias, 0.2))


def test_ema_warm_up_follows_the_weights_closely_at_the_start():
    ema, model = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    for p in ema.parameters():
        torch.nn.init.zeros_(p)
    for p in model.parameters():
        torch.nn.init.ones_(p)
    train_toy.ema_update(ema, model, decay=0.999, step=0)  # d = (1 + 0) / (10 + 0) = 0.1, not 0.999
    assert torch.allclose(ema.weight, torch.full_like(ema.weight, 0.9))


def test_sampling_defaults_may_change_without_retraining(tmp_path):
    path = str(tmp_path / "unet.pt")
    save_atomic({"model": {}, "config": {"lr": 1.0, "guidance_scale": 3.0, "num_inference_steps": 50}}, path)
    load_checkpoint(path, {"lr": 1.0, "guidance_scale": 2.0, "num_inference_steps": 20})  # no error


def test_overrides_type_float_ranges_and_switches_like_their_defaults():
    assert parse_overrides(["--shape_radius", "0.2,0.25", "--dedup_uncond", "false"]) == \
        {"shape_radius": (0.2, 0.25), "dedup_uncond": False}
    with pytest.raises(ValueError, match="--dedup_uncond expects a bool"):
        parse_overrides(["--dedup_uncond", "maybe"])


def test_the_unconditional_branch_sees_every_distinct_image_as_often_as_a_unique_one():
    """dedup_uncond: a caption is dropped with probability cond_drop_prob / (its image's number of duplicates)."""
    image_id = np.array([0, 0, 0, 0, 1, 2])  # image 0 duplicated 4 times
    dedup = train_toy.caption_drop_probabilities(image_id, 0.1, dedup_uncond=True)
    assert dedup.tolist() == pytest.approx([0.025] * 4 + [0.1, 0.1])
    assert train_toy.caption_drop_probabilities(image_id, 0.1, dedup_uncond=False).tolist() == pytest.approx([0.1] * 6)
