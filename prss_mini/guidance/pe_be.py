"""PE + Bright Ending (Wen et al., ICLR 2024 with Chen et al., ICLR 2025): PE minimising the masked magnitude.

Bright Ending's mask M (bright_ending.py: the end token's cross-attention at the last step of a plain CFG run from
the same x_T) weighs the magnitude towards the region a local copy occupies. PE + BE optimises the prompt's token
embeddings against

    m_masked(e) = ||(eps(x_T, e) - eps(x_T, e_0)) * M||_2 / mean(M)

and stops at the same target, as the official `ours_A` runs do (BE-PRSS, local_sd_pipeline.py, `aug_prompt` with
`attn_mask`: both the loss and the stopping test use it). Everything else is PE (pe.py). The official runs read M
from a file of an earlier plain run with the same seeds; here `build` computes it from the loop's own x_T (one plain
CFG run more, which the evaluation's cost counts).
"""

from . import pe
from .bright_ending import end_token_mask

TITLE = "PE + BE"
KNOBS = pe.KNOBS
SWEEP = pe.SWEEP
VARIANTS = []
BASELINE = True


def build(pipe, prompt, x_T, guidance_scale, seed, target, target_factor, lr, max_iters):
    """Plain CFG with an embedding optimised, per sample, on the masked magnitude at the detection timestep;
    info["mask"] (B, H, W) is the mask each sample used."""
    mask = end_token_mask(pipe, prompt, x_T).to(x_T.device)                             # (B, H, W)
    hook, info = pe.optimized_cfg(pipe, prompt, x_T, guidance_scale, target, target_factor, lr, max_iters, mask)
    info["mask"] = mask
    return hook, info
