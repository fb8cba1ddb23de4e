"""A small text-conditional UNet that predicts the noise eps in x_t.

The architecture is the UNet of Ronneberger et al. (2015) as adapted for
diffusion by DDPM (Ho et al., 2020): an encoder that halves the resolution
level by level, a decoder that mirrors it, and skip connections between them,
with the timestep injected into every residual block. Text conditioning is by
cross-attention, as in Latent Diffusion / Stable Diffusion (Rombach et al.,
2022): image positions are queries, text tokens are keys and values. This is
the same design as Stable Diffusion's UNet, in miniature.

    eps = UNet(config)(x_t, t, context)   # (B, C, H, W), (B,), (B, L, D) -> (B, C, H, W)
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class UNetConfig:
    """The UNet's shape. A run reads the knobs from prss_mini/config.py (`unet_config`), where their defaults live."""
    image_size: int                   # H = W of the images (checked against the levels below)
    base_channels: int
    channel_mults: tuple              # channels at level i = base_channels * channel_mults[i]
    num_res_blocks: int
    attn_levels: tuple                # levels (indices into channel_mults) that get cross-attention
    context_dim: int                  # D of the text embeddings
    in_channels: int = 3
    num_heads: int = 4
    dropout: float = 0.0

    def __post_init__(self):
        _check_config(self)


def count_parameters(module):
    """Number of trainable parameters in a module."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def group_norm(channels, channels_per_group=8):
    """GroupNorm with about 8 channels per group (Stable Diffusion: 320 channels in 32 groups, 10 per group).

    Not a fixed 32 groups: on our thin layers (8 channels) that would be one channel per group, i.e.
    InstanceNorm, which erases every channel's mean over the image, and with it the picture's colours."""
    groups = max(1, channels // channels_per_group)
    while channels % groups:  # a divisor of the channel count (e.g. 24 after a skip concat)
        groups -= 1
    return nn.GroupNorm(groups, channels)


def timestep_embedding(t, dim):
    """Sinusoidal embedding of integer timesteps, (B,) -> (B, dim), as in Transformers/DDPM.

    Frequencies go geometrically from 1 to 1/10000, so nearby timesteps get similar
    vectors and the network can tell both fine and coarse differences apart.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]                     # (B, half)
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)  # (B, 2*half)
    return F.pad(emb, (0, dim % 2))                             # odd dim: pad one zero


class ResBlock(nn.Module):
    """Two 3x3 convs with a residual connection; the time embedding is added in between."""

    def __init__(self, in_ch, out_ch, time_dim, dropout=0.0):
        super().__init__()
        self.norm1 = group_norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.time_proj = nn.Linear(time_dim, out_ch)
        self.norm2 = group_norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        # 1x1 conv so the residual can be added when the channel count changes.
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x, temb):
        h = self.conv1(F.silu(self.norm1(x)))             # (B, out, H, W)
        # Per-channel bias from t: tells every block how noisy its input is.
        h = h + self.time_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class CrossAttention(nn.Module):
    """Every image position attends over the text tokens; the result is added back (residual)."""

    def __init__(self, channels, context_dim, num_heads):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels ({channels}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.norm = group_norm(channels)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(context_dim, channels)
        self.to_v = nn.Linear(context_dim, channels)
        self.proj_out = nn.Linear(channels, channels)
        self.record = False   # True: keep the last attention weights in self.weights (Bright Ending reads them)
        self.weights = None

    def forward(self, x, context):
        B, C, H, W = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, H*W, C): one token per pixel
        # (B, N, C) -> (B, heads, N, C/heads)
        split = lambda z: z.view(B, z.shape[1], self.num_heads, C // self.num_heads).transpose(1, 2)
        q = split(self.to_q(tokens))                      # queries from the image
        k, v = split(self.to_k(context)), split(self.to_v(context))  # keys/values from the text
        # softmax(q k^T / sqrt(d)) v, written out: clearer than F.scaled_dot_product_attention,
        # and on small CPU tensors that kernel was up to 10x slower for some head sizes.
        scale = (C // self.num_heads) ** -0.5
        weights = (q @ k.transpose(-2, -1) * scale).softmax(dim=-1)  # (B, heads, H*W, L)
        if self.record:
            self.weights = weights.detach()
        out = weights @ v                                 # (B, heads, H*W, C/heads)
        out = self.proj_out(out.transpose(1, 2).reshape(B, H * W, C))
        return x + out.transpose(1, 2).reshape(B, C, H, W)


class ResAttnBlock(nn.Module):
    """A ResBlock, followed by CrossAttention on levels that have it."""

    def __init__(self, in_ch, out_ch, time_dim, context_dim, num_heads, use_attn, dropout):
        super().__init__()
        self.res = ResBlock(in_ch, out_ch, time_dim, dropout)
        self.attn = CrossAttention(out_ch, context_dim, num_heads) if use_attn else None

    def forward(self, x, temb, context):
        x = self.res(x, temb)
        return self.attn(x, context) if self.attn is not None else x


class Downsample(nn.Module):
    """Halve H and W with a stride-2 conv (learned, unlike pooling)."""

    def __init__(self, ch):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv(x)


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour upsampling, then a conv to smooth the blocky result."""

    def __init__(self, ch):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class UNet(nn.Module):
    """eps_theta(x_t, t, context): predicts the noise that was added to x_0 to get x_t."""

    def __init__(self, config):
        super().__init__()
        self.config = c = config
        chans = [c.base_channels * m for m in c.channel_mults]
        # Sinusoid and MLP both 4*base wide (DDPM feeds a base-wide sinusoid): small presets
        # have base=8, and 4 frequencies would be too coarse to tell 1000 timesteps apart.
        self.time_dim = time_dim = 4 * c.base_channels
        block = lambda i, o, lvl: ResAttnBlock(i, o, time_dim, c.context_dim, c.num_heads,
                                               lvl in c.attn_levels, c.dropout)

        self.time_mlp = nn.Sequential(nn.Linear(time_dim, time_dim), nn.SiLU(),
                                      nn.Linear(time_dim, time_dim))
        self.conv_in = nn.Conv2d(c.in_channels, chans[0], 3, padding=1)

        # Encoder. skip_chans records the channels of every activation the decoder will concat.
        self.down = nn.ModuleList()
        skip_chans, ch = [chans[0]], chans[0]
        for lvl, out_ch in enumerate(chans):
            for _ in range(c.num_res_blocks):
                self.down.append(block(ch, out_ch, lvl))
                ch = out_ch
                skip_chans.append(ch)
            if lvl < len(chans) - 1:
                self.down.append(Downsample(ch))
                skip_chans.append(ch)

        # Bottleneck, at the lowest resolution: always with cross-attention.
        self.mid = nn.ModuleList([
            ResAttnBlock(ch, ch, time_dim, c.context_dim, c.num_heads, True, c.dropout),
            ResAttnBlock(ch, ch, time_dim, c.context_dim, c.num_heads, False, c.dropout),
        ])

        # Decoder: one more block per level than the encoder, so every skip is consumed.
        self.up = nn.ModuleList()
        for lvl in reversed(range(len(chans))):
            for _ in range(c.num_res_blocks + 1):
                self.up.append(block(ch + skip_chans.pop(), chans[lvl], lvl))
                ch = chans[lvl]
            if lvl > 0:
                self.up.append(Upsample(ch))

        self.norm_out = group_norm(ch)
        self.conv_out = nn.Conv2d(ch, c.in_channels, 3, padding=1)
        # Zero init: the untrained model predicts eps = 0, and each block starts as near-identity.
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x, t, context):
        """x: (B, C, H, W) noisy images, t: (B,) long timesteps, context: (B, L, D) text tokens."""
        _check_inputs(self.config, x, t, context)
        temb = self.time_mlp(timestep_embedding(t, self.time_dim))  # (B, 4*base)

        h = self.conv_in(x)                                  # (B, base, H, W)
        skips = [h]
        for layer in self.down:
            h = layer(h, temb, context) if isinstance(layer, ResAttnBlock) else layer(h)
            skips.append(h)

        for layer in self.mid:
            h = layer(h, temb, context)                      # (B, C_low, H/f, W/f)

        for layer in self.up:
            if isinstance(layer, ResAttnBlock):
                # Skips carry fine spatial detail the bottleneck lost.
                h = layer(torch.cat([h, skips.pop()], dim=1), temb, context)
            else:
                h = layer(h)

        return self.conv_out(F.silu(self.norm_out(h)))       # (B, C, H, W)


# ----------------------------------------------------------------------------------------------------------
# Input checks, kept out of the way of the network above: each raises a ValueError that says what to change


def _check_config(c):
    """UNetConfig's rules: positive widths, an image_size every level can halve, attn_levels that exist, and
    channels that split into num_heads on every level with cross-attention."""
    levels, factor = len(c.channel_mults), 2 ** (len(c.channel_mults) - 1)
    if levels < 1 or c.base_channels < 1 or min(c.channel_mults) < 1:
        raise ValueError(f"need base_channels >= 1 and channel_mults of positive ints, got {c.base_channels}, "
                         f"{tuple(c.channel_mults)}")
    if c.image_size % factor:
        raise ValueError(f"image_size ({c.image_size}) must be divisible by {factor}: {levels} levels halve it "
                         f"{levels - 1} times (channel_mults={tuple(c.channel_mults)})")
    if any(not 0 <= lvl < levels for lvl in c.attn_levels):
        raise ValueError(f"attn_levels {tuple(c.attn_levels)} must be level indices in [0, {levels})")
    for lvl in (*c.attn_levels, levels - 1):  # the bottleneck always has cross-attention
        if (c.base_channels * c.channel_mults[lvl]) % c.num_heads:
            raise ValueError(f"level {lvl} has {c.base_channels * c.channel_mults[lvl]} channels, not "
                             f"divisible by num_heads={c.num_heads}: change base_channels or channel_mults")


def _check_inputs(c, x, t, context):
    """UNet.forward's inputs for config c: x (B, in_channels, H, W) with H, W halvable, t (B,), context (B, L, D)."""
    factor = 2 ** (len(c.channel_mults) - 1)
    if x.ndim != 4 or x.shape[1] != c.in_channels:
        raise ValueError(f"x must be (B, {c.in_channels}, H, W), got {tuple(x.shape)}")
    if x.shape[2] % factor or x.shape[3] % factor:
        raise ValueError(f"x's H and W must be divisible by {factor} (2**(levels-1)) "
                         f"for {len(c.channel_mults)} levels, got {tuple(x.shape[2:])} "
                         f"(config.image_size={c.image_size})")
    if t.shape != (x.shape[0],):
        raise ValueError(f"t must be ({x.shape[0]},) to match x's batch, got {tuple(t.shape)}")
    if context.ndim != 3 or context.shape[0] != x.shape[0] or context.shape[2] != c.context_dim:
        raise ValueError(f"context must be (B={x.shape[0]}, L, D={c.context_dim}), "
                         f"got {tuple(context.shape)}")
