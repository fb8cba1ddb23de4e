"""What each sample of a batch is asked for: its prompt, its seed, and a method's own random stream.

A method's `build(pipe, prompt, x_T, ...)` takes one prompt for every sample of x_T (B, C, H, W), or a list of P
prompts (with a list of P seeds) for one batched run of P prompts x K samples, prompt-major: samples
p*K .. p*K + K - 1 belong to prompt p. The evaluation batches whole groups of prompts this way, because a UNet call
on many samples costs much less per sample than many calls on few (docs/results.md: evaluation speed).
"""

import zlib

import numpy as np
import torch

from .ss import root_mean_square


def blocks(prompt, num_samples, seed=None):
    """[(prompt, seed, rows)], one per prompt: `rows` is the slice of the batch's samples it owns.

    prompt: a str (every sample) or a list of P str; seed: an int or None, or a list of P of them."""
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    seeds = list(seed) if isinstance(seed, (list, tuple)) else [seed] * len(prompts)
    if not prompts or num_samples % len(prompts) or len(seeds) != len(prompts):
        raise ValueError(f"{num_samples} samples cannot be shared by {len(prompts)} prompts with {len(seeds)} seeds: "
                         f"give one prompt, or P prompts, P seeds and P * K samples")
    k = num_samples // len(prompts)
    return [(p, s, slice(i * k, (i + 1) * k)) for i, (p, s) in enumerate(zip(prompts, seeds))]


def prompt_rows(prompt, num_samples):
    """The prompt of every sample: a list of B str."""
    return [p for p, _, rows in blocks(prompt, num_samples) for _ in range(rows.stop - rows.start)]


def encode_rows(pipe, prompt, num_samples):
    """(B, L, D) prompt embeddings, one per sample; each distinct prompt is encoded once."""
    parts = blocks(prompt, num_samples)
    e = pipe.encode([p for p, _, _ in parts])                                          # (P, L, D)
    return e.repeat_interleave(num_samples // len(parts), dim=0)                         # (B, L, D)


def per_block(values, parts):
    """(B,) -> (B,): each sample's value replaced by the root mean square over its prompt's samples (the
    per_prompt reduction: the official code's norm over a prompt's batch, divided by sqrt(K))."""
    out = values.clone()
    for _, _, rows in parts:
        out[rows] = root_mean_square(values[rows])
    return out


def stream(seed, name):
    """A torch.Generator of its own for one purpose of one seed: `name` ("gni", ...) keeps a method's noise apart
    from x_T's (drawn from manual_seed(seed)) and from every other purpose's, whatever the seed."""
    key = np.random.SeedSequence([int(seed), zlib.crc32(name.encode())]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(key) & ((1 << 63) - 1))
