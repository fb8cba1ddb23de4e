"""Calibrate PRSS's thresholds on the toy's own magnitude scale, from non-memorized training prompts only.

The official defaults (lambda_SS = 1, lambda_PR = 3, tau = 5) are magnitudes of Stable Diffusion's latent noise
predictions; the toy's pixels live on another scale. A deployer does not know which prompts are memorized, so the
rule looks at general training prompts alone and keeps the official ratios 1 : 3 : 5:

    lambda_SS = q95 of the first-step magnitude of general prompts     (about 5% false triggers on them)
    lambda_PR = 3 * lambda_SS,   tau = 5 * lambda_SS

The quantile is a deployer's trade: a false trigger costs a normal prompt its CFG image (and some time), a miss
leaves a memorized sample copying. docs/results.md has the measurements behind the choice.
"""

import json
import os

import numpy as np
import torch

from ..checkpoint import CheckpointError, write_json_atomic
from .detect import first_step_magnitude

QUANTILE = 0.95
RATIOS = {"lambda_ss": 1.0, "lambda_pr": 3.0, "tau": 5.0}  # the official defaults 1, 3, 5, as multiples
RULE = (f"lambda_ss = q{QUANTILE * 100:.0f} first-step magnitude of general training prompts; "
        f"lambda_pr = {RATIOS['lambda_pr']:g} * lambda_ss; tau = {RATIOS['tau']:g} * lambda_ss "
        "(the official 1 : 3 : 5)")


def calibrate(pipe, num_prompts=128, num_images=4, seed=1234):
    """Measure the general prompts' first-step magnitudes; return the thresholds dict (with the statistics).

    The quantile sees num_prompts * num_images samples (512 by default: a high quantile of few samples is close
    to their maximum, and the false-trigger rate it gives swings from run to run)."""
    data = pipe.dataset
    general = np.unique(data["captions"][data["group"] == "general"])
    prompts = list(np.random.default_rng(seed).choice(general, min(num_prompts, len(general)), replace=False))
    x_T = pipe.initial_noise(num_images, seed)                                           # (K, 3, H, W)
    first = torch.cat([first_step_magnitude(pipe, pipe.encode(prompts[i:i + 32]), x_T).flatten()
                       for i in range(0, len(prompts), 32)])                             # (P * K,)
    lambda_ss = float(torch.quantile(first, QUANTILE))
    return {**{k: r * lambda_ss for k, r in RATIOS.items()}, "rule": RULE, "timestep": pipe.detection_timestep,
            "general_first_step_mean": float(first.mean()), "num_prompts": len(prompts), "num_images": num_images}


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
        missing = [k for k in (*RATIOS, "timestep") if k not in thresholds]
    except (ValueError, TypeError) as e:
        missing = [f"a readable file ({type(e).__name__})"]
    if missing:
        raise CheckpointError(f"{path} is not a thresholds file (missing {missing}). Delete it: the next command "
                              f"calibrates again (a few seconds).")
    if thresholds["timestep"] != pipe.detection_timestep:
        raise CheckpointError(f"{path} was calibrated at timestep {thresholds['timestep']}, but this run now detects "
                              f"at {pipe.detection_timestep} (num_inference_steps changed in config.json). Delete "
                              f"it to calibrate again.")
    return thresholds
