"""Word tokenizer and a tiny CLIP-style text encoder.

Stable Diffusion conditions its UNet on the per-token hidden states of a frozen CLIP text encoder (Radford et
al., 2021). We do the same in miniature: a word-level tokenizer over the toy grammar, a small transformer
pre-trained contrastively against a small image encoder on the toy's (image, caption) pairs, then frozen.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from .captions import split_words, vocabulary

SPECIALS = ("<pad>", "<bos>", "<eos>")
PAD_ID, BOS_ID, EOS_ID = (SPECIALS.index(s) for s in SPECIALS)


class Tokenizer:
    """Word-level tokenizer: `<bos> word word ... <eos> <pad> ...`, always `max_length` ids long."""

    def __init__(self, words=None, max_length=24):
        self.vocab = list(SPECIALS) + list(words if words is not None else vocabulary())
        self.ids = {w: i for i, w in enumerate(self.vocab)}
        self.max_length = max_length
        self.pad_id, self.bos_id, self.eos_id = PAD_ID, BOS_ID, EOS_ID

    @staticmethod
    def split(text):
        """Lower-case words and the punctuation marks `,` and `:` as their own tokens (captions.split_words)."""
        return split_words(text)

    def encode(self, text):
        """One prompt -> list of `max_length` token ids. Unknown words raise a ValueError that names them."""
        if not isinstance(text, str):
            raise ValueError(f"a prompt must be a string, got {type(text).__name__}")
        words = self.split(text)
        unknown = [w for w in words if w not in self.ids]
        if unknown:
            raise ValueError(f"unknown word(s) {unknown} in prompt {text!r}. The toy vocabulary has "
                             f"{len(self.vocab) - len(SPECIALS)} words: see prss_mini.captions.vocabulary().")
        if len(words) + 2 > self.max_length:
            raise ValueError(f"prompt {text!r} has {len(words)} words; at most {self.max_length - 2} fit")
        ids = [self.bos_id] + [self.ids[w] for w in words] + [self.eos_id]
        return ids + [self.pad_id] * (self.max_length - len(ids))

    def __call__(self, texts):
        """A list of prompts -> LongTensor (B, max_length)."""
        if isinstance(texts, str):
            texts = [texts]
        return torch.tensor([self.encode(t) for t in texts], dtype=torch.long)

    def decode(self, ids):
        words = [self.vocab[int(i)] for i in ids if int(i) not in (self.pad_id, self.bos_id, self.eos_id)]
        return " ".join(words)


@dataclass
class TextEncoderConfig:
    dim: int               # context_dim of the UNet's cross-attention (config.py: text_dim)
    layers: int            # config.py: text_layers
    vocab_size: int = len(SPECIALS) + len(vocabulary())
    max_length: int = 24
    heads: int = 4
    embed_dim: int = 64    # the shared CLIP space
    causal: bool = True    # config.py: text_causal. CLIP's text transformer is causal (each token sees only those
                           # before it): the <bos> state is one constant and the <eos> state sums the prompt up

    def __post_init__(self):
        if self.dim % self.heads:
            raise ValueError(f"text_dim ({self.dim}) must be divisible by the text encoder's {self.heads} heads")


class TextEncoder(nn.Module):
    """A small transformer: token ids (B, L) -> per-token states (B, L, D) and a pooled embedding (B, E).

    As in CLIP, the pooled embedding is the final state at the `<eos>` token, projected to the shared space, and
    with `causal` (the default) token i attends to tokens 0..i only, as in CLIP's text transformer."""

    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.position_embedding = nn.Parameter(torch.randn(cfg.max_length, cfg.dim) * 0.02)
        layer = nn.TransformerEncoderLayer(cfg.dim, cfg.heads, 4 * cfg.dim, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.final_norm = nn.LayerNorm(cfg.dim)
        self.projection = nn.Linear(cfg.dim, cfg.embed_dim, bias=False)

    def forward(self, ids):
        x = self.token_embedding(ids) + self.position_embedding[: ids.shape[1]]        # (B, L, D)
        # Padding is masked inside the encoder; the UNet later sees every position, as SD's UNet does.
        L = ids.shape[1]
        mask = torch.ones(L, L, dtype=torch.bool, device=ids.device).triu(1) if self.cfg.causal else None  # True: hidden
        x = self.final_norm(self.transformer(x, mask=mask, src_key_padding_mask=ids == PAD_ID,
                                             is_causal=self.cfg.causal))                  # (B, L, D)
        eos = (ids == EOS_ID).float().argmax(dim=1)                                          # (B,)
        pooled = self.projection(x[torch.arange(len(ids)), eos])                        # (B, E)
        return x, pooled


class ImageEncoder(nn.Module):
    """A small CNN: images (B, 3, H, W) in [-1, 1] -> embedding (B, E). Used for CLIP training and the judges."""

    def __init__(self, embed_dim=64, width=32, out_dim=None, depth=1):
        """depth: 3x3 convs at each of the two finest resolutions; a second one reads a shape's outline through the
        background's grain (the judges use 2)."""
        super().__init__()
        extra = lambda ch: [m for _ in range(depth - 1) for m in (nn.Conv2d(ch, ch, 3, padding=1), nn.GELU())]
        self.net = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.GELU(), *extra(width),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.GELU(), *extra(2 * width),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1), nn.GELU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(8 * width, out_dim or embed_dim))

    def forward(self, images):
        return self.net(images)


def clip_loss(image_emb, text_emb, logit_scale):
    """Symmetric InfoNCE of CLIP (Radford et al. 2021, Fig. 3): the i-th image belongs to the i-th caption."""
    image_emb, text_emb = F.normalize(image_emb, dim=-1), F.normalize(text_emb, dim=-1)
    logits = logit_scale.exp() * image_emb @ text_emb.T                                # (B, B)
    labels = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def train_clip(text_encoder, image_encoder, images, captions, tokenizer, steps=600, batch_size=128, lr=2e-3,
               generator=None, device="cpu", progress=True):
    """Contrastive pre-training of both encoders on (image, caption) pairs. images: float (N, 3, H, W) in [-1, 1].

    Returns the list of losses. Both modules are trained in place."""
    ids = tokenizer(list(captions))
    logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    params = list(text_encoder.parameters()) + list(image_encoder.parameters()) + [logit_scale]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    losses = []
    for _ in tqdm(range(steps), desc="CLIP pre-training", disable=not progress):
        batch = torch.randint(len(ids), (batch_size,), generator=generator)
        _, text_emb = text_encoder(ids[batch].to(device))
        loss = clip_loss(image_encoder(images[batch].to(device)), text_emb, logit_scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            logit_scale.clamp_(0, math.log(100))
        losses.append(loss.item())
    return losses
