"""Prompt-embedding optimization, PE (Wen et al., "Detecting, Explaining, and Mitigating Memorization in
Diffusion Models", ICLR 2024).

Wen et al. detect memorization by the first-step magnitude m(e) = ||eps(x_T, e) - eps(x_T, e_0)|| (detect.py).
Their mitigation lowers it directly: gradient descent on the prompt's token embeddings e until m(e) <= target,
then plain CFG with the optimized embedding. The knob `target` is swept by the evaluation.

As in the official code: AdamW with its default weight decay (0.01), and token 0 (`<bos>`) never moves (the
official loop zeroes its gradient; in a causal text encoder like CLIP's its state is the same for every prompt).
Here token 0 is left out of the optimized tensor, so the weight decay does not shrink it either.
"""

import torch

from ..diffusion import cfg_hook
from .bright_ending import masked_magnitude
from .detect import noise_magnitude
from .knobs import Knob
from .prss import threshold
from .rows import encode_rows

TITLE = "PE (Wen et al.)"
KNOBS = (Knob("target", float, None, "target first-step magnitude (default: the calibrated lambda_ss)"),
         Knob("target_factor", float, 1.0, "multiply the target (the evaluation sweeps it)"),
         Knob("lr", float, 0.05, "AdamW learning rate of the embedding optimisation"),
         Knob("max_iters", int, 10, "at most this many AdamW steps per sample"))
SWEEP = [{}, {"target_factor": 0.5}, {"target_factor": 2.0}]
VARIANTS = []
BASELINE = True


def optimize_embedding(unet, context, uncond, x_T, t, target, lr=0.05, max_iters=10, mask=None):
    """Minimise each sample's m(e) at timestep t with AdamW over tokens 1..L-1; each sample stops once its
    m <= target. Token 0 keeps its value.

    context: (B, L, D) or (1, L, D) prompt embeddings (one copy per sample is optimised); uncond: (1, L, D);
    x_T: (B, C, H, W); t: int (the first DDIM timestep). At most max_iters AdamW steps. mask (B, H, W): minimise
    Bright Ending's masked magnitude ||(eps_c - eps_u) * M|| / mean(M) instead (pe_be.py).
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
    bos = best[:, :1].clone()                                # (B, 1, D): token 0, fixed
    with torch.enable_grad():                                # the sampling loop runs under no_grad
        rest = best[:, 1:].clone().requires_grad_(True)      # (B, L - 1, D): what AdamW moves
        optimizer = torch.optim.AdamW([rest], lr=lr)         # default weight_decay=0.01, as the official code
        for it in range(max_iters + 1):
            e = torch.cat([bos, rest], dim=1)                                           # (B, L, D)
            eps_c = unet(x_T, t_in, e)                                                  # (B, C, H, W)
            m = noise_magnitude(eps_c, eps_u) if mask is None else masked_magnitude(eps_c, eps_u, mask)  # (B,)
            # A sample keeps the embedding of its first iterate at or below the target (no overshoot).
            best[~done], m_out[~done] = e.detach()[~done], m.detach()[~done]
            done |= m.detach() <= target
            magnitudes.append(m_out.clone())
            if done.all() or it == max_iters:
                break
            # Samples are independent, so the sum gives each its own gradient. autograd.grad (not backward)
            # differentiates w.r.t. the embedding only: nothing accumulates in the frozen UNet's parameters.
            (rest.grad,) = torch.autograd.grad(m[~done].sum(), [rest])
            optimizer.step()
    return best, magnitudes


def build(pipe, prompt, x_T, guidance_scale, seed, target, target_factor, lr, max_iters):
    """Plain CFG with an embedding optimised, per sample, on the loop's own x_T at the detection timestep (where
    the target was calibrated)."""
    return optimized_cfg(pipe, prompt, x_T, guidance_scale, target, target_factor, lr, max_iters)


def optimized_cfg(pipe, prompt, x_T, guidance_scale, target, target_factor, lr, max_iters, mask=None):
    """(hook, info) of PE; with Bright Ending's mask (B, H, W), of PE + BE (pe_be.py)."""
    target = threshold(pipe, "lambda_ss", target, target_factor, guidance_scale, knob="target")
    cond, magnitudes = optimize_embedding(pipe.unet, encode_rows(pipe, prompt, len(x_T)), pipe.empty, x_T,
                                          pipe.detection_timestep, target, lr, max_iters, mask)
    info = {"target": float(target), "iterations": len(magnitudes) - 1, "magnitude_before": magnitudes[0].tolist(),
            "magnitude_after": magnitudes[-1].tolist()}
    return cfg_hook(pipe.unet, cond, pipe.empty, guidance_scale), info
