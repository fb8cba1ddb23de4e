"""Calibrate PRSS's thresholds on the toy's own magnitude scale, from training-set statistics.

The official defaults (lambda_SS = 1, lambda_PR = 3, tau = 5) are magnitudes of Stable Diffusion's latent noise
predictions; the toy predicts pixels of another size, so its magnitudes live on another scale. The rule uses
only NON-memorized training prompts (the general group), as a deployer who does not know which prompts are
memorized would, and keeps the official ratios 1 : 3 : 5:

    lambda_SS = q95 of the first-step magnitude of general prompts     (about 5% false triggers on them)
    lambda_PR = 3 * lambda_SS,   tau = 5 * lambda_SS

The quantile is a deployer's trade: a false trigger costs a normal prompt its CFG image (and some time), a miss
leaves a memorized sample copying. On the cpu run q99 missed 31-44% of the samples of two memorized prompts
whose first-step magnitude sits just above the general tail; q95 missed at most 25% of any one prompt's.

Why not a quantile of the per-step magnitude m_t for lambda_PR: in the toy, m_t of every prompt grows along
the sampling trajectory (on a trial cpu-preset run a general prompt's mean went from 0.4 at the first step to
1.9 at the last), so a quantile pooled over steps lands above every target's m_t at every step (3.7 on that run),
and Prompt Re-anchoring never switches on. That was measured: with that rule PRSS gave SS-only's images.
"""

import json
import os

import numpy as np
import torch

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
    return {**{k: r * lambda_ss for k, r in RATIOS.items()}, "rule": RULE,
            "general_first_step_mean": float(first.mean()), "num_prompts": len(prompts), "num_images": num_images}


def load_or_calibrate(pipe):
    """RUN/thresholds.json if present, else calibrate now and write it (so every later command agrees)."""
    path = os.path.join(pipe.run_dir, "thresholds.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    thresholds = calibrate(pipe)
    with open(path + ".tmp", "w") as f:
        json.dump(thresholds, f, indent=2)
    os.replace(path + ".tmp", path)
    return thresholds
