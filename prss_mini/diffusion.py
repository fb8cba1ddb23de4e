"""The diffusion process: noise schedules, the forward noising, one sampling loop (the training loss: loss.py).

DDPM: Ho et al. 2020, "Denoising Diffusion Probabilistic Models" (training loss, ancestral step).
DDIM: Song et al. 2021, "Denoising Diffusion Implicit Models" (few-step sampler, eq. 12).
CFG:  Ho & Salimans 2022, "Classifier-Free Diffusion Guidance".

The sampling loop knows nothing about prompts. It asks a *guidance hook*
`guidance(x_t, t, i) -> eps_hat` for the noise prediction at every step (the cond_fn
idea of openai/guided-diffusion), so CFG, PRSS and the baselines all plug into the same
loop. Names follow diffusers (alphas_cumprod, add_noise, pred_original_sample, ...).
"""
import math

import torch
from tqdm.auto import tqdm

SCHEDULES = ("linear", "scaled_linear", "cosine")
SAMPLERS = ("ddim", "ddpm")
TIMESTEP_SPACINGS = ("leading", "trailing")  # which timesteps a few-step sampler visits (timesteps_for)


class NoiseSchedule:
    """beta_1..beta_T and the derived alpha_t = 1 - beta_t, abar_t = prod_{s<=t} alpha_s (DDPM sec. 2)."""

    def __init__(self, num_train_timesteps=1000, beta_schedule="linear", timestep_spacing="leading", steps_offset=0):
        _check_schedule(num_train_timesteps, beta_schedule, timestep_spacing, steps_offset)
        T = num_train_timesteps
        if beta_schedule == "linear":  # DDPM's choice
            betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
        elif beta_schedule == "scaled_linear":  # Stable Diffusion's choice
            betas = torch.linspace(0.00085**0.5, 0.012**0.5, T, dtype=torch.float64) ** 2
        else:  # Nichol & Dhariwal 2021, eq. 17: abar(t) = f(t)/f(0), f(t) = cos^2(((t/T + s)/(1 + s)) pi/2)
            f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
            # beta_t = 1 - abar_t / abar_{t-1}, clipped so the last steps do not blow up to 1
            betas = torch.tensor([min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)],
                                 dtype=torch.float64)
        self.num_train_timesteps = T
        self.beta_schedule = beta_schedule
        # the sampler's grid lives with the schedule (as in a diffusers scheduler's config), so the sampler, the
        # detector and every guidance method visit the same timesteps
        self.timestep_spacing, self.steps_offset = timestep_spacing, steps_offset
        self.betas = betas.float()                                     # (T,)
        self.alphas = (1.0 - betas).float()                            # (T,)
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0).float()  # (T,) float64 product, then cast

    def to(self, device):
        """A copy of this schedule with its tensors on `device`."""
        new = NoiseSchedule.__new__(NoiseSchedule)
        new.__dict__.update(self.__dict__)
        for name in ("betas", "alphas", "alphas_cumprod"):
            setattr(new, name, getattr(self, name).to(device))
        return new

    def __repr__(self):
        return (f"NoiseSchedule(num_train_timesteps={self.num_train_timesteps}, beta_schedule={self.beta_schedule!r}, "
                f"timestep_spacing={self.timestep_spacing!r}, steps_offset={self.steps_offset})")


def randn(shape, generator, device):
    # Draw on CPU with the generator, then move: the same seed gives the same numbers on any device.
    return torch.randn(shape, generator=generator).to(device)


def add_noise(x0, noise, t, schedule):
    """Forward process q(x_t | x_0) in closed form (DDPM eq. 4): sqrt(abar_t) x0 + sqrt(1 - abar_t) noise.

    x0, noise: (B, C, H, W); t: (B,) long. Returns x_t with the shape of x0.
    """
    if t.dim() != 1 or t.shape[0] != x0.shape[0]:
        raise ValueError(f"t must be a (B,) long tensor with B={x0.shape[0]}, got shape {tuple(t.shape)}")
    abar = schedule.alphas_cumprod.to(x0.device)[t].view(-1, *[1] * (x0.dim() - 1))  # (B, 1, 1, 1)
    return abar.sqrt() * x0 + (1 - abar).sqrt() * noise


PREDICTION_TYPES = ("epsilon", "v_prediction")


class EpsilonModel(torch.nn.Module):
    """Wraps a v-predicting network so that it returns eps: eps = sqrt(abar_t) v + sqrt(1 - abar_t) x_t.

    Sampling and every guidance method work on eps, whatever the network was trained to predict."""

    def __init__(self, model, schedule):
        super().__init__()
        self.model, self.schedule = model, schedule

    def forward(self, x_t, t, context):
        abar = self.schedule.alphas_cumprod.to(x_t.device)[t].view(-1, 1, 1, 1)          # (B, 1, 1, 1)
        return abar.sqrt() * self.model(x_t, t, context) + (1 - abar).sqrt() * x_t


def as_epsilon_model(model, prediction_type, schedule):
    """The network as an eps predictor, whatever it was trained to predict."""
    check_prediction_type(prediction_type)
    return EpsilonModel(model, schedule) if prediction_type == "v_prediction" else model


def predict_x0(x_t, eps, alpha_bar_t):
    """pred_original_sample = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t): DDPM eq. 4 solved for x0."""
    alpha_bar_t = torch.as_tensor(alpha_bar_t, dtype=x_t.dtype, device=x_t.device)
    return (x_t - (1 - alpha_bar_t).sqrt() * eps) / alpha_bar_t.sqrt()


def ddim_step(x_t, eps, alpha_bar_t, alpha_bar_prev, eta=0.0, noise=None, clip_sample=False):
    """One DDIM update x_t -> x_prev (Song et al. 2021, eq. 12); eta=0 is deterministic, eta=1 is DDPM.

        code               paper
        alpha_bar_t        alpha_t        (DDIM writes abar as alpha)
        alpha_bar_prev     alpha_{t-1}
        eps                eps_theta^(t)(x_t)
        pred_original      "predicted x_0"
        std_dev_t          sigma_t        (eq. 16, scaled by eta)
        pred_direction     "direction pointing to x_t"
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0 (0 = DDIM, 1 = DDPM-like), got {eta}")
    if eta > 0 and noise is None:
        raise ValueError("eta > 0 adds fresh noise: pass noise=torch.randn_like(x_t)")
    a_t = torch.as_tensor(alpha_bar_t, dtype=x_t.dtype, device=x_t.device)
    a_prev = torch.as_tensor(alpha_bar_prev, dtype=x_t.dtype, device=x_t.device)
    # 1. predicted x0; pixel-space models clip it to the data range [-1, 1] (diffusers: clip_sample), because
    #    at high noise it is x_t / sqrt(abar_t) ~ 15x the prediction error and would carry that into x_prev
    pred_original = predict_x0(x_t, eps, a_t)
    if clip_sample:
        pred_original = pred_original.clamp(-1, 1)
        # ... and use the eps that matches the clipped x0 (diffusers: use_clipped_model_output=True). With the
        # raw eps, a guided x0 beyond [-1, 1] is clipped in one term but not in the other, and x_prev is pushed
        # towards the opposite colour: guided copies turn into noise.
        eps = (x_t - a_t.sqrt() * pred_original) / (1 - a_t).sqrt()
    # 2. sigma_t; zero when a_prev = 1, so the last step returns pred_original exactly
    std_dev_t = eta * ((1 - a_prev) / (1 - a_t)).sqrt() * (1 - a_t / a_prev).sqrt()
    # 3. direction pointing to x_t (clamp: rounding can make the radicand a hair below 0)
    pred_direction = (1 - a_prev - std_dev_t**2).clamp(min=0).sqrt() * eps
    # 4. x_{t-1} without noise
    prev_sample = a_prev.sqrt() * pred_original + pred_direction
    # 5. add noise
    if eta > 0:
        prev_sample = prev_sample + std_dev_t * noise
    return prev_sample


def ddpm_step(x_t, eps, t, schedule, noise=None, clip_sample=False):
    """One ancestral DDPM update x_t -> x_{t-1} (Ho et al. 2020, Algorithm 2 / eq. 11).

    mu = (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t); variance beta_tilde_t =
    (1 - abar_{t-1}) / (1 - abar_t) beta_t (eq. 7, the "fixed small" choice). t is a python int.
    """
    T = schedule.num_train_timesteps
    if not 0 <= t < T:
        raise ValueError(f"t must be an int in [0, {T}), got {t}")
    if t > 0 and noise is None:
        raise ValueError(f"ddpm_step at t={t} > 0 adds noise: pass noise=torch.randn_like(x_t)")
    beta_t, alpha_t, a_t = (float(v[t]) for v in (schedule.betas, schedule.alphas, schedule.alphas_cumprod))
    a_prev = float(schedule.alphas_cumprod[t - 1]) if t > 0 else 1.0
    if clip_sample:  # the eps that matches the clipped x0: the same as diffusers' x0-form posterior mean
        x0 = predict_x0(x_t, eps, a_t).clamp(-1, 1)
        eps = (x_t - math.sqrt(a_t) * x0) / math.sqrt(1 - a_t)
    prev_sample = (x_t - beta_t / math.sqrt(1 - a_t) * eps) / math.sqrt(alpha_t)
    if t > 0:  # no noise on the final step, x_0 is the mean
        variance = (1 - a_prev) / (1 - a_t) * beta_t
        prev_sample = prev_sample + math.sqrt(variance) * noise
    return prev_sample


def timesteps_for(num_inference_steps, schedule):
    """The timesteps visited by the sampler, noisiest first, by the schedule's spacing (diffusers' names):

        "leading"   step = T // n; [i * step + steps_offset for i < n] reversed.
                    50 of 1000 -> [980, 960, ..., 20, 0]; Stable Diffusion's steps_offset = 1 -> [981, ..., 1]
        "trailing"  [round(T - i * T / n) - 1 for i < n]: 50 of 1000 -> [999, 979, ..., 39, 19]

    It matters at the end: a cond-vs-uncond gap in the predicted x0 shows in m_t times sqrt(abar_t / (1 - abar_t)),
    about 34 at t = 0, 24 at t = 1 and 7.5 at t = 19 on the scaled_linear schedule. "trailing" also starts at the
    noisiest timestep (Lin et al. 2024, "Common diffusion noise schedules and sample steps are flawed").

    "leading" with a steps_offset can push the first timestep past T - 1 (all 1000 of 1000 steps with offset 1 would
    start at t = 1000). That is a ValueError: diffusers' set_timesteps returns t = 1000 there and its first step
    fails with an IndexError, and clamping it to T - 1 would visit t = 999 twice. No timestep is ever visited twice."""
    T, n, offset = schedule.num_train_timesteps, num_inference_steps, schedule.steps_offset
    if not 1 <= n <= T:
        raise ValueError(f"num_inference_steps must be in [1, {T}] (num_train_timesteps), got {n}")
    if schedule.timestep_spacing == "trailing":
        return [int(round(T - i * T / n)) - 1 for i in range(n)]
    step = T // n
    if (n - 1) * step + offset > T - 1:
        fits = max(k for k in range(1, n) if (k - 1) * (T // k) + offset <= T - 1)  # k = 1 always fits (offset < T)
        raise ValueError(f"num_inference_steps={n} with timestep_spacing='leading' and steps_offset={offset} would "
                         f"start at t = {(n - 1) * step + offset}, past the last trained timestep {T - 1}: use "
                         f"steps_offset <= {T - 1 - (n - 1) * step}, timestep_spacing='trailing', or at most "
                         f"num_inference_steps={fits}")
    return [i * step + offset for i in range(n)][::-1]


def sample(guidance, shape, schedule, num_inference_steps=50, sampler="ddim", eta=0.0,
           generator=None, x_T=None, device="cpu", progress=False, clip_sample=True):
    """Run the reverse process from x_T ~ N(0, I) to x_0 and return x_0, shape (B, C, H, W).

    guidance(x_t, t, i) -> eps_hat is called once per step (t: int timestep, i: step index,
    0 = noisiest). The loop runs under no_grad; a hook that needs gradients uses enable_grad.
    sampler "ddim" (eq. 12, any number of steps) or "ddpm" (Algorithm 2, all T steps).
    """
    _check_sample(sampler, num_inference_steps, schedule, shape, x_T)
    timesteps = timesteps_for(num_inference_steps, schedule)
    x = randn(shape, generator, device) if x_T is None else x_T.to(device).clone()  # x_T: (B, C, H, W)
    alphas_cumprod = schedule.alphas_cumprod

    with torch.no_grad():
        for i, t in enumerate(tqdm(timesteps, desc=f"{sampler} sampling", disable=not progress)):
            eps = guidance(x, t, i)
            _check_guidance_output(eps, x)
            if sampler == "ddpm":
                noise = randn(shape, generator, device) if t > 0 else None
                x = ddpm_step(x, eps, t, schedule, noise, clip_sample)
            else:
                # the last step goes to abar = 1, i.e. returns the predicted x0 (diffusers: set_alpha_to_one)
                alpha_bar_prev = float(alphas_cumprod[timesteps[i + 1]]) if i + 1 < len(timesteps) else 1.0
                noise = randn(shape, generator, device) if eta > 0 else None
                x = ddim_step(x, eps, float(alphas_cumprod[t]), alpha_bar_prev, eta, noise, clip_sample)
    return x


def classifier_free_guidance(eps_uncond, eps_cond, guidance_scale):
    """eps_hat = eps_uncond + s (eps_cond - eps_uncond) (Ho & Salimans 2022, eq. 6 rewritten).

    s = 0 is the unconditional model, s = 1 the conditional one, s > 1 pushes towards the prompt.
    """
    return eps_uncond + guidance_scale * (eps_cond - eps_uncond)


def predict_noise(model, x_t, t, contexts):
    """eps_theta(x_t, t, c) for k contexts in ONE forward pass on k*B samples; returns a list of k eps.

    x_t: (B, C, H, W); t: int, 0-dim or (B,) tensor; contexts: list of (B, L, D) or (1, L, D).
    """
    B, k = x_t.shape[0], len(contexts)
    for j, c in enumerate(contexts):
        if c.dim() != 3 or c.shape[0] not in (1, B):
            raise ValueError(f"contexts[{j}] must be (B, L, D) or (1, L, D) with B={B}, got {tuple(c.shape)}")
    t = torch.as_tensor(t, dtype=torch.long, device=x_t.device).expand(B)        # (B,)
    x_in = torch.cat([x_t] * k)                                                  # (k*B, C, H, W)
    t_in = t.repeat(k)                                                           # (k*B,)
    c_in = torch.cat([c.expand(B, -1, -1) for c in contexts])                    # (k*B, L, D)
    return list(model(x_in, t_in, c_in).chunk(k))                                # k x (B, C, H, W)


def cfg_hook(model, cond, uncond, guidance_scale):
    """A guidance hook for sample() doing classifier-free guidance with one batched forward per step.

    cond: (B, L, D) prompt embeddings; uncond: (1, L, D) or (B, L, D) empty-prompt embeddings.
    """
    def guidance(x_t, t, i):
        eps_uncond, eps_cond = predict_noise(model, x_t, t, [uncond, cond])
        return classifier_free_guidance(eps_uncond, eps_cond, guidance_scale)
    return guidance


# ----------------------------------------------------------------------------------------------------------
# Input checks, kept out of the way of the math above: each raises a ValueError that names the bad value


def check_beta_schedule(beta_schedule):
    """beta_schedule must be one of SCHEDULES (config._check calls this too)."""
    if beta_schedule not in SCHEDULES:
        raise ValueError(f"unknown beta_schedule {beta_schedule!r}; use one of {SCHEDULES}")


def check_prediction_type(prediction_type):
    """prediction_type must be one of PREDICTION_TYPES (config._check calls this too)."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"unknown prediction_type {prediction_type!r}; use one of {PREDICTION_TYPES}")


def _check_schedule(num_train_timesteps, beta_schedule, timestep_spacing, steps_offset):
    """NoiseSchedule's arguments: a known schedule and spacing, T >= 2 timesteps, 0 <= steps_offset < T."""
    T = num_train_timesteps
    check_beta_schedule(beta_schedule)
    if not isinstance(T, int) or T < 2:
        raise ValueError(f"num_train_timesteps must be an int >= 2, got {T!r}")
    if timestep_spacing not in TIMESTEP_SPACINGS:
        raise ValueError(f"unknown timestep_spacing {timestep_spacing!r}; use one of {TIMESTEP_SPACINGS}")
    if not isinstance(steps_offset, int) or not 0 <= steps_offset < T:
        raise ValueError(f"steps_offset must be an int in [0, {T}), got {steps_offset!r}")


def _check_sample(sampler, num_inference_steps, schedule, shape, x_T):
    """sample's arguments: a known sampler (ddpm on all T steps), a grid the schedule can visit, x_T of `shape`."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; use 'ddim' or 'ddpm'")
    if sampler == "ddpm" and num_inference_steps != schedule.num_train_timesteps:
        raise ValueError(f"ddpm needs num_inference_steps == num_train_timesteps "
                         f"({schedule.num_train_timesteps}), got {num_inference_steps}; use sampler='ddim' for "
                         f"fewer steps")
    timesteps_for(num_inference_steps, schedule)  # raises on a grid the schedule cannot visit
    if x_T is not None and tuple(x_T.shape) != tuple(shape):
        raise ValueError(f"x_T has shape {tuple(x_T.shape)} but shape={tuple(shape)}")


def _check_guidance_output(eps, x):
    """A guidance hook must return one eps per value of x_t."""
    if eps.shape != x.shape:
        raise ValueError(f"guidance hook returned shape {tuple(eps.shape)}, expected {tuple(x.shape)}")
