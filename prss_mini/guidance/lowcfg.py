"""Lower guidance: plain CFG (Ho & Salimans 2022) with a smaller scale s, the trivial baseline.

Memorization grows with s (the push from e_0 towards e_p is what copies), so simply turning s down lowers
copying, and prompt fidelity with it. Sweeping s traces that trade-off; a mitigation is only worth having if it
beats this curve (the paper's comparison). Its knob is the guidance scale itself, so its sweep sets
`guidance_scale` and the method is plain CFG under a new name.
"""

from . import cfg

TITLE = "lower guidance"
KNOBS = ()
SWEEP = [{"guidance_scale": 1.5}, {"guidance_scale": 1.0}, {"guidance_scale": 0.5}]  # below the default s = 2
VARIANTS = []
BASELINE = True


def build(pipe, prompt, x_T, guidance_scale, seed):
    """Plain CFG at the given (lowered) guidance_scale."""
    hook, info = cfg.build(pipe, prompt, x_T, guidance_scale, seed)
    return hook, {**info, "guidance_scale": guidance_scale}
