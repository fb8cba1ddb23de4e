"""Bad input gets a clear error that says what was wrong (and how to fix it), never a traceback, and nothing is
half-written. One test per input a learner may type; the message is part of the rule."""

import json
import os
import shutil

import numpy as np
import pytest
import torch

import train_toy
from prss_mini import evaluate, sample
from prss_mini.checkpoint import CheckpointError, load_checkpoint, save_atomic

PROMPT = "a red circle in the top left"


def error_text(main, argv, capsys):
    """What a command prints when it refuses `argv`: a SystemExit's message or argparse's usage error."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    return (e.value.code if isinstance(e.value.code, str) else "") + capsys.readouterr().err


# ---- train_toy.py: the whole config is checked before anything is written ------------------------------------

@pytest.mark.parametrize("override, message", [
    (["--global_duplicates", "0"], "global_duplicates"),
    (["--num_global", "1"], "title_variants"),  # the tiny preset has two titled images
    (["--beta_schedule", "quadratic"], "beta_schedule"),
    (["--image_size", "15"], "image_size"),
    (["--train_steps", "0"], "train_steps"),
    (["--checkpoint_every", "0"], "checkpoint_every"),
    (["--sample_every", "0"], "sample_every"),
    (["--num_general", "0"], "num_general"),
    (["--num_local", "0"], "num_local"),
    (["--cond_drop_prob", "0"], "cond_drop_prob"),
    (["--lr", "abc"], "expects a float"),
])
def test_train_toy_refuses_a_bad_option_before_writing_anything(tmp_path, capsys, override, message):
    out = tmp_path / "run"
    assert message in error_text(train_toy.main, ["--preset", "tiny", "--out", str(out)] + override, capsys)
    assert not out.exists()  # so the corrected command is not refused as "a run made with other options"


def test_train_toy_names_a_corrupt_config_json(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{not json")
    assert "config.json is corrupt" in error_text(train_toy.main, ["--preset", "tiny", "--out", str(tmp_path)],
                                                 capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_train_toy_refuses_cuda_without_a_gpu(tmp_path, capsys):
    text = error_text(train_toy.main, ["--preset", "tiny", "--out", str(tmp_path / "r"), "--device", "cuda"], capsys)
    assert "--device cuda" in text and "--device cpu" in text


def test_a_checkpoint_without_its_entries_is_a_clear_error(tmp_path):
    path = str(tmp_path / "unet.pt")
    save_atomic({"config": {}}, path)
    with pytest.raises(CheckpointError, match=r"missing \['model'\]"):
        load_checkpoint(path, keys=("model",))


# ---- sample: without a run folder ------------------------------------------------------------------------------

def test_sample_names_a_missing_run_folder(tmp_path, capsys):
    text = error_text(sample.main, ["--run", str(tmp_path / "nope"), "--prompt", PROMPT, "--out", "x.png"], capsys)
    assert "no run folder" in text and "train_toy.py" in text


@pytest.mark.parametrize("argv, message", [
    (["--steps", "0"], "--steps must be at least 1"),
    (["--steps", "-3"], "--steps must be at least 1"),
    (["--num-images", "0"], "--num-images must be at least 1"),
    (["--guidance-scale", "-1"], "--guidance-scale must be >= 0"),
    (["--out", "x.jpg"], "must end in .png or .npz"),
    (["--method", "nope"], "invalid choice: 'nope'"),
    (["--method", "prss", "--noise-scale", "0.5"], "--noise-scale belong(s) to other methods"),
    pytest.param(["--device", "cuda"], "cannot use --device cuda on this machine",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")),
])
def test_sample_refuses_bad_options_before_loading_anything(tmp_path, capsys, argv, message):
    base = ["--run", str(tmp_path), "--prompt", PROMPT, "--out", str(tmp_path / "x.png")]
    assert message in error_text(sample.main, base + argv, capsys)
    assert not (tmp_path / "x.png").exists()


# ---- sample on a trained run (slow: the tiny run is trained once per session) -----------------------------------

@pytest.fixture
def run_copy(tiny_run, tmp_path):
    """A copy of the tiny run that a test may break."""
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out, ignore=shutil.ignore_patterns("eval", "snapshots", "*.png"))
    return out


def sample_error(run, argv, capsys):
    out = os.path.join(str(run), "x.png")
    text = error_text(sample.main, ["--run", str(run), "--out", out, "--steps", "2"] + argv, capsys)
    assert not os.path.exists(out)
    return text


@pytest.mark.slow
@pytest.mark.parametrize("argv, message", [
    (["--prompt", "a red banana"], "unknown word(s) ['banana']"),
    (["--prompt", PROMPT, "--method", "prss", "--guidance-scale", "0.5"], "re-anchoring needs guidance_scale >= 1"),
    (["--prompt", PROMPT, "--method", "prss", "--tau", "0.1", "--lambda-pr", "1"], "tau (0.1) must be larger"),
    (["--prompt", PROMPT, "--method", "prss", "--lambda-ss", "-1"], "lambda_ss must be >= 0"),
    (["--prompt", PROMPT, "--method", "prss", "--lambda-pr", "-1", "--tau", "1"], "lambda_pr must be >= 0, got -1.0"),
    (["--prompt", PROMPT, "--sampler", "ddpm", "--steps", "50"], "ddpm needs num_inference_steps"),
    (["--prompt", "a red banana", "--method", "prss"], "unknown word"),
    (["--prompt", "", "--method", "prss"], "cannot paraphrase ''"),
])
def test_sample_bad_input_on_a_run_is_a_clear_error(tiny_run, capsys, argv, message):
    assert message in sample_error(tiny_run, argv, capsys)


@pytest.mark.slow
@pytest.mark.parametrize("name, message", [
    ("unet.pt", "unet.pt is corrupt"), ("text_encoder.pt", "text_encoder.pt is corrupt"),
    ("config.json", "config.json is corrupt"), ("thresholds.json", "thresholds.json is not a thresholds file"),
])
def test_sample_names_a_corrupt_file_of_the_run(run_copy, capsys, name, message):
    (run_copy / name).write_text("{garbage")
    if name == "thresholds.json":
        argv = ["--prompt", PROMPT, "--method", "prss"]
    else:
        argv = ["--prompt", PROMPT]
    assert message in sample_error(run_copy, argv, capsys)


@pytest.mark.slow
def test_sample_names_a_missing_model(run_copy, capsys):
    os.remove(run_copy / "unet.pt")
    assert "has no trained model (unet.pt)" in sample_error(run_copy, ["--prompt", PROMPT], capsys)


@pytest.mark.slow
def test_sample_names_a_missing_text_encoder(run_copy, capsys):
    os.remove(run_copy / "text_encoder.pt")
    text = sample_error(run_copy, ["--prompt", PROMPT], capsys)
    assert "no checkpoint at" in text and "text_encoder.pt" in text and "train_toy.py" in text


@pytest.mark.slow
def test_prss_on_a_run_without_its_dataset_names_the_file(run_copy, capsys):
    for name in ("dataset.npz", "thresholds.json"):
        if (run_copy / name).exists():
            os.remove(run_copy / name)
    assert "dataset.npz is missing" in sample_error(run_copy, ["--prompt", PROMPT, "--method", "prss"], capsys)


@pytest.mark.slow
def test_sample_empty_prompt_with_cfg_gives_unconditional_images(tiny_run, tmp_path, capsys):
    sample.main(["--run", str(tiny_run), "--prompt", "", "--out", str(tmp_path / "x.png"), "--steps", "2"])
    assert "unconditional" in capsys.readouterr().out


# ---- evaluate ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["--num-images", "0"], "--num-images must be at least 1"),
    (["--num-images", "-2"], "--num-images must be at least 1"),
    (["--methods", "prss,nope"], "unknown method(s) ['nope']"),
])
def test_evaluate_refuses_bad_options(tmp_path, capsys, argv, message):
    assert message in error_text(evaluate.main, ["--run", str(tmp_path)] + argv, capsys)


@pytest.mark.parametrize("per_group", [0, 10_000])
def test_prompt_sets_refuse_a_group_size_the_run_cannot_give(per_group):
    data = {"captions": np.array(["a", "b", "c", "d"]), "group": np.array(["general", "general", "local", "global"]),
            "attributes": np.zeros((4, 3), int), "image_id": np.arange(4), "heldout_captions": np.array(["e", "f"]),
            "heldout_attributes": np.zeros((2, 3), int)}
    with pytest.raises(ValueError, match=r"per_group must be in \[1, 1\]"):
        evaluate.prompt_sets(data, per_group)


def test_a_corrupt_partial_evaluation_starts_over_with_a_message(tmp_path, capsys):
    path = tmp_path / "partial.npz"
    path.write_bytes(b"not an npz")
    from prss_mini.checkpoint import load_partial
    assert load_partial(str(path), "sig") == {}
    assert "corrupt" in capsys.readouterr().out


def test_an_unreadable_config_json_is_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps([1, 2]))
    from prss_mini.config import read_config
    with pytest.raises(CheckpointError, match="config.json is corrupt"):
        read_config(str(tmp_path))
