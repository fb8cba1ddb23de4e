"""Initial-noise adjustment (Han et al., "Adjusting Initial Noise to Mitigate Memorization in Text-to-Image
Diffusion Models", NeurIPS 2025).

Memorization is decided in the first steps: CFG pulls a sample into the memorized image's "attraction basin".
Han et al. observe that some initial noises leave that basin sooner than others, and move x_T itself before
sampling, instead of the prompt (PE, pe.py) or the guidance (transition.py). Both of their variants lower the
first-step magnitude of Wen et al. (detect.py), here a function of the initial noise:

    l(x_T) = || eps(x_T, t_1, e_p) - eps(x_T, t_1, e_0) ||_2         (t_1: the first timestep; the norm, not squared)

Per sample (the default): gradient descent on x_T with AdamW, each sample on its own, until l <= target:

    x_T <- AdamW_step(x_T, grad_x l(x_T))     while l(x_T) > target, at most optim_iters steps

    then plain CFG from step 0, started from the adjusted x_T. A sample whose l is already <= target is not
    touched: it keeps its x_T and gives plain CFG's image bit for bit.

Batch-wise (batch_wise=True, the VARIANT): no target, a fixed number of sharpness-like steps on every sample,
with the guidance direction eps~(x) = eps(x, t_1, e_p) - eps(x, t_1, e_0):

    delta = rho * eps~(x) / ||eps~(x)||                  (per sample)
    x    <- x - gamma * (eps~(x + delta) - eps~(x))      adj_iters times

    (a finite difference of eps~ along itself: about rho/||eps~|| times J eps~, the gradient of l^2 / 2 when the
    Jacobian J is symmetric, as a score's is), then the unconditional model alone for the steps
    i <= apply_cfg_step and plain CFG afterwards.

The official code (github.com/hygnhan/init_noise_diffusion_memorization, local_sd_pipeline.py) and its defaults
(generate_images.py, SD v1.4 in bfloat16, DDIM 50 steps, s = 7):
    per sample   AdamW (weight decay 0.01) on the latent, lr 0.01, at most 1000 steps, target_loss 0.9; the loss
                 is checked before each step, so a sample stops at its first iterate with l <= target;
    batch-wise   rho 50, gamma 0.7, 2 iterations, unconditional for steps 0..4 (apply_cfg_step 4).
Here: the target is an SD magnitude, so its default is the run's calibrated lambda_ss (the threshold PRSS's
search uses, also PE's default; the evaluation sweeps `target_factor`). rho is a distance in SD's 4x64x64 latent
space (||x_T|| ~ 128 there), so its default keeps rho / sqrt(numel(x_T)) (50 / 128): 50 sqrt(numel / 16384).
lr, gamma, the step counts and apply_cfg_step are kept: x_T is N(0, I) in both, Adam's step does not depend on
the loss's scale, gamma multiplies a difference of two eps, and the toy's cpu and gpu presets sample 50 steps
too (apply_cfg_step is a step index: with the tiny preset's 20 steps, 5 unconditional steps are a quarter).

The adjusted start is returned as info["x_T"]; `pipe.generate` starts the sampling loop there (a caller of
build_hook + pipe.run_hook passes it itself). Samples are independent, so adjusting a batch of P prompts x K
samples at once gives each sample what the official loop over single samples gives.
"""

import math

import torch

from ..diffusion import cfg_hook, classifier_free_guidance, predict_noise
from .detect import noise_magnitude
from .knobs import Knob
from .prss import threshold
from .rows import encode_rows, prompt_rows

TITLE = "initial-noise adjustment (Han et al.)"
KNOBS = (Knob("target", float, None, "target first-step magnitude (default: the calibrated lambda_ss)"),
         Knob("target_factor", float, 1.0, "multiply the target (the evaluation sweeps it)"),
         Knob("optim_lr", float, 0.01, "AdamW learning rate on x_T (per sample)"),
         Knob("optim_iters", int, 1000, "at most this many AdamW steps on x_T per sample"),
         Knob("batch_wise", bool, False, "the batch-wise variant: fixed steps (rho, gamma, adj_iters), no target, "
                                         "unconditional up to apply_cfg_step"),
         Knob("rho", float, None, "batch-wise: perturbation radius (default: the official 50, rescaled by "
                                  "sqrt(numel(x_T) / (4*64*64)))"),
         Knob("gamma", float, 0.7, "batch-wise: step size"),
         Knob("adj_iters", int, 2, "batch-wise: number of adjustment steps"),
         Knob("apply_cfg_step", int, 4, "batch-wise: unconditional for step indices <= this, CFG afterwards"))
SWEEP = [{}, {"target_factor": 0.5}, {"target_factor": 2.0}]
VARIANTS = [{"batch_wise": True}]
BASELINE = True
SD_LATENT_NUMEL = 4 * 64 * 64   # Stable Diffusion v1's latent, where the official rho = 50 was set


def first_step_loss(unet, x, t, cond, uncond):
    """l(x) = ||eps(x, t, e_p) - eps(x, t, e_0)||_2 per sample: (B,), differentiable in x (one UNet call on 2B).
    x: (B, C, H, W); cond, uncond: (B, L, D) or (1, L, D)."""
    eps_u, eps_c = predict_noise(unet, x, t, [uncond, cond])
    return noise_magnitude(eps_c, eps_u)


def adjust_per_sample(unet, cond, uncond, x_T, t, target, lr=0.01, max_iters=1000):
    """AdamW on each sample's x_T until its l(x_T) <= target (checked before every step), at most max_iters steps.

    cond: (B, L, D) or (1, L, D); uncond: (1, L, D); x_T: (B, C, H, W); t: int (the first timestep).
    Returns (x_adjusted (B, C, H, W), magnitudes: list of (B,), entry i = each sample's l after min(i, its
    steps) steps, steps (B,) long: the AdamW steps each sample took). A sample with l <= target at once is
    returned bit for bit."""
    if target < 0 or max_iters < 0 or lr < 0:
        raise ValueError(f"target, optim_lr and optim_iters must be >= 0, got target={target}, optim_lr={lr}, "
                         f"optim_iters={max_iters}")
    B = len(x_T)
    out = x_T.detach().clone()                                # (B, C, H, W): what each sample ends with
    m_out = torch.zeros(B, device=x_T.device)                 # (B,): its magnitude
    steps = torch.zeros(B, dtype=torch.long)
    active = torch.ones(B, dtype=torch.bool, device=x_T.device)
    rows_of = lambda c, rows: c if len(c) == 1 else c[rows]   # a (1, L, D) context serves every sample
    magnitudes = []
    with torch.enable_grad():                                 # the sampling loop runs under no_grad
        x = x_T.detach().clone().requires_grad_(True)         # (B, C, H, W): what AdamW moves
        optimizer = torch.optim.AdamW([x], lr=lr)             # default weight_decay=0.01, as the official code
        for it in range(max_iters + 1):
            # Only the samples still above the target are evaluated: each costs what it costs alone.
            rows = active.nonzero().squeeze(1)                                           # (A,)
            m = first_step_loss(unet, x[rows], t, rows_of(cond, rows), rows_of(uncond, rows))   # (A,)
            out[rows], m_out[rows], steps[rows.cpu()] = x.detach()[rows], m.detach(), it
            active[rows] = m.detach() > target                # the official stopping rule: l <= target
            magnitudes.append(m_out.clone())
            if not active.any() or it == max_iters:
                break
            # Samples are independent, so the sum gives each its own gradient; Adam's update is elementwise, so
            # one optimizer over the batch is one per sample (the finished ones move on, but are never read).
            # autograd.grad (not backward) differentiates w.r.t. x only: nothing accumulates in the frozen UNet.
            (x.grad,) = torch.autograd.grad(m[active[rows]].sum(), [x])
            optimizer.step()
    return out, magnitudes, steps


@torch.no_grad()
def adjust_batch_wise(unet, cond, uncond, x_T, t, rho, gamma=0.7, adj_iters=2):
    """adj_iters steps x <- x - gamma (eps~(x + rho eps~/||eps~||) - eps~(x)) on every sample; no gradients
    (two UNet calls on 2B samples per step). Shapes as adjust_per_sample. Returns x_adjusted (B, C, H, W)."""
    if rho < 0 or adj_iters < 0:
        raise ValueError(f"rho and adj_iters must be >= 0, got rho={rho}, adj_iters={adj_iters}")

    def guidance(x):                                          # eps~(x) = eps(x, e_p) - eps(x, e_0): (B, C, H, W)
        eps_u, eps_c = predict_noise(unet, x, t, [uncond, cond])
        return eps_c - eps_u

    x = x_T.clone()
    for _ in range(adj_iters):
        g = guidance(x)
        # the official code divides by ||eps~|| as is; an empty prompt has eps~ = 0, so keep the division finite
        delta = rho * g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (g.dim() - 1))
        x = x - gamma * (guidance(x + delta) - g)
    return x


def delayed_cfg_hook(unet, cond, uncond, guidance_scale, apply_cfg_step):
    """The unconditional prediction alone for step indices i <= apply_cfg_step, plain CFG afterwards."""
    def hook(x_t, t, i):
        if i <= apply_cfg_step:   # (the official code also computes the conditional branch here, unused)
            return predict_noise(unet, x_t, t, [uncond])[0]
        eps_u, eps_c = predict_noise(unet, x_t, t, [uncond, cond])
        return classifier_free_guidance(eps_u, eps_c, guidance_scale)
    return hook


def build(pipe, prompt, x_T, guidance_scale, seed, target, target_factor, optim_lr, optim_iters, batch_wise, rho,
          gamma, adj_iters, apply_cfg_step):
    """Adjust x_T at the detection timestep (the run's first step, where the target was calibrated), then guide
    from the adjusted x_T, which info["x_T"] holds: plain CFG (per sample), or CFG from apply_cfg_step on."""
    cond, B = encode_rows(pipe, prompt, len(x_T)), len(x_T)                             # (B, L, D)
    if batch_wise:
        rho = 50.0 * math.sqrt(x_T[0].numel() / SD_LATENT_NUMEL) if rho is None else rho
        x_adj = adjust_batch_wise(pipe.unet, cond, pipe.empty, x_T, pipe.detection_timestep, rho, gamma, adj_iters)
        info = {"rho": rho, "gamma": gamma, "adj_iters": adj_iters, "apply_cfg_step": apply_cfg_step,
                "triggered": [True] * B, "prompt": prompt_rows(prompt, B), "x_T": x_adj}
        return delayed_cfg_hook(pipe.unet, cond, pipe.empty, guidance_scale, apply_cfg_step), info
    target = threshold(pipe, "lambda_ss", target, target_factor, guidance_scale, knob="target")
    x_adj, magnitudes, steps = adjust_per_sample(pipe.unet, cond, pipe.empty, x_T, pipe.detection_timestep, target,
                                                 optim_lr, optim_iters)
    info = {"target": float(target), "iterations": len(magnitudes) - 1, "steps": steps.tolist(),
            "magnitude_before": magnitudes[0].tolist(), "magnitude_after": magnitudes[-1].tolist(),
            "triggered": (magnitudes[0] > target).tolist(), "prompt": prompt_rows(prompt, B), "x_T": x_adj}
    return cfg_hook(pipe.unet, cond, pipe.empty, guidance_scale), info
