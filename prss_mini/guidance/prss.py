"""PRSS = Semantic Prompt Search + Prompt Re-anchoring in one sampling loop (Chen et al., CVPR 2025, Alg. 1).

Per sample (each has its own x_T), at the first step of the loop:
  1. SS: if the prompt's magnitude m <= lambda_SS, nothing is triggered and the sample runs plain CFG, bit for
     bit the same images as `cfg`. Otherwise e_ss is the searched paraphrase.
  2. PR at every step of a triggered sample: the memorized prompt is the anchor, e_ss the target.

With per_prompt=True step 1 is done once for all the prompt's samples, on the root mean square of their
magnitudes: the official code's norm over its whole batch of num_images_per_prompt images, divided by
sqrt(batch) so that the same lambda_SS applies. More x_T give the detector more evidence (Wen et al. report
better detection with more generations per prompt). The paper's runs used one image per prompt, where the
two modes are the same.

The paper's ablation comes from the same code:
    prss  SS target + re-anchoring       pr  PE's optimized embedding as target + re-anchoring (no search)
    ss    SS target, plain CFG on it (no re-anchoring)
"""

import torch

from ..diffusion import classifier_free_guidance, predict_noise
from .detect import noise_magnitude
from .paraphrase import paraphrases
from .pr import check_thresholds, prompt_reanchor
from .ss import semantic_search


def resolve_thresholds(pipe, lambda_ss=None, lambda_pr=None, tau=None):
    """Explicit values win; the rest come from the run's calibration (`pipe.thresholds`)."""
    given = dict(lambda_ss=lambda_ss, lambda_pr=lambda_pr, tau=tau)
    missing = [k for k, v in given.items() if v is None]
    if missing:
        calibrated = getattr(pipe, "thresholds", None)
        if calibrated is None:
            raise ValueError(f"no value for {missing} and this pipeline has no calibrated thresholds: pass them, "
                             f"or load a run folder (see prss_mini.guidance.calibrate)")
        given.update({k: calibrated[k] for k in missing})
    if given["lambda_ss"] < 0:
        raise ValueError(f"lambda_ss must be >= 0, got {given['lambda_ss']}")
    check_thresholds(given["lambda_pr"], given["tau"])
    return given


def search_targets(pipe, prompt, candidates, x_T, t, lambda_ss, e_p=None, per_prompt=False):
    """Run SS for every sample of x_T (B, C, H, W) at timestep t (or once for all of them, per_prompt=True);
    e_p: the prompt's embeddings, if already encoded.

    Returns (results: B SearchResults, eps_u, eps_p: the first-step predictions (B, C, H, W), reused by step 0)."""
    e_p = pipe.encode([prompt]) if e_p is None else e_p                                  # (1, L, D)
    eps_u, eps_p = predict_noise(pipe.unet, x_T, t, [pipe.empty, e_p])                  # (B, C, H, W) x 2

    def score(candidate, rows):  # one UNet call for every sample still searching
        eps_c = predict_noise(pipe.unet, x_T[rows], t, [pipe.encode([candidate])])[0]   # (n, C, H, W)
        return noise_magnitude(eps_c, eps_u[rows])

    results = semantic_search(prompt, noise_magnitude(eps_p, eps_u), candidates, score, lambda_ss, per_prompt)
    return results, eps_u, eps_p


def build(pipe, prompt, x_T, guidance_scale, lambda_ss=None, lambda_pr=None, tau=None, candidates=None, n_s=25,
          use_ss=True, use_pr=True, paraphrase_seed=0, per_prompt=False):
    """Hook for PRSS (or, with use_ss / use_pr off, its ablations) on `prompt` for every x_T (B, C, H, W).

    per_prompt: one detection and search for all samples, on the RMS of their magnitudes (see the top)."""
    th = resolve_thresholds(pipe, lambda_ss, lambda_pr, tau)
    if candidates is None:
        candidates = paraphrases(prompt, n=n_s, seed=paraphrase_seed) if use_ss else []
    e_p = pipe.encode([prompt])                                                          # (1, L, D)
    info = {"triggered": [], "prompt": [], "magnitudes": [], "trace": []}
    state = {}

    def first_step(x_t, t):
        results, eps_u, eps_p = search_targets(pipe, prompt, candidates if use_ss else [], x_t, t, th["lambda_ss"],
                                               e_p, per_prompt)
        info["triggered"] = [r.triggered for r in results]
        info["prompt"] = [r.prompt for r in results]
        info["magnitudes"] = [r.magnitudes for r in results]
        state["triggered"] = torch.tensor(info["triggered"], device=x_t.device)         # (B,)
        e_target = pipe.encode(info["prompt"])                                           # (B, L, D)
        if use_pr and not use_ss:  # PR only: the target is PE's optimized embedding (Wen et al.)
            from .pe import optimize_embedding
            e_opt, _ = optimize_embedding(pipe.unet, e_p, pipe.empty, x_t, t, th["lambda_ss"])
            e_target = torch.where(state["triggered"].view(-1, 1, 1), e_opt, e_target)
        state["e_target"] = e_target
        return eps_u, eps_p

    def hook(x_t, t, i):
        eps_target = None
        if i == 0:
            eps_u, eps_p = first_step(x_t, t)  # the search's own first-step predictions, reused
        elif state["triggered"].all():  # every sample re-anchors: the three predictions in one batched call
            eps_u, eps_target, eps_p = predict_noise(pipe.unet, x_t, t, [pipe.empty, state["e_target"], e_p])
        else:  # CFG's own call, so untriggered samples get exactly CFG's images and cost
            eps_u, eps_p = predict_noise(pipe.unet, x_t, t, [pipe.empty, e_p])           # (B, C, H, W) x 2
        triggered = state["triggered"]                                                   # (B,) bool
        cfg_own = classifier_free_guidance(eps_u, eps_p, guidance_scale)
        if not triggered.any():
            return cfg_own
        if eps_target is None:  # the third prediction, on the searched prompt, only for the triggered samples
            eps_target = eps_p.clone()
            eps_target[triggered] = predict_noise(pipe.unet, x_t[triggered], t, [state["e_target"][triggered]])[0]
        info["trace"].append(noise_magnitude(eps_target, eps_u))
        if use_pr:
            eps = prompt_reanchor(eps_u, eps_p, eps_target, guidance_scale, th["lambda_pr"], th["tau"])
        else:
            eps = classifier_free_guidance(eps_u, eps_target, guidance_scale)
        return torch.where(triggered.view(-1, 1, 1, 1), eps, cfg_own)

    return hook, info
