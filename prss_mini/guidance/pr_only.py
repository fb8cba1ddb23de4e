"""PR only, the paper's first ablation: Prompt Re-anchoring without Semantic Prompt Search.

Detection as in PRSS; a triggered sample re-anchors away from the memorized prompt towards Wen et al.'s optimized
embedding (pe.py) instead of a searched paraphrase. With SS only (ss_only.py) it shows what each half of PRSS
brings: PR privacy, SS utility.
"""

import torch

from . import prss
from .pe import optimize_embedding

TITLE = "PR only (target: PE embedding)"
KNOBS = tuple(k for k in prss.KNOBS if k.name in ("lambda_ss", "lambda_pr", "tau", "lambda_ss_factor", "tau_factor",
                                                  "per_prompt"))
SWEEP = [{}]
VARIANTS = []
BASELINE = False


def build(pipe, prompt, x_T, guidance_scale, seed, lambda_ss, lambda_pr, tau, lambda_ss_factor, tau_factor,
          per_prompt):
    """Hook for PR towards PE's embedding on every triggered sample of x_T (B, C, H, W)."""
    lambda_ss, guide = prss.thresholds_and_guide(pipe, prompt, len(x_T), guidance_scale, lambda_ss, lambda_pr, tau,
                                                 lambda_ss_factor, tau_factor, per_prompt)
    plan = prss.search(pipe, prompt, x_T, seed, lambda_ss, lambda text: [], per_prompt)   # detection only
    e_opt, _ = optimize_embedding(pipe.unet, plan.e_p, pipe.empty, x_T, plan.t, lambda_ss)
    plan.e_target = torch.where(plan.triggered.view(-1, 1, 1), e_opt, plan.e_target)
    return prss.guided_hook(pipe, plan, guidance_scale, guide), plan.info
