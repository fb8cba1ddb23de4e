"""Lower guidance: plain CFG (Ho & Salimans 2022) with a smaller scale s, the trivial baseline.

Memorization grows with s (the push from e_0 towards e_p is what copies), so simply turning s down lowers
copying, and prompt fidelity with it. Sweeping s traces that trade-off; a mitigation is only worth having if it
beats this curve (the paper's comparison). The knob is `guidance_scale` itself, so this is cfg under a new name.
"""

from .cfg import build as cfg_build


def build(pipe, prompt, x_T, guidance_scale):
    """Plain CFG at the given (lowered) guidance_scale."""
    hook, info = cfg_build(pipe, prompt, x_T, guidance_scale)
    return hook, {**info, "guidance_scale": guidance_scale}
