"""Guidance methods: one file each, all plugged into the one sampling loop of diffusion.py through a hook.

Every method has `build(pipe, prompt, x_T, guidance_scale, **knobs) -> (hook, info)`:
    hook(x_t, t, i) -> eps_hat  is called by `diffusion.sample` at every step;
    info                        is a dict the method fills for the curious (triggered?, chosen prompt, traces).
The pure math of each method (e.g. `pr.prompt_reanchor`) is a function of noise predictions, tested on its own.
"""

import inspect
from importlib import import_module

# method name -> (module, the knob an evaluation sweeps)
METHODS = {
    "cfg": ("cfg", None),
    "prss": ("prss", "lambda_ss"),
    "pr": ("prss", "lambda_pr"),
    "ss": ("prss", "lambda_ss"),
    "pe": ("pe", "target"),
    "gni": ("gni", "noise_scale"),
    "rta": ("rta", "num_tokens"),
    "lowcfg": ("lowcfg", "guidance_scale"),
    "transition": ("transition", "transition_step"),
}


def build_hook(method, pipe, prompt, x_T, guidance_scale, seed=0, **knobs):
    """Look up `method` and build its hook. Unknown methods raise a ValueError that lists the known ones.

    `seed` reaches the methods that draw random numbers of their own (GNI's noise, RTA's words)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    module = import_module(f"{__name__}.{METHODS[method][0]}")
    if "seed" in inspect.signature(module.build).parameters:
        knobs.setdefault("seed", seed)
    if method in ("pr", "ss"):  # the two halves of PRSS, for the ablation
        knobs = {"use_pr": method == "pr", "use_ss": method == "ss", **knobs}
    if method == "lowcfg":  # its knob is the guidance scale itself
        guidance_scale = knobs.pop("guidance_scale", guidance_scale)
    return module.build(pipe, prompt, x_T, guidance_scale, **knobs)
