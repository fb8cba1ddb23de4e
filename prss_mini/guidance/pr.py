"""Prompt Re-anchoring, PR (Chen et al., CVPR 2025, Sec. 4.1; docs/math.md "Prompt Re-anchoring").

Plain CFG moves from the empty prompt towards the prompt. When the prompt is memorized, that is exactly the
direction that copies the training image. PR makes the memorized prompt's own prediction the anchor and moves
AWAY from it, towards a target (the searched prompt e_ss, or PE's optimized embedding):

    m_t  = || eps_ss - eps_u ||
    s_pr = min(1 + (s - 1) (m_t - lambda_PR) / (tau - lambda_PR), s)           if m_t > lambda_PR
    eps  = eps_p + s_pr (eps_ss - eps_p) + (s - s_pr) (eps_ss - eps_u)           if m_t > lambda_PR
    eps  = eps_u + s (eps_ss - eps_u)                                            otherwise (plain CFG)

The ramp runs from s_pr = 1 (plain CFG on the target) to s_pr = s (full re-anchoring), so it needs s >= 1.
"""

import torch

from .detect import noise_magnitude


def check_thresholds(lambda_pr, tau, guidance_scale=None):
    """ValueError unless 0 <= lambda_pr < tau (and, if given, guidance_scale >= 1: the ramp goes from 1 to s)."""
    if lambda_pr < 0 or tau < 0:
        raise ValueError(f"thresholds must be >= 0, got lambda_pr={lambda_pr}, tau={tau}")
    if tau <= lambda_pr:
        raise ValueError(f"tau ({tau}) must be larger than lambda_pr ({lambda_pr}): the ramp goes from plain CFG at "
                         f"m_t = lambda_pr to full re-anchoring at m_t = tau")
    if guidance_scale is not None and guidance_scale < 1:
        raise ValueError(f"re-anchoring needs guidance_scale >= 1 (its strength ramps from 1 to s), got "
                         f"{guidance_scale}; use plain CFG (cfg, lowcfg) for smaller scales")


def reanchor_strength(m_t, guidance_scale, lambda_pr, tau):
    """s_pr per sample: 1 at m_t = lambda_PR rising linearly to s at m_t = tau, capped at s. (B,) -> (B,)."""
    return torch.clamp(1 + (guidance_scale - 1) * (m_t - lambda_pr) / (tau - lambda_pr), max=guidance_scale)


def prompt_reanchor(eps_uncond, eps_prompt, eps_target, guidance_scale, lambda_pr, tau, magnitude=None):
    """eps_hat of Prompt Re-anchoring, per sample (the equations above). All inputs (B, C, H, W); returns (B, C, H, W).

    eps_uncond = eps(x_t, e_0), eps_prompt = eps(x_t, e_p) (the memorized prompt, now the anchor),
    eps_target = eps(x_t, e_ss) (where to go instead). `magnitude` (B,) replaces m_t when given (per_prompt PRSS
    judges a prompt's samples together, on the RMS of their m_t)."""
    check_thresholds(lambda_pr, tau, guidance_scale)
    s = guidance_scale
    m_t = noise_magnitude(eps_target, eps_uncond) if magnitude is None else magnitude    # (B,)
    s_pr = reanchor_strength(m_t, s, lambda_pr, tau).view(-1, 1, 1, 1)                   # (B, 1, 1, 1)
    reanchored = eps_prompt + s_pr * (eps_target - eps_prompt) + (s - s_pr) * (eps_target - eps_uncond)
    plain = eps_uncond + s * (eps_target - eps_uncond)
    return torch.where((m_t > lambda_pr).view(-1, 1, 1, 1), reanchored, plain)
