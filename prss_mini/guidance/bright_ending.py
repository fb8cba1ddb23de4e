"""Bright Ending, BE (Chen et al., ICLR 2025): where in the image is memorization? The end token's attention.

In Stable Diffusion the `<eos>` token's hidden state sums the prompt up (CLIP's text transformer is causal), and at
the last sampling step of a memorized prompt its cross-attention map is bright where the copied content sits.
BE keeps that map from one plain CFG run, per sample on its own x_T:

    M = mean over heads and over the down path's cross-attention layers of the highest resolution of
        softmax(q k^T / sqrt(d))[..., eos]          at the last sampling step, for the prompt's branch

and weighs the magnitude with it: m_masked = ||(eps_c - eps_u) * M|| / mean(M). Where it replaces Wen's magnitude:
detection (`detection_score`), PE + BE (pe_be.py) and PRSS + BE (prss_be.py).
"""

import numpy as np
import torch
import torch.nn.functional as F

from ..diffusion import classifier_free_guidance, predict_noise
from ..unet import CrossAttention
from .rows import encode_rows, prompt_rows


def down_cross_attention(unet):
    """The CrossAttention modules of the UNet's down path (encoder), in order."""
    while not hasattr(unet, "down"):  # through wrappers (EpsilonModel, evaluation counters)
        unet = getattr(unet, "model", None) or getattr(unet, "unet")
    return [m for block in unet.down for m in block.modules() if isinstance(m, CrossAttention)]


@torch.no_grad()
def end_token_mask(pipe, prompt, x_T):
    """M per sample: (B, H, W), non-negative, at the image's resolution (nearest upsampling of the attention grid).

    Runs plain CFG from x_T (B, C, H, W) and records, at the last step, the prompt branch's attention of every
    down-path cross-attention layer; the layers of the finest grid are averaged over heads and layers, at the
    `<eos>` position of each sample's prompt."""
    layers = down_cross_attention(pipe.unet)
    B, steps = len(x_T), pipe.sampling["num_inference_steps"]
    cond = encode_rows(pipe, prompt, B)                                                 # (B, L, D)
    maps = []

    def hook(x_t, t, i):
        for m in layers:
            m.record = i == steps - 1
        eps_u, eps_c = predict_noise(pipe.unet, x_t, t, [pipe.empty, cond])
        if i == steps - 1:
            maps.extend(m.weights[B:] for m in layers)                                  # prompt branch: (B, h, N, L)
        return classifier_free_guidance(eps_u, eps_c, pipe.sampling["guidance_scale"])

    try:
        pipe.run_hook(hook, x_T, steps)
    finally:
        for m in layers:
            m.record, m.weights = False, None
    eos = (pipe.tokenizer(prompt_rows(prompt, B)) == pipe.tokenizer.eos_id).float().argmax(1)  # (B,)
    return end_token_map(maps, eos, x_T.shape[-2:]).cpu()


def end_token_map(maps, eos, size):
    """M from the prompt branch's recorded attention: the layers of the finest grid averaged over heads and layers,
    at each sample's <eos> position, upsampled (nearest) to size = (H, W).

    maps: list of (B, heads, N, L) softmax maps, N = h * w query positions (h / w = H / W); eos: (B,) ints.
    Returns (B, H, W)."""
    finest = max(w.shape[2] for w in maps)
    mask = torch.stack([w.mean(1) for w in maps if w.shape[2] == finest]).mean(0)     # (B, N, L)
    B = len(mask)
    mask = mask[torch.arange(B), :, eos]                                                # (B, N)
    H, W = size
    h = int(round((finest * H / W) ** 0.5))                                             # the grid: h x (N / h)
    return F.interpolate(mask.view(B, 1, h, finest // h), size=(H, W), mode="nearest")[:, 0]


@torch.no_grad()
def detection_score(pipe, prompts, seeds=(0,), num_images=1):
    """BE's detection score of each prompt: the masked magnitude at the detection timestep, each x_T under the mask
    of its own plain CFG run, averaged over `num_images` x_T per seed: (P,). The first-step counterpart of Wen's
    score (detect.detection_score), but no longer free before sampling: the mask costs one plain CFG run."""
    P, scores = len(prompts), []
    for s in seeds:
        x_T = pipe.initial_noise(num_images, s).repeat(P, 1, 1, 1)                       # (P * K, C, H, W)
        mask = end_token_mask(pipe, list(prompts), x_T)                                   # (P * K, H, W)
        eps_u, eps_c = predict_noise(pipe.unet, x_T, pipe.detection_timestep,
                                     [pipe.empty, encode_rows(pipe, list(prompts), len(x_T))])
        scores.append(masked_magnitude(eps_c, eps_u, mask).view(P, num_images).mean(1))
    return torch.stack(scores).mean(0).cpu()


def masked_magnitude(eps_cond, eps_uncond, mask):
    """||(eps_c - eps_u) * M|| / mean(M) per sample: (B, C, H, W) x 2 and M (B, H, W) -> (B,)."""
    m = mask.to(eps_cond.device)[:, None]                                               # (B, 1, H, W)
    return ((eps_cond - eps_uncond) * m).flatten(1).norm(dim=1) / m.flatten(1).mean(1)


def mass_on(mask, region):
    """The share of each mask's total on a boolean region (H, W): (B, H, W) -> (B,). Against the region's area
    (region.mean()) it says whether the map localizes there: equal shares mean a flat map."""
    region = torch.as_tensor(np.asarray(region), dtype=mask.dtype)
    return (mask * region).flatten(1).sum(1) / mask.flatten(1).sum(1)
