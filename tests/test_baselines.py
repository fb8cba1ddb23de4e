import numpy as np
import pytest
import torch

from prss_mini.diffusion import timesteps_for
from prss_mini.guidance.detect import first_step_magnitude
from prss_mini.guidance.gni import add_embedding_noise
from prss_mini.guidance.pe import optimize_embedding
from prss_mini.guidance.rta import WORDS, add_random_tokens
from prss_mini.guidance.transition import transition_scale
from prss_mini.text_encoder import Tokenizer

PROMPT = "a red circle in the top left"
FAST = dict(num_images=2, num_inference_steps=5)


def test_gni_with_noise_scale_zero_is_cfg(random_pipe):
    cfg = random_pipe.generate(PROMPT, method="cfg", **FAST)
    assert np.array_equal(random_pipe.generate(PROMPT, method="gni", noise_scale=0.0, **FAST), cfg)
    assert not np.array_equal(random_pipe.generate(PROMPT, method="gni", noise_scale=1.0, **FAST), cfg)


def test_gni_noise_is_seeded_and_per_sample():
    c = torch.zeros(2, 3, 4)
    a = add_embedding_noise(c, 0.5, torch.Generator().manual_seed(0))
    b = add_embedding_noise(c, 0.5, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and not torch.equal(a[0], a[1])


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


def test_pe_stops_at_target(random_pipe):
    x_T = random_pipe.initial_noise(2, seed=0)
    _, mags = optimize_embedding(random_pipe.unet, random_pipe.encode([PROMPT]), random_pipe.empty, x_T, 950,
                                 target=1e9)
    assert len(mags) == 1                                        # already below: no step taken


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


def test_lowcfg_equals_cfg_at_the_same_scale(random_pipe):
    cfg = random_pipe.generate(PROMPT, method="cfg", guidance_scale=2.0, **FAST)
    assert np.array_equal(random_pipe.generate(PROMPT, method="lowcfg", guidance_scale=2.0, **FAST), cfg)


@pytest.mark.parametrize("method,knobs", [("gni", dict(noise_scale=0.5)), ("rta", dict(num_tokens=2)),
                                          ("pe", dict(target=0.0, max_iters=2)), ("lowcfg", {}),
                                          ("transition", dict(transition_step=2, early_scale=-2.0))])
def test_generate_runs_for_every_baseline(random_pipe, method, knobs):
    images = random_pipe.generate(PROMPT, method=method, **FAST, **knobs)
    assert images.dtype == np.uint8 and images.shape == (2, 16, 16, 3)
