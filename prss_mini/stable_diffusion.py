"""PRSS on a real Stable Diffusion pipeline (diffusers), with prss-mini's own guidance functions.

The toy's pieces have SD counterparts, and the guidance code is the same:

    toy (prss-mini)                         Stable Diffusion (diffusers)
    pixel UNet on (B, 3, 16, 16)            UNet2DConditionModel on latents (B, 4, 64, 64), AutoencoderKL decodes
    toy text encoder, (B, L, D) tokens      CLIPTextModel, (B, 77, 768) for SD v1.4
    diffusion.ddim_step                     DDIMScheduler.step(...).prev_sample
    thresholds calibrated on the toy        the official SD v1.4 ones: lambda_SS = 1, lambda_PR = 3, tau = 5

`denoise` is the sampling loop: at every step CFG's own batched UNet call gives eps_u and eps_p, and
`classifier_free_guidance`, `noise_magnitude`, `semantic_search` and `prompt_reanchor` (the same functions as the
toy's PRSS) decide per sample what to do with them. `generate` wraps it for a `StableDiffusionPipeline`.

Two helpers live in their own files and are importable from here too: `read_candidates` (sd_candidates.py, the
official code's jsonl of paraphrases) and `tiny_random_pipeline` (sd_tiny.py, a random pipeline for tests). So are
the methods published after PRSS, on diffusers' UNet with the toy's own math (sd_after_prss.py): Han et al.'s
`adjust_initial_latents` (sample from them with `denoise(..., apply_cfg_step=...)` for its batch-wise variant),
Asthana et al.'s `anisotropy_score_sd` and Bright Ending's `end_token_mask_sd` and `masked_magnitude_sd`.

diffusers (and transformers, for the text encoder) are optional: they are imported only inside the functions
that need them, and nothing in the toy imports this file. `pip install diffusers transformers`.
"""

import torch

from .diffusion import classifier_free_guidance
from .guidance.detect import noise_magnitude
from .guidance.pr import check_thresholds, prompt_reanchor
from .guidance.ss import semantic_search
# helpers that live in their own files; sd.read_candidates, sd.end_token_mask_sd etc. still work
from .sd_after_prss import (DiffusersEps, adjust_initial_latents, anisotropy_score_sd, end_token_index,  # noqa: F401
                            end_token_mask_sd, masked_magnitude_sd, recording_end_token_attention)
from .sd_candidates import read_candidates, resolve_candidates  # noqa: F401
from .sd_tiny import tiny_random_pipeline  # noqa: F401

METHODS = {
    "cfg": "plain classifier-free guidance on the prompt",
    "ss": "Semantic Prompt Search only: triggered samples get plain CFG on the chosen candidate",
    "prss": "SS + Prompt Re-anchoring: triggered samples re-anchor on the prompt, towards the chosen candidate",
}
PROMPT = -1  # the key of the prompt itself in the search (info["chosen"]); candidates are 0 .. n_s - 1
LAMBDA_SS, LAMBDA_PR, TAU = 1.0, 3.0, 5.0  # the official code's thresholds for SD v1.4 latents


# ----------------------------------------------------------------------------------------------------------
# The sampling loop, on a bare UNet and scheduler


def check_latents(unet, latents):
    """latents must be (B, C, h, w) with the UNet's in_channels C."""
    C = unet.config.in_channels
    if latents.dim() != 4 or latents.shape[1] != C:
        raise ValueError(f"latents must be (B, {C}, h, w) for this UNet, got {tuple(latents.shape)}")


def check_embeds(unet, name, embeds, batch=None, tokens=None):
    """embeds must be (N, L, D) with the UNet's cross_attention_dim D, N in (1, batch) when batch is given, and
    (L, D) = tokens (the prompt's) when tokens is given."""
    width = unet.config.cross_attention_dim
    if embeds.dim() != 3 or (batch is not None and embeds.shape[0] not in (1, batch)):
        rows = "N" if batch is None else f"1 or B = {batch} (the latents' batch)"
        raise ValueError(f"{name} must be ({rows}, L, D), got {tuple(embeds.shape)}")
    if embeds.shape[-1] != width:
        raise ValueError(f"{name} has embedding dim {embeds.shape[-1]} but the UNet's cross_attention_dim is "
                         f"{width}: encode with this model's own text encoder")
    if tokens is not None and embeds.shape[1:] != tokens:
        raise ValueError(f"{name} {tuple(embeds.shape)} must have the prompt's (L, D) = {tuple(tokens)}: encode "
                         f"both with the same tokenizer and text encoder")


def check_inputs(unet, latents, prompt_embeds, negative_prompt_embeds, method, guidance_scale,
                 num_inference_steps, candidate_embeds, lambda_ss, lambda_pr, tau):
    """Raise a ValueError that says what is wrong with denoise's arguments and how to fix it."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: choose one of {sorted(METHODS)}")
    check_latents(unet, latents)
    check_embeds(unet, "prompt_embeds", prompt_embeds, batch=len(latents))
    check_embeds(unet, "negative_prompt_embeds", negative_prompt_embeds, len(latents), prompt_embeds.shape[1:])
    if num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
    if method == "cfg":
        return
    if candidate_embeds is None or len(candidate_embeds) == 0:
        raise ValueError(f"method={method!r} needs candidate_embeds (n_s, L, D): the encoded paraphrases to search "
                         f"(to only measure magnitudes, use method='cfg' or first_step_magnitude)")
    check_embeds(unet, "candidate_embeds", candidate_embeds, tokens=prompt_embeds.shape[1:])
    if lambda_ss < 0:
        raise ValueError(f"lambda_ss must be >= 0, got {lambda_ss}")
    if method == "prss":
        check_thresholds(lambda_pr, tau, guidance_scale)


def cfg_predictions(unet, x_in, t, negative_prompt_embeds, prompt_embeds):
    """eps_u, eps_c: CFG's own UNet call, one batched forward on the 2B samples [uncond; cond].

    x_in (B, C, h, w) already scaled by the scheduler; embeds (B, L, D). Returns (B, C, h, w) x 2."""
    eps = unet(torch.cat([x_in, x_in]), t, encoder_hidden_states=torch.cat([negative_prompt_embeds,
                                                                             prompt_embeds])).sample
    return eps.chunk(2)


def search(unet, x_in, t, eps_u, magnitudes, candidate_embeds, lambda_ss, per_prompt=False):
    """SS at the first step: B SearchResults whose prompt is -1 (the prompt) or a candidate index.

    Candidate k is scored with one UNet call on every sample still searching, against that sample's eps_u;
    magnitudes (B,) are the prompt's own."""

    def score(k, rows):
        e_k = candidate_embeds[k:k + 1].expand(len(rows), -1, -1)                         # (n, L, D)
        return noise_magnitude(unet(x_in[rows], t, encoder_hidden_states=e_k).sample, eps_u[rows])

    return semantic_search(PROMPT, magnitudes, range(len(candidate_embeds)), score, lambda_ss, per_prompt)


@torch.no_grad()
def denoise(unet, scheduler, latents, prompt_embeds, negative_prompt_embeds, method="cfg", guidance_scale=7.5,
            num_inference_steps=50, candidate_embeds=None, lambda_ss=LAMBDA_SS, lambda_pr=LAMBDA_PR, tau=TAU,
            per_prompt=False, apply_cfg_step=None):
    """Sample x_0 from x_T = `latents` with CFG, SS only or PRSS (Chen et al., Alg. 1), decided per sample.

    latents (B, C, h, w), already scaled by scheduler.init_noise_sigma; prompt_embeds, negative_prompt_embeds
    (1 or B, L, D); candidate_embeds (n_s, L, D) or None (required by "ss" and "prss": no search without them).

    At the first step each sample's m = ||eps(x_T, e_p) - eps(x_T, e_0)|| decides (Wen et al.'s detector):
    m <= lambda_ss: untriggered, plain CFG at every step, bit for bit `method="cfg"`'s result and cost;
    otherwise SS picks e_ss (`semantic_search`), and every step adds a third UNet call on e_ss for the triggered
    samples: eps = prompt_reanchor(eps_u, eps_p, eps_ss) ("prss") or eps_u + s (eps_ss - eps_u) ("ss").
    per_prompt=True decides once for all B samples, on the RMS of their magnitudes (the official code's norm).
    apply_cfg_step (method "cfg" only): eps = eps_u for the steps i <= apply_cfg_step, CFG afterwards (Han et al.'s
    delayed CFG, for latents from `adjust_initial_latents(..., batch_wise=True)`; their official value is 4).

    Returns (latents (B, C, h, w), info) with info["triggered"] (B bools), info["chosen"] (B ints: index into
    candidate_embeds, -1 for the prompt itself), info["magnitudes"] (B,) the prompt's first-step m,
    info["scored"] (B dicts: key -> first-step m of everything the search scored) and info["trace"] (B, steps):
    m_t of the prompt each sample is guided towards (e_ss if triggered, else e_p)."""
    check_inputs(unet, latents, prompt_embeds, negative_prompt_embeds, method, guidance_scale,
                 num_inference_steps, candidate_embeds, lambda_ss, lambda_pr, tau)
    if apply_cfg_step is not None and method != "cfg":
        raise ValueError(f"apply_cfg_step (delayed CFG) goes with method='cfg' only, got method={method!r}")
    B = latents.shape[0]
    cond = prompt_embeds.expand(B, -1, -1)                                              # (B, L, D)
    uncond = negative_prompt_embeds.expand(B, -1, -1)                                   # (B, L, D)
    info = {"triggered": [False] * B, "chosen": [PROMPT] * B, "magnitudes": None, "scored": [], "trace": []}
    triggered = torch.zeros(B, dtype=torch.bool, device=latents.device)                # (B,)
    target = cond                                                                       # (B, L, D): e_ss

    scheduler.set_timesteps(num_inference_steps, device=latents.device)
    for i, t in enumerate(scheduler.timesteps):
        x_in = scheduler.scale_model_input(latents, t)                                  # (B, C, h, w)
        eps_u, eps_p = cfg_predictions(unet, x_in, t, uncond, cond)                     # (B, C, h, w) x 2
        eps = classifier_free_guidance(eps_u, eps_p, guidance_scale)
        if apply_cfg_step is not None and i <= apply_cfg_step:
            eps = eps_u                                                                 # delayed CFG: eps_u alone
        if i == 0:
            info["magnitudes"] = noise_magnitude(eps_p, eps_u)                          # (B,)
            info["scored"] = [{PROMPT: float(m)} for m in info["magnitudes"]]
            if method != "cfg":
                results = search(unet, x_in, t, eps_u, info["magnitudes"], candidate_embeds, lambda_ss, per_prompt)
                info["triggered"] = [r.triggered for r in results]
                info["chosen"] = [r.prompt for r in results]
                info["scored"] = [r.magnitudes for r in results]
                triggered = torch.tensor(info["triggered"], device=latents.device)
                target = torch.stack([cond[b] if k == PROMPT else candidate_embeds[k]
                                      for b, k in enumerate(info["chosen"])])
        eps_target = eps_p
        if triggered.any():  # the third prediction, on e_ss, only for the triggered samples
            eps_target = eps_p.clone()
            eps_target[triggered] = unet(x_in[triggered], t, encoder_hidden_states=target[triggered]).sample
            if method == "prss":
                guided = prompt_reanchor(eps_u, eps_p, eps_target, guidance_scale, lambda_pr, tau)
            else:
                guided = classifier_free_guidance(eps_u, eps_target, guidance_scale)
            eps = torch.where(triggered.view(-1, 1, 1, 1), guided, eps)                 # untriggered: CFG's own
        info["trace"].append(noise_magnitude(eps_target, eps_u))
        latents = scheduler.step(eps, t, latents).prev_sample
    info["trace"] = torch.stack(info["trace"], dim=1)                                   # (B, steps)
    return latents, info


@torch.no_grad()
def first_step_magnitude(unet, scheduler, latents, prompt_embeds, negative_prompt_embeds, num_inference_steps=50):
    """Wen et al.'s detection score: m = ||eps(x_T, e_p) - eps(x_T, e_0)|| at the first step, per prompt and x_T.

    latents (B, C, h, w); prompt_embeds (P, L, D), one row per prompt; negative_prompt_embeds (1, L, D).
    Returns (P, B). Each prompt goes through CFG's own call, so its row is bit for bit `denoise`'s
    info["magnitudes"] on the same latents: the scores a detector ranks are the ones PRSS triggers on."""
    check_latents(unet, latents)
    check_embeds(unet, "prompt_embeds", prompt_embeds)
    check_embeds(unet, "negative_prompt_embeds", negative_prompt_embeds, 1, prompt_embeds.shape[1:])
    B = latents.shape[0]
    scheduler.set_timesteps(num_inference_steps, device=latents.device)
    t = scheduler.timesteps[0]
    x_in = scheduler.scale_model_input(latents, t)                                      # (B, C, h, w)
    uncond = negative_prompt_embeds.expand(B, -1, -1)                                   # (B, L, D)
    rows = []
    for e_p in prompt_embeds:                                                           # (L, D)
        eps_u, eps_p = cfg_predictions(unet, x_in, t, uncond, e_p.expand(B, -1, -1))
        rows.append(noise_magnitude(eps_p, eps_u))                                      # (B,)
    return torch.stack(rows)                                                            # (P, B)


# ----------------------------------------------------------------------------------------------------------
# A StableDiffusionPipeline: prompts in, images out


def encode(pipe, prompts):
    """CLIP token embeddings of a list of strings: (len(prompts), 77, D) for SD v1.x."""
    return pipe.encode_prompt(prompts, pipe.device, 1, False)[0]


def initial_latents(pipe, scheduler, num_images, seed, height=None, width=None):
    """x_T (num_images, 4, height / 8, width / 8) for SD, drawn on the CPU from torch.Generator().manual_seed(seed)
    (the same x_T on every device), scaled by the scheduler's init_noise_sigma."""
    height = height or pipe.unet.config.sample_size * pipe.vae_scale_factor
    width = width or pipe.unet.config.sample_size * pipe.vae_scale_factor
    shape = (num_images, pipe.unet.config.in_channels, height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    return x_T.to(pipe.device, pipe.unet.dtype) * scheduler.init_noise_sigma


def ddim_scheduler(pipe):
    """The paper's sampler, DDIM, built from the pipeline's own scheduler config (SD v1.4 ships PNDM)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(pipe.scheduler.config)


@torch.no_grad()
def generate(pipe, prompt, method="prss", candidates=None, seed=0, num_images=1, negative_prompt="",
             guidance_scale=7.5, num_inference_steps=50, lambda_ss=LAMBDA_SS, lambda_pr=LAMBDA_PR, tau=TAU,
             per_prompt=False, height=None, width=None):
    """num_images images of `prompt` from a diffusers StableDiffusionPipeline, with DDIM and `method`.

    candidates: the user's paraphrases of the prompt, a list of strings or the path of the official code's jsonl
    (read_candidates); needed by "ss" and "prss". Returns (PIL images, info): info as `denoise`'s (its tensors
    as float32 on the CPU), plus info["prompts"], the prompt each sample was guided towards. No safety checker runs (the paper's code has none).
    """
    scheduler = ddim_scheduler(pipe)
    paraphrases = resolve_candidates(prompt, candidates)
    prompt_embeds, negative_embeds = encode(pipe, [prompt]), encode(pipe, [negative_prompt])  # (1, L, D) x 2
    candidate_embeds = encode(pipe, paraphrases) if paraphrases else None                # (n_s, L, D)
    latents = initial_latents(pipe, scheduler, num_images, seed, height, width)
    latents, info = denoise(pipe.unet, scheduler, latents, prompt_embeds, negative_embeds, method, guidance_scale,
                            num_inference_steps, candidate_embeds, lambda_ss, lambda_pr, tau, per_prompt)
    info["prompts"] = [prompt if k == PROMPT else paraphrases[k] for k in info["chosen"]]
    info["magnitudes"], info["trace"] = info["magnitudes"].float().cpu(), info["trace"].float().cpu()
    images = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample          # (B, 3, H, W) in [-1, 1]
    return pipe.image_processor.postprocess(images, output_type="pil"), info


@torch.no_grad()
def detection_score(pipe, prompts, seed=0, num_images=1, negative_prompt="", num_inference_steps=50,
                     height=None, width=None):
    """Wen et al.'s first-step detection score of each prompt, averaged over the num_images x_T that
    `generate(..., seed=seed, num_images=num_images)` would draw: a (P,) float32 CPU tensor, ready for an ROC."""
    scheduler = ddim_scheduler(pipe)
    negative = encode(pipe, [negative_prompt])                                            # (1, L, D)
    latents = initial_latents(pipe, scheduler, num_images, seed, height, width)
    m = first_step_magnitude(pipe.unet, scheduler, latents, encode(pipe, list(prompts)), negative,
                              num_inference_steps)
    return m.float().mean(dim=1).cpu()                                                    # (P,)


def sd_v14_ddim():
    """DDIM with SD v1.4's noise schedule (scaled_linear betas 0.00085 to 0.012, 1000 steps): the paper's sampler."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1)


def load_pipeline(model, device=None, torch_dtype=None):
    """StableDiffusionPipeline.from_pretrained(model) without the safety checker, on `device` (default: cuda if
    available). model: a local folder or a hub id such as "CompVis/stable-diffusion-v1-4" (a hub id downloads
    about 4 GB into the Hugging Face cache the first time)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(model, safety_checker=None, requires_safety_checker=False,
                                                   torch_dtype=torch_dtype)
    return pipe.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
