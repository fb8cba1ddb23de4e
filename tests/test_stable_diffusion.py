"""PRSS on diffusers' Stable Diffusion parts (prss_mini/stable_diffusion.py), on a tiny random UNet.

A random UNet's magnitudes are arbitrary, so every threshold here is set from measured magnitudes to force the
case a test is about (and the test checks that the case happened)."""

import json

import pytest
import torch
from conftest import importorskip

importorskip("diffusers", reason="prss_mini.stable_diffusion needs diffusers: pip install diffusers transformers")


from prss_mini import stable_diffusion as sd  # noqa: E402
from prss_mini.diffusion import NoiseSchedule, timesteps_for  # noqa: E402
from prss_mini.guidance.pr import prompt_reanchor  # noqa: E402
from prss_mini.guidance.ss import semantic_search  # noqa: E402

S, STEPS, B, L, D = 7.5, 5, 4, 6, 16


@pytest.fixture(scope="module")
def inputs():
    """latents (B, 4, 8, 8), a large prompt embedding (large magnitudes: the "memorized" one), the negative
    prompt, and 4 candidates of decreasing scale (so decreasing magnitudes)."""
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(B, 4, 8, 8, generator=g)
    negative = torch.randn(1, L, D, generator=g)
    prompt = 3 * torch.randn(1, L, D, generator=g)
    candidates = torch.randn(4, L, D, generator=g) * torch.tensor([2.0, 1.0, 0.5, 0.1]).view(-1, 1, 1)
    return latents, prompt, negative, candidates


def run(unet, inputs, method="cfg", **kw):
    latents, prompt, negative, candidates = inputs
    kw.setdefault("candidate_embeds", None if method == "cfg" else candidates)
    return sd.denoise(unet, sd.sd_v14_ddim(), latents, prompt, negative, method, S, STEPS, **kw)


def plain_cfg_loop(unet, latents, prompt_embeds, negative_embeds):
    """diffusers' own CFG loop (as in StableDiffusionPipeline.__call__), written out."""
    scheduler = sd.sd_v14_ddim()
    scheduler.set_timesteps(STEPS)
    n = len(latents)
    embeds = torch.cat([negative_embeds.expand(n, -1, -1), prompt_embeds.expand(n, -1, -1)])
    with torch.no_grad():
        for t in scheduler.timesteps:
            x_in = scheduler.scale_model_input(torch.cat([latents] * 2), t)
            eps_u, eps_c = unet(x_in, t, encoder_hidden_states=embeds).sample.chunk(2)
            latents = scheduler.step(eps_u + S * (eps_c - eps_u), t, latents).prev_sample
    return latents


def magnitude_table(unet, inputs):
    """First-step magnitudes (1 + n_s, B): the prompt's row, then one row per candidate."""
    latents, prompt, negative, candidates = inputs
    return sd.first_step_magnitude(unet, sd.sd_v14_ddim(), latents, torch.cat([prompt, candidates]), negative,
                                    STEPS)


def between(a, b):
    return (float(a) + float(b)) / 2


# ----------------------------------------------------------------------------------------------------------
# CFG, and untriggered samples


def test_cfg_equals_a_plain_diffusers_cfg_loop(unet, inputs):
    latents, prompt, negative, _ = inputs
    out, _ = run(unet, inputs, "cfg")
    assert torch.allclose(out, plain_cfg_loop(unet, latents, prompt, negative), atol=1e-5)


def test_prss_with_lambda_ss_above_every_magnitude_is_cfg_bit_for_bit(unet, inputs):
    cfg, _ = run(unet, inputs, "cfg")
    prss, info = run(unet, inputs, "prss", lambda_ss=1e6)
    assert info["triggered"] == [False] * B and info["chosen"] == [sd.PROMPT] * B
    assert torch.equal(prss, cfg)


def test_a_mixed_batch_decides_per_sample_and_leaves_untriggered_samples_bit_for_bit_cfg(unet, inputs):
    m = magnitude_table(unet, inputs)[0]                                                   # (B,)
    lambda_ss = between(*m.sort().values[1:3])  # two samples below, two above
    cfg, _ = run(unet, inputs, "cfg")
    prss, info = run(unet, inputs, "prss", lambda_ss=lambda_ss, lambda_pr=0.0, tau=0.1)
    expected = (m > lambda_ss).tolist()
    assert info["triggered"] == expected and 0 < sum(expected) < B
    for b, hit in enumerate(expected):
        assert torch.equal(prss[b], cfg[b]) != hit, f"sample {b} (triggered: {hit})"


def test_first_step_magnitude_are_the_ones_denoise_triggers_on(unet, inputs):
    _, info = run(unet, inputs, "cfg")
    assert torch.equal(magnitude_table(unet, inputs)[0], info["magnitudes"])


def test_first_step_magnitude_is_the_norm_of_the_text_conditional_prediction(unet, inputs):
    latents, prompt, negative, _ = inputs
    scheduler = sd.sd_v14_ddim()
    scheduler.set_timesteps(STEPS)
    t = scheduler.timesteps[0]
    with torch.no_grad():
        eps_u = unet(latents, t, encoder_hidden_states=negative.expand(B, -1, -1)).sample
        eps_p = unet(latents, t, encoder_hidden_states=prompt.expand(B, -1, -1)).sample
    expected = (eps_p - eps_u).flatten(1).norm(dim=1)
    assert torch.allclose(magnitude_table(unet, inputs)[0], expected, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------
# Semantic Prompt Search


def test_the_search_picks_what_semantic_search_picks_on_the_same_magnitudes(unet, inputs):
    table = magnitude_table(unet, inputs)                                                 # (1 + n_s, B)
    lambda_ss = between(table[2].min(), table[2].max())  # candidate 1 passes on some samples only
    expected = semantic_search(sd.PROMPT, table[0], range(len(table) - 1), lambda k, rows: table[1 + k][rows],
                               lambda_ss)
    _, info = run(unet, inputs, "prss", lambda_ss=lambda_ss)
    assert info["chosen"] == [r.prompt for r in expected]
    assert info["triggered"] == [r.triggered for r in expected]
    assert len(set(info["chosen"])) > 1  # the samples' searches ended differently
    for got, want in zip(info["scored"], expected):
        assert got.keys() == want.magnitudes.keys()
        assert torch.allclose(torch.tensor(list(got.values())), torch.tensor(list(want.magnitudes.values())),
                              atol=1e-5)


def test_per_prompt_triggers_every_sample_or_none(unet, inputs):
    m = magnitude_table(unet, inputs)[0]
    rms = float(m.pow(2).mean().sqrt())
    _, below = run(unet, inputs, "prss", lambda_ss=rms + 1e-3, per_prompt=True)
    _, above = run(unet, inputs, "prss", lambda_ss=rms - 1e-3, per_prompt=True)
    assert below["triggered"] == [False] * B and above["triggered"] == [True] * B


def test_ss_is_plain_cfg_on_the_chosen_candidate(unet, inputs):
    latents, _, negative, candidates = inputs
    out, info = run(unet, inputs, "ss", lambda_ss=0.0)  # every sample triggers
    assert info["triggered"] == [True] * B
    chosen = torch.stack([candidates[k] for k in info["chosen"]])                          # (B, L, D)
    assert torch.allclose(out, plain_cfg_loop(unet, latents, chosen, negative), atol=1e-5)


def test_prss_with_lambda_pr_above_every_m_t_is_ss(unet, inputs):
    ss, info = run(unet, inputs, "ss", lambda_ss=0.0)
    top = float(info["trace"].max())
    prss, _ = run(unet, inputs, "prss", lambda_ss=0.0, lambda_pr=top + 1, tau=top + 2)
    assert torch.equal(prss, ss)


# ----------------------------------------------------------------------------------------------------------
# Prompt Re-anchoring


def test_triggered_samples_take_prompt_reanchor_of_their_three_predictions_at_every_step(unet, inputs, monkeypatch):
    latents, prompt, negative, candidates = inputs
    table = magnitude_table(unet, inputs)
    lambda_ss = between(*table[0].sort().values[:2])  # one sample untriggered
    _, probe = run(unet, inputs, "ss", lambda_ss=lambda_ss)
    lo, hi = probe["trace"].quantile(0.25).item(), probe["trace"].quantile(0.75).item()  # some m_t in each regime

    scheduler = sd.sd_v14_ddim()
    steps, step = [], scheduler.step
    monkeypatch.setattr(scheduler, "step", lambda eps, t, x, **kw: steps.append((eps, t, x)) or step(eps, t, x, **kw))
    _, info = sd.denoise(unet, scheduler, latents, prompt, negative, "prss", S, STEPS, candidates, lambda_ss, lo, hi)
    hit = torch.tensor(info["triggered"])
    assert 0 < hit.sum() < B and len(steps) == STEPS
    m_t = info["trace"][hit]
    assert (m_t <= lo).any() and ((m_t > lo) & (m_t < hi)).any() and (m_t >= hi).any()  # all three regimes
    target = torch.stack([prompt[0] if k == sd.PROMPT else candidates[k] for k in info["chosen"]])
    with torch.no_grad():
        for eps, t, x in steps:
            eps_u = unet(x, t, encoder_hidden_states=negative.expand(B, -1, -1)).sample
            eps_p = unet(x, t, encoder_hidden_states=prompt.expand(B, -1, -1)).sample
            eps_ss = unet(x, t, encoder_hidden_states=target).sample
            expected = prompt_reanchor(eps_u, eps_p, eps_ss, S, lo, hi)
            assert torch.allclose(eps[hit], expected[hit], atol=1e-4)
            assert torch.allclose(eps[~hit], (eps_u + S * (eps_p - eps_u))[~hit], atol=1e-4)


def test_the_trace_is_m_t_of_the_prompt_each_sample_is_guided_towards(unet, inputs):
    _, cfg = run(unet, inputs, "cfg")
    _, prss = run(unet, inputs, "prss", lambda_ss=1e6)
    assert cfg["trace"].shape == (B, STEPS)
    assert torch.equal(cfg["trace"][:, 0], cfg["magnitudes"]) and torch.equal(prss["trace"], cfg["trace"])


# ----------------------------------------------------------------------------------------------------------
# Bad input


BAD = {
    "unknown method": (dict(method="pr"), "unknown method"),
    "latents not 4-d": (dict(latents=torch.zeros(B, 4, 8)), "latents must be"),
    "latents with 3 channels": (dict(latents=torch.zeros(B, 3, 8, 8)), "latents must be"),
    "prompt batch is neither 1 nor B": (dict(prompt_embeds=torch.zeros(3, L, D)), "prompt_embeds must be"),
    "prompt dim is not the UNet's": (dict(prompt_embeds=torch.zeros(1, L, 8)), "cross_attention_dim"),
    "negative length differs": (dict(negative_prompt_embeds=torch.zeros(1, L + 1, D)), "prompt's \\(L, D\\)"),
    "candidates' length differs": (dict(method="prss", candidate_embeds=torch.zeros(2, L + 1, D)),
                                   "candidate_embeds .* prompt's \\(L, D\\)"),
    "prss without candidates": (dict(method="prss", candidate_embeds=None), "needs candidate_embeds"),
    "tau <= lambda_pr": (dict(method="prss", lambda_pr=3.0, tau=3.0), "must be larger than lambda_pr"),
    "negative lambda_pr": (dict(method="prss", lambda_pr=-1.0), ">= 0"),
    "negative lambda_ss": (dict(method="ss", lambda_ss=-1.0), "lambda_ss must be >= 0"),
    "prss with guidance_scale < 1": (dict(method="prss", guidance_scale=0.5), "guidance_scale >= 1"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_input_is_a_clear_value_error(unet, inputs, case):
    latents, prompt, negative, candidates = inputs
    args = dict(latents=latents, prompt_embeds=prompt, negative_prompt_embeds=negative, method="cfg",
                guidance_scale=S, num_inference_steps=STEPS, candidate_embeds=candidates)
    change, message = BAD[case]
    args.update(change)
    with pytest.raises(ValueError, match=message):
        sd.denoise(unet, sd.sd_v14_ddim(), **args)


# ----------------------------------------------------------------------------------------------------------
# A StableDiffusionPipeline (needs transformers for the text encoder)


@pytest.fixture(scope="module")
def pipe():
    importorskip("transformers", reason="the pipeline tests need transformers: pip install transformers")
    pipe = sd.tiny_random_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_generate_cfg_equals_the_pipeline_s_own_call(pipe):
    import numpy as np

    images, _ = sd.generate(pipe, "a red circle", method="cfg", seed=3, num_images=2, num_inference_steps=3)
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    reference = pipe("a red circle", latents=latents, num_images_per_prompt=2, num_inference_steps=3,
                     guidance_scale=7.5).images
    assert [np.asarray(a).tolist() for a in images] == [np.asarray(b).tolist() for b in reference]


def test_generate_returns_one_image_per_sample_and_the_prompt_that_guided_it(pipe):
    paraphrases = ["a circle in red", "red round shape"]
    images, info = sd.generate(pipe, "a red circle", candidates=paraphrases, num_images=2, num_inference_steps=2,
                               lambda_ss=0.0)  # every sample triggers on the tiny pipeline
    assert len(images) == 2 and images[0].size == (16, 16)
    assert info["triggered"] == [True, True]
    assert info["prompts"] == [(["a red circle"] + paraphrases)[k + 1] for k in info["chosen"]]


def test_detection_score_are_the_first_step_magnitude_generate_triggers_on(pipe):
    scores = sd.detection_score(pipe, ["a red circle", "a blue square"], seed=1, num_images=2, num_inference_steps=2)
    _, info = sd.generate(pipe, "a blue square", method="cfg", seed=1, num_images=2, num_inference_steps=2)
    assert scores.shape == (2,) and torch.equal(scores[1], info["magnitudes"].mean())


def test_read_candidates_reads_the_official_jsonl_in_caption_number_order(tmp_path):
    record = {"caption": "a red circle", "index": 7, "url": "u", **{f"caption{j}": f"p{j}" for j in (10, 2, 1, 11)}}
    path = tmp_path / "candidates.jsonl"
    path.write_text(json.dumps(record) + "\n\n")
    assert sd.read_candidates(path) == {"a red circle": ["p1", "p2", "p10", "p11"]}
    assert sd.resolve_candidates("a red circle", str(path)) == ["p1", "p2", "p10", "p11"]


def test_a_prompt_missing_from_the_candidate_file_is_a_clear_value_error(tmp_path):
    path = tmp_path / "candidates.jsonl"
    path.write_text(json.dumps({"caption": "a red circle", "caption1": "p1"}) + "\n")
    with pytest.raises(ValueError, match="is not a 'caption'"):
        sd.resolve_candidates("a blue square", path)


def test_a_candidate_file_line_without_a_caption_is_a_value_error_that_names_the_line(tmp_path):
    path = tmp_path / "candidates.jsonl"
    good, bad = {"caption": "a red circle", "caption1": "p1"}, {"prompt": "a blue square", "caption1": "p1"}
    path.write_text(json.dumps(good) + "\n\n" + json.dumps(bad) + "\n")  # the blank line 2 counts too
    with pytest.raises(ValueError, match=r"candidates.jsonl, line 3: no 'caption' field"):
        sd.read_candidates(path)


def test_candidates_neither_a_list_nor_a_jsonl_file_are_a_clear_value_error(tmp_path):
    for bad in (42, {"a red circle": ["p1"]}, tmp_path / "missing.jsonl", str(tmp_path)):
        with pytest.raises(ValueError, match="candidates must be a list of paraphrases or the path of a jsonl file"):
            sd.resolve_candidates("a red circle", bad)


# ----------------------------------------------------------------------------------------------------------
# The toy's sampling grid (prss_mini.diffusion.timesteps_for) against diffusers' DDIMScheduler.set_timesteps

GRID_STEPS = (1, 3, 7, 50, 333, 500, 999, 1000)


def diffusers_grid(n, spacing, offset):
    """DDIMScheduler(1000 steps).set_timesteps(n).timesteps as a list (DDPMScheduler's grid is the same code)."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(num_train_timesteps=1000, timestep_spacing=spacing, steps_offset=offset)
    scheduler.set_timesteps(n)
    return scheduler.timesteps.tolist()


@pytest.mark.parametrize("spacing, offset", [("leading", 0), ("leading", 1), ("leading", 5), ("trailing", 0)])
def test_the_toy_grid_is_diffusers_grid_wherever_diffusers_stays_below_1000(spacing, offset):
    schedule = NoiseSchedule(1000, timestep_spacing=spacing, steps_offset=offset)
    kept = [n for n in GRID_STEPS if diffusers_grid(n, spacing, offset)[0] <= 999]
    assert kept and all(timesteps_for(n, schedule) == diffusers_grid(n, spacing, offset) for n in kept)


@pytest.mark.parametrize("offset", [1, 5])
def test_the_toy_refuses_every_leading_grid_diffusers_starts_past_the_last_trained_timestep(offset):
    """diffusers returns t >= 1000 there and its first step fails with an IndexError; the toy refuses up front."""
    past = [n for n in GRID_STEPS if diffusers_grid(n, "leading", offset)[0] > 999]
    assert past
    for n in past:
        with pytest.raises(ValueError, match=f"num_inference_steps={n} .* steps_offset={offset}"):
            timesteps_for(n, NoiseSchedule(1000, steps_offset=offset))
