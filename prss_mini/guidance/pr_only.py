"""PR only, the paper's first ablation: Prompt Re-anchoring without Semantic Prompt Search.

Detection as in PRSS; a triggered sample re-anchors away from the memorized prompt towards Wen et al.'s optimized
embedding (pe.py) instead of a searched paraphrase. With SS only (ss_only.py) it shows what each half of PRSS
brings: PR privacy, SS utility.
"""

from . import prss

TITLE = "PR only (target: PE embedding)"
KNOBS = tuple(k for k in prss.KNOBS if k.name in ("lambda_ss", "lambda_pr", "tau", "lambda_ss_factor", "tau_factor",
                                                  "per_prompt"))
SWEEP = [{}]
VARIANTS = []
BASELINE = False


def build(pipe, prompt, x_T, guidance_scale, seed, lambda_ss, lambda_pr, tau, lambda_ss_factor, tau_factor,
          per_prompt):
    """Hook for PR towards PE's embedding on every triggered sample of x_T (B, C, H, W)."""
    reanchor = prss.reanchor_thresholds(pipe, lambda_pr, tau, tau_factor)
    lambda_ss = prss.threshold(pipe, "lambda_ss", lambda_ss, lambda_ss_factor)
    return prss.guided_hook(pipe, prompt, x_T, guidance_scale, lambda_ss, [], per_prompt, reanchor, pe_target=True)
