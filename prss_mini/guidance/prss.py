"""PRSS = Semantic Prompt Search + Prompt Re-anchoring in one sampling loop (Chen et al., CVPR 2025, Alg. 1).

Per sample (each has its own x_T), before the first step, at the detection timestep (pipe.detection_timestep,
where the thresholds were calibrated):
  1. SS (ss.py): if the prompt's magnitude m <= lambda_SS, nothing is triggered and the sample runs plain CFG,
     bit for bit the same images as `cfg`. Otherwise e_ss is the searched paraphrase.
  2. PR (pr.py) at every step of a triggered sample: the memorized prompt is the anchor, e_ss the target.

With per_prompt=True step 1 is done once for all the prompt's samples, on the root mean square of their
magnitudes (the official code's norm over its batch). The paper's runs used one image per prompt, where the two
modes are the same. The paper's ablations (pr_only.py, ss_only.py) run the same loop, `guided_hook`.
"""

from dataclasses import dataclass

import torch

from ..diffusion import classifier_free_guidance, predict_noise
from .detect import noise_magnitude
from .knobs import Knob
from .paraphrase import paraphrases
from .pe import optimize_embedding
from .pr import check_thresholds, prompt_reanchor
from .ss import semantic_search

TITLE = "PR + SS (PRSS)"
KNOBS = (
    Knob("lambda_ss", float, None, "SS threshold on the first-step magnitude (default: calibrated)"),
    Knob("lambda_pr", float, None, "PR: plain CFG below this per-step magnitude (default: calibrated)"),
    Knob("tau", float, None, "PR: full re-anchoring from this magnitude on (default: calibrated)"),
    Knob("lambda_ss_factor", float, 1.0, "multiply lambda_ss (the evaluation sweeps it)"),
    Knob("tau_factor", float, 1.0, "tau = lambda_pr + tau_factor (tau - lambda_pr): > 1 a gentler ramp"),
    Knob("n_s", int, 25, "number of paraphrase candidates"),
    Knob("per_prompt", bool, False, "detect and search once for all images, on the RMS of their magnitudes "
                                    "(the official code's batch norm), not per image"),
    Knob("paraphrase_seed", int, 0, "seed of the toy paraphraser"),
    Knob("candidates", list, None, "the candidate paraphrases (default: n_s from the toy paraphraser)"),
)
# lambda_SS spans the privacy axis: a higher one triggers (so changes) fewer samples, up to plain CFG (the cfg point
# ends PRSS's curve as lambda_ss = infinity); a larger tau re-anchors more gently.
SWEEP = [{}, {"lambda_ss_factor": 0.7}, {"lambda_ss_factor": 1.5}, {"tau_factor": 4}]
VARIANTS = [{"per_prompt": True}]
BASELINE = False


def threshold(pipe, name, value, factor=1.0):
    """An explicit threshold, or the run's calibrated one (pipe.thresholds[name]); times `factor`."""
    if value is None:
        if pipe.thresholds is None:
            raise ValueError(f"no value for {name} and this pipeline has no calibrated thresholds: pass it, or load "
                             f"a run folder (see prss_mini.guidance.calibrate)")
        value = pipe.thresholds[name]
    if value * factor < 0:
        raise ValueError(f"{name} must be >= 0, got {value}" + (f" x {factor}" if factor != 1 else ""))
    return value * factor


def search_targets(pipe, prompt, candidates, x_T, t, lambda_ss, e_p, per_prompt=False):
    """Run SS for every sample of x_T (B, C, H, W) at timestep t, scoring each candidate for every sample still
    searching in one UNet call. e_p: the prompt's embeddings (1, L, D).

    Returns (results: B SearchResults, eps_u, eps_p: the predictions at t (B, C, H, W), reused by step 0)."""
    eps_u, eps_p = predict_noise(pipe.unet, x_T, t, [pipe.empty, e_p])                  # (B, C, H, W) x 2

    def score(candidate, rows):
        eps_c = predict_noise(pipe.unet, x_T[rows], t, [pipe.encode([candidate])])[0]   # (n, C, H, W)
        return noise_magnitude(eps_c, eps_u[rows])

    results = semantic_search(prompt, noise_magnitude(eps_p, eps_u), candidates, score, lambda_ss, per_prompt)
    return results, eps_u, eps_p


@dataclass
class Plan:
    """What detection decided, per sample, before the first step."""
    triggered: torch.Tensor   # (B,) bool
    e_target: torch.Tensor    # (B, L, D): e_ss (or PE's embedding for PR only); the prompt where untriggered
    t: int                    # the detection timestep ...
    first: tuple              # ... and (eps_u, eps_p) there, reused if the loop's first step is that timestep


def predictions(pipe, x_t, t, e_p, plan, known=None):
    """(eps_u, eps_p, eps_target) at x_t; eps_target is None when no sample triggered.

    Untriggered samples must get CFG's images bit for bit and CFG's cost, so they share CFG's own (empty, prompt)
    call and get no target prediction; `known` are (eps_u, eps_p) already computed at this x_t and t."""
    triggered = plan.triggered
    if known is None and triggered.all():  # every sample re-anchors: the three predictions in one batched call
        eps_u, eps_target, eps_p = predict_noise(pipe.unet, x_t, t, [pipe.empty, plan.e_target, e_p])
        return eps_u, eps_p, eps_target
    eps_u, eps_p = known if known is not None else predict_noise(pipe.unet, x_t, t, [pipe.empty, e_p])
    if not triggered.any():
        return eps_u, eps_p, None
    eps_target = eps_p.clone()
    eps_target[triggered] = predict_noise(pipe.unet, x_t[triggered], t, [plan.e_target[triggered]])[0]
    return eps_u, eps_p, eps_target


def guided_hook(pipe, prompt, x_T, guidance_scale, lambda_ss, candidates, per_prompt=False, reanchor=None,
                pe_target=False):
    """The loop PRSS and its ablations share: detect and search on x_T (B, C, H, W), then guide every step.

    reanchor: (lambda_pr, tau) for Prompt Re-anchoring, or None for plain CFG on the target (SS only);
    pe_target: the triggered samples' target is PE's optimized embedding instead of e_ss (PR only)."""
    if reanchor is not None:
        check_thresholds(*reanchor, guidance_scale)
    e_p = pipe.encode([prompt])                                                          # (1, L, D)
    t0 = pipe.detection_timestep
    results, eps_u, eps_p = search_targets(pipe, prompt, candidates, x_T, t0, lambda_ss, e_p, per_prompt)
    plan = Plan(torch.tensor([r.triggered for r in results], device=x_T.device), pipe.encode([r.prompt for r in results]),
                t0, (eps_u, eps_p))
    if pe_target:  # PR only (Wen et al.'s optimized embedding as the target)
        e_opt, _ = optimize_embedding(pipe.unet, e_p, pipe.empty, x_T, t0, lambda_ss)
        plan.e_target = torch.where(plan.triggered.view(-1, 1, 1), e_opt, plan.e_target)
    info = {"triggered": [r.triggered for r in results], "prompt": [r.prompt for r in results],
            "magnitudes": [r.magnitudes for r in results], "trace": []}

    def hook(x_t, t, i):
        known = plan.first if i == 0 and t == plan.t else None
        eps_u, eps_p, eps_target = predictions(pipe, x_t, t, e_p, plan, known)
        cfg_own = classifier_free_guidance(eps_u, eps_p, guidance_scale)
        if eps_target is None:
            return cfg_own
        info["trace"].append(noise_magnitude(eps_target, eps_u))
        if reanchor is not None:
            eps = prompt_reanchor(eps_u, eps_p, eps_target, guidance_scale, *reanchor)
        else:
            eps = classifier_free_guidance(eps_u, eps_target, guidance_scale)
        return torch.where(plan.triggered.view(-1, 1, 1, 1), eps, cfg_own)

    return hook, info


def reanchor_thresholds(pipe, lambda_pr, tau, tau_factor):
    """(lambda_pr, tau) with tau moved to lambda_pr + tau_factor (tau - lambda_pr)."""
    lambda_pr, tau = threshold(pipe, "lambda_pr", lambda_pr), threshold(pipe, "tau", tau)
    check_thresholds(lambda_pr, tau)  # on the values as given, so the message shows them
    if tau_factor <= 0:
        raise ValueError(f"tau_factor must be > 0, got {tau_factor}")
    return lambda_pr, (tau if tau_factor == 1 else lambda_pr + tau_factor * (tau - lambda_pr))


def build(pipe, prompt, x_T, guidance_scale, seed, lambda_ss, lambda_pr, tau, lambda_ss_factor, tau_factor, n_s,
          per_prompt, paraphrase_seed, candidates):
    """Hook for PRSS on `prompt` for every x_T (B, C, H, W); thresholds default to the run's calibrated ones."""
    reanchor = reanchor_thresholds(pipe, lambda_pr, tau, tau_factor)
    lambda_ss = threshold(pipe, "lambda_ss", lambda_ss, lambda_ss_factor)
    if candidates is None:
        candidates = paraphrases(prompt, n=n_s, seed=paraphrase_seed)
    return guided_hook(pipe, prompt, x_T, guidance_scale, lambda_ss, candidates, per_prompt, reanchor)
