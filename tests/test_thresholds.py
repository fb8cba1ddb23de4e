"""RUN/thresholds.json records the sampling settings it was calibrated at (guidance_scale, num_inference_steps,
timestep_spacing, steps_offset); sampling at other settings recalibrates for them and records that, or stops with a
message naming the setting. Never silently. (prss_mini/guidance/calibrate.py, ToyPipeline.thresholds)"""

import json

import numpy as np
import pytest
import torch

from prss_mini.checkpoint import CheckpointError
from prss_mini.guidance import calibrate
from prss_mini.guidance.detect import magnitude_trace, plateau_steps

CAPTIONS = ["a red circle in the top left", "a blue square in the top right", "a green triangle in the bottom left",
            "a red square in the bottom right"]


@pytest.fixture
def run_pipe(random_pipe, tmp_path, monkeypatch):
    """random_pipe as a run folder in tmp_path: 4 general training captions (a calibration of a second or so), the
    run's defaults guidance_scale 2 and 5 leading steps, no thresholds.json yet."""
    np.savez(tmp_path / "dataset.npz", captions=np.array(CAPTIONS), group=np.array(["general"] * len(CAPTIONS)))
    monkeypatch.setattr(random_pipe.config, "num_inference_steps", 5)
    for name, value in [("run_dir", str(tmp_path)), ("_dataset", None), ("_thresholds", None),
                        ("sampling", {"guidance_scale": 2.0, "num_inference_steps": 5})]:
        monkeypatch.setattr(random_pipe, name, value)
    assert random_pipe.config.guidance_scale == 2.0 and random_pipe.schedule.timestep_spacing == "leading"
    return random_pipe


def read(pipe):
    with open(f"{pipe.run_dir}/thresholds.json") as f:
        return json.load(f)


def at(pipe, guidance_scale=2.0, num_inference_steps=5):
    """pipe.thresholds at these settings (as generate sets them)."""
    pipe.sampling = {"guidance_scale": guidance_scale, "num_inference_steps": num_inference_steps}
    return pipe.thresholds


def test_the_file_records_the_four_sampling_settings_of_the_run_s_defaults_at_its_top_level(run_pipe):
    th = run_pipe.thresholds
    data = read(run_pipe)
    assert {k: data[k] for k in ("guidance_scale", "num_inference_steps", "timestep_spacing", "steps_offset")} == \
        {"guidance_scale": 2.0, "num_inference_steps": 5, "timestep_spacing": "leading", "steps_offset": 0}
    assert data["recalibrated"] == [] and th == {k: v for k, v in data.items() if k != "recalibrated"}


@pytest.mark.parametrize("guidance_scale, num_inference_steps", [(4.0, 5), (2.0, 4)])
def test_other_settings_recalibrate_and_record_a_second_entry_with_them(run_pipe, capsys, guidance_scale,
                                                                        num_inference_steps):
    default = at(run_pipe)
    th = at(run_pipe, guidance_scale, num_inference_steps)
    (entry,) = read(run_pipe)["recalibrated"]
    assert th == entry and (th["guidance_scale"], th["num_inference_steps"]) == (guidance_scale, num_inference_steps)
    assert th["lambda_pr"] != default["lambda_pr"]
    assert (f"recalibrating PRSS's thresholds for guidance_scale={guidance_scale}, "
            f"num_inference_steps={num_inference_steps}, timestep_spacing='leading', steps_offset=0") in \
        capsys.readouterr().out


def test_settings_calibrated_before_are_reused_without_calibrating(run_pipe, monkeypatch):
    default, other = at(run_pipe), at(run_pipe, 4.0)
    before = read(run_pipe)
    run_pipe.thresholds = None                                   # forget the pipe's cache: read the file again
    monkeypatch.setattr(calibrate, "calibrate", lambda *a, **kw: pytest.fail("calibrated again"))
    assert at(run_pipe, 4.0) == other and at(run_pipe) == default and read(run_pipe) == before


def test_calibrate_measures_lambda_pr_on_plain_cfg_at_the_given_scale_and_step_count(run_pipe):
    th = calibrate.calibrate(run_pipe, num_prompts=4, num_images=1, trace_prompts=2, trace_images=1,
                             guidance_scale=4.0, num_inference_steps=4)
    prompts = calibrate.general_prompts(run_pipe, 4, 1234)[:2]
    trace = magnitude_trace(run_pipe, run_pipe.encode(prompts), run_pipe.initial_noise(1, 1234).repeat(2, 1, 1, 1),
                            4, guidance_scale=4.0)                                              # (2, 4)
    assert th["lambda_pr"] == pytest.approx(float(torch.quantile(trace[:, plateau_steps(4)[0]].flatten(), 0.95)))
    assert (th["guidance_scale"], th["num_inference_steps"]) == (4.0, 4)


def test_a_file_without_the_sampling_settings_is_refused_with_what_to_do(run_pipe):
    old = {"lambda_ss": 1.0, "lambda_pr": 2.0, "tau": 10 / 3, "timestep": run_pipe.detection_timestep}
    with open(f"{run_pipe.run_dir}/thresholds.json", "w") as f:
        json.dump(old, f)
    with pytest.raises(CheckpointError, match=r"does not record the sampling settings .* Delete it"):
        run_pipe.thresholds


def test_a_file_calibrated_at_former_run_defaults_is_refused_naming_the_setting(run_pipe, monkeypatch):
    at(run_pipe)
    run_pipe.thresholds = None
    monkeypatch.setattr(run_pipe.config, "guidance_scale", 3.0)  # config.json edited after the calibration
    with pytest.raises(CheckpointError, match=r"guidance_scale 2.0 -> 3.0. Delete it"):
        at(run_pipe, 3.0)


def test_thresholds_set_by_hand_apply_at_any_settings_until_set_to_none(run_pipe):
    run_pipe.thresholds = {"lambda_ss": 123.0}
    assert at(run_pipe, 4.0, 3) == {"lambda_ss": 123.0} and at(run_pipe) == {"lambda_ss": 123.0}
    run_pipe.thresholds = None
    assert at(run_pipe)["guidance_scale"] == 2.0
