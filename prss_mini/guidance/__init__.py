"""Guidance methods: one file each, all plugged into the one sampling loop of diffusion.py through a hook.

Every method module declares
    build(pipe, prompt, x_T, guidance_scale, seed, **knobs) -> (hook, info)
        prompt, seed  one prompt (and seed) for every sample of x_T (B, C, H, W), or P prompts and P seeds for
                      P * K samples, prompt-major (rows.py: blocks, encode_rows);
        hook(x_t, t, i) -> eps_hat  is called by `diffusion.sample` at every step;
        info                        is a dict the method fills for the curious (triggered?, chosen prompt, traces);
                                    per-sample entries are lists of B ("triggered", "prompt": what evaluate reads);
                                    a method that moves the initial noise puts the new start in info["x_T"]
                                    (init_noise.py): pipe.generate starts the sampling loop there;
    TITLE     its name in tables;
    KNOBS     its options (knobs.Knob: name, type, default, help): `sample` makes them command-line options, and
              they are exactly build's parameters after `seed` (checked below, when the registry is read);
    SWEEP     the knob settings that trace its privacy-utility curve in `evaluate` (the first is shown in grids);
              a setting may also set `guidance_scale`;
    VARIANTS  other settings evaluated with it, each with its own row in the cost table (usually none);
    BASELINE  True for the methods PRSS is compared with (the dominance table).
The pure math of each method (e.g. `pr.prompt_reanchor`) is a function of noise predictions, tested on its own.

What `pipe` (pipeline.ToyPipeline) offers a method, and all it may use:
    pipe.unet(x, t, context) -> eps      the noise prediction (B, C, H, W); predict_noise batches contexts
    pipe.encode(prompts) -> (P, L, D)    text embeddings; pipe.empty (1, L, D) is the empty prompt's
    pipe.tokenizer                       the word tokenizer (its max_length, eos_id)
    pipe.detection_timestep              the timestep where memorization is detected (the schedule's first)
    pipe.thresholds                      PRSS's thresholds calibrated at pipe.sampling (guidance scale, steps)
    pipe.sampling                        {"guidance_scale", "num_inference_steps"} of the current call
    pipe.run_hook(hook, x_T, steps)      the sampling loop (for a method that samples once to look, like BE)
    pipe.dataset, pipe.config            the run's training set and config (the paraphraser and calibration read
                                         them)

Adding a method: copy gni.py, change it, and add one line to METHODS below. `sample`, `evaluate` and the tables
find it there.
"""

import inspect

from . import (anisotropy, bright_ending, cfg, detect, gni, init_noise, lowcfg, pe, pe_be, pr_only, prss, prss_be,
               rta, ss_only, transition)
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
    "init_noise": init_noise,
    "pe_be": pe_be,
    "prss_be": prss_be,
}
BUILD_PARAMETERS = ["pipe", "prompt", "x_T", "guidance_scale", "seed"]

# Memorization detection scores, score(pipe, prompts, seeds=(0,), num_images=1) -> (P,): evaluate's ROC reads them.
DETECTION_SCORES = {
    "first_step_magnitude": detect.detection_score,      # Wen et al. 2024
    "anisotropy": anisotropy.anisotropy_score,            # Asthana et al. 2026
    "masked_magnitude": bright_ending.detection_score,    # Bright Ending, Chen et al. 2025 (a plain run first)
}


def check_method(name, module):
    """A ValueError unless `module` declares what the registry reads and its build takes exactly its KNOBS."""
    missing = [a for a in ("TITLE", "KNOBS", "SWEEP", "VARIANTS", "BASELINE", "build") if not hasattr(module, a)]
    if missing:
        raise ValueError(f"guidance method {name!r} does not declare {missing} (see prss_mini/guidance/__init__.py)")
    given = list(inspect.signature(module.build).parameters)
    wanted = BUILD_PARAMETERS + [k.name for k in module.KNOBS]
    if given != wanted:
        raise ValueError(f"guidance method {name!r}: build takes {given}, but its KNOBS say {wanted}")
    return module


for _name, _module in METHODS.items():
    check_method(_name, _module)


def build_hook(method, pipe, prompt, x_T, guidance_scale, seed=0, **knobs):
    """Look up `method`, complete its knobs with their defaults and build its hook. An unknown method or knob is
    a ValueError that lists the known ones. `seed` reaches the methods that draw random numbers of their own."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    module = check_method(method, METHODS[method])
    return module.build(pipe, prompt, x_T, guidance_scale, seed, **with_defaults(method, module.KNOBS, knobs))
