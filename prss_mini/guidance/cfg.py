"""Plain classifier-free guidance as a method: eps = eps_u + s (eps_c - eps_u) (Ho & Salimans, 2022).

The reference every mitigation is compared with. The pure function lives in diffusion.py
(`classifier_free_guidance`), as does the hook (`cfg_hook`); this file only adapts it to the method registry."""

from ..diffusion import cfg_hook
from .rows import encode_rows

TITLE = "none (plain CFG)"
KNOBS = ()
SWEEP = [{}]
VARIANTS = []
BASELINE = False


def build(pipe, prompt, x_T, guidance_scale, seed):
    """Hook for plain CFG on `prompt` (one, or one per block of samples: rows.py) for every sample of x_T."""
    cond = encode_rows(pipe, prompt, len(x_T))                               # (B, L, D)
    return cfg_hook(pipe.unet, cond, pipe.empty, guidance_scale), {}
