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
"""

import json
import os

import numpy as np
import torch

from ..checkpoint import CheckpointError, write_json_atomic
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


def calibrate(pipe, num_prompts=128, num_images=4, trace_prompts=32, trace_images=2, seed=1234):
    """Measure the general prompts' magnitudes; return the thresholds dict (with the statistics behind them).

    The first-step quantile sees num_prompts * num_images samples (512 by default: a high quantile of few samples
    is close to their maximum, and the false-trigger rate it gives swings from run to run); the plateau quantile
    sees trace_prompts * trace_images trajectories, about 30 steps each."""
    prompts = general_prompts(pipe, num_prompts, seed)
    x_T = pipe.initial_noise(num_images, seed)                                           # (K, 3, H, W)
    first = torch.cat([first_step_magnitude(pipe, pipe.encode(prompts[i:i + 32]), x_T).flatten()
                       for i in range(0, len(prompts), 32)])                             # (P * K,)
    traced = prompts[:trace_prompts]
    contexts = pipe.encode(traced).repeat_interleave(trace_images, 0)                    # (P' * K', L, D)
    x_T = pipe.initial_noise(trace_images, seed).repeat(len(traced), 1, 1, 1)
    trace = magnitude_trace(pipe, contexts, x_T)                                         # (P' * K', steps)
    plateau = trace[:, plateau_steps(trace.shape[1])[0]].flatten()
    lambda_ss, lambda_pr = (float(torch.quantile(m, QUANTILE)) for m in (first, plateau))
    return {"lambda_ss": lambda_ss, "lambda_pr": lambda_pr, "tau": TAU_OVER_LAMBDA_PR * lambda_pr, "rule": RULE,
            "timestep": pipe.detection_timestep, "general_first_step_mean": float(first.mean()),
            "general_plateau_mean": float(plateau.mean()), "num_prompts": len(prompts), "num_images": num_images,
            "trace_prompts": len(traced), "trace_images": trace_images}


def load_or_calibrate(pipe):
    """RUN/thresholds.json if present, else calibrate now and write it (so every later command agrees)."""
    path = os.path.join(pipe.run_dir, "thresholds.json")
    if not os.path.exists(path):
        thresholds = calibrate(pipe)
        write_json_atomic(thresholds, path)
        return thresholds
    try:
        with open(path) as f:
            thresholds = json.load(f)
        missing = [k for k in KEYS if k not in thresholds]
    except (ValueError, TypeError) as e:
        missing = [f"a readable file ({type(e).__name__})"]
    if missing:
        raise CheckpointError(f"{path} is not a thresholds file (missing {missing}). Delete it: the next command "
                              f"calibrates again (a few seconds).")
    if thresholds["timestep"] != pipe.detection_timestep:
        raise CheckpointError(f"{path} was calibrated at timestep {thresholds['timestep']}, but this run now detects "
                              f"at {pipe.detection_timestep} (num_inference_steps, timestep_spacing or steps_offset "
                              f"changed in config.json). Delete it to calibrate again.")
    return thresholds
