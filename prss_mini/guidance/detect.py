"""Memorization detection by the magnitude of text-conditional noise predictions (Wen et al., ICLR 2024).

    m_t = || eps(x_t, e_p) - eps(x_t, e_0) ||_2          (per sample, over the whole image tensor)

A memorized prompt pulls the prediction far from the unconditional one, already at the first sampling step.
"""

import torch

from ..diffusion import classifier_free_guidance, predict_noise
from ..images import tensor_to_images


def noise_magnitude(eps_cond, eps_uncond):
    """Per-sample L2 norm of eps_cond - eps_uncond: (B, C, H, W) x 2 -> (B,)."""
    if eps_cond.shape != eps_uncond.shape:
        raise ValueError(f"eps_cond {tuple(eps_cond.shape)} and eps_uncond {tuple(eps_uncond.shape)} differ in shape")
    return (eps_cond - eps_uncond).flatten(1).norm(dim=1)


@torch.no_grad()
def first_step_magnitude(pipe, contexts, x_T):
    """m at the detection timestep (the first step of the run's default schedule) for each context on each x_T.

    contexts: (P, L, D) prompt embeddings; x_T: (B, C, H, W). Returns (P, B): row p is prompt p on every x_T.
    One batched UNet call on (P + 1) * B samples (the extra one for the empty prompt)."""
    eps = predict_noise(pipe.unet, x_T, pipe.detection_timestep, [pipe.empty] + [c[None] for c in contexts])
    return torch.stack([noise_magnitude(e, eps[0]) for e in eps[1:]])                     # (P, B)


@torch.no_grad()
def magnitude_trace(pipe, prompt_contexts, x_T, num_steps=None, return_images=False, guidance_scale=None):
    """m_t at every step of plain-CFG DDIM sampling: (B, steps), noisiest step first, one curve per sample.

    prompt_contexts: (B, L, D) or (1, L, D) prompt embeddings; x_T: (B, C, H, W). num_steps and guidance_scale
    default to the run's (config). With return_images, also the images the sampling ended at
    (uint8 (B, H, W, 3)), so a check of the physics sees its own samples."""
    s = pipe.config.guidance_scale if guidance_scale is None else guidance_scale
    trace = []

    def hook(x_t, t, i):
        eps_u, eps_c = predict_noise(pipe.unet, x_t, t, [pipe.empty, prompt_contexts])
        trace.append(noise_magnitude(eps_c, eps_u))
        return classifier_free_guidance(eps_u, eps_c, s)

    x_0 = pipe.run_hook(hook, x_T, num_steps)
    trace = torch.stack(trace, dim=1)                                                      # (B, steps)
    return (trace, tensor_to_images(x_0)) if return_images else trace


def plateau_steps(num_steps):
    """The middle of a trajectory, slice(20%, 80%) of the steps (steps 10-39 of 50), where Stable Diffusion's m_t of
    a clean prompt sits on a flat plateau; and the last 10% of the steps (the last 5 of 50): (middle, last)."""
    return slice(round(0.2 * num_steps), round(0.8 * num_steps)), slice(num_steps - max(1, round(0.1 * num_steps)),
                                                                      num_steps)


def detection_score(pipe, prompts, seeds=(0,), num_images=1):
    """The first-step detection score of each prompt, averaged over `num_images` x_T per seed: (P,) tensor."""
    contexts = pipe.encode(prompts)
    scores = [first_step_magnitude(pipe, contexts, pipe.initial_noise(num_images, s)).mean(dim=1) for s in seeds]
    return torch.stack(scores).mean(dim=0)
