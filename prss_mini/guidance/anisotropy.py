"""Memorization detection by the anisotropy of the log-probability (Asthana & Belagiannis, "Detecting and Mitigating
Memorization in Diffusion Models through Anisotropy of the Log-Probability", ICLR 2026).

Wen et al.'s magnitude (detect.py) measures the norm of the guidance vector, which separates memorized prompts
where log p is isotropic (high noise). At low noise it is anisotropic, and there memorized prompts show another
sign: the guidance vector points along the unconditional score. The score adds both, computed on the same pure
noise x_T ~ N(0, I) with no denoising step (two UNet calls per prompt at each of two timesteps):

    A(p) = gamma_1 || eps(x_T, t_1, e_p) - eps(x_T, t_1, e_0) ||_2                          (the isotropic norm)
         + gamma_2 mean_pixels cos_c( eps(x_T, t_c, e_0), eps(x_T, t_c, e_p) - eps(x_T, t_c, e_0) )   (alignment)

cos_c is the cosine over the channels at each pixel (torch's cosine_similarity along dim 1), averaged over the
pixels. The scores are s = -eps / sigma_t, so the cosine of the unconditional score with the guidance vector
(the scores' difference) is this cosine of the eps, sign included.

The official code (github.com/rohanasthana/memorization-anisotropy: local_model/pipe.py, the detection branch of
`__call__`; detect_mem.py; detect_eval.py for the weights), for Stable Diffusion v1 (eps-prediction) with its
defaults (mode "x,c|x", no normalization, one sampling step, DDIM 50 steps):
    t_1    the sampler's first timestep, timesteps[0] (981 of 1000);
    t_c    timesteps[-3] of the same 50-step schedule (leading, steps_offset 1: 981, ..., 41, 21, 1), i.e. t = 41,
           evaluated on the same pure-noise latent, not on a denoised one;
    norm   per image over the whole latent, then the mean over the prompt's images; the cosine the same way;
    gamma  (1, 2) for SD v1.4 (SD v2: (1, 0.1); Realistic Vision: (2, 1)).
Here: t_1 is the detection timestep of detect.py (the run's first step), so the norm term is exactly Wen's
first-step magnitude; t_c is the toy timestep with the noise level of SD's t = 41 (the nearest abar_t to Stable
Diffusion's, on SD's scaled_linear schedule: 41 itself for the toy's default schedule). The weights default to
SD v1.4's; the norm is in the toy's units, which are not SD's (calibrate the weights on the toy, or combine the
two terms of `anisotropy_terms` yourself). `anisotropy_terms_at` is the same math on any unet(x, t, context) -> eps:
sd_after_prss.anisotropy_score_sd runs it on diffusers' UNet at SD's own t_1 and t_c.
"""

import torch
import torch.nn.functional as F

from ..diffusion import NoiseSchedule, predict_noise
from .detect import noise_magnitude

SD_COSINE_TIMESTEP = 41          # timesteps[-3] of SD's 50-step DDIM schedule, where the official cosine is taken
SD_V1_WEIGHTS = (1.0, 2.0)       # (gamma_1, gamma_2): detect_eval.py, SD v1.4


def cosine_timestep(schedule):
    """The timestep of `schedule` whose abar_t is nearest Stable Diffusion's at SD_COSINE_TIMESTEP."""
    sd = NoiseSchedule(1000, "scaled_linear").alphas_cumprod[SD_COSINE_TIMESTEP]
    return int((schedule.alphas_cumprod.cpu() - sd).abs().argmin())


def channel_cosine(a, b):
    """Mean over the pixels of the cosine between a and b along the channels: (B, C, H, W) x 2 -> (B,)."""
    return F.cosine_similarity(a, b, dim=1).flatten(1).mean(dim=1)


@torch.no_grad()
def anisotropy_terms_at(unet, empty, contexts, x_T, t_norm, t_cosine):
    """The two terms of A on any unet(x, t, context) -> eps: (norm (P, B) at t_norm, cosine (P, B) at t_cosine).

    empty: (1, L, D) the empty prompt; contexts: (P, L, D); x_T: (B, C, H, W). One batched UNet call on (P + 1) * B
    samples at each of the two timesteps (the extra one for the empty prompt)."""
    every = [empty] + [c[None] for c in contexts]
    eps = predict_noise(unet, x_T, t_norm, every)                                       # P + 1 x (B, C, H, W)
    norm = torch.stack([noise_magnitude(e, eps[0]) for e in eps[1:]])                   # (P, B)
    eps = predict_noise(unet, x_T, t_cosine, every)
    cosine = torch.stack([channel_cosine(eps[0], e - eps[0]) for e in eps[1:]])         # (P, B)
    return norm, cosine


def anisotropy_terms(pipe, contexts, x_T):
    """The two terms of A for each context on each pure-noise x_T: (norm (P, B), cosine (P, B)), at the run's
    detection timestep and the toy's counterpart of SD's t = 41."""
    return anisotropy_terms_at(pipe.unet, pipe.empty, contexts, x_T, pipe.detection_timestep,
                               cosine_timestep(pipe.schedule))


def combine(norm, cosine, weights=SD_V1_WEIGHTS):
    """A = gamma_1 norm + gamma_2 cosine, each averaged over the x_T: (P, B) x 2 -> (P,)."""
    return weights[0] * norm.mean(dim=1) + weights[1] * cosine.mean(dim=1)


def anisotropy_score(pipe, prompts, seeds=(0,), num_images=1, weights=SD_V1_WEIGHTS):
    """A of each prompt, averaged over `num_images` x_T per seed like detect.detection_score: (P,) tensor."""
    contexts = pipe.encode(prompts)
    scores = [combine(*anisotropy_terms(pipe, contexts, pipe.initial_noise(num_images, s)), weights) for s in seeds]
    return torch.stack(scores).mean(dim=0)
