# %% [markdown]
# # 02 · The text encoder: from words to the vectors the UNet reads
#
# Stable Diffusion turns a prompt into vectors with the text half of CLIP (Radford et al. 2021, "Learning
# transferable visual models from natural language supervision"), frozen, and its UNet reads the per-token
# hidden states through cross-attention. prss-mini does the same in miniature (`prss_mini/text_encoder.py`):
#
# 1. a word-level `Tokenizer` over the toy grammar's vocabulary: `<bos> words <eos> <pad> ...`, 24 ids;
# 2. a small transformer `TextEncoder`: ids (B, L) -> per-token states (B, L, D) and a pooled embedding (B, E),
#    the final state at `<eos>`, projected (as in CLIP);
# 3. CLIP-style pre-training against a small image encoder (`train_clip`), then frozen.
#
# The UNet never sees the pooled embedding: it reads all L token states. That detail matters for memorization.

# %%
from common import get_run, out_dir, show

import math
import os

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

from prss_mini import captions, prompts
from prss_mini.checkpoint import load_checkpoint
from prss_mini.guidance.paraphrase import paraphrases
from prss_mini.pipeline import ToyPipeline
from prss_mini.text_encoder import clip_loss

RUN = get_run()
OUT = out_dir("02_text_encoder")
FIGURES = ["clip_loss.png", "similarity.png"]
pipe = ToyPipeline(RUN)  # loads RUN/text_encoder.pt (and the UNet, unused here)
tok, encoder = pipe.tokenizer, pipe.text_encoder

# %% [markdown]
# ## Tokens
#
# One id per word; `,` and `:` are words of their own. Every prompt becomes exactly `max_length` ids. A word
# outside the toy vocabulary is an error that names it: the toy encoder has never seen it, so it refuses
# rather than guess.

# %%
text = "a picture of a crimson disc at the upper left , photo by acme"
ids = tok.encode(text)
print("ids:   ", ids)
print("tokens:", [tok.vocab[i] for i in ids])
print("decode:", repr(tok.decode(ids)))
assert tok.decode(ids) == text, "the round trip text -> ids -> text must give the text back"
print("the empty prompt e_0 (CFG's unconditional branch):", [tok.vocab[i] for i in tok.encode("")[:3]], "...")
try:
    tok.encode("a red banana in the top left")
except ValueError as e:
    print("ValueError:", e)

# %% [markdown]
# ## Per-token states and the pooled embedding

# %%
with torch.no_grad():
    states, pooled = encoder(tok([text, ""]))
print("per-token states", tuple(states.shape), "(B, L, D): what the UNet cross-attends to")
print("pooled embedding", tuple(pooled.shape), "(B, E): the state at <eos>, projected; used only by CLIP training")
assert torch.allclose(pipe.encode([text]), states[:1], atol=1e-5), "pipe.encode must give the encoder's states"
print("pipe.encode gives the same states: checked")

# %% [markdown]
# ## How the encoder was trained: the CLIP objective
#
# A batch holds B (image, caption) pairs. Both encoders map into one space of dimension E; after L2
# normalization, `logits = exp(logit_scale) * image_emb @ text_emb.T` is a (B, B) table of scaled cosines.
# The right caption of image i is caption i, so each row, and each column, is a B-way classification with the
# answer on the diagonal (symmetric InfoNCE, CLIP's Fig. 3):
#
#     loss = ( cross_entropy(logits, arange(B)) + cross_entropy(logits.T, arange(B)) ) / 2
#
# Guessing gives log B. The only way down is to put captions near the images they describe, so captions of the
# same picture end up near each other, whatever their words. `train_clip` ran this on one (image, caption) pair
# per distinct training image; `train_toy.py` stored its losses in RUN/text_encoder.pt.

# %%
g = torch.Generator().manual_seed(0)
B, E = 128, 64
image_emb = torch.randn(B, E, generator=g)
scale = torch.tensor(math.log(1 / 0.07))  # CLIP's initial temperature
matching = image_emb + 0.1 * torch.randn(B, E, generator=g)  # caption i describes image i
unrelated = torch.randn(B, E, generator=g)
print(f"clip_loss, captions = images + small noise: {clip_loss(image_emb, matching, scale).item():.3f}")
print(f"clip_loss, unrelated captions:             {clip_loss(image_emb, unrelated, scale).item():.3f}"
      f"   (chance: log B = {math.log(B):.3f})")

losses = load_checkpoint(os.path.join(RUN, "text_encoder.pt"))["losses"]
fig, ax = plt.subplots(figsize=(5, 3))
ax.plot(losses, lw=0.8)
ax.axhline(math.log(128), color="k", ls=":", label="chance, log 128 (train_clip's batch)")
ax.set(xlabel="step", ylabel="CLIP loss", title="text encoder pre-training")
ax.legend(fontsize=8)
fig.tight_layout()
show(fig, os.path.join(OUT, "clip_loss.png"), dpi=110)
print(f"saved {os.path.join(OUT, 'clip_loss.png')}: CLIP loss {losses[0]:.3f} -> {np.mean(losses[-20:]):.3f}")
print("look at clip_loss.png: the loss should start near chance and fall; it cannot reach 0, since many training "
      "pictures share the same described content and differ only in what captions never say.")

# %% [markdown]
# ## Meaning vs wording
#
# Take a memorized caption M (from the global group), three paraphrases P1-P3 (same meaning, other words),
# S = M with only its colour word swapped (same wording, other meaning) and O, a caption of another picture.
# We compare them two ways:
#
# * pooled embeddings: the space CLIP trained to match images, so it should group by **meaning**;
# * per-token states, flattened to one (L * D) vector: what the UNet reads. It carries the **wording** (which
#   word sits at which position) as well as the meaning, so paraphrases should sit much further from M here than
#   in the pooled space.
#
# A model memorizes the exact token sequence it saw over and over. If paraphrases are far from M in token-state
# space, they need not trigger the memorized image, while they still describe the same picture: that is the
# premise of Semantic Prompt Search.

# %%
data = pipe.dataset
glob = prompts.memorized_captions(data)
untitled = [c for c in glob if captions.parse_caption(c)[1] is None]
memorized = (untitled or glob)[0]
attrs = captions.parse_caption(memorized)[0]
new_colour = captions.COLOURS[(attrs[1] + 1) % len(captions.COLOURS)]
old_words = set(captions.COLOUR_WORDS[captions.COLOURS[attrs[1]]])
swapped = " ".join(new_colour if w in old_words else w for w in memorized.split())
swapped = swapped.replace(f"an {new_colour}", f"a {new_colour}")  # "an amber" -> "a blue", not "an blue"
other = captions.make_caption([(attrs[0] + 1) % 4, (attrs[1] + 2) % 5, (attrs[2] + 1) % 4], np.random.default_rng(0))
prompts = [memorized] + paraphrases(memorized, n=3, seed=0) + [swapped, other]
labels = ["M", "P1", "P2", "P3", "S", "O"]
for label, p in zip(labels, prompts):
    print(f"{label:3s} {p!r}")

with torch.no_grad():
    states, pooled = encoder(tok(prompts))                                # (6, L, D), (6, E)
pooled_sim = (F.normalize(pooled, dim=-1) @ F.normalize(pooled, dim=-1).T).numpy()
flat = F.normalize(states.flatten(1), dim=-1)                             # (6, L * D)
token_sim = (flat @ flat.T).numpy()

fig, axes = plt.subplots(1, 2, figsize=(9, 4))
titles = ("pooled embedding (CLIP space)", "per-token states (what the UNet reads)")
for ax, sim, title in zip(axes, (pooled_sim, token_sim), titles):
    im = ax.imshow(sim, vmin=-1, vmax=1, cmap="coolwarm")
    for i in range(len(sim)):
        for j in range(len(sim)):
            ax.text(j, i, f"{sim[i, j]:.2f}", ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_title(title, fontsize=10)
fig.colorbar(im, ax=axes, shrink=0.8, label="cosine similarity")
show(fig, os.path.join(OUT, "similarity.png"), dpi=110)
print(f"saved {os.path.join(OUT, 'similarity.png')}")

for name, sim in (("pooled", pooled_sim), ("token states", token_sim)):
    print(f"{name:12s}: M vs paraphrases {sim[0, 1:4].mean():.3f} | M vs S (one word swapped) {sim[0, 4]:.3f} "
          f"| M vs O {sim[0, 5]:.3f}")
meaning = pooled_sim[0, 1:4].mean() > pooled_sim[0, 4]
wording = token_sim[0, 1:4].mean() < token_sim[0, 4]
print(f"pooled space ranks paraphrases above the one-word swap: {meaning}; token states rank the one-word swap "
      f"above the paraphrases: {wording}")
print("look at similarity.png, row M: compare the P columns with S in the two panels.")

# %% [markdown]
# Two things to take away (check them against the numbers printed above). First, the pooled space is where
# "same meaning" should live: a search for nearby captions there could even stand in for the paraphraser.
# Second, the UNet reads token states, where a paraphrase is a much more different input than in pooled space
# (on the cpu run the paraphrases' cosine to M drops from about 0.9 pooled to about 0.6 in token states; the
# encoder still mixes meaning into every position, so a one-word swap of meaning is not closer than they are). Tutorial 04 measures whether
# paraphrases of memorized captions copy; exercise 2 of tutorial 05 how the memorization detector scores them.
#
# ## Exercises
#
# 1. Add a local caption with and without its credit ", photo by acme" to `prompts`. How far does the credit
#    move each representation? The credit is what triggers the stamp (local memorization).
# 2. Replace the flattened cosine by the cosine of the `<eos>` state alone (`states[i, eos_i]`). Is that state
#    closer to the pooled picture or to the token picture? (It is the pooled embedding before the projection.)
# 3. Encode a prompt of 23 words. Read the error: how many words fit, and why two fewer than `max_length`?
