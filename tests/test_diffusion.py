"""The executable spec of prss_mini/diffusion.py: one rule per test, named as the rule."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from prss_mini.diffusion import (
    NoiseSchedule, add_noise, cfg_hook, classifier_free_guidance, ddim_step, ddpm_step,
    predict_noise, predict_x0, sample, timesteps_for,
)

SHAPE = (2, 3, 4, 4)  # (B, C, H, W)


class ToyModel(nn.Module):
    """eps = 0.1 x + mean(context) + 0.001 t: deterministic, uses every input, counts its calls."""

    def __init__(self):
        super().__init__()
        self.calls, self.seen_contexts = 0, []

    def forward(self, x, t, context):
        self.calls += 1
        self.seen_contexts.append(context.clone())
        return 0.1 * x + context.mean(dim=(1, 2)).view(-1, 1, 1, 1) + 0.001 * t.view(-1, 1, 1, 1).float()


def toy_hook(x_t, t, i):
    return 0.1 * x_t + 0.01 * t


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ---- schedules ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["linear", "scaled_linear", "cosine"])
def test_every_schedule_has_betas_in_open_unit_interval_and_decreasing_alphas_cumprod(name):
    s = NoiseSchedule(1000, name)
    assert s.betas.dtype == torch.float32 and s.betas.shape == (1000,)
    assert (s.betas > 0).all() and (s.betas < 1).all()
    assert (s.alphas_cumprod[1:] < s.alphas_cumprod[:-1]).all()
    assert torch.allclose(s.alphas, 1 - s.betas)


def test_linear_schedule_endpoints_match_ddpm():
    s = NoiseSchedule(1000, "linear")
    assert s.betas[0].item() == pytest.approx(1e-4) and s.betas[-1].item() == pytest.approx(0.02)


def test_scaled_linear_schedule_endpoints_match_stable_diffusion():
    s = NoiseSchedule(1000, "scaled_linear")
    assert s.betas[0].item() == pytest.approx(0.00085) and s.betas[-1].item() == pytest.approx(0.012)


def test_cosine_schedule_is_f_t_over_f_0_and_clips_its_last_beta_at_0_999():
    """Nichol & Dhariwal eq. 17: abar = f(t)/f(0), f(u) = cos^2((u + 0.008)/1.008 pi/2), u = (index + 1)/T (index 0
    is the first noising step). Near u = 1, 1 - f(u)/f(u - 1/T) goes to 1: the last beta is clipped at 0.999."""
    T, s = 1000, NoiseSchedule(1000, "cosine")
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
    assert s.betas[-1].item() == pytest.approx(0.999)
    for t in (0, 100, 500, 900):  # no beta up to these is clipped, so their product is f's ratio
        assert s.alphas_cumprod[t].item() == pytest.approx(f((t + 1) / T) / f(0), rel=1e-5)


def test_unknown_schedule_or_too_few_timesteps_raises_naming_allowed_values():
    with pytest.raises(ValueError, match="scaled_linear"):
        NoiseSchedule(1000, "quadratic")
    with pytest.raises(ValueError, match=">= 2"):
        NoiseSchedule(1, "linear")


def test_schedule_to_returns_a_copy():
    s = NoiseSchedule(10)
    c = s.to("cpu")
    assert c is not s and torch.equal(c.alphas_cumprod, s.alphas_cumprod) and c.num_train_timesteps == 10


# ---- forward process (the training loss: test_training_loss.py) ------------------------------

def test_add_noise_is_sqrt_abar_t_x0_plus_sqrt_one_minus_abar_t_noise():
    """DDPM eq. 4 for a given noise tensor, each sample at its own t; abar_t = prod_{s <= t} (1 - beta_s) of the
    linear schedule (betas 1e-4 .. 0.02), computed here in float64 numpy."""
    s, t = NoiseSchedule(1000, "linear"), torch.tensor([0, 500, 999])
    x0, noise = torch.randn(3, 2, 2, 2, generator=gen(1)), torch.randn(3, 2, 2, 2, generator=gen(2))
    abar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))[[0, 500, 999]]
    assert abar[0] == pytest.approx(0.9999)                              # t = 0: one step of beta_1 = 1e-4
    expected = [a ** 0.5 * x0[b].double() + (1 - a) ** 0.5 * noise[b].double() for b, a in enumerate(abar)]
    x_t = add_noise(x0, noise, t, s)
    assert torch.allclose(x_t.double(), torch.stack(expected), atol=1e-5)


@pytest.mark.parametrize("t", [torch.tensor([3, 3, 3]), torch.tensor([[3], [3]]), torch.tensor(3)])
def test_add_noise_refuses_a_t_that_is_not_one_timestep_per_sample(t):
    x0 = torch.zeros(SHAPE)  # B = 2
    with pytest.raises(ValueError, match=r"t must be a \(B,\) long tensor with B=2, got shape"):
        add_noise(x0, torch.zeros(SHAPE), t, NoiseSchedule(1000))


# ---- single steps -------------------------------------------------------------------------

def test_ddim_step_with_eta_zero_is_sqrt_abar_prev_x0_hat_plus_sqrt_one_minus_abar_prev_eps():
    x, eps = torch.randn(SHAPE, generator=gen(1)), torch.randn(SHAPE, generator=gen(2))
    a_t, a_prev = 0.5, 0.7
    x0_hat = (x - (1 - a_t) ** 0.5 * eps) / a_t ** 0.5
    assert torch.allclose(ddim_step(x, eps, a_t, a_prev), a_prev ** 0.5 * x0_hat + (1 - a_prev) ** 0.5 * eps,
                          atol=1e-6)


def test_ddim_step_to_alpha_bar_one_with_the_true_eps_recovers_x0():
    s, x0, eps = NoiseSchedule(1000), torch.randn(SHAPE, generator=gen(1)), torch.randn(SHAPE, generator=gen(2))
    x_t = add_noise(x0, eps, torch.tensor([700, 700]), s)
    assert torch.allclose(ddim_step(x_t, eps, s.alphas_cumprod[700], 1.0), x0, atol=1e-5)


def test_ddim_step_to_alpha_bar_one_returns_predicted_x0():
    x, eps = torch.randn(SHAPE, generator=gen(1)), torch.randn(SHAPE, generator=gen(2))
    assert torch.equal(ddim_step(x, eps, 0.3, 1.0), predict_x0(x, eps, 0.3))
    noise = torch.randn(SHAPE, generator=gen(3))  # sigma is 0 on the last step, even with eta = 1
    assert torch.equal(ddim_step(x, eps, torch.tensor(0.3), 1.0, eta=1.0, noise=noise), predict_x0(x, eps, 0.3))


def test_predict_x0_inverts_add_noise():
    s, x0, noise = NoiseSchedule(1000), torch.randn(SHAPE, generator=gen(1)), torch.randn(SHAPE, generator=gen(2))
    x_t = add_noise(x0, noise, torch.tensor([400, 400]), s)
    assert torch.allclose(predict_x0(x_t, noise, s.alphas_cumprod[400]), x0, atol=1e-5)


def test_ddim_step_with_eta_positive_requires_noise():
    with pytest.raises(ValueError, match="noise"):
        ddim_step(torch.randn(SHAPE), torch.randn(SHAPE), 0.5, 0.7, eta=0.5)


def test_ddpm_step_requires_noise_except_at_t0():
    s = NoiseSchedule(20)
    with pytest.raises(ValueError, match="noise"):
        ddpm_step(torch.randn(SHAPE), torch.randn(SHAPE), 5, s)
    x, eps = torch.randn(SHAPE, generator=gen(1)), torch.randn(SHAPE, generator=gen(2))
    # t = 0 returns the posterior mean (x_t - beta_0 / sqrt(1 - abar_0) eps) / sqrt(alpha_0); there beta_0 = 1e-4,
    # alpha_0 = abar_0 = 0.9999, so the mean is (x_t - 0.01 eps) / sqrt(0.9999), and no noise is added
    assert torch.allclose(ddpm_step(x, eps, 0, s), (x - 0.01 * eps) / 0.9999 ** 0.5, atol=1e-5)  # float32 abar


def test_ddim_step_with_eta_between_zero_and_one_adds_eta_times_ddpm_sigma_of_noise():
    """sigma = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev) (DDIM eq. 16); x_prev =
    sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps + sigma noise. For eta = 0.5, abar_t = 0.5,
    abar_prev = 0.7: sigma = 0.5 sqrt(0.3 / 0.5) sqrt(1 - 5/7) = 0.5 sqrt(1.2 / 7) = 0.20702."""
    x, eps, noise = (torch.randn(SHAPE, generator=gen(k)) for k in (1, 2, 3))
    sigma = 0.20702
    x0_hat = (x - 0.5 ** 0.5 * eps) / 0.5 ** 0.5
    expected = 0.7 ** 0.5 * x0_hat + (1 - 0.7 - sigma ** 2) ** 0.5 * eps + sigma * noise
    assert torch.allclose(ddim_step(x, eps, 0.5, 0.7, eta=0.5, noise=noise), expected, atol=1e-4)


# ---- timesteps and the sampling loop ------------------------------------------------------

def test_timesteps_for_50_of_1000_runs_from_980_down_to_0():
    ts = timesteps_for(50, NoiseSchedule(1000))
    assert len(ts) == 50 and ts[0] == 980 and ts[1] == 960 and ts[-1] == 0


def test_timesteps_for_a_count_that_does_not_divide_1000_steps_by_its_floor_from_0():
    """step = 1000 // n, timesteps (n - 1) step, ..., step, 0: the top of the range is never visited (3 steps start
    at 666, 7 at 852, 30 at 957), as diffusers' "leading" spacing does."""
    s = NoiseSchedule(1000)
    assert timesteps_for(3, s) == [666, 333, 0]
    assert timesteps_for(7, s) == [852, 710, 568, 426, 284, 142, 0]
    assert timesteps_for(30, s) == list(range(957, -1, -33))


@pytest.mark.parametrize("n", [0, 1001])
def test_timesteps_for_out_of_range_raises(n):
    with pytest.raises(ValueError, match="num_inference_steps"):
        timesteps_for(n, NoiseSchedule(1000))


def test_sample_ddim_same_seed_gives_same_output_and_different_seed_differs():
    s = NoiseSchedule(100)
    a = sample(toy_hook, SHAPE, s, num_inference_steps=10, generator=gen(0))
    b = sample(toy_hook, SHAPE, s, num_inference_steps=10, generator=gen(0))
    c = sample(toy_hook, SHAPE, s, num_inference_steps=10, generator=gen(1))
    assert a.shape == SHAPE and torch.equal(a, b) and not torch.allclose(a, c)


def test_ddim_sampling_with_the_true_eps_of_a_fixed_x0_stays_on_its_noising_path_and_ends_at_x0():
    """x_T = add_noise(x0, eps, t_first); a hook that always answers eps: every x_t is add_noise(x0, eps, t)."""
    s, x0 = NoiseSchedule(1000, "scaled_linear"), torch.rand(SHAPE, generator=gen(1)) * 1.8 - 0.9
    eps, seen = torch.randn(SHAPE, generator=gen(2)), []

    def true_eps(x_t, t, i):
        seen.append((x_t.clone(), t))
        return eps

    ts = timesteps_for(10, s)
    out = sample(true_eps, SHAPE, s, num_inference_steps=10, x_T=add_noise(x0, eps, torch.tensor([ts[0]] * 2), s))
    assert [t for _, t in seen] == ts
    for x_t, t in seen:
        assert torch.allclose(x_t, add_noise(x0, eps, torch.tensor([t, t]), s), atol=1e-5)
    assert torch.allclose(out, x0, atol=1e-5)


def test_sample_calls_hook_with_int_timesteps_and_step_index():
    s, calls = NoiseSchedule(100), []

    def hook(x_t, t, i):
        calls.append((t, i))
        return torch.zeros_like(x_t)

    sample(hook, SHAPE, s, num_inference_steps=4, generator=gen())
    assert calls == [(75, 0), (50, 1), (25, 2), (0, 3)]


@pytest.mark.parametrize("clip_sample", [False, True])
def test_ddim_with_eta_one_over_all_steps_equals_ddpm(clip_sample):
    s = NoiseSchedule(20, "linear")
    ddim = sample(toy_hook, SHAPE, s, num_inference_steps=20, sampler="ddim", eta=1.0, generator=gen(7),
                  clip_sample=clip_sample)
    ddpm = sample(toy_hook, SHAPE, s, num_inference_steps=20, sampler="ddpm", generator=gen(7),
                  clip_sample=clip_sample)
    assert torch.allclose(ddim, ddpm, atol=1e-5)


def test_ddpm_with_fewer_steps_than_training_raises():
    with pytest.raises(ValueError, match="ddim"):
        sample(toy_hook, SHAPE, NoiseSchedule(20), num_inference_steps=10, sampler="ddpm")


def test_unknown_sampler_raises_naming_ddim_and_ddpm():
    with pytest.raises(ValueError, match="ddim.*ddpm"):
        sample(toy_hook, SHAPE, NoiseSchedule(20), sampler="euler")


def test_sample_starts_from_given_x_T():
    s, x_T = NoiseSchedule(20), torch.randn(SHAPE, generator=gen(4))
    a = sample(toy_hook, SHAPE, s, num_inference_steps=5, x_T=x_T)
    b = sample(toy_hook, SHAPE, s, num_inference_steps=5, generator=gen(4))  # same x_T from the same seed
    assert torch.equal(a, b)


def test_sample_refuses_an_x_T_of_another_shape_than_shape():
    with pytest.raises(ValueError, match=r"x_T has shape \(1, 3, 4, 4\) but shape=\(2, 3, 4, 4\)"):
        sample(toy_hook, SHAPE, NoiseSchedule(20), num_inference_steps=2, x_T=torch.zeros(1, 3, 4, 4))


def test_sample_refuses_a_hook_answer_of_another_shape_than_x_t():
    bad_hook = lambda x_t, t, i: x_t[:, :1]                                    # (2, 1, 4, 4)
    with pytest.raises(ValueError, match=r"guidance hook returned shape \(2, 1, 4, 4\), expected \(2, 3, 4, 4\)"):
        sample(bad_hook, SHAPE, NoiseSchedule(20), num_inference_steps=2, generator=gen())


# ---- classifier-free guidance -------------------------------------------------------------

def test_cfg_scale_one_is_conditional_and_scale_zero_is_unconditional():
    u, c = torch.randn(SHAPE, generator=gen(1)), torch.randn(SHAPE, generator=gen(2))
    assert torch.allclose(classifier_free_guidance(u, c, 1.0), c)
    assert torch.equal(classifier_free_guidance(u, c, 0.0), u)


def test_predict_noise_batched_equals_per_context_calls_in_one_forward():
    model, x = ToyModel(), torch.randn(SHAPE, generator=gen(1))
    contexts = [torch.randn(2, 5, 8, generator=gen(2)), torch.randn(1, 5, 8, generator=gen(3))]
    batched = predict_noise(model, x, 37, contexts)
    assert model.calls == 1
    t = torch.full((2,), 37, dtype=torch.long)
    for eps, ctx in zip(batched, contexts):
        assert torch.allclose(eps, model(x, t, ctx.expand(2, -1, -1)))


def test_cfg_hook_matches_manual_cfg_with_one_model_call_per_step():
    model, x = ToyModel(), torch.randn(SHAPE, generator=gen(1))
    cond, uncond = torch.randn(2, 5, 8, generator=gen(2)), torch.zeros(1, 5, 8)
    eps = cfg_hook(model, cond, uncond, guidance_scale=7.5)(x, 10, 0)
    assert model.calls == 1
    t = torch.full((2,), 10, dtype=torch.long)
    expected = classifier_free_guidance(model(x, t, uncond.expand(2, -1, -1)), model(x, t, cond), 7.5)
    assert torch.allclose(eps, expected, atol=1e-6)


def test_clip_sample_keeps_the_predicted_x0_in_the_data_range():
    x_t = torch.full((1, 3, 2, 2), 5.0)
    eps = torch.zeros_like(x_t)
    assert ddim_step(x_t, eps, 0.25, 1.0, clip_sample=True).max() == 1.0
    assert ddim_step(x_t, eps, 0.25, 1.0, clip_sample=False).max() == 10.0


def test_ddim_clip_sample_uses_the_eps_that_matches_the_clipped_x0():
    """x_prev = sqrt(abar_prev) x0c + sqrt(1 - abar_prev) (x_t - sqrt(abar_t) x0c) / sqrt(1 - abar_t), x0c clipped."""
    g = torch.Generator().manual_seed(0)
    x_t, eps = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g) * 3
    a_t, a_prev = 0.1, 0.3
    x0c = predict_x0(x_t, eps, a_t).clamp(-1, 1)
    expected = a_prev ** 0.5 * x0c + (1 - a_prev) ** 0.5 * (x_t - a_t ** 0.5 * x0c) / (1 - a_t) ** 0.5
    assert torch.allclose(ddim_step(x_t, eps, a_t, a_prev, clip_sample=True), expected, atol=1e-5)


def test_ddpm_clip_sample_equals_the_x0_form_posterior_mean():
    """With clipping, DDPM's mean is sqrt(abar_prev) beta_t / (1 - abar_t) x0 + sqrt(alpha_t)(1 - abar_prev)/(1 - abar_t) x_t."""
    s = NoiseSchedule(20)
    t = 10
    g = torch.Generator().manual_seed(0)
    x_t, eps = torch.randn(2, 3, 4, 4, generator=g) * 3, torch.randn(2, 3, 4, 4, generator=g)
    a_t, a_prev, b_t, al_t = (float(v) for v in (s.alphas_cumprod[t], s.alphas_cumprod[t - 1], s.betas[t], s.alphas[t]))
    x0 = predict_x0(x_t, eps, a_t).clamp(-1, 1)
    mean = a_prev ** 0.5 * b_t / (1 - a_t) * x0 + al_t ** 0.5 * (1 - a_prev) / (1 - a_t) * x_t
    out = ddpm_step(x_t, eps, t, s, noise=torch.zeros_like(x_t), clip_sample=True)
    assert torch.allclose(out, mean, atol=1e-5)
