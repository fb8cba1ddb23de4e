"""The diffusion training loss: what the UNet learns to predict, and how each noise level is weighted.

DDPM: Ho et al. 2020 (the eps loss, Algorithm 1). v-prediction: Salimans & Ho 2022 (Stable Diffusion 2).
CFG's caption dropout: Ho & Salimans 2022, sec. 3.2.
"""

import torch

from .diffusion import randn, add_noise, check_prediction_type


def v_target(x0, noise, t, schedule):
    """v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0 (Salimans & Ho 2022, "v-prediction"; Stable Diffusion 2)."""
    abar = schedule.alphas_cumprod.to(x0.device)[t].view(-1, 1, 1, 1)                  # (B, 1, 1, 1)
    return abar.sqrt() * noise - (1 - abar).sqrt() * x0


LOSS_WEIGHTINGS = ("uniform", "min_snr", "truncated_snr")


def loss_weights(t, schedule, prediction_type="epsilon", weighting="uniform", snr_gamma=5.0, snr_floor=0.2):
    """Per-sample weights (B,) of the squared error at timesteps t (B,), so that in x0 terms the loss weighs
    each step by a function of SNR_t = abar_t / (1 - abar_t):

        "uniform"        the plain loss: SNR_t for the eps loss, SNR_t + 1 for the v loss (DDPM's simple loss)
        "min_snr"        min(SNR_t, snr_gamma)   (Hang et al. 2023, "Efficient diffusion training via Min-SNR")
        "truncated_snr"  max(SNR_t, snr_floor)   (Salimans & Ho 2022's "truncated SNR"; they floor at 1)

    At the noisiest steps the error is mostly the irreducible spread of x0 given a caption (a whole background);
    with the v loss it outweighs the mid-noise detail that tells a triangle from a circle. "truncated_snr" keeps
    little weight there, but not none, so the first step still learns the memorized images."""
    if weighting not in LOSS_WEIGHTINGS:
        raise ValueError(f"unknown loss weighting {weighting!r}; use one of {LOSS_WEIGHTINGS}")
    if weighting == "uniform":
        return torch.ones(t.shape, device=t.device)
    abar = schedule.alphas_cumprod.to(t.device)[t]
    snr = abar / (1 - abar)                                                                  # (B,)
    target = snr.clamp(max=snr_gamma) if weighting == "min_snr" else snr.clamp(min=snr_floor)
    return target / (snr if prediction_type == "epsilon" else snr + 1)        # over the plain loss's own weight


def diffusion_loss(model, x0, context, null_context, schedule, cond_drop_prob=0.1, generator=None,
                   prediction_type="epsilon", weighting="uniform", snr_gamma=5.0, snr_floor=0.2):
    """Epsilon-prediction loss ||eps - eps_theta(x_t, t, c)||^2 (DDPM Algorithm 1, eq. 14), or, with
    prediction_type="v_prediction", ||v - v_theta(x_t, t, c)||^2: at high noise v is about -x0, so the network
    predicts the image itself where an eps error would be amplified 1 / sqrt(abar_t) times. Each sample's error is
    weighted by `loss_weights` (uniform: 1).

    With probability cond_drop_prob per sample (a float, or one (B,) probability per sample) the caption is replaced
    by the empty caption, so one network learns both eps(x, c) and eps(x, null) as CFG needs (Ho & Salimans
    sec. 3.2). x0: (B, C, H, W); context: (B, L, D); null_context: (1, L, D).
    """
    check_prediction_type(prediction_type)
    B, device = x0.shape[0], x0.device
    cond_drop_prob = torch.as_tensor(cond_drop_prob, dtype=torch.float32).expand(B)           # (B,)
    if not ((0 <= cond_drop_prob) & (cond_drop_prob <= 1)).all():
        raise ValueError(f"cond_drop_prob must be in [0, 1], got {cond_drop_prob.tolist()}")
    # All randomness on CPU from the explicit generator, so a seed reproduces across devices.
    t = torch.randint(0, schedule.num_train_timesteps, (B,), generator=generator).to(device)  # (B,)
    noise = randn(x0.shape, generator, device)                                               # (B, C, H, W)
    drop = (torch.rand(B, generator=generator) < cond_drop_prob).to(device)                   # (B,)
    context = torch.where(drop.view(B, 1, 1), null_context.expand_as(context), context)       # (B, L, D)
    x_t = add_noise(x0, noise, t, schedule)
    target = noise if prediction_type == "epsilon" else v_target(x0, noise, t, schedule)
    error = (model(x_t, t, context) - target).pow(2).flatten(1).mean(dim=1)                 # (B,)
    return (loss_weights(t, schedule, prediction_type, weighting, snr_gamma, snr_floor) * error).mean()
