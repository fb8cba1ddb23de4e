"""Prompt-embedding optimization, PE (Wen et al., "Detecting, Explaining, and Mitigating Memorization in
Diffusion Models", ICLR 2024).

Wen et al. detect memorization by the first-step magnitude m(e) = ||eps(x_T, e) - eps(x_T, e_0)|| (detect.py).
Their mitigation lowers it directly: gradient descent on the prompt's token embeddings e until m(e) <= target,
then plain CFG with the optimized embedding. The knob `target` is swept by the evaluation.
"""

import torch

from ..diffusion import cfg_hook
from .detect import noise_magnitude


def optimize_embedding(unet, context, uncond, x_T, t, target, lr=0.05, max_iters=10):
    """Minimise each sample's m(e) at timestep t with AdamW; each sample stops once its m <= target.

    context: (B, L, D) or (1, L, D) prompt embeddings (one copy per sample is optimised); uncond: (1, L, D);
    x_T: (B, C, H, W); t: int (the first DDIM timestep). At most max_iters AdamW steps.
    Returns (context_opt (B, L, D), magnitudes_per_iter: list of (B,) tensors, entry 0 = before optimising)."""
    if target < 0 or max_iters < 0:
        raise ValueError(f"target and max_iters must be >= 0, got target={target}, max_iters={max_iters}")
    B = len(x_T)
    t_in = torch.full((B,), int(t), dtype=torch.long, device=x_T.device)                 # (B,)
    with torch.no_grad():
        eps_u = unet(x_T, t_in, uncond.expand(B, -1, -1))                                # (B, C, H, W), fixed
    best = context.detach().expand(B, -1, -1).clone()       # (B, L, D): what each sample ends with
    m_out = torch.zeros(B, device=x_T.device)               # (B,): the magnitude of `best`
    done = torch.zeros(B, dtype=torch.bool, device=x_T.device)
    magnitudes = []
    with torch.enable_grad():                                # the sampling loop runs under no_grad
        e = best.clone().requires_grad_(True)
        optimizer = torch.optim.AdamW([e], lr=lr, weight_decay=0.0)   # no decay: it would shrink e towards 0
        for it in range(max_iters + 1):
            m = noise_magnitude(unet(x_T, t_in, e), eps_u)                              # (B,)
            # A sample keeps the embedding of its first iterate at or below the target (no overshoot).
            best[~done], m_out[~done] = e.detach()[~done], m.detach()[~done]
            done |= m.detach() <= target
            magnitudes.append(m_out.clone())
            if done.all() or it == max_iters:
                break
            # Samples are independent, so the sum gives each its own gradient. autograd.grad (not backward)
            # differentiates w.r.t. e only: nothing accumulates in the frozen UNet's parameters.
            (e.grad,) = torch.autograd.grad(m[~done].sum(), [e])
            optimizer.step()
    return best, magnitudes


def build(pipe, prompt, x_T, guidance_scale, target=None, lr=0.05, max_iters=10):
    """Plain CFG with an embedding optimised, per sample, on the loop's own x_T at its first step.

    target=None takes pipe.thresholds["lambda_ss"] (set by the PRSS calibration) when the pipe has one."""
    if target is None:
        target = (getattr(pipe, "thresholds", None) or {}).get("lambda_ss")
        if target is None:
            raise ValueError("pe needs a target magnitude: pass target=... (e.g. the calibrated lambda_ss), "
                             "or calibrate the pipe first so pipe.thresholds['lambda_ss'] exists")
    info = {"target": float(target)}

    def hook(x_t, t, i):
        if i == 0:  # optimise where sampling starts: the same x_T and the same first timestep
            cond, magnitudes = optimize_embedding(pipe.unet, pipe.encode([prompt]), pipe.empty, x_t, t, target,
                                                  lr, max_iters)
            info.update(iterations=len(magnitudes) - 1, magnitude_before=magnitudes[0].tolist(),
                        magnitude_after=magnitudes[-1].tolist(), cfg=cfg_hook(pipe.unet, cond, pipe.empty,
                                                                               guidance_scale))
        return info["cfg"](x_t, t, i)

    return hook, info
