"""PRSS + Bright Ending (Chen et al., CVPR 2025 with Chen et al., ICLR 2025): PRSS searching on the masked magnitude.

Bright Ending (bright_ending.py) finds where a copy sits: the end token's cross-attention map M at the last step of
a plain CFG run from the same x_T. Locally memorized prompts copy only a region, whose signal the full-image
magnitude dilutes; the masked magnitude weighs that region up:

    m_masked = ||(eps(x_t, e) - eps(x_t, e_0)) * M||_2 / mean(M)

Where it replaces Wen's magnitude, as the official `ours_A` runs do (BE-PRSS, local_sd_pipeline.py, `aug_prompt_ss`
with `attn_mask`): in step 1 only, SS, i.e. the detection of the original prompt against lambda_SS and every
candidate's score. PR's per-step m_t stays the plain magnitude (the pipeline's `__call__` takes the mask but uses it
only to record norms), and the thresholds are PRSS's own (the official runs pass the same l_target_ss).

The official runs read M from a file saved by an earlier plain run with the same seeds; here `build` computes it
from the loop's own x_T (one plain CFG run more, which the evaluation's cost counts). Per sample only: the
official batch norm (prss.py's per_prompt) is not offered with the mask.
"""

from . import prss
from .bright_ending import end_token_mask

TITLE = "PRSS + BE"
KNOBS = tuple(k for k in prss.KNOBS if k.name != "per_prompt")
SWEEP = [{}, {"lambda_ss_factor": 0.7}, {"lambda_ss_factor": 1.5}]
VARIANTS = []
BASELINE = False


def build(pipe, prompt, x_T, guidance_scale, seed, lambda_ss, lambda_pr, tau, lambda_ss_factor, tau_factor, n_s,
          paraphrase_seed, candidates):
    """Hook for PRSS on `prompt` for every x_T (B, C, H, W), detecting and searching with BE's mask;
    info["mask"] (B, H, W) is the mask each sample used."""
    mask = end_token_mask(pipe, prompt, x_T).to(x_T.device)                             # (B, H, W)
    lambda_ss, guide = prss.thresholds_and_guide(pipe, prompt, len(x_T), guidance_scale, lambda_ss, lambda_pr, tau,
                                                 lambda_ss_factor, tau_factor, per_prompt=False)
    plan = prss.search(pipe, prompt, x_T, seed, lambda_ss, prss.paraphraser(n_s, paraphrase_seed, candidates),
                       mask=mask)
    plan.info["mask"] = mask
    return prss.guided_hook(pipe, plan, guidance_scale, guide), plan.info
