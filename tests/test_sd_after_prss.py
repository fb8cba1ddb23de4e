"""The methods published after PRSS on diffusers' UNet (prss_mini/sd_after_prss.py), on a tiny random UNet: each
against a hand computation of what its official code computes, and against the toy's own function."""

import inspect

import pytest
import torch
import torch.nn.functional as F
from conftest import importorskip

importorskip("diffusers", reason="prss_mini.sd_after_prss needs diffusers: pip install diffusers transformers")

from diffusers.models.attention_processor import AttnProcessor  # noqa: E402

from prss_mini import sd_after_prss  # noqa: E402
from prss_mini import stable_diffusion as sd  # noqa: E402
from prss_mini.guidance import init_noise  # noqa: E402

S, STEPS, B, L, D = 7.5, 5, 3, 6, 16
LAYER = "down_blocks.0.attentions.0.transformer_blocks.0.attn2"  # the tiny UNet's one down-path cross-attention


@pytest.fixture(scope="module")
def inputs():
    """latents (B, 4, 8, 8), a large prompt embedding (1, L, D) and the negative prompt (1, L, D)."""
    g = torch.Generator().manual_seed(0)
    latents, prompt = torch.randn(B, 4, 8, 8, generator=g), 3 * torch.randn(1, L, D, generator=g)
    return latents, prompt, torch.randn(1, L, D, generator=g)


def timesteps(steps=STEPS):
    scheduler = sd.sd_v14_ddim()
    scheduler.set_timesteps(steps)
    return scheduler.timesteps


def guidance(unet, x, t, prompt, negative):
    """eps_c - eps_u by two plain diffusers calls: (B, 4, 8, 8)."""
    n = len(x)
    with torch.no_grad():
        eps_u = unet(x, t, encoder_hidden_states=negative.expand(n, -1, -1)).sample
        eps_c = unet(x, t, encoder_hidden_states=prompt.expand(n, -1, -1)).sample
    return eps_c - eps_u, eps_u


def magnitudes(unet, latents, prompt, negative):
    return sd.first_step_magnitude(unet, sd.sd_v14_ddim(), latents, prompt, negative, STEPS)[0]        # (B,)


# ----------------------------------------------------------------------------------------------------------
# The adapter, and the official defaults


def test_the_adapter_runs_the_toys_functions_on_diffusers_numbers(unet, inputs):
    latents, prompt, negative = inputs
    t = timesteps()[0]
    eps = sd.DiffusersEps(unet)(latents, t, prompt.expand(B, -1, -1))
    with torch.no_grad():
        assert torch.equal(eps, unet(latents, t, encoder_hidden_states=prompt.expand(B, -1, -1)).sample)
        loss = init_noise.first_step_loss(sd.DiffusersEps(unet), latents, t, prompt, negative)      # the toy's l
    assert torch.allclose(loss, magnitudes(unet, latents, prompt, negative), atol=1e-5)


def test_the_defaults_are_the_official_codes():
    adjust = inspect.signature(sd.adjust_initial_latents).parameters
    assert [adjust[k].default for k in ("target", "lr", "max_iters", "rho", "gamma", "adj_iters")] == \
        [0.9, 0.01, 1000, 50.0, 0.7, 2]
    assert sd_after_prss.APPLY_CFG_STEP == 4
    assert inspect.signature(sd.anisotropy_score_sd).parameters["weights"].default == (1.0, 2.0)
    assert int(timesteps(50)[0]) == 981 and int(timesteps(50)[-3]) == 41      # t_1 and t_c of SD's DDIM 50
    mask = inspect.signature(sd.end_token_mask_sd).parameters
    assert (mask["guidance_scale"].default, mask["num_inference_steps"].default) == (7.5, 50)


# ----------------------------------------------------------------------------------------------------------
# Han et al.: initial-noise adjustment, and delayed CFG


def test_per_sample_adjustment_reaches_the_target_or_stops_at_max_iters(unet, inputs):
    latents, prompt, negative = inputs
    target = 0.98 * float(magnitudes(unet, latents, prompt, negative).min())            # every sample must move
    out, info = sd.adjust_initial_latents(unet, sd.sd_v14_ddim(), latents, prompt, negative, target=target, lr=0.05,
                                          max_iters=8, num_inference_steps=STEPS)
    after = magnitudes(unet, out, prompt, negative)
    assert ((after <= target) | (info["steps"] == 8)).all() and (after <= target).any()
    assert (info["steps"] > 0).all() and torch.allclose(info["magnitudes"][-1], after, atol=1e-5)


def test_per_sample_adjustment_leaves_latents_already_below_the_target_bit_for_bit(unet, inputs):
    latents, prompt, negative = inputs
    out, info = sd.adjust_initial_latents(unet, sd.sd_v14_ddim(), latents, prompt, negative, target=1e9,
                                          num_inference_steps=STEPS)
    assert torch.equal(out, latents) and info["steps"].tolist() == [0] * B


def test_per_sample_step_is_adamw_on_the_latents_with_the_norm_as_loss(unet, inputs):
    """One AdamW step from x with the gradient g of l = ||eps_c - eps_u||: x (1 - lr wd) - lr g / (|g| + 1e-8)."""
    latents, prompt, negative = inputs
    lr, t = 0.05, timesteps()[0]
    x = latents.clone().requires_grad_(True)
    l = (unet(x, t, encoder_hidden_states=prompt.expand(B, -1, -1)).sample
         - unet(x, t, encoder_hidden_states=negative.expand(B, -1, -1)).sample).flatten(1).norm(dim=1)
    (g,) = torch.autograd.grad(l.sum(), [x])
    by_hand = latents * (1 - lr * 0.01) - lr * g / (g.abs() + 1e-8)
    out, _ = sd.adjust_initial_latents(unet, sd.sd_v14_ddim(), latents, prompt, negative, target=0.0, lr=lr,
                                       max_iters=1, num_inference_steps=STEPS)
    assert torch.allclose(out, by_hand, atol=1e-5)


def test_batch_wise_step_is_the_sharpness_formula_by_hand(unet, inputs):
    """x - gamma (eps~(x + rho eps~ / ||eps~||) - eps~(x)), eps~ = eps_c - eps_u at t_1, one iteration."""
    latents, prompt, negative = inputs
    rho, gamma, t = 2.0, 0.7, timesteps()[0]
    g, _ = guidance(unet, latents, t, prompt, negative)
    delta = rho * g / g.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    by_hand = latents - gamma * (guidance(unet, latents + delta, t, prompt, negative)[0] - g)
    out, info = sd.adjust_initial_latents(unet, sd.sd_v14_ddim(), latents, prompt, negative, batch_wise=True,
                                          rho=rho, gamma=gamma, adj_iters=1, num_inference_steps=STEPS)
    assert torch.allclose(out, by_hand, atol=1e-5) and info["apply_cfg_step"] == 4


def test_delayed_cfg_is_the_unconditional_model_up_to_apply_cfg_step_then_cfg(unet, inputs):
    latents, prompt, negative = inputs
    scheduler = sd.sd_v14_ddim()
    scheduler.set_timesteps(STEPS)
    x = latents
    for i, t in enumerate(scheduler.timesteps):
        g, eps_u = guidance(unet, x, t, prompt, negative)
        x = scheduler.step(eps_u if i <= 1 else eps_u + S * g, t, x).prev_sample
    out, _ = sd.denoise(unet, sd.sd_v14_ddim(), latents, prompt, negative, "cfg", S, STEPS, apply_cfg_step=1)
    assert torch.allclose(out, x, atol=1e-5)
    cfg, _ = sd.denoise(unet, sd.sd_v14_ddim(), latents, prompt, negative, "cfg", S, STEPS)
    assert torch.equal(sd.denoise(unet, sd.sd_v14_ddim(), latents, prompt, negative, "cfg", S, STEPS,
                                  apply_cfg_step=-1)[0], cfg)                            # -1: no step delayed


# ----------------------------------------------------------------------------------------------------------
# Asthana et al.: the anisotropy score


def test_anisotropy_score_is_the_weighted_norm_at_t1_plus_the_channel_cosine_at_t_minus_3(unet, inputs):
    latents, prompt, negative = inputs
    prompts = torch.cat([prompt, 0.5 * prompt + 0.5 * negative])                       # (2, L, D)
    ts = timesteps()
    by_hand = []
    for e in prompts:
        g, _ = guidance(unet, latents, ts[0], e[None], negative)
        norm = g.flatten(1).norm(dim=1).mean()
        g, eps_u = guidance(unet, latents, ts[-3], e[None], negative)
        cosine = F.cosine_similarity(eps_u, g, dim=1).flatten(1).mean(dim=1).mean()
        by_hand.append(torch.stack([norm, cosine]))
    by_hand = torch.stack(by_hand)                                                      # (2, [norm, cosine])
    for weights in ((1.0, 2.0), (0.5, -3.0)):
        score = sd.anisotropy_score_sd(unet, sd.sd_v14_ddim(), latents, prompts, negative, weights, STEPS)
        assert score.shape == (2,)
        assert torch.allclose(score, by_hand @ torch.tensor(weights), atol=1e-5)


# ----------------------------------------------------------------------------------------------------------
# Bright Ending: the recording processor, the mask, the masked magnitude


@pytest.mark.parametrize("default", ["the UNet's own", "AttnProcessor"])
def test_the_recording_processor_leaves_the_unet_output_unchanged(unet, inputs, default):
    latents, prompt, negative = inputs
    originals = unet.attn_processors
    try:
        if default == "AttnProcessor":
            unet.set_attn_processor(AttnProcessor())
        t, c = timesteps()[-1], torch.cat([negative, prompt]).repeat_interleave(B, 0)     # CFG's [uncond; cond]
        x = torch.cat([latents, latents])
        with torch.no_grad():
            plain = unet(x, t, encoder_hidden_states=c).sample
            with sd.recording_end_token_attention(unet) as recorders:
                for r in recorders:
                    r.record = True
                recorded = unet(x, t, encoder_hidden_states=c).sample
        assert recorders[0].probs.shape == (2 * B, 64, L)
        assert torch.allclose(recorded, plain, atol=1e-6, rtol=0)
    finally:
        unet.set_attn_processor(dict(originals))


def test_the_unets_own_processors_are_put_back_even_after_an_error(unet, inputs):
    latents, prompt, negative = inputs
    originals = unet.attn_processors
    sd.end_token_mask_sd(unet, sd.sd_v14_ddim(), latents, prompt, negative, 3, S, STEPS)
    assert all(unet.attn_processors[k] is p for k, p in originals.items())
    with pytest.raises(RuntimeError):
        with sd.recording_end_token_attention(unet) as recorders:
            assert isinstance(unet.attn_processors[LAYER + ".processor"], sd_after_prss.EndTokenAttention)
            assert len(recorders) == 1
            raise RuntimeError("interrupted")
    assert all(unet.attn_processors[k] is p for k, p in originals.items())


def test_the_mask_is_the_head_averaged_softmax_of_the_recorded_layer_at_each_samples_end_token(unet, inputs):
    """Rebuilt by hand: plain CFG to the last step, the layer's inputs there, softmax(q k^T * scale) per head for
    the prompt branch, averaged over heads, at each sample's end token (2, 4, 5 here)."""
    latents, prompt, negative = inputs
    eos = torch.tensor([2, 4, 5])
    mask = sd.end_token_mask_sd(unet, sd.sd_v14_ddim(), latents, prompt, negative, eos, S, STEPS)
    scheduler = sd.sd_v14_ddim()
    scheduler.set_timesteps(STEPS)
    x = latents
    for t in scheduler.timesteps[:-1]:
        g, eps_u = guidance(unet, x, t, prompt, negative)
        x = scheduler.step(eps_u + S * g, t, x).prev_sample
    attn, seen = unet.get_submodule(LAYER), {}
    hook = attn.register_forward_hook(lambda m, args, kwargs, out: seen.update(h=args[0], c=kwargs[
        "encoder_hidden_states"]), with_kwargs=True)
    try:
        sd.cfg_predictions(unet, x, scheduler.timesteps[-1], negative.expand(B, -1, -1), prompt.expand(B, -1, -1))
    finally:
        hook.remove()
    heads = attn.heads
    with torch.no_grad():
        q = attn.to_q(seen["h"][B:]).unflatten(-1, (heads, -1)).transpose(1, 2)      # (B, heads, 64, d)
        k = attn.to_k(seen["c"][B:]).unflatten(-1, (heads, -1)).transpose(1, 2)      # (B, heads, L, d)
    probs = (q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5).softmax(-1).mean(1)         # (B, 64, L)
    by_hand = probs[torch.arange(B), :, eos].view(B, 8, 8)
    assert mask.shape == (B, 8, 8) and (mask >= 0).all()
    assert torch.allclose(mask, by_hand, atol=1e-6)


def test_masked_magnitude_is_the_first_step_gap_weighted_by_the_mask_over_its_mean(unet, inputs):
    latents, prompt, negative = inputs
    mask = torch.rand(B, 8, 8, generator=torch.Generator().manual_seed(1))
    g, _ = guidance(unet, latents, timesteps()[0], prompt, negative)
    by_hand = (g * mask[:, None]).flatten(1).norm(dim=1) / mask.flatten(1).mean(1)
    m = sd.masked_magnitude_sd(unet, sd.sd_v14_ddim(), latents, prompt, negative, mask, STEPS)
    assert torch.allclose(m, by_hand, atol=1e-5)
    flat = sd.masked_magnitude_sd(unet, sd.sd_v14_ddim(), latents, prompt, negative, torch.ones(B, 8, 8), STEPS)
    assert torch.allclose(flat, magnitudes(unet, latents, prompt, negative), atol=1e-5)   # a flat mask: Wen's m


def test_end_token_index_is_the_position_of_the_end_of_text_token():
    tokenizer = sd.tiny_random_pipeline().tokenizer               # one token per character, spaces dropped
    prompts = ["abc", "a red circle", "x" * 200]                  # the last one truncated to 77 tokens
    index = sd.end_token_index(tokenizer, prompts)
    assert index.tolist() == [4, 11, 76]
    ids = tokenizer(prompts, truncation=True, max_length=77).input_ids
    assert all(i[k] == tokenizer.eos_token_id and tokenizer.eos_token_id not in i[:k] for i, k in zip(ids, index))


# ----------------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("call, message", [
    (lambda u, x, p, n: sd.adjust_initial_latents(u, sd.sd_v14_ddim(), x[:, :3], p, n), "latents must be"),
    (lambda u, x, p, n: sd.adjust_initial_latents(u, sd.sd_v14_ddim(), x, p, n, target=-1.0), "must be >= 0"),
    (lambda u, x, p, n: sd.anisotropy_score_sd(u, sd.sd_v14_ddim(), x, p, n, num_inference_steps=2), ">= 3"),
    (lambda u, x, p, n: sd.end_token_mask_sd(u, sd.sd_v14_ddim(), x, p, n, L, num_inference_steps=1),
     "end_token must be"),
    (lambda u, x, p, n: sd.masked_magnitude_sd(u, sd.sd_v14_ddim(), x, p, n, torch.ones(B, 4, 4)), "mask must be"),
    (lambda u, x, p, n: sd.denoise(u, sd.sd_v14_ddim(), x, p, n, "prss", candidate_embeds=p, apply_cfg_step=4),
     "apply_cfg_step"),
])
def test_bad_input_gives_a_clear_value_error(unet, inputs, call, message):
    latents, prompt, negative = inputs
    with pytest.raises(ValueError, match=message):
        call(unet, latents, prompt, negative)


def test_a_scheduler_that_scales_the_input_or_predicts_v_is_refused(unet, inputs):
    from diffusers import DDIMScheduler, EulerDiscreteScheduler

    latents, prompt, negative = inputs
    euler = EulerDiscreteScheduler.from_config(sd.sd_v14_ddim().config)
    with pytest.raises(ValueError, match="scales the model input"):
        sd.adjust_initial_latents(unet, euler, latents, prompt, negative, num_inference_steps=STEPS)
    v = DDIMScheduler.from_config(sd.sd_v14_ddim().config, prediction_type="v_prediction")
    with pytest.raises(ValueError, match="epsilon"):
        sd.anisotropy_score_sd(unet, v, latents, prompt, negative, num_inference_steps=STEPS)
