"""SS only, the paper's second ablation: Semantic Prompt Search without Prompt Re-anchoring.

Detection and search as in PRSS; a triggered sample then runs plain CFG on the searched paraphrase e_ss. With
PR only (pr_only.py) it shows what each half of PRSS brings: PR privacy, SS utility.
"""

from . import prss
from .paraphrase import paraphrases

TITLE = "SS only"
KNOBS = tuple(k for k in prss.KNOBS if k.name in ("lambda_ss", "lambda_ss_factor", "n_s", "per_prompt",
                                                  "paraphrase_seed", "candidates"))
SWEEP = [{}]
VARIANTS = []
BASELINE = False


def build(pipe, prompt, x_T, guidance_scale, seed, lambda_ss, lambda_ss_factor, n_s, per_prompt, paraphrase_seed,
          candidates):
    """Hook for plain CFG on the searched paraphrase of every triggered sample of x_T (B, C, H, W)."""
    lambda_ss = prss.threshold(pipe, "lambda_ss", lambda_ss, lambda_ss_factor)
    if candidates is None:
        candidates = paraphrases(prompt, n=n_s, seed=paraphrase_seed)
    return prss.guided_hook(pipe, prompt, x_T, guidance_scale, lambda_ss, candidates, per_prompt)
