"""Gaussian noise injection, GNI (Somepalli et al., "Understanding and Mitigating Copying in Diffusion Models",
NeurIPS 2023): perturb the text embeddings so they no longer match the memorized caption exactly,

    e' = e + lambda * N(0, I),         then plain CFG with the perturbed embeddings.

As the official PRSS repository runs it (its GNI pipeline adds the noise to what the prompt encoder returns under
CFG), both the prompt's and the empty prompt's embeddings get fresh noise, a draw of their own for every sample.
The knob lambda (`noise_scale`) trades memorization against prompt fidelity; the evaluation sweeps it.
"""

import torch

from ..diffusion import cfg_hook
from .knobs import Knob
from .rows import blocks, encode_rows, stream

TITLE = "GNI (Somepalli et al.)"
KNOBS = (Knob("noise_scale", float, 0.5, "std of the Gaussian noise added to the text embeddings"),)
SWEEP = [{"noise_scale": 0.5}, {"noise_scale": 1.0}, {"noise_scale": 2.0}]
VARIANTS = []
BASELINE = True


def add_embedding_noise(context, noise_scale, generator):
    """context (B, L, D) + noise_scale * N(0, I), a fresh draw per sample and token."""
    if noise_scale < 0:
        raise ValueError(f"noise_scale must be >= 0, got {noise_scale}")
    # Draw on CPU from the generator, then move: the same seed gives the same noise on any device.
    noise = torch.randn(context.shape, generator=generator).to(context.device, context.dtype)   # (B, L, D)
    return context + noise_scale * noise


def build(pipe, prompt, x_T, guidance_scale, seed, noise_scale):
    """Plain CFG where every sample of x_T (B, C, H, W) gets its own noisy copies of the empty and the prompt
    embedding, drawn from the prompt's seed on a stream of GNI's own (never the numbers of x_T)."""
    B = len(x_T)
    both = torch.stack([pipe.empty.expand(B, -1, -1), encode_rows(pipe, prompt, B)])      # (2, B, L, D)
    for _, sd, rows in blocks(prompt, B, seed):
        both[:, rows] = add_embedding_noise(both[:, rows], noise_scale, stream(sd, "gni"))
    uncond, cond = both                                                                  # (B, L, D) each
    return cfg_hook(pipe.unet, cond, uncond, guidance_scale), {"noise_scale": noise_scale}
