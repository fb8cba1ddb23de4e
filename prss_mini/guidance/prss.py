"""PRSS = Semantic Prompt Search + Prompt Re-anchoring in one sampling loop (Chen et al., CVPR 2025, Alg. 1).

    1. SS, before step 0 (ss.py): at the detection timestep (pipe.detection_timestep, where the thresholds were
       calibrated), each sample (each has its own x_T) whose prompt magnitude m > lambda_SS is triggered and gets
       the searched paraphrase e_ss. An untriggered sample runs plain CFG: bit for bit the images of `cfg`.
    2. PR, every step (pr.py): a triggered sample re-anchors on the memorized prompt, towards e_ss.

With per_prompt=True each prompt decides once for all its samples, on the root mean square of their magnitudes
(the official code's norm over its batch, divided by sqrt(K) so the same thresholds apply), in SS and in PR alike.
The paper's runs used one image per prompt, where the two modes are the same. The ablations run the same loop
with another guidance rule (ss_only.py: plain CFG on e_ss) or another target (pr_only.py: PE's embedding).
"""

from dataclasses import dataclass
from functools import partial

import torch

from ..diffusion import classifier_free_guidance, predict_noise
from .bright_ending import masked_magnitude
from .detect import noise_magnitude
from .knobs import Knob
from .paraphrase import paraphrases
from .pr import check_thresholds, prompt_reanchor
from .rows import blocks, encode_rows, per_block
from .ss import search_prompts

TITLE = "PR + SS (PRSS)"
KNOBS = (
    Knob("lambda_ss", float, None, "SS threshold on the first-step magnitude (default: calibrated)"),
    Knob("lambda_pr", float, None, "PR: plain CFG below this per-step magnitude (default: calibrated)"),
    Knob("tau", float, None, "PR: full re-anchoring from this magnitude on (default: calibrated)"),
    Knob("lambda_ss_factor", float, 1.0, "multiply lambda_ss (the evaluation sweeps it)"),
    Knob("tau_factor", float, 1.0, "tau = lambda_pr + tau_factor (tau - lambda_pr): > 1 a gentler ramp"),
    Knob("n_s", int, 25, "number of paraphrase candidates"),
    Knob("per_prompt", bool, False, "detect, search and re-anchor once for all of a prompt's images, on the RMS "
                                    "of their magnitudes (the official code's batch norm), not per image"),
    Knob("paraphrase_seed", int, 0, "seed of the toy paraphraser"),
    Knob("candidates", list, None, "the candidate paraphrases (default: n_s from the toy paraphraser)"),
)
# lambda_SS spans the privacy axis: a higher one triggers (so changes) fewer samples, up to plain CFG (the cfg point
# ends PRSS's curve as lambda_ss = infinity); a larger tau re-anchors more gently.
SWEEP = [{}, {"lambda_ss_factor": 0.7}, {"lambda_ss_factor": 1.5}, {"tau_factor": 4}]
VARIANTS = [{"per_prompt": True}]
BASELINE = False


def threshold(pipe, name, value, factor=1.0, guidance_scale=None, knob=None):
    """An explicit threshold, or the one calibrated for the pipe's sampling settings (pipe.thresholds[name]);
    times `factor`. Calibrated thresholds hold at the guidance scale they were measured at, so a hook built at
    another `guidance_scale` than the pipe's settings is refused. `knob`: the option that gives the value (its
    name in messages; default `name`)."""
    if value is None:
        if pipe.thresholds is None:
            raise ValueError(f"no value for {knob or name} and this pipeline has no calibrated thresholds: pass "
                             f"{knob or name}=..., or load a run folder (see prss_mini.guidance.calibrate)")
        calibrated_at = pipe.thresholds.get("guidance_scale")
        if guidance_scale is not None and calibrated_at is not None and calibrated_at != guidance_scale:
            raise ValueError(f"the calibrated {name} holds at guidance_scale {calibrated_at}, not {guidance_scale}: "
                             f"sample through pipe.generate (it recalibrates for its settings), or pass {name}")
        value = pipe.thresholds[name]
    if value * factor < 0:
        raise ValueError(f"{name} must be >= 0, got {value}" + (f" x {factor}" if factor != 1 else ""))
    return value * factor


@dataclass
class Plan:
    """What SS decided before step 0, per sample."""
    triggered: torch.Tensor   # (B,) bool
    e_p: torch.Tensor         # (B, L, D): the prompt, the anchor
    e_target: torch.Tensor    # (B, L, D): e_ss (or PE's embedding for PR only); the prompt where untriggered
    t: int                    # the detection timestep ...
    first: tuple              # ... and (eps_u, eps_p) there, reused if the loop's first step is that timestep
    info: dict                # per sample: triggered, prompt, magnitudes; and PR's trace


def search(pipe, prompt, x_T, seed, lambda_ss, candidates, per_prompt=False, mask=None):
    """Step 1, SS, for every sample of x_T (B, C, H, W): detection at pipe.detection_timestep, then the search.

    candidates(prompt) -> the prompt's candidate paraphrases (`paraphraser`). The (empty, prompt) predictions are
    ONE call on all samples, the same call as CFG's first step, so untriggered samples stay bit for bit CFG's. The
    prompts of a batch search side by side (ss.search_prompts): round k scores every prompt's k-th candidate in one
    call. mask (B, H, W): Bright Ending's (bright_ending.py); with it, the detection and every candidate's score use
    the masked magnitude ||(eps_c - eps_u) * M|| / mean(M) (prss_be.py)."""
    def magnitude(eps_c, eps_u, rows):                                                   # (n,): these samples'
        return noise_magnitude(eps_c, eps_u) if mask is None else masked_magnitude(eps_c, eps_u, mask[rows])

    t = pipe.detection_timestep
    e_p = encode_rows(pipe, prompt, len(x_T))                                            # (B, L, D)
    eps_u, eps_p = predict_noise(pipe.unet, x_T, t, [pipe.empty, e_p])                   # (B, C, H, W) x 2
    m = magnitude(eps_p, eps_u, slice(None))                                             # (B,)
    parts = blocks(prompt, len(x_T), seed)
    def score_all(requests):  # [(prompt i, candidate, its samples still searching)] -> magnitudes, ONE UNet call
        rows = [torch.as_tensor(r, dtype=torch.long) + parts[i][2].start for i, _, r in requests]
        texts = list(dict.fromkeys(c for _, c, _ in requests))
        e = pipe.encode(texts)                                                           # (N, L, D)
        context = torch.cat([e[texts.index(c)].expand(len(r), -1, -1) for _, c, r in requests])
        idx = torch.cat(rows)                                                            # (n,)
        eps_c = predict_noise(pipe.unet, x_T[idx], t, [context])[0]                      # (n, C, H, W)
        return magnitude(eps_c, eps_u[idx], idx).split([len(r) for r in rows])
    searches = [(text, m[rows], candidates(text)) for text, _, rows in parts]
    results = [r for found in search_prompts(searches, score_all, lambda_ss, per_prompt) for r in found]
    info = {"triggered": [r.triggered for r in results], "prompt": [r.prompt for r in results],
            "magnitudes": [r.magnitudes for r in results], "trace": []}
    triggered = torch.tensor(info["triggered"], device=x_T.device)
    return Plan(triggered, e_p, pipe.encode(info["prompt"]), t, (eps_u, eps_p), info)


def predictions(pipe, x_t, t, plan, known=None):
    """(eps_u, eps_p, eps_target) at x_t; eps_target is None when no sample triggered.

    Untriggered samples must get CFG's images bit for bit and CFG's cost, so they share CFG's own (empty, prompt)
    call and get no target prediction; `known` are (eps_u, eps_p) already computed at this x_t and t."""
    triggered = plan.triggered
    if known is None and triggered.all():  # every sample re-anchors: the three predictions in one batched call
        eps_u, eps_target, eps_p = predict_noise(pipe.unet, x_t, t, [pipe.empty, plan.e_target, plan.e_p])
        return eps_u, eps_p, eps_target
    eps_u, eps_p = known if known is not None else predict_noise(pipe.unet, x_t, t, [pipe.empty, plan.e_p])
    if not triggered.any():
        return eps_u, eps_p, None
    eps_target = eps_p.clone()
    eps_target[triggered] = predict_noise(pipe.unet, x_t[triggered], t, [plan.e_target[triggered]])[0]
    return eps_u, eps_p, eps_target


def guided_hook(pipe, plan, guidance_scale, guide):
    """Step 2, every step: untriggered samples run plain CFG on the prompt; triggered ones run
    guide(eps_u, eps_p, eps_target, m_t) with m_t = ||eps_target - eps_u|| (B,) (per prompt: its RMS)."""
    def hook(x_t, t, i):
        known = plan.first if i == 0 and t == plan.t else None
        eps_u, eps_p, eps_target = predictions(pipe, x_t, t, plan, known)
        cfg_own = classifier_free_guidance(eps_u, eps_p, guidance_scale)
        if eps_target is None:
            return cfg_own
        m_t = noise_magnitude(eps_target, eps_u)                                         # (B,)
        plan.info["trace"].append(m_t)
        eps = guide(eps_u, eps_p, eps_target, m_t)
        return torch.where(plan.triggered.view(-1, 1, 1, 1), eps, cfg_own)
    return hook


def reanchor_thresholds(pipe, lambda_pr, tau, tau_factor, guidance_scale=None):
    """(lambda_pr, tau) with tau moved to lambda_pr + tau_factor (tau - lambda_pr)."""
    lambda_pr = threshold(pipe, "lambda_pr", lambda_pr, guidance_scale=guidance_scale)
    tau = threshold(pipe, "tau", tau, guidance_scale=guidance_scale)
    check_thresholds(lambda_pr, tau)  # on the values as given, so the message shows them
    if tau_factor <= 0:
        raise ValueError(f"tau_factor must be > 0, got {tau_factor}")
    return lambda_pr, (tau if tau_factor == 1 else lambda_pr + tau_factor * (tau - lambda_pr))


def reanchor_guide(pipe, prompt, num_samples, guidance_scale, lambda_pr, tau, per_prompt):
    """PR as a guide for guided_hook: prompt_reanchor with m_t per sample, or per prompt (RMS over its samples)."""
    check_thresholds(lambda_pr, tau, guidance_scale)
    parts = blocks(prompt, num_samples)
    def guide(eps_u, eps_p, eps_target, m_t):
        m = per_block(m_t, parts) if per_prompt else m_t
        return prompt_reanchor(eps_u, eps_p, eps_target, guidance_scale, lambda_pr, tau, magnitude=m)
    return guide


def paraphraser(n_s, paraphrase_seed, candidates=None):
    """prompt -> its candidates: the given list for every prompt, or n_s toy paraphrases."""
    return (lambda text: candidates) if candidates is not None else partial(paraphrases, n=n_s, seed=paraphrase_seed)


def thresholds_and_guide(pipe, prompt, num_samples, guidance_scale, lambda_ss, lambda_pr, tau, lambda_ss_factor,
                         tau_factor, per_prompt):
    """(lambda_ss, PR's guide) for PRSS and the methods built on its loop (pr_only.py, prss_be.py): thresholds
    default to the run's calibrated ones."""
    lambda_pr, tau = reanchor_thresholds(pipe, lambda_pr, tau, tau_factor, guidance_scale)
    guide = reanchor_guide(pipe, prompt, num_samples, guidance_scale, lambda_pr, tau, per_prompt)
    return threshold(pipe, "lambda_ss", lambda_ss, lambda_ss_factor, guidance_scale), guide


def build(pipe, prompt, x_T, guidance_scale, seed, lambda_ss, lambda_pr, tau, lambda_ss_factor, tau_factor, n_s,
          per_prompt, paraphrase_seed, candidates):
    """Hook for PRSS on `prompt` for every x_T (B, C, H, W)."""
    lambda_ss, guide = thresholds_and_guide(pipe, prompt, len(x_T), guidance_scale, lambda_ss, lambda_pr, tau,
                                            lambda_ss_factor, tau_factor, per_prompt)
    plan = search(pipe, prompt, x_T, seed, lambda_ss, paraphraser(n_s, paraphrase_seed, candidates), per_prompt)
    return guided_hook(pipe, plan, guidance_scale, guide), plan.info
