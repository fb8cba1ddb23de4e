import numpy as np
import pytest
import torch

from prss_mini.diffusion import cfg_hook, classifier_free_guidance, predict_noise, timesteps_for
from prss_mini.guidance import METHODS, build_hook
from prss_mini.guidance.detect import first_step_magnitude
from prss_mini.guidance.gni import add_embedding_noise
from prss_mini.guidance.pe import optimize_embedding
from prss_mini.guidance.rta import WORDS, add_random_tokens
from prss_mini.guidance.transition import transition_scale
from prss_mini.text_encoder import Tokenizer

PROMPT = "a red circle in the top left"
FAST = dict(num_images=2, num_inference_steps=5)


def run(pipe, method, x_T, guidance_scale=2.0, steps=5, **knobs):
    """The float images (B, 3, H, W) of `method` on x_T, and its info."""
    hook, info = build_hook(method, pipe, PROMPT, x_T, guidance_scale, **knobs)
    return pipe.run_hook(hook, x_T, steps), info


def cfg_on(pipe, prompts, x_T, guidance_scale=2.0, steps=5):
    """Plain CFG where sample b of x_T has its own prompt prompts[b]."""
    return pipe.run_hook(cfg_hook(pipe.unet, pipe.encode(prompts), pipe.empty, guidance_scale), x_T, steps)


def test_gni_with_noise_scale_zero_is_cfg(random_pipe):
    cfg = random_pipe.generate(PROMPT, method="cfg", **FAST)
    assert np.array_equal(random_pipe.generate(PROMPT, method="gni", noise_scale=0.0, **FAST), cfg)
    assert not np.array_equal(random_pipe.generate(PROMPT, method="gni", noise_scale=1.0, **FAST), cfg)


def test_gni_noise_is_seeded_and_per_sample():
    c = torch.zeros(2, 3, 4)
    a = add_embedding_noise(c, 0.5, torch.Generator().manual_seed(0))
    b = add_embedding_noise(c, 0.5, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and not torch.equal(a[0], a[1])


def test_gni_noise_has_std_noise_scale_and_doubles_with_it_at_the_same_seed():
    c = torch.randn(4, 24, 32, generator=torch.Generator().manual_seed(1))
    half = add_embedding_noise(c, 0.5, torch.Generator().manual_seed(0)) - c
    one = add_embedding_noise(c, 1.0, torch.Generator().manual_seed(0)) - c
    assert half.std().item() == pytest.approx(0.5, rel=0.05)
    assert torch.allclose(one, 2 * half, atol=1e-6)


def test_rta_with_zero_tokens_is_identity(random_pipe):
    assert add_random_tokens(PROMPT, 0, np.random.default_rng(0)) == PROMPT
    cfg = random_pipe.generate(PROMPT, method="cfg", **FAST)
    assert np.array_equal(random_pipe.generate(PROMPT, method="rta", num_tokens=0, **FAST), cfg)


def test_rta_adds_exactly_k_known_words():
    before = PROMPT.split()
    for k in (1, 3, 5):
        after = add_random_tokens(PROMPT, k, np.random.default_rng(k)).split()
        assert len(after) == len(before) + k
        assert all(w in WORDS for w in after)
        rest = iter(after)                                        # the prompt survives in order
        assert all(w in rest for w in before)


def test_rta_gives_each_sample_its_own_prompt_drawn_from_the_seed(random_pipe):
    x_T = random_pipe.initial_noise(3, seed=0)
    images, info = run(random_pipe, "rta", x_T, seed=7, num_tokens=2)
    rng = np.random.default_rng(7)
    assert info["prompts"] == [add_random_tokens(PROMPT, 2, rng) for _ in range(3)]
    assert len(set(info["prompts"])) == 3
    assert torch.allclose(images, cfg_on(random_pipe, info["prompts"], x_T), atol=1e-5)


def test_rta_too_long_raises():
    max_words = Tokenizer().max_length - 2
    with pytest.raises(ValueError, match="at most 15 more fit"):
        add_random_tokens(PROMPT, max_words, np.random.default_rng(0))
    Tokenizer()(add_random_tokens(PROMPT, 15, np.random.default_rng(0)))   # exactly full still encodes


def test_pe_lowers_first_step_magnitude(random_pipe):
    x_T = random_pipe.initial_noise(2, seed=0)
    t = timesteps_for(random_pipe.config.num_inference_steps, random_pipe.schedule)[0]
    before = first_step_magnitude(random_pipe, random_pipe.encode([PROMPT]), x_T)[0]       # (2,)
    random_pipe.unet.requires_grad_(True)                       # even a trainable UNet must get no grads
    try:
        context, mags = optimize_embedding(random_pipe.unet, random_pipe.encode([PROMPT]), random_pipe.empty,
                                           x_T, t, target=0.0, lr=0.05, max_iters=5)
    finally:
        random_pipe.unet.requires_grad_(False)
    after = first_step_magnitude(random_pipe, context, x_T).diagonal()                     # sample b on x_T[b]
    assert context.shape == (2, *random_pipe.empty.shape[1:])
    assert len(mags) == 6 and torch.allclose(mags[0], before, atol=1e-5)
    assert torch.all(after < before)
    assert all(p.grad is None for p in random_pipe.unet.parameters())


def test_pe_keeps_a_sample_under_the_target_bit_for_bit_and_stops_the_other_at_its_first_iterate_under_it(
        random_pipe):
    e_p, x_T, t = random_pipe.encode([PROMPT]), random_pipe.initial_noise(2, seed=0), random_pipe.detection_timestep
    m = first_step_magnitude(random_pipe, e_p, x_T)[0]                                       # (2,)
    lo, hi = int(m.argmin()), int(m.argmax())
    target = float(m[lo] + 0.1 * (m[hi] - m[lo]))                  # just above the lower sample's magnitude
    context, mags = optimize_embedding(random_pipe.unet, e_p, random_pipe.empty, x_T, t, target, lr=0.005,
                                       max_iters=20)
    assert torch.equal(context[lo], e_p[0])
    path = [float(m_it[hi]) for m_it in mags]                      # the other sample's magnitude at every iterate
    assert len(path) >= 3 and all(m_it > target for m_it in path[:-1]) and path[-1] <= target
    assert float(first_step_magnitude(random_pipe, context[hi:hi + 1], x_T)[0, hi]) == pytest.approx(path[-1],
                                                                                                    rel=1e-5)


def test_pe_without_target_or_thresholds_raises(random_pipe):
    with pytest.raises(ValueError, match="target"):
        random_pipe.generate(PROMPT, method="pe", **FAST)


def test_pe_default_target_is_calibrated_lambda_ss(random_pipe):
    random_pipe.thresholds = {"lambda_ss": 123.0}
    try:
        _, info = random_pipe.generate(PROMPT, method="pe", return_info=True, **FAST)
    finally:
        random_pipe.thresholds = None
    assert info["target"] == 123.0 and info["iterations"] == 0


def test_transition_scale_before_and_after_the_step():
    assert [transition_scale(i, 2, 5.0) for i in range(4)] == [0.0, 0.0, 5.0, 5.0]
    assert transition_scale(0, 2, 5.0, early_scale=-2.0) == -2.0
    assert transition_scale(0, 0, 5.0) == 5.0


def test_transition_at_step_zero_is_cfg(random_pipe):
    cfg = random_pipe.generate(PROMPT, method="cfg", **FAST)
    assert np.array_equal(random_pipe.generate(PROMPT, method="transition", transition_step=0, **FAST), cfg)


def test_transition_hook_is_cfg_at_early_scale_before_the_transition_step_and_at_s_after(random_pipe, record_steps):
    x_T, cond = random_pipe.initial_noise(2, seed=0), random_pipe.encode([PROMPT])
    hook, info = build_hook("transition", random_pipe, PROMPT, x_T, 2.0, transition_step=2, early_scale=-2.0)
    _, steps = record_steps(random_pipe, hook, x_T, 5)
    for i, (x_t, t, eps) in enumerate(steps):
        eps_u, eps_c = predict_noise(random_pipe.unet, x_t, t, [random_pipe.empty, cond])
        assert torch.allclose(eps, classifier_free_guidance(eps_u, eps_c, -2.0 if i < 2 else 2.0), atol=1e-6)
    assert info["scales"] == [-2.0, -2.0, 2.0, 2.0, 2.0]


def test_lowcfg_at_scale_one_is_the_conditional_model_alone_and_the_default_scale_is_not(random_pipe):
    x_T, cond = random_pipe.initial_noise(2, seed=0), random_pipe.encode([PROMPT])
    conditional = random_pipe.run_hook(lambda x_t, t, i: predict_noise(random_pipe.unet, x_t, t, [cond])[0], x_T, 5)
    assert torch.allclose(run(random_pipe, "lowcfg", x_T, 1.0)[0], conditional, atol=1e-5)
    assert not torch.allclose(run(random_pipe, "lowcfg", x_T, random_pipe.config.guidance_scale)[0], conditional,
                              atol=1e-3)


def test_ss_is_cfg_on_each_samples_searched_prompt(random_pipe):
    x_T = random_pipe.initial_noise(2, seed=3)
    images, info = run(random_pipe, "ss", x_T, lambda_ss=0.0)
    assert info["triggered"] == [True, True] and len(set(info["prompt"])) == 2   # two searches, two prompts
    assert torch.allclose(images, cfg_on(random_pipe, info["prompt"], x_T), atol=1e-5)


# knobs that make each method act on PROMPT (a method missing here fails the test below: add it)
ACTING_KNOBS = {
    "prss": dict(lambda_ss=0.0, lambda_pr=0.0, tau=1.0),
    "pr": dict(lambda_ss=0.0, lambda_pr=0.0, tau=1.0),
    "ss": dict(lambda_ss=0.0),
    "pe": dict(target=0.0, max_iters=2),
    "gni": dict(noise_scale=0.5),
    "rta": dict(num_tokens=2),
    "lowcfg": dict(guidance_scale=1.0),
    "transition": dict(transition_step=2, early_scale=-2.0),
    "init_noise": dict(target=0.0, optim_iters=2),
    "pe_be": dict(target=0.0, max_iters=2),
    "prss_be": dict(lambda_ss=0.0, lambda_pr=0.0, tau=1.0),
}


@pytest.mark.parametrize("method", [m for m in METHODS if m != "cfg"])
def test_every_method_but_cfg_changes_the_cfg_images_and_gives_the_same_images_for_the_same_seed(random_pipe, method):
    images = random_pipe.generate(PROMPT, method=method, seed=3, **FAST, **ACTING_KNOBS[method])
    assert images.dtype == np.uint8 and images.shape == (2, 16, 16, 3)
    assert np.array_equal(random_pipe.generate(PROMPT, method=method, seed=3, **FAST, **ACTING_KNOBS[method]), images)
    assert not np.array_equal(random_pipe.generate(PROMPT, method="cfg", seed=3, **FAST), images)


@pytest.mark.parametrize("call, message", [
    (lambda: add_embedding_noise(torch.zeros(1, 2, 3), -0.1, torch.Generator()), "noise_scale must be >= 0, got -0.1"),
    (lambda: add_random_tokens(PROMPT, -1, np.random.default_rng(0)), "num_tokens must be >= 0, got -1"),
    (lambda: optimize_embedding(None, None, None, None, 0, target=-1.0), r"target and max_iters must be >= 0, got "
                                                                         r"target=-1.0, max_iters=10"),
    (lambda: optimize_embedding(None, None, None, None, 0, target=1.0, max_iters=-1), r"got target=1.0, max_iters=-1"),
    (lambda: transition_scale(0, -1, 5.0), "transition_step must be >= 0, got -1"),
], ids=["gni noise_scale", "rta num_tokens", "pe target", "pe max_iters", "transition_step"])
def test_a_negative_baseline_knob_is_refused_naming_it(call, message):
    with pytest.raises(ValueError, match=message):
        call()
