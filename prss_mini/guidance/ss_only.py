"""SS only, the paper's second ablation: Semantic Prompt Search without Prompt Re-anchoring.

Detection and search as in PRSS; a triggered sample then runs plain CFG on the searched paraphrase e_ss. With
PR only (pr_only.py) it shows what each half of PRSS brings: PR privacy, SS utility.
"""

from ..diffusion import classifier_free_guidance
from . import prss

TITLE = "SS only"
KNOBS = tuple(k for k in prss.KNOBS if k.name in ("lambda_ss", "lambda_ss_factor", "n_s", "per_prompt",
                                                  "paraphrase_seed", "candidates"))
SWEEP = [{}]
VARIANTS = []
BASELINE = False


def build(pipe, prompt, x_T, guidance_scale, seed, lambda_ss, lambda_ss_factor, n_s, per_prompt, paraphrase_seed,
          candidates):
    """Hook for plain CFG on the searched paraphrase of every triggered sample of x_T (B, C, H, W)."""
    lambda_ss = prss.threshold(pipe, "lambda_ss", lambda_ss, lambda_ss_factor, guidance_scale)
    plan = prss.search(pipe, prompt, x_T, seed, lambda_ss, prss.paraphraser(n_s, paraphrase_seed, candidates),
                       per_prompt)
    guide = lambda eps_u, eps_p, eps_ss, m_t: classifier_free_guidance(eps_u, eps_ss, guidance_scale)
    return prss.guided_hook(pipe, plan, guidance_scale, guide), plan.info
