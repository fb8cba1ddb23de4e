"""Gaussian noise injection, GNI (Somepalli et al., "Understanding and Mitigating Copying in Diffusion Models",
NeurIPS 2023): perturb the prompt's text embedding so it no longer matches the memorized caption exactly,

    e' = e_p + lambda * N(0, I),         then plain CFG with e'.

The knob lambda (`noise_scale`) trades memorization against prompt fidelity; the evaluation sweeps it.
"""

import torch

from ..diffusion import cfg_hook
from .knobs import Knob

TITLE = "GNI (Somepalli et al.)"
KNOBS = (Knob("noise_scale", float, 0.5, "std of the Gaussian noise added to the prompt embedding"),)
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
    """Plain CFG where each sample of x_T (B, C, H, W) gets its own noisy copy of the prompt embedding."""
    cond = pipe.encode([prompt]).expand(len(x_T), -1, -1)                    # (B, L, D), one copy per sample
    cond = add_embedding_noise(cond, noise_scale, torch.Generator().manual_seed(seed))
    return cfg_hook(pipe.unet, cond, pipe.empty, guidance_scale), {"noise_scale": noise_scale}
