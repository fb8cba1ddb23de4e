"""Each method as its official code computes it (BE-PRSS `local_sd_pipeline.py`, `inference_mem_gni.py`), and one
batch of many prompts giving what one call per prompt gives."""

import numpy as np
import pytest
import torch

from prss_mini.diffusion import classifier_free_guidance
from prss_mini.guidance import build_hook, gni
from prss_mini.guidance.detect import noise_magnitude
from prss_mini.guidance.pe import optimize_embedding
from prss_mini.guidance.prss import reanchor_guide
from prss_mini.guidance.rows import blocks, encode_rows, per_block, stream

PROMPT = "a red circle in the top left"


def pe_inputs(pipe, B=2):
    x_T = pipe.initial_noise(B, 0)
    return pipe.encode([PROMPT]), pipe.empty, x_T, pipe.detection_timestep


def test_pe_never_moves_token_0(random_pipe):
    context, uncond, x_T, t = pe_inputs(random_pipe)
    out, magnitudes = optimize_embedding(random_pipe.unet, context, uncond, x_T, t, target=0.0, max_iters=3)
    assert torch.equal(out[:, 0], context.expand(2, -1, -1)[:, 0])
    assert (out[:, 1:] - context[:, 1:]).abs().amax() > 1e-3           # the other tokens did move
    assert (magnitudes[-1] < magnitudes[0]).all()


def test_pe_step_is_adamw_with_its_default_weight_decay_on_tokens_after_the_first(random_pipe):
    """One AdamW step from e0 with gradient g: e1 = e0 (1 - lr * 0.01) - lr * g / (|g| + 1e-8) (bias-corrected
    first step), on tokens 1..L-1 only."""
    context, uncond, x_T, t = pe_inputs(random_pipe, B=1)
    lr = 0.05
    out, _ = optimize_embedding(random_pipe.unet, context, uncond, x_T, t, target=0.0, lr=lr, max_iters=1)
    e0 = context.clone().requires_grad_(True)
    t_in = torch.full((1,), int(t))
    with torch.enable_grad():
        m = noise_magnitude(random_pipe.unet(x_T, t_in, e0), random_pipe.unet(x_T, t_in, uncond))
        (g,) = torch.autograd.grad(m.sum(), [e0])
    expected = context * (1 - lr * 0.01) - lr * g / (g.abs() + 1e-8)
    assert torch.allclose(out[:, 1:], expected[:, 1:], atol=1e-5)


def captured_gni(pipe, monkeypatch, prompt, seed, noise_scale=0.5, B=2):
    seen = {}
    monkeypatch.setattr(gni, "cfg_hook", lambda unet, cond, uncond, s: seen.update(cond=cond, uncond=uncond))
    x_T = torch.zeros(B, 3, 16, 16)
    gni.build(pipe, prompt, x_T, 2.0, seed, noise_scale)
    return seen["cond"], seen["uncond"]


def test_gni_perturbs_the_prompt_and_the_empty_embedding_with_fresh_noise_per_sample(random_pipe, monkeypatch):
    cond, uncond = captured_gni(random_pipe, monkeypatch, PROMPT, seed=3)
    noise_c = (cond - random_pipe.encode([PROMPT])) / 0.5                               # (B, L, D)
    noise_u = (uncond - random_pipe.empty) / 0.5
    assert noise_c.std().item() == pytest.approx(1.0, abs=0.1) and noise_u.std().item() == pytest.approx(1.0, abs=0.1)
    assert not torch.allclose(noise_c[0], noise_c[1]) and not torch.allclose(noise_c, noise_u)


def test_gni_noise_never_repeats_the_numbers_of_x_T(random_pipe, monkeypatch):
    """x_T is drawn from manual_seed(seed); GNI's noise comes from a stream of its own (rows.stream)."""
    seed = 5
    cond, uncond = captured_gni(random_pipe, monkeypatch, PROMPT, seed)
    x_T_numbers = torch.randn(64, generator=torch.Generator().manual_seed(seed))
    for noise in ((uncond - random_pipe.empty) / 0.5, (cond - random_pipe.encode([PROMPT])) / 0.5):
        assert not torch.allclose(noise.flatten()[:64], x_T_numbers, atol=1e-4)
    expected = torch.randn((2, 2) + cond.shape[1:], generator=stream(seed, "gni"))      # (uncond, cond) x B
    assert torch.allclose((uncond - random_pipe.empty) / 0.5, expected[0], atol=1e-5)


def test_streams_differ_by_seed_and_by_purpose():
    draw = lambda seed, name: torch.randn(8, generator=stream(seed, name))
    assert torch.equal(draw(1, "gni"), draw(1, "gni"))
    assert not torch.allclose(draw(1, "gni"), draw(2, "gni")) and not torch.allclose(draw(1, "gni"), draw(1, "x"))


def test_per_prompt_pr_judges_all_samples_of_a_prompt_on_the_rms_of_their_magnitudes(random_pipe):
    """m = (2, 4) with lambda_PR = 3, tau = 5: per sample, sample 0 runs plain CFG and sample 1 ramps; per prompt,
    both ramp at the RMS sqrt((4 + 16) / 2) = 3.162 (the official code's batch norm / sqrt(K))."""
    g = torch.Generator().manual_seed(0)
    eps_u, eps_p, d = (torch.randn(2, 3, 4, 4, generator=g) for _ in range(3))
    eps_t = eps_u + torch.tensor([2.0, 4.0]).view(-1, 1, 1, 1) * d / d.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    m_t = noise_magnitude(eps_t, eps_u)
    s, rms = 5.0, (10.0 ** 0.5)
    per_sample = reanchor_guide(random_pipe, PROMPT, 2, s, 3.0, 5.0, per_prompt=False)(eps_u, eps_p, eps_t, m_t)
    per_prompt = reanchor_guide(random_pipe, PROMPT, 2, s, 3.0, 5.0, per_prompt=True)(eps_u, eps_p, eps_t, m_t)
    assert torch.allclose(per_sample[0], classifier_free_guidance(eps_u, eps_t, s)[0], atol=1e-5)
    s_pr = 1 + (s - 1) * (rms - 3.0) / 2.0
    ramp = eps_p + s_pr * (eps_t - eps_p) + (s - s_pr) * (eps_t - eps_u)
    assert torch.allclose(per_prompt, ramp, atol=1e-5)


def test_per_block_takes_the_rms_within_each_prompt_only():
    parts = blocks(["a", "b"], 4)
    out = per_block(torch.tensor([3.0, 4.0, 1.0, 1.0]), parts)
    assert torch.allclose(out, torch.tensor([12.5 ** 0.5] * 2 + [1.0, 1.0]))


def test_blocks_give_each_prompt_its_samples_and_seed():
    assert blocks(["a", "b"], 6, [10, 11]) == [("a", 10, slice(0, 3)), ("b", 11, slice(3, 6))]
    with pytest.raises(ValueError, match="cannot be shared"):
        blocks(["a", "b"], 5, [1, 2])


def test_encode_rows_repeats_each_prompt_for_its_samples(random_pipe):
    e = encode_rows(random_pipe, ["a red circle", "a blue square"], 4)
    single = random_pipe.encode(["a red circle", "a blue square"])
    assert torch.equal(e, single.repeat_interleave(2, 0))


@pytest.mark.parametrize("method, knobs", [("cfg", {}), ("gni", {}), ("rta", {}), ("pe", {"target": 0.0}),
                                           ("prss", {"lambda_ss": 0.0, "lambda_pr": 0.0, "tau": 1.0}),
                                           ("prss", {"lambda_ss": 0.0, "lambda_pr": 0.0, "tau": 1.0,
                                                     "per_prompt": True})])
def test_a_batch_of_prompts_gives_each_prompt_its_own_call_s_images(random_pipe, method, knobs):
    prompts, seeds = ["a red circle in the top left", "a blue square in the bottom right"], [1000, 1001]
    kw = dict(method=method, num_images=2, num_inference_steps=4, **knobs)
    batch, info = random_pipe.generate(prompts, seed=seeds, return_info=True, **kw)
    alone = np.concatenate([random_pipe.generate(p, seed=s, **kw) for p, s in zip(prompts, seeds)])
    assert np.abs(batch.astype(int) - alone.astype(int)).max() <= 1   # float rounding of other batch sizes
    if method == "prss":
        assert info["triggered"] == [True] * 4 and len(info["prompt"]) == 4


def test_a_method_whose_build_does_not_take_its_knobs_is_refused_when_the_registry_reads_it():
    import types
    from prss_mini.guidance import check_method
    from prss_mini.guidance.knobs import Knob
    module = types.SimpleNamespace(TITLE="x", SWEEP=[{}], VARIANTS=[], BASELINE=True,
                                   KNOBS=(Knob("strength", float, 1.0, "a knob"),),
                                   build=lambda pipe, prompt, x_T, guidance_scale, seed, strenght: None)
    with pytest.raises(ValueError, match=r"'x': build takes .*'strenght'\], but its KNOBS say .*'strength'\]"):
        check_method("x", module)
    with pytest.raises(ValueError, match=r"does not declare \['TITLE'\]"):
        check_method("y", types.SimpleNamespace(**{k: v for k, v in vars(module).items() if k != "TITLE"}))
