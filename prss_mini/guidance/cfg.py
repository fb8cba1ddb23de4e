"""Plain classifier-free guidance as a method: eps = eps_u + s (eps_c - eps_u) (Ho & Salimans, 2022).

The reference every mitigation is compared with. The pure function lives in diffusion.py
(`classifier_free_guidance`), as does the hook (`cfg_hook`); this file only adapts it to the method registry."""

from ..diffusion import cfg_hook

TITLE = "none (plain CFG)"
KNOBS = ()
SWEEP = [{}]
VARIANTS = []
BASELINE = False


def build(pipe, prompt, x_T, guidance_scale, seed):
    """Hook for plain CFG on `prompt` for every sample of x_T (B, C, H, W)."""
    cond = pipe.encode([prompt]).expand(len(x_T), -1, -1)                    # (B, L, D)
    return cfg_hook(pipe.unet, cond, pipe.empty, guidance_scale), {}
