"""Calibrate PRSS's thresholds on the toy's own magnitude scale, from training-set statistics.

The official defaults (lambda_SS = 1, lambda_PR = 3, tau = 5) are magnitudes of Stable Diffusion's latent noise
predictions; the toy predicts pixels of another size, so its magnitudes live on another scale. The rule uses
only NON-memorized training prompts (the general group), as a deployer who does not know which prompts are
memorized would:

    lambda_SS = q99 of the first-step magnitude of general prompts     (about 1% false triggers on them)
    lambda_PR = q99 of the per-step magnitude m_t of general prompts   (a normal prompt never needs PR)
    tau       = lambda_PR * 5 / 3                                      (the official tau / lambda_PR ratio)
"""

import json
import os

import numpy as np
import torch

from .detect import first_step_magnitude, magnitude_trace

RULE = ("lambda_ss = q99 first-step magnitude of general training prompts; lambda_pr = q99 per-step magnitude "
        "of general training prompts under CFG; tau = lambda_pr * 5/3")


def calibrate(pipe, num_prompts=32, num_images=2, seed=1234):
    """Measure the general prompts' magnitudes and return the thresholds dict (with the statistics behind it)."""
    data = pipe.dataset
    general = np.unique(data["captions"][data["group"] == "general"])
    prompts = list(np.random.default_rng(seed).choice(general, min(num_prompts, len(general)), replace=False))
    x_T = pipe.initial_noise(num_images, seed)                                           # (K, 3, H, W)
    first = first_step_magnitude(pipe, pipe.encode(prompts), x_T).flatten()              # (P * K,)
    traces = torch.cat([magnitude_trace(pipe, pipe.encode([p]), x_T) for p in prompts[: num_prompts // 4]])
    lambda_ss = float(torch.quantile(first, 0.99))
    lambda_pr = float(torch.quantile(traces.flatten(), 0.99))
    return {"lambda_ss": lambda_ss, "lambda_pr": lambda_pr, "tau": lambda_pr * 5 / 3, "rule": RULE,
            "general_first_step_mean": float(first.mean()), "general_per_step_mean": float(traces.mean()),
            "num_prompts": len(prompts), "num_images": num_images}


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
