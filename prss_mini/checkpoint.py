"""Checkpoints that survive interruption: atomic writes, safe loads, clear errors.

A checkpoint is written to `name.tmp` and then renamed over `name`: a run killed mid-write keeps the previous
checkpoint intact. Loads use `torch.load(..., weights_only=True)`, which refuses to run pickled code.
"""

import json
import os

import torch


class CheckpointError(RuntimeError):
    """A checkpoint or run folder that cannot be used, with what to do about it."""


def save_atomic(obj, path):
    """torch.save to `path` so that the file is either the old one or the complete new one, never half."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def write_json_atomic(obj, path):
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


# Sampling defaults: a trained model does not depend on them, so they may change without retraining.
SAMPLING_KEYS = ("guidance_scale", "num_inference_steps")


def config_differences(old, new):
    """Sorted keys whose values differ between two config dicts, sampling defaults left out."""
    return sorted(k for k in set(old) | set(new) if k not in SAMPLING_KEYS and old.get(k) != new.get(k))


def load_checkpoint(path, config=None, map_location="cpu"):
    """Load a checkpoint dict saved by `save_atomic`.

    If `config` (a dict) is given, the checkpoint's stored `config` must match it on every key but the sampling
    defaults, else a CheckpointError lists the keys that differ (a checkpoint from another run or preset)."""
    if not os.path.exists(path):
        raise CheckpointError(f"no checkpoint at {path}: train one with `python train_toy.py --out RUN`")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated, not a torch file, or holding pickled objects
        raise CheckpointError(f"{path} is corrupt or not a prss-mini checkpoint ({type(e).__name__}). "
                              f"Delete it and rerun train_toy.py to rebuild it.") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path} is not a prss-mini checkpoint (expected a dict)")
    if config is not None:
        stored = ckpt.get("config", {})
        diff = config_differences(stored, config)
        if diff:
            details = ", ".join(f"{k}: {stored.get(k)!r} in the file vs {config.get(k)!r} now" for k in diff)
            raise CheckpointError(f"{path} was made with another config ({details}). Use the same options, or "
                                  f"another --out folder.")
    return ckpt
