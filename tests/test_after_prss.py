"""Methods published after PRSS: Han et al.'s initial-noise adjustment (NeurIPS 2025, guidance/init_noise.py) and
Asthana et al.'s anisotropy detection score (ICLR 2026, guidance/anisotropy.py), each checked against a hand
computation of what its official code computes."""

import math

import numpy as np
import pytest
import torch

from prss_mini import sample
from prss_mini.diffusion import cfg_hook, predict_noise
from prss_mini.guidance import METHODS, build_hook
from prss_mini.guidance.anisotropy import anisotropy_score, cosine_timestep
from prss_mini.guidance.detect import detection_score, first_step_magnitude
from prss_mini.guidance.init_noise import adjust_batch_wise, adjust_per_sample
from prss_mini.images import tensor_to_images

PROMPT = "a red circle in the top left"
PROMPTS = ["a red circle in the top left", "a blue square in the bottom right"]


def magnitudes(pipe, prompt, x_T):
    """The first-step magnitude of each sample of x_T with `prompt`: (B,)."""
    return first_step_magnitude(pipe, pipe.encode([prompt]), x_T)[0]


# ---------------------------------------------------------------------------------------------------------------
# init_noise: per sample


def test_init_noise_lowers_each_sample_to_the_target_within_the_steps(random_pipe):
    x_T = random_pipe.initial_noise(3, 0)
    target = 0.8 * float(magnitudes(random_pipe, PROMPT, x_T).min())          # below every sample: all move
    _, info = build_hook("init_noise", random_pipe, PROMPT, x_T, 2.0, target=target, optim_lr=0.05, optim_iters=50)
    after = magnitudes(random_pipe, PROMPT, info["x_T"])
    assert (after <= target).all() and all(0 < s <= 50 for s in info["steps"])
    assert after.tolist() == pytest.approx(info["magnitude_after"], abs=1e-5)
    assert info["triggered"] == [True] * 3 and not torch.equal(info["x_T"], x_T)


def test_init_noise_keeps_the_x_T_of_samples_already_at_the_target_bit_for_bit(random_pipe):
    x_T = random_pipe.initial_noise(4, 1)
    m = magnitudes(random_pipe, PROMPT, x_T)
    target = float(m.median())                                                 # some below, some above
    below = m <= target
    assert below.any() and (~below).any()
    out, mags, steps = adjust_per_sample(random_pipe.unet, random_pipe.encode([PROMPT]), random_pipe.empty, x_T,
                                         random_pipe.detection_timestep, target, lr=0.05, max_iters=50)
    assert torch.equal(out[below], x_T[below]) and (steps[below] == 0).all()
    assert (mags[-1] <= target).all() and (steps[~below] > 0).all()
    # all untouched: plain CFG's images, bit for bit
    cfg = random_pipe.generate(PROMPT, method="cfg", num_images=2, seed=3, num_inference_steps=5)
    images, info = random_pipe.generate(PROMPT, method="init_noise", num_images=2, seed=3, num_inference_steps=5,
                                        return_info=True, target=1e9)
    assert np.array_equal(images, cfg) and info["steps"] == [0, 0] and info["triggered"] == [False, False]


def test_init_noise_step_is_adamw_on_x_T_with_the_norm_as_loss(random_pipe):
    """One AdamW step from x with gradient g of l = ||eps_c - eps_u|| (the norm, not squared):
    x1 = x (1 - lr * 0.01) - lr * g / (|g| + 1e-8) (bias-corrected first step, default weight decay 0.01)."""
    x_T, cond, uncond, t, lr = random_pipe.initial_noise(2, 2), random_pipe.encode([PROMPT]), random_pipe.empty, \
        random_pipe.detection_timestep, 0.01
    out, _, steps = adjust_per_sample(random_pipe.unet, cond, uncond, x_T, t, target=0.0, lr=lr, max_iters=1)
    assert steps.tolist() == [1, 1]
    x = x_T.clone().requires_grad_(True)
    with torch.enable_grad():       # one UNet call on [x; x] with [e_0; e_p], as the sampling loop batches it
        eps_u, eps_c = random_pipe.unet(torch.cat([x, x]), torch.full((4,), t),
                                        torch.cat([uncond.expand(2, -1, -1), cond.expand(2, -1, -1)])).chunk(2)
        loss = (eps_c - eps_u).flatten(1).norm(dim=1)                                     # (2,)
        (g,) = torch.autograd.grad(loss.sum(), [x])
    by_hand = x_T * (1 - lr * 0.01) - lr * g / (g.abs() + 1e-8)
    assert torch.allclose(out, by_hand, atol=1e-6)
    for b in range(2):   # each sample as the official loop, alone: the same step (up to rounding where g ~ 1e-8)
        alone, _, _ = adjust_per_sample(random_pipe.unet, cond, uncond, x_T[b:b + 1], t, target=0.0, lr=lr,
                                        max_iters=1)
        assert torch.allclose(alone, out[b:b + 1], atol=1e-4)


def test_init_noise_stops_at_the_first_iterate_at_or_below_the_target(random_pipe):
    x_T, cond = random_pipe.initial_noise(1, 0), random_pipe.encode([PROMPT])
    args = (random_pipe.unet, cond, random_pipe.empty, x_T, random_pipe.detection_timestep)
    _, mags, steps = adjust_per_sample(*args, target=0.0, lr=0.05, max_iters=6)
    trace = [float(m) for m in mags]                      # the magnitude after 0, 1, ..., 6 steps
    assert trace[3] < trace[2]                            # premise: step 3 lowers it
    target = (trace[2] + trace[3]) / 2
    k = next(i for i, m in enumerate(trace) if m <= target)
    out, _, steps = adjust_per_sample(*args, target=target, lr=0.05, max_iters=6)
    full, _, _ = adjust_per_sample(*args, target=0.0, lr=0.05, max_iters=k)
    assert steps.tolist() == [k] and torch.equal(out, full)


def test_init_noise_refuses_negative_knobs():
    with pytest.raises(ValueError, match="target, optim_lr and optim_iters must be >= 0"):
        adjust_per_sample(None, None, None, torch.zeros(1, 3, 4, 4), 0, target=-1.0)
    with pytest.raises(ValueError, match="rho and adj_iters must be >= 0"):
        adjust_batch_wise(None, None, None, torch.zeros(1, 3, 4, 4), 0, rho=-1.0)


# ---------------------------------------------------------------------------------------------------------------
# init_noise: batch-wise variant


def test_init_noise_batch_wise_step_is_the_official_finite_difference(random_pipe):
    x_T, cond, uncond, t = random_pipe.initial_noise(2, 0), random_pipe.encode([PROMPT]), random_pipe.empty, \
        random_pipe.detection_timestep
    rho, gamma = 5.0, 0.7

    def eps_tilde(x):
        eps_u, eps_c = predict_noise(random_pipe.unet, x, t, [uncond, cond])
        return eps_c - eps_u

    with torch.no_grad():
        g = eps_tilde(x_T)
        delta = rho * g / g.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        by_hand = x_T - gamma * (eps_tilde(x_T + delta) - g)
    assert torch.allclose(adjust_batch_wise(random_pipe.unet, cond, uncond, x_T, t, rho, gamma, 1), by_hand,
                          atol=1e-6)
    assert torch.equal(adjust_batch_wise(random_pipe.unet, cond, uncond, x_T, t, rho, gamma, 0), x_T)


def test_init_noise_batch_wise_is_unconditional_up_to_apply_cfg_step_then_cfg(random_pipe, record_steps):
    x_T = random_pipe.initial_noise(2, 0)
    hook, info = build_hook("init_noise", random_pipe, PROMPT, x_T, 2.0, batch_wise=True, apply_cfg_step=1)
    assert info["rho"] == pytest.approx(50 * math.sqrt(3 * 16 * 16 / (4 * 64 * 64)))
    _, steps = record_steps(random_pipe, hook, info["x_T"], 4)
    cond = random_pipe.encode([PROMPT])
    cfg = cfg_hook(random_pipe.unet, cond, random_pipe.empty, 2.0)
    for i, (x_t, t, eps) in enumerate(steps):
        expected = predict_noise(random_pipe.unet, x_t, t, [random_pipe.empty])[0] if i <= 1 else cfg(x_t, t, i)
        assert torch.allclose(eps, expected, atol=1e-6), i


# ---------------------------------------------------------------------------------------------------------------
# init_noise: through the registry, the pipeline and the command line


def test_init_noise_builds_from_the_registry_on_a_batch_of_two_prompts(random_pipe):
    x_T = torch.cat([random_pipe.initial_noise(2, s) for s in (0, 1)])         # 2 prompts x 2 samples
    for knobs in (dict(target=0.0, optim_iters=2), dict(batch_wise=True)):
        hook, info = build_hook("init_noise", random_pipe, PROMPTS, x_T, 2.0, seed=[0, 1], **knobs)
        assert info["x_T"].shape == x_T.shape and len(info["triggered"]) == 4
        assert info["prompt"] == [PROMPTS[0]] * 2 + [PROMPTS[1]] * 2
        assert hook(info["x_T"], random_pipe.detection_timestep, 0).shape == x_T.shape
    # per sample, the batch gives each sample what it gets alone (its own prompt, its own AdamW)
    _, info = build_hook("init_noise", random_pipe, PROMPTS, x_T, 2.0, seed=[0, 1], target=0.0, optim_iters=2)
    for p, rows in ((0, slice(0, 2)), (1, slice(2, 4))):
        _, alone = build_hook("init_noise", random_pipe, PROMPTS[p], x_T[rows], 2.0, target=0.0, optim_iters=2)
        assert torch.allclose(info["x_T"][rows], alone["x_T"], atol=1e-4)     # (rounding: lr = 0.01 per step)


def test_generate_starts_the_loop_from_the_adjusted_x_T(random_pipe):
    knobs = dict(target=0.0, optim_iters=2)
    images, info = random_pipe.generate(PROMPTS, method="init_noise", num_images=2, seed=[0, 1],
                                        num_inference_steps=5, return_info=True, **knobs)
    x_T = torch.cat([random_pipe.initial_noise(2, s) for s in (0, 1)])
    assert not torch.equal(info["x_T"], x_T)
    from_adjusted = random_pipe.run_hook(cfg_hook(random_pipe.unet, random_pipe.encode(PROMPTS).repeat_interleave(
        2, dim=0), random_pipe.empty, 2.0), info["x_T"], 5)
    assert images.shape == (4, 16, 16, 3) and np.array_equal(images, tensor_to_images(from_adjusted))


def test_the_command_line_lists_init_noise_and_its_knobs(capsys):
    with pytest.raises(SystemExit) as exit_:
        sample.main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "init_noise" in text and "--optim-lr" in text and "--batch-wise" in text
    assert METHODS["init_noise"].BASELINE


# ---------------------------------------------------------------------------------------------------------------
# anisotropy score


class FakeUNet:
    """eps chosen by hand: eps_u = x everywhere; for a prompt (any context other than the empty one)
    eps_c = 2 x at the detection timestep (so the norm term is ||x||) and eps_c = x + 1 at the cosine timestep
    (so the guidance vector is the all-ones channel vector at every pixel)."""

    def __init__(self, pipe):
        self.empty, self.t_1, self.t_c = pipe.empty[0], pipe.detection_timestep, cosine_timestep(pipe.schedule)

    def __call__(self, x, t, context):
        prompt = ~(context == self.empty).flatten(1).all(dim=1).view(-1, 1, 1, 1)           # (B, 1, 1, 1)
        assert set(t.tolist()) <= {self.t_1, self.t_c}
        at_t_1 = (t == self.t_1).view(-1, 1, 1, 1)
        eps_c = torch.where(at_t_1, 2 * x, x + 1)
        return torch.where(prompt, eps_c, x)


def by_hand(x):
    """The score of FakeUNet's prompt on one x (C, H, W): 1 * ||x|| + 2 * mean_pixels cos(x_pixel, (1, 1, 1))."""
    cos = (x.sum(dim=0) / (x.norm(dim=0) * math.sqrt(x.shape[0]))).mean()
    return float(x.norm() + 2 * cos)


def test_anisotropy_score_by_hand_and_averaged_over_seeds_and_images(random_pipe, monkeypatch):
    monkeypatch.setattr(random_pipe, "unet", FakeUNet(random_pipe))
    assert cosine_timestep(random_pipe.schedule) == 41         # SD's t_c: the toy has SD's scaled_linear schedule
    scores = anisotropy_score(random_pipe, [PROMPT, ""], seeds=(0, 5), num_images=3)
    expected = np.mean([by_hand(x) for s in (0, 5) for x in random_pipe.initial_noise(3, s)])
    assert scores.shape == (2,) and scores[0].item() == pytest.approx(expected, rel=1e-5)
    assert scores[1].item() == 0.0                              # the empty prompt: no guidance vector at all
    # the same averaging as Wen et al.'s detection score (its norm term is theirs)
    norm_only = anisotropy_score(random_pipe, [PROMPT, ""], seeds=(0, 5), num_images=3, weights=(1.0, 0.0))
    assert torch.allclose(norm_only, detection_score(random_pipe, [PROMPT, ""], seeds=(0, 5), num_images=3))


def test_anisotropy_cosine_is_over_channels_per_pixel(random_pipe, monkeypatch):
    """A guidance vector at right angles to eps_u at half the pixels and at 45 degrees at the other half."""
    t_c = cosine_timestep(random_pipe.schedule)
    empty = random_pipe.empty[0]

    def unet(x, t, context):
        eps_u = torch.zeros_like(x)
        eps_u[:, 0] = 1.0                                        # (1, 0, 0) at every pixel
        guide = torch.zeros_like(x)
        guide[:, 1] = 1.0                                        # (0, 1, 0): cos 0 ...
        guide[:, 0, :, : x.shape[-1] // 2] = 1.0                 # (1, 1, 0) on the left half: cos 1/sqrt(2)
        prompt = ~(context == empty).flatten(1).all(dim=1).view(-1, 1, 1, 1)
        at_t_c = (t == t_c).view(-1, 1, 1, 1)
        return eps_u + prompt * torch.where(at_t_c, guide, 3 * guide / guide.flatten(1).norm(dim=1).view(-1, 1, 1, 1))

    monkeypatch.setattr(random_pipe, "unet", unet)
    score = anisotropy_score(random_pipe, [PROMPT], seeds=(0,), num_images=2)
    assert score.item() == pytest.approx(1.0 * 3.0 + 2.0 * (0.5 / math.sqrt(2)), rel=1e-5)
