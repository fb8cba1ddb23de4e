"""Guidance methods: one file each, all plugged into the one sampling loop of diffusion.py through a hook.

Every method module declares
    build(pipe, prompt, x_T, guidance_scale, seed, **knobs) -> (hook, info)
        hook(x_t, t, i) -> eps_hat  is called by `diffusion.sample` at every step;
        info                        is a dict the method fills for the curious (triggered?, chosen prompt, traces);
    TITLE     its name in tables;
    KNOBS     its options (knobs.Knob: name, type, default, help): `sample` makes them command-line options;
    SWEEP     the knob settings that trace its privacy-utility curve in `evaluate` (the first is shown in grids);
              a setting may also set `guidance_scale`;
    VARIANTS  other settings evaluated with it, each with its own row in the cost table (usually none);
    BASELINE  True for the methods PRSS is compared with (the dominance table).
The pure math of each method (e.g. `pr.prompt_reanchor`) is a function of noise predictions, tested on its own.

Adding a method: copy gni.py, change it, and add one line to METHODS below. `sample`, `evaluate` and the tables
find it there.
"""

from . import cfg, gni, lowcfg, pe, pr_only, prss, rta, ss_only, transition
from .knobs import with_defaults

METHODS = {
    "cfg": cfg,
    "prss": prss,
    "pr": pr_only,
    "ss": ss_only,
    "pe": pe,
    "gni": gni,
    "rta": rta,
    "lowcfg": lowcfg,
    "transition": transition,
}


def build_hook(method, pipe, prompt, x_T, guidance_scale, seed=0, **knobs):
    """Look up `method`, complete its knobs with their defaults and build its hook. An unknown method or knob is
    a ValueError that lists the known ones. `seed` reaches the methods that draw random numbers of their own."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    module = METHODS[method]
    return module.build(pipe, prompt, x_T, guidance_scale, seed, **with_defaults(method, module.KNOBS, knobs))
