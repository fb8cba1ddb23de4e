"""After PRSS, on Stable Diffusion: Han et al.'s initial-noise adjustment, Asthana et al.'s anisotropy score and
Bright Ending's end-token mask, on diffusers' UNet, with the toy's own math.

The toy calls unet(x, t, context) -> eps; diffusers calls unet(x, t, encoder_hidden_states=c).sample.
`DiffusersEps` turns the second into the first, so the toy's pure functions run on SD unchanged:

    guidance/init_noise.py    adjust_per_sample, adjust_batch_wise       -> adjust_initial_latents
    guidance/anisotropy.py    anisotropy_terms_at, combine                -> anisotropy_score_sd
    guidance/bright_ending.py end_token_map, masked_magnitude            -> end_token_mask_sd, masked_magnitude_sd

Their equations are in those files' docstrings. The defaults are the official code's, for SD v1.4 with DDIM 50:
    Han et al. (hygnhan/init_noise_diffusion_memorization, generate_images.py's arguments):
        per sample  target_loss 0.9, lr 0.01, optim_iters 1000;  batch-wise  rho 50, gamma 0.7, adj_iters 2, and
        CFG only after apply_cfg_step 4 (local_sd_pipeline.py's loop: `denoise(..., apply_cfg_step=4)` here);
    Asthana et al. (rohanasthana/memorization-anisotropy): the norm at timesteps[0], the cosine at timesteps[-3]
        on the same latents (local_model/pipe.py), weights (1, 2) for SD v1 (detect_eval.py);
    Bright Ending (chenchen-usyd/BE-PRSS): s = 7.5, 50 steps (detect_mem.py), the prompt branch's maps at the
        last step, heads and the down path's finest cross-attention layers averaged (controller.py, AttentionStore).

Like stable_diffusion.py (which re-exports these names), diffusers is imported only inside the functions that need
it; the toy never imports this file.
"""

import contextlib

import torch

from .diffusion import classifier_free_guidance
from .guidance import anisotropy, bright_ending, init_noise

TARGET_LOSS, LR, OPTIM_ITERS = 0.9, 0.01, 1000            # Han et al., per sample (generate_images.py)
RHO, GAMMA, ADJ_ITERS, APPLY_CFG_STEP = 50.0, 0.7, 2, 4   # Han et al., batch-wise (generate_images.py)
COSINE_STEP = -3                                          # Asthana et al.: the cosine at timesteps[-3] (t = 41)


class DiffusersEps(torch.nn.Module):
    """diffusers' UNet2DConditionModel with the toy's calling convention: forward(x, t, context) -> eps."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, x, t, context):
        return self.unet(x, t, encoder_hidden_states=context).sample                   # (B, C, h, w)


def checked_timesteps(unet, scheduler, latents, prompt_embeds, negative_prompt_embeds, num_inference_steps,
                      batch=None):
    """Check the inputs as stable_diffusion.denoise does (prompt_embeds (1 or B, L, D) when batch = B is given) and
    return the scheduler's timesteps for num_inference_steps steps: (steps,), t_1 first."""
    from .stable_diffusion import check_embeds, check_latents  # here, not at the top: that file imports this one

    check_latents(unet, latents)
    check_embeds(unet, "prompt_embeds", prompt_embeds, batch)
    check_embeds(unet, "negative_prompt_embeds", negative_prompt_embeds, 1, prompt_embeds.shape[1:])
    if num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
    scheduler.set_timesteps(num_inference_steps, device=latents.device)
    if not torch.equal(scheduler.scale_model_input(latents, scheduler.timesteps[0]), latents):
        raise ValueError(f"{type(scheduler).__name__} scales the model input: these functions read the UNet on the "
                         f"latents themselves, as the official code does with DDIM (use stable_diffusion.sd_v14_ddim)")
    return scheduler.timesteps


# ----------------------------------------------------------------------------------------------------------
# Han et al.: adjust x_T before sampling


@torch.no_grad()
def adjust_initial_latents(unet, scheduler, latents, prompt_embeds, negative_prompt_embeds, batch_wise=False,
                           target=TARGET_LOSS, lr=LR, max_iters=OPTIM_ITERS, rho=RHO, gamma=GAMMA,
                           adj_iters=ADJ_ITERS, num_inference_steps=50):
    """x_T moved so that l(x_T) = ||eps(x_T, t_1, e_p) - eps(x_T, t_1, e_0)|| is small (init_noise.py's equations).

    latents (B, C, h, w), unscaled DDIM x_T; prompt_embeds (1 or B, L, D); negative_prompt_embeds (1, L, D).
    Per sample (default): AdamW on each x_T until l <= target, at most max_iters steps. batch_wise=True: adj_iters
    sharpness steps of size gamma and radius rho on every sample, then sample with
    `denoise(..., apply_cfg_step=info["apply_cfg_step"])`. Returns (latents (B, C, h, w), info): per sample,
    info["magnitudes"] (iterations + 1, B), l after each step, and info["steps"] (B,), the steps each x_T took."""
    t = checked_timesteps(unet, scheduler, latents, prompt_embeds, negative_prompt_embeds, num_inference_steps,
                          len(latents))[0]
    model = DiffusersEps(unet)
    if batch_wise:
        x = init_noise.adjust_batch_wise(model, prompt_embeds, negative_prompt_embeds, latents, t, rho, gamma,
                                         adj_iters)
        return x, {"rho": rho, "gamma": gamma, "adj_iters": adj_iters, "apply_cfg_step": APPLY_CFG_STEP}
    x, magnitudes, steps = init_noise.adjust_per_sample(model, prompt_embeds, negative_prompt_embeds, latents, t,
                                                        target, lr, max_iters)
    return x, {"target": target, "magnitudes": torch.stack(magnitudes), "steps": steps}


# ----------------------------------------------------------------------------------------------------------
# Asthana et al.: the anisotropy score


@torch.no_grad()
def anisotropy_score_sd(unet, scheduler, latents, prompt_embeds, negative_prompt_embeds,
                        weights=anisotropy.SD_V1_WEIGHTS, num_inference_steps=50):
    """A = gamma_1 ||eps(x_T, t_1, e_p) - eps(x_T, t_1, e_0)|| + gamma_2 cos_c(eps_u, eps_p - eps_u) at t_c, each
    averaged over the B latents: (P,) for prompt_embeds (P, L, D), latents (B, C, h, w), negative (1, L, D).

    t_1 = timesteps[0], t_c = timesteps[-3] of the num_inference_steps schedule, both on the pure-noise latents.
    The official SD v1 branch reads eps; SD v2's v-prediction has its own, which this does not implement."""
    prediction = scheduler.config.get("prediction_type", "epsilon")
    if prediction != "epsilon":
        raise ValueError(f"anisotropy_score_sd implements the official code's SD v1 (epsilon) branch; this scheduler "
                         f"predicts {prediction!r}")
    if num_inference_steps < 3:
        raise ValueError(f"the cosine is read at timesteps[-3]: num_inference_steps must be >= 3, got "
                         f"{num_inference_steps}")
    timesteps = checked_timesteps(unet, scheduler, latents, prompt_embeds, negative_prompt_embeds,
                                  num_inference_steps)
    model = DiffusersEps(unet)
    terms = [anisotropy.anisotropy_terms_at(model, negative_prompt_embeds, e[None], latents, timesteps[0],
                                            timesteps[COSINE_STEP]) for e in prompt_embeds]  # one prompt per call
    norm, cosine = (torch.cat(term) for term in zip(*terms))                             # (P, B) x 2
    return anisotropy.combine(norm, cosine, weights)                                     # (P,)


# ----------------------------------------------------------------------------------------------------------
# Bright Ending: the end token's attention at the last step


def cross_attention_probs(attn, hidden_states, encoder_hidden_states, attention_mask=None):
    """softmax(q k^T / sqrt(d)) of a diffusers Attention layer: hidden_states (B, N, C), encoder_hidden_states
    (B, L, D) -> (B, heads, N, L), with the layer's own projections and scale."""
    if hidden_states.dim() != 3 or attn.group_norm is not None or attn.spatial_norm is not None:
        raise ValueError("EndTokenAttention records a transformer block's cross-attention (attn2) only")
    if attn.norm_cross:
        encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
    B, L = encoder_hidden_states.shape[:2]
    mask = attn.prepare_attention_mask(attention_mask, L, B)
    q = attn.head_to_batch_dim(attn.to_q(hidden_states))                                # (B heads, N, d)
    k = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))                        # (B heads, L, d)
    probs = attn.get_attention_scores(q, k, mask)                                       # (B heads, N, L)
    return probs.view(B, attn.heads, *probs.shape[1:])


class EndTokenAttention:
    """An attention processor: the layer's own processor, which computes the output (so the UNet's output is
    unchanged, bit for bit), and, while `record` is on, also keeps the cross-attention maps averaged over heads,
    `probs` (2B, N, L) for CFG's batch [uncond; cond]."""

    def __init__(self, processor):
        self.processor, self.record, self.probs = processor, False, None

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
        if self.record and encoder_hidden_states is not None:
            self.probs = cross_attention_probs(attn, hidden_states, encoder_hidden_states, attention_mask).mean(1)
        return self.processor(attn, hidden_states, encoder_hidden_states=encoder_hidden_states,
                              attention_mask=attention_mask, temb=temb)


@contextlib.contextmanager
def recording_end_token_attention(unet):
    """Within the block, the down path's cross-attention layers run EndTokenAttention (yielded, in order); the
    UNet's own processors are put back afterwards, even after an error."""
    originals = unet.attn_processors                                                    # name -> processor
    recorders = {name: EndTokenAttention(p) for name, p in originals.items()
                 if name.startswith("down_blocks.") and ".attn2." in name}
    if not recorders:
        raise ValueError("this UNet has no cross-attention (attn2) layer on its down path to record")
    unet.set_attn_processor({**originals, **recorders})  # (set_attn_processor empties the dict it is given)
    try:
        yield list(recorders.values())
    finally:
        unet.set_attn_processor(dict(originals))


def end_token_index(tokenizer, prompts):
    """The position of each prompt's end token (<|endoftext|>) in its CLIP tokens, truncated as SD encodes them:
    (P,) ints, as the official len(tokenizer.encode(prompt)) - 1."""
    ids = tokenizer(list(prompts), truncation=True, max_length=tokenizer.model_max_length).input_ids
    return torch.tensor([len(i) - 1 for i in ids])


@torch.no_grad()
def end_token_mask_sd(unet, scheduler, latents, prompt_embeds, negative_prompt_embeds, end_token,
                      guidance_scale=7.5, num_inference_steps=50):
    """BE's mask M: (B, h, w), non-negative, at the latents' resolution, one per sample, from a plain CFG run.

    latents (B, C, h, w); prompt_embeds (1 or B, L, D); negative_prompt_embeds (1, L, D); end_token: an int or (B,)
    ints, the prompt's end-token position (end_token_index). At the last step the prompt branch's maps of the down
    path's finest cross-attention layers are averaged over heads and layers at that position (bright_ending.py)."""
    from .stable_diffusion import cfg_predictions

    B, L = len(latents), prompt_embeds.shape[1]
    timesteps = checked_timesteps(unet, scheduler, latents, prompt_embeds, negative_prompt_embeds,
                                  num_inference_steps, B)
    eos = torch.as_tensor(end_token, dtype=torch.long).flatten()
    if len(eos) not in (1, B) or ((eos < 0) | (eos >= L)).any():
        raise ValueError(f"end_token must be one int or B = {B} ints in [0, L = {L}) (end_token_index gives them), "
                         f"got {end_token}")
    eos = eos.expand(B)                                                                 # (B,)
    cond, uncond = prompt_embeds.expand(B, -1, -1), negative_prompt_embeds.expand(B, -1, -1)  # (B, L, D) x 2
    with recording_end_token_attention(unet) as recorders:
        for i, t in enumerate(timesteps):
            last = i == len(timesteps) - 1
            for r in recorders:
                r.record = last
            x_in = scheduler.scale_model_input(latents, t)                              # (B, C, h, w)
            eps_u, eps_c = cfg_predictions(unet, x_in, t, uncond, cond)
            if not last:
                latents = scheduler.step(classifier_free_guidance(eps_u, eps_c, guidance_scale), t,
                                         latents).prev_sample
        maps = [r.probs[B:, None] for r in recorders]                                   # prompt branch: (B, 1, N, L)
    return bright_ending.end_token_map(maps, eos, latents.shape[-2:])


@torch.no_grad()
def masked_magnitude_sd(unet, scheduler, latents, prompt_embeds, negative_prompt_embeds, mask,
                        num_inference_steps=50):
    """BE's detection score at the first step: ||(eps_c - eps_u) * M|| / mean(M) per sample, (B,).

    mask (B, h, w) from end_token_mask_sd on the same latents (the official code's second run reuses its seed)."""
    from .stable_diffusion import cfg_predictions

    B = len(latents)
    t = checked_timesteps(unet, scheduler, latents, prompt_embeds, negative_prompt_embeds, num_inference_steps, B)[0]
    if mask.shape != (B, *latents.shape[-2:]):
        raise ValueError(f"mask must be (B, h, w) = {(B, *latents.shape[-2:])}, one per latent, got "
                         f"{tuple(mask.shape)}")
    eps_u, eps_c = cfg_predictions(unet, latents, t, negative_prompt_embeds.expand(B, -1, -1),
                                   prompt_embeds.expand(B, -1, -1))
    return bright_ending.masked_magnitude(eps_c, eps_u, mask)
