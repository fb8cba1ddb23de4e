"""Calibrate PRSS's thresholds on the toy's own magnitude scale, from non-memorized training prompts only.

The official defaults (lambda_SS = 1, lambda_PR = 3, tau = 5) are magnitudes of Stable Diffusion's latent noise
predictions, and norms grow with the tensor's size, so the toy needs its own. They keep the official thresholds'
relation to the clean prompts' curves (docs/math.md): on SD, lambda_SS = 1 sits just above a clean prompt's
first-step m, lambda_PR = 3 just above the plateau its m_t reaches through the middle of sampling, tau = 5 at
5/3 of lambda_PR. A deployer does not know which prompts are memorized, so the rule reads general prompts alone:

    lambda_SS = q95 of the first-step magnitude of general prompts         (about 5% false triggers on them)
    lambda_PR = q95 of their m_t over the plateau steps (20% to 80% of the way, under plain CFG)
    tau       = 5/3 lambda_PR

So Prompt Re-anchoring stays (mostly) off on a clean paraphrase and acts where a trajectory pulls harder than a
clean prompt's does. The quantiles are a deployer's trade: a false trigger costs a normal prompt its CFG image,
a miss leaves a memorized sample copying. docs/history.md has the rules tried before.

m_t along sampling depends on how the loop samples, so thresholds hold at the sampling settings they were measured
at: guidance_scale, num_inference_steps, timestep_spacing and steps_offset (checkpoint.SAMPLING_KEYS). Every set
of thresholds records them, and RUN/thresholds.json keeps one set per settings used:

    {"guidance_scale": 2.0, "num_inference_steps": 50, "timestep_spacing": "trailing", "steps_offset": 0,
     "lambda_ss": ..., "lambda_pr": ..., "tau": ..., "timestep": 999, "rule": ..., (statistics),
     "recalibrated": [{"guidance_scale": 4.0, "num_inference_steps": 50, ..., "lambda_pr": ..., ...}, ...]}

The top level holds the calibration at the run's defaults (config.json); "recalibrated" one full entry for every
other settings a command sampled at. `load_or_calibrate` returns the entry for the pipe's settings
(pipe.sampling, which generate sets), calibrating and appending one, with a printed line, when there is none.
Thresholds are never reused at settings they were not measured at.
"""

import json
import os

import numpy as np
import torch

from ..checkpoint import SAMPLING_KEYS, CheckpointError, write_json_atomic
from .detect import first_step_magnitude, magnitude_trace, plateau_steps

QUANTILE = 0.95
TAU_OVER_LAMBDA_PR = 5 / 3  # the official tau / lambda_PR
RULE = (f"lambda_ss = q{QUANTILE * 100:.0f} of general prompts' first-step magnitude; lambda_pr = "
        f"q{QUANTILE * 100:.0f} of their m_t over the plateau steps (20%-80% of the way, plain CFG); "
        f"tau = 5/3 lambda_pr (the official 5 : 3)")
KEYS = ("lambda_ss", "lambda_pr", "tau", "timestep")


def general_prompts(pipe, num_prompts, seed):
    """`num_prompts` distinct general (non-memorized) training captions, drawn with `seed`."""
    data = pipe.dataset
    general = np.unique(data["captions"][data["group"] == "general"])
    return list(np.random.default_rng(seed).choice(general, min(num_prompts, len(general)), replace=False))


def sampling_settings(pipe, guidance_scale=None, num_inference_steps=None):
    """The settings thresholds are calibrated at: guidance_scale and num_inference_steps (given, else the pipe's
    current ones, pipe.sampling) and the run's timestep_spacing and steps_offset (its schedule's)."""
    return {"guidance_scale": float(pipe.sampling["guidance_scale"] if guidance_scale is None else guidance_scale),
            "num_inference_steps": int(pipe.sampling["num_inference_steps"] if num_inference_steps is None
                                       else num_inference_steps),
            "timestep_spacing": pipe.schedule.timestep_spacing, "steps_offset": pipe.schedule.steps_offset}


def defaults(pipe):
    """The settings of the run's config.json: what the top level of RUN/thresholds.json is calibrated at."""
    return sampling_settings(pipe, pipe.config.guidance_scale, pipe.config.num_inference_steps)


def calibrate(pipe, num_prompts=128, num_images=4, trace_prompts=32, trace_images=2, seed=1234, guidance_scale=None,
              num_inference_steps=None):
    """Measure the general prompts' magnitudes; return the thresholds dict: the sampling settings it holds at
    (guidance_scale and num_inference_steps as given, else pipe.sampling's), lambda_ss, lambda_pr, tau, the
    detection timestep, the rule and the statistics behind them.

    The first-step quantile sees num_prompts * num_images samples (512 by default: a high quantile of few samples
    is close to their maximum, and the false-trigger rate it gives swings from run to run) at the detection
    timestep, which no sampling setting but the run's default schedule moves; the plateau quantile sees
    trace_prompts * trace_images plain-CFG trajectories at the given guidance scale and step count."""
    settings = sampling_settings(pipe, guidance_scale, num_inference_steps)
    prompts = general_prompts(pipe, num_prompts, seed)
    x_T = pipe.initial_noise(num_images, seed)                                           # (K, 3, H, W)
    first = torch.cat([first_step_magnitude(pipe, pipe.encode(prompts[i:i + 32]), x_T).flatten()
                       for i in range(0, len(prompts), 32)])                             # (P * K,)
    traced = prompts[:trace_prompts]
    contexts = pipe.encode(traced).repeat_interleave(trace_images, 0)                    # (P' * K', L, D)
    x_T = pipe.initial_noise(trace_images, seed).repeat(len(traced), 1, 1, 1)
    trace = magnitude_trace(pipe, contexts, x_T, settings["num_inference_steps"],
                            guidance_scale=settings["guidance_scale"])                   # (P' * K', steps)
    plateau = trace[:, plateau_steps(trace.shape[1])[0]].flatten()
    lambda_ss, lambda_pr = (float(torch.quantile(m, QUANTILE)) for m in (first, plateau))
    return {**settings, "lambda_ss": lambda_ss, "lambda_pr": lambda_pr, "tau": TAU_OVER_LAMBDA_PR * lambda_pr,
            "rule": RULE, "timestep": pipe.detection_timestep, "general_first_step_mean": float(first.mean()),
            "general_plateau_mean": float(plateau.mean()), "num_prompts": len(prompts), "num_images": num_images,
            "trace_prompts": len(traced), "trace_images": trace_images}


def read_thresholds_file(path):
    """RUN/thresholds.json as a dict, checked: a clear CheckpointError for a corrupt file or one written before
    thresholds recorded their sampling settings."""
    try:
        with open(path) as f:
            data = json.load(f)
        entries = [data] + data.get("recalibrated", [])        # the file is a dict, "recalibrated" a list of them
        missing = sorted({k for e in entries for k in KEYS if k not in e})
    except (ValueError, TypeError, AttributeError) as e:
        missing = [f"a readable file ({type(e).__name__})"]
    if missing:
        raise CheckpointError(f"{path} is not a thresholds file (missing {missing}). Delete it: the next command "
                              f"calibrates again (a few seconds).")
    unrecorded = sorted({k for e in entries for k in SAMPLING_KEYS if k not in e})
    if unrecorded:
        raise CheckpointError(f"{path} does not record the sampling settings its thresholds were calibrated at "
                              f"(missing {unrecorded}; it was written by an older prss_mini). Delete it: the next "
                              f"command calibrates again for the settings it samples at.")
    return data


def load_or_calibrate(pipe):
    """The thresholds for the pipe's sampling settings (`sampling_settings`), from RUN/thresholds.json.

    Without the file: calibrate at the run's defaults and write it. Without an entry for these settings: calibrate
    for them, append the entry to "recalibrated" and say so. The file's top level must still be the run's
    defaults (config.json's sampling settings can change without retraining): else a CheckpointError naming them."""
    path = os.path.join(pipe.run_dir, "thresholds.json")
    run_defaults = defaults(pipe)
    if os.path.exists(path):
        data = read_thresholds_file(path)
    else:
        data = {**calibrate(pipe, guidance_scale=run_defaults["guidance_scale"],
                            num_inference_steps=run_defaults["num_inference_steps"]), "recalibrated": []}
        write_json_atomic(data, path)
    top = {k: v for k, v in data.items() if k != "recalibrated"}
    # every entry detects at the default schedule's first step, so a new default schedule voids them all
    changed = [f"{k} {top[k]!r} -> {v!r}" for k, v in {**run_defaults, "timestep": pipe.detection_timestep}.items()
               if top[k] != v]
    if changed:
        raise CheckpointError(f"{path} was calibrated at this run's former sampling defaults; config.json now has "
                              f"{', '.join(changed)}. Delete it: the next command calibrates again (a few seconds).")
    settings = sampling_settings(pipe)
    for entry in [top] + data.get("recalibrated", []):
        if all(entry[k] == settings[k] for k in SAMPLING_KEYS):
            return entry
    print(f"recalibrating PRSS's thresholds for {', '.join(f'{k}={v!r}' for k, v in settings.items())} (they hold "
          f"only at the settings they were measured at); adding them to {path}")
    entry = calibrate(pipe, guidance_scale=settings["guidance_scale"],
                      num_inference_steps=settings["num_inference_steps"])
    write_json_atomic({**data, "recalibrated": data.get("recalibrated", []) + [entry]}, path)
    return entry
