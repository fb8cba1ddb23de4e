# %% [markdown]
# # 01 · The toy world: data built to be memorized
#
# Text-to-image diffusion models sometimes reproduce training images. Somepalli et al. (CVPR 2023, "Diffusion
# art or digital forgery?"; NeurIPS 2023, "Understanding and mitigating copying") and Carlini et al. (USENIX
# 2023, "Extracting training data from diffusion models") found that the copied images are mostly the ones
# that were *duplicated* in the training set. To study a defence like PRSS we need a model that copies, and we
# need to know the answer key: which prompts are memorized and which image each one copies. So prss-mini
# builds a small world where memorization happens on purpose (`prss_mini/captions.py` and `prss_mini/world.py`).
#
# Every picture is 16x16: one hard-edged coloured shape (what the caption names: shape, colour, position) on a
# two-tone background with a fine grain (what no caption names). The training set has three groups:
#
# | group | what it holds | what a model will memorize |
# |---|---|---|
# | general | many unique images, each caption drawn afresh from a small grammar | nothing (the control) |
# | global | a few images, each repeated many times under ONE caption string | the whole image (global) |
# | global, titled | as global, the caption starts with a title word; a few copies say it in other words | the image, also from most paraphrases (the hard cases) |
# | local | different images, captions ending in "photo by acme", a centred stamp | only the stamp (local) |
#
# Held-out prompts name (shape, colour, position) combinations that never occur in training: a second control.
# This tutorial uses no model, only the data.

# %%
from common import out_dir, quick, show, show_rows

import os

import matplotlib.pyplot as plt
import numpy as np

from prss_mini import captions, images, prompts, world
from prss_mini.config import make_config, world_config
from prss_mini.guidance.paraphrase import paraphrases, same_meaning

OUT = out_dir("01_toy_world")
FIGURES = ["groups.png", "same_caption_different_images.png", "stamp.png"]


# %% [markdown]
# ## Build the world
#
# `world_config(make_config("cpu"))` is the `cpu` preset's world (every knob's default lives in
# `prss_mini/config.py`): `train_toy.py --preset cpu` writes exactly these arrays to `runs/cpu/dataset.npz` (same
# numbers, same seed). In quick mode we build the `tiny` preset's smaller world. Everything is drawn from one `numpy.random.default_rng(seed)`: the same seed gives the same world.

# %%
cfg = world_config(make_config("tiny" if quick() else "cpu"))
data = world.build_dataset(cfg)
for key, value in data.items():
    print(f"{key:20s} {str(value.dtype):6s} {value.shape}")

counts = np.bincount(data["image_id"])  # how many training items show each distinct image
for g in ("general", "global", "local"):
    rows = data["group"] == g
    ids = np.unique(data["image_id"][rows])
    copies = sorted(set(counts[ids].tolist()))
    print(f"{g:8s} {rows.sum():5d} training items = {len(ids):5d} distinct images x copies {copies}, "
          f"{len(np.unique(data['captions'][rows])):5d} distinct captions")
share = np.mean(data["group"] == "global")
print(f"\n{share:.0%} of all training items are the {cfg.num_global} global images: every epoch shows each of them "
      f"{cfg.global_duplicates} times, under the same caption (a titled one: all but a few times).")
for caption in prompts.memorized_captions(data):
    if prompts.num_variants(data, caption):
        ids = data["image_id"] == data["image_id"][data["captions"] == caption][0]
        others = sorted(set(data["captions"][ids].tolist()) - {caption})
        print(f"  {caption!r} also appears as {len(others)} variants, e.g. {others[0]!r}")

# %% [markdown]
# ## The grammar: one meaning, many phrasings
#
# Captions come from a small grammar: synonyms for every shape, colour and position, a few templates,
# prepositions and fillers. Many strings share one meaning, and `parse_caption` reads the meaning back.
# That is what Semantic Prompt Search will need later: paraphrases that keep the meaning but not the string.
# (The paper asks an LLM for paraphrases; our toy paraphraser, `prss_mini/guidance/paraphrase.py`, draws them
# from the grammar.)

# %%
rng = np.random.default_rng(0)
print("synonyms:", captions.SHAPE_WORDS["circle"], captions.COLOUR_WORDS["red"], captions.POSITION_WORDS["top left"])
print("templates:", captions.TEMPLATES)
print("one meaning (red circle, top left), six draws of make_caption:")
for _ in range(6):
    print("   ", captions.make_caption([0, 0, 0], rng))
vocab = captions.vocabulary()
print(f"\nthe whole vocabulary, {len(vocab)} words:", " ".join(vocab))

caption = captions.make_caption([2, 3, 1], rng, title=captions.TITLES[0], credit=captions.CREDITS[0])
attributes, title, credit = captions.parse_caption(caption)
print(f"\nparse_caption({caption!r})\n -> {[captions.VALUES[a][v] for a, v in enumerate(attributes)]}, "
      f"title={title!r}, credit={credit!r}")

memorized = str(data["captions"][data["group"] == "global"][0])
print(f"\nparaphrases of the memorized caption {memorized!r}:")
for p in paraphrases(memorized, n=5, seed=0):
    print(f"    {p!r}   same meaning: {same_meaning(p, memorized)}")

# %% [markdown]
# Titled captions (`zorvex : ...`) carry a made-up name, like a product name: a paraphrase must keep it, so
# for them SS cannot get rid of the memorized words. They are the hard cases later on.
#
# ## The three groups, and the held-out prompts

# %%
world.preview_grid(data, os.path.join(OUT, "groups.png"))
print(f"saved {os.path.join(OUT, 'groups.png')}")
print("look at groups.png: rows are general, global, local (8 distinct images each). Only the shape is "
      "described by the caption; the local row all carries the same stamp (a white label with a dark dot) in the centre.")

seen = {tuple(a) for a in data["attributes"]}
print(f"\n{len(data['heldout_captions'])} held-out prompts, e.g. {list(data['heldout_captions'][:3])}")
print("held-out combinations that occur in training:", sum(tuple(a) in seen for a in data["heldout_attributes"]))

# %% [markdown]
# ## Same caption, same image: why duplicates get memorized
#
# The model learns p(x | caption). For a general caption the data show a broad distribution: many backgrounds,
# shape jittered. For a global caption the data show ONE image, over and over: the best denoiser for that
# caption is the one that outputs that exact image, and a model with enough capacity learns just that.

# %%
g = np.flatnonzero(data["group"] == "global")[0]
duplicates = data["images"][data["captions"] == data["captions"][g]][:6]
same_attrs = np.flatnonzero((data["group"] == "general") & (data["attributes"] == data["attributes"][g]).all(1))[:6]
fresh = [images.to_uint8(world.render(data["attributes"][g], rng, cfg)) for _ in range(6)]
show_rows([duplicates, data["images"][same_attrs] if len(same_attrs) else fresh[:1], fresh],
          [f"global: 6 of the {counts[data['image_id'][g]]} training copies of {data['captions'][g]!r}",
           f"general training images with the same shape, colour, position ({len(same_attrs)} shown)",
           "fresh renders of the same attributes (what a model that generalizes should draw)"],
          os.path.join(OUT, "same_caption_different_images.png"), "same words, same picture vs same meaning")
print("look at same_caption_different_images.png: the first row is one picture six times; the others vary "
      "in everything the caption does not say (background, exact place, size).")
for j in same_attrs[:3]:
    print("    a general caption of the same attributes:", repr(data["captions"][j]))
print("pixel distance between two global copies:", np.abs(duplicates[0].astype(int) - duplicates[1]).mean(),
      "| between two fresh renders:", np.abs(fresh[0].astype(int) - fresh[1]).mean().round(1))

# %% [markdown]
# ## The stamp: local memorization
#
# The local images are all different, but every one carries the same stamp (a white label with a dark dot) in the centre, and every
# caption ends in "photo by acme". The stamp is a *part* of an image, repeated in every local image, always
# with the same words: the model can learn "photo by acme" -> stamp, while it draws the rest of the picture anew.
# This is local memorization (a logo, a watermark), which the PRSS paper evaluates apart from global copying.
# Averaging the local images shows it: backgrounds wash out, the stamp stays sharp.

# %%
patch, o = world.stamp_pattern(cfg.image_size)
k = patch.shape[0]
canvas = np.full((cfg.image_size, cfg.image_size, 3), 0.5)
canvas[o:o + k, o:o + k] = patch
local = data["images"][data["group"] == "local"]
general = data["images"][data["group"] == "general"]
panels = [("the stamp", images.to_uint8(canvas))] + [(f"local {i}", local[i]) for i in range(4)]
panels += [("mean of all local", local.mean(0).astype(np.uint8)),
           ("mean of all general", general.mean(0).astype(np.uint8))]
fig, axes = plt.subplots(1, len(panels), figsize=(1.6 * len(panels), 2))
for ax, (name, image) in zip(axes, panels):
    ax.imshow(image, interpolation="nearest")
    ax.set_title(name, fontsize=8)
    ax.axis("off")
fig.tight_layout()
show(fig, os.path.join(OUT, "stamp.png"), dpi=120)
print(f"saved {os.path.join(OUT, 'stamp.png')}")
print("look at stamp.png: the mean of the local images still shows the stamp; the mean of general images is a blur.")
print(f"'{captions.CREDITS[0]}' ends {sum(c.endswith(captions.CREDITS[0]) for c in data['captions'])} training captions, "
      f"all in the local group.")

# %% [markdown]
# ## What comes next
#
# Tutorial 02 turns captions into the vectors the model sees; 03 is the diffusion model; 04 trains it on this
# world and measures how often it copies; 05 detects memorization before any image is drawn (Wen et al. 2024).
#
# ## Exercises
#
# 1. Build `world_config(make_config("cpu", global_duplicates=10))` and print the share of training items the global images
#    take. It drops a lot: tutorial 04's exercise trains such a model and asks whether it still copies.
# 2. Take a general caption from `data["captions"]` and count how often that exact string occurs in training
#    (`(data["captions"] == c).sum()`). Compare with a global caption. Which strings does the model see often
#    enough to tie to one image?
# 3. Call `paraphrases` on a titled global caption (one containing a word of `captions.TITLES`). Check that every
#    paraphrase keeps the title word, and think about what that means for Semantic Prompt Search.
