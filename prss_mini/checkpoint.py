"""Files that survive interruption: atomic writes, safe loads, clear errors.

A file is written to `name.tmp` and then renamed over `name`: a run killed mid-write keeps the previous file
intact. Loads use `torch.load(..., weights_only=True)`, which refuses to run pickled code. Two kinds of file:
    checkpoints   torch dicts of one run (train_toy.py writes them, the pipeline and the judges read them)
    partials      the finished part of an evaluation (evaluate.py), so that a rerun resumes after Ctrl-C
"""

import json
import os

import numpy as np
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
SAMPLING_KEYS = ("guidance_scale", "num_inference_steps", "timestep_spacing", "steps_offset")


def config_differences(old, new):
    """Sorted keys whose values differ between two config dicts, sampling defaults left out."""
    return sorted(k for k in set(old) | set(new) if k not in SAMPLING_KEYS and old.get(k) != new.get(k))


def load_checkpoint(path, config=None, keys=(), map_location="cpu"):
    """Load a checkpoint dict saved by `save_atomic`; it must hold every entry named in `keys`.

    If `config` (a dict) is given, the checkpoint's stored `config` must match it on every key but the sampling
    defaults, else a CheckpointError lists the keys that differ (a checkpoint from another run or preset)."""
    if not os.path.exists(path):
        raise CheckpointError(f"no checkpoint at {path}: train one with `python train_toy.py --out RUN`")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated, not a torch file, or holding pickled objects
        raise CheckpointError(f"{path} is corrupt or not a prss-mini checkpoint ({type(e).__name__}). "
                              f"Delete it and rerun train_toy.py to rebuild it.") from None
    missing = [k for k in keys if k not in ckpt] if isinstance(ckpt, dict) else list(keys)
    if not isinstance(ckpt, dict) or missing:
        raise CheckpointError(f"{path} is not a prss-mini checkpoint (a dict with {list(keys)}; missing {missing}). "
                              f"Delete it and rerun train_toy.py to rebuild it.")
    if config is not None:
        stored = ckpt.get("config", {})
        diff = config_differences(stored, config)
        if diff:
            details = ", ".join(f"{k}: {stored.get(k)!r} in the file vs {config.get(k)!r} now" for k in diff)
            raise CheckpointError(f"{path} was made with another config ({details}). Use the same options, or "
                                  f"another --out folder.")
    return ckpt


def load_state(module, path, config=None):
    """module.load_state_dict(checkpoint["model"]), with a CheckpointError naming the file if it does not fit."""
    ckpt = load_checkpoint(path, config, keys=("model",))
    try:
        module.load_state_dict(ckpt["model"])
    except (RuntimeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path} holds weights of another model ({str(e).splitlines()[0]}). "
                              f"Delete it and rerun train_toy.py to rebuild it.") from None
    return ckpt


def save_partial(path, entries, signature):
    """Save finished results to an .npz: `entries` maps a name to a dict of JSON values plus an "images" array.

    `signature` (a string) says which computation they belong to; `load_partial` only resumes the same one."""
    meta = {"signature": signature, "entries": {n: {k: v for k, v in e.items() if k != "images"}
                                                for n, e in entries.items()}}
    np.savez(path + ".tmp.npz", meta=np.array(json.dumps(meta)), **{n: e["images"] for n, e in entries.items()})
    os.replace(path + ".tmp.npz", path)  # atomic: an interruption leaves the previous file whole


def load_partial(path, signature):
    """The entries saved by `save_partial`, or {} (with a message) if the file belongs to another computation or
    cannot be read: a corrupt partial file only costs the work it held."""
    if not os.path.exists(path):
        return {}
    try:
        with np.load(path, allow_pickle=False) as f:
            meta = json.loads(str(f["meta"]))
            if meta["signature"] != signature:
                print(f"{path} belongs to another evaluation: starting afresh")
                return {}
            return {name: {**entry, "images": f[name]} for name, entry in meta["entries"].items()}
    except Exception as e:  # truncated, not an npz, or missing entries
        print(f"{path} is corrupt ({type(e).__name__}): starting afresh")
        return {}
