# %% [markdown]
# # 04 · Training the model, and measuring what it copies
#
# We train the UNet of tutorial 03 on the world of tutorial 01 and then ask the question of Carlini et al.
# (2023) and Somepalli et al. (2023): given the caption of a training image, does the model hand the training
# image back? We measure it the way the PRSS paper does, in miniature (`prss_mini/metrics.py`).
#
# Training is DDPM's Algorithm 1 with CFG's caption dropout: pick a training item (x0, caption), a step
# t ~ U{0..999} and noise eps; replace the caption by the empty prompt e_0 with probability `cond_drop_prob`
# (0.3 here; Stable Diffusion used 0.1) divided by the number of duplicates of the image (`dedup_uncond`); with
# x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, minimise the v-prediction loss (the default)
#
#     w_t || v - v_theta(x_t, t, caption) ||^2,      v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0
#
# or, with `--prediction_type epsilon`, DDPM's || eps - eps_theta(x_t, t, caption) ||^2
# (`loss.diffusion_loss`; w_t is `loss.loss_weights`, which keeps only a little weight on the noisiest
# steps). The global images are a handful of the distinct images but a large share of the training items, so the
# model sees each of them, always with the same caption, very many times (printed below).
#
# Two choices make the toy's magnitudes behave like Stable Diffusion's (docs/results.md measures them). In SD the
# duplicated images are a negligible share of billions, so the unconditional model barely knows them; here they
# are a fifth of the items, so their captions are dropped 100 times less often (`dedup_uncond`). And a small model
# has to see the empty caption often (0.3) for its unconditional prediction to be as precise as the conditional
# one late in sampling, where m_t is their difference magnified.

# %%
from common import ROOT, get_run, out_dir, quick, show, show_rows

import glob
import os

import matplotlib.pyplot as plt
import numpy as np

from prss_mini import metrics
from prss_mini.checkpoint import load_checkpoint
from prss_mini.config import to_dict
from prss_mini.prompts import prompt_sets
from prss_mini.guidance.paraphrase import paraphrases
from prss_mini.config import unet_config
from prss_mini.pipeline import ToyPipeline
from prss_mini.unet import UNet

CPU_RUN = os.path.join(ROOT, "runs", "cpu")
if not quick() and not os.environ.get("PRSS_RUN") and not os.path.exists(os.path.join(CPU_RUN, "unet.pt")):
    # About 15 minutes on 2 CPU cores (README, "Times"). Interrupt it at will: rerunning resumes from a checkpoint.
    import train_toy
    train_toy.main(["--preset", "cpu", "--out", CPU_RUN])
RUN = get_run()
OUT = out_dir("04_training_and_memorization")
FIGURES = ["loss.png", "global_copies.png", "paraphrase_copies.png", "copy_over_training.png"]
pipe = ToyPipeline(RUN)
data = pipe.dataset
K = 2 if quick() else 4  # images per prompt (seeds: prompt j uses seed j)
cfg = pipe.config
print(f"{len(data['images'])} training items, {len(np.unique(data['image_id']))} distinct images; the "
      f"{cfg.num_global} global images are {np.mean(data['group'] == 'global'):.0%} of the items. In {cfg.train_steps} "
      f"steps of batch {cfg.batch_size} the model sees each global image about "
      f"{cfg.train_steps * cfg.batch_size * cfg.global_duplicates / len(data['images']):.0f} times, each general one "
      f"about {cfg.train_steps * cfg.batch_size / len(data['images']):.0f} times.")


# %% [markdown]
# ## The loss
#
# `train_toy.py` stores every step's loss in RUN/unet.pt. Each step draws its own t, and the noise is far
# easier to predict at some t than at others, so the curve is noisy; we smooth it. Note what the loss cannot
# tell us: whether the model copies. For that we have to sample.

# %%
losses = np.asarray(load_checkpoint(os.path.join(RUN, "unet.pt"))["losses"])
k = max(1, len(losses) // 50)
fig, ax = plt.subplots(figsize=(5, 3))
ax.plot(losses, lw=0.5, alpha=0.4, label="per step")
ax.plot(np.arange(k - 1, len(losses)), np.convolve(losses, np.ones(k) / k, "valid"), lw=1.5, label=f"mean of {k}")
ax.set(xlabel="training step", ylabel=f"MSE ({cfg.prediction_type})", yscale="log",
       title=f"diffusion training loss ({cfg.preset})")
ax.legend(fontsize=8)
fig.tight_layout()
show(fig, os.path.join(OUT, "loss.png"), dpi=110)
print(f"saved {os.path.join(OUT, 'loss.png')}: {len(losses)} steps, loss {losses[:50].mean():.4f} (first 50) -> "
      f"{losses[-200:].mean():.4f} (last 200)")

# %% [markdown]
# ## Measuring copies
#
# For every generated image we find its nearest training image, with the duplicates removed first
# (`metrics.unique_training_images`: with the duplicates of one image left in, the nearest and second-nearest
# would be the same picture):
#
# * **similarity**, an SSCD-like score (Pizzi et al. 2022): blurred pixels compared up to a one-pixel shift,
#   mapped to (0, 1]; `is_copy` is similarity > 0.5, the paper's threshold;
# * **ratio copy** (Gu et al. 2023): with d1, d2 the L2 distances to the nearest and second-nearest training
#   image, a copy has d1 / d2 < 1/3;
# * **stamp**: `stamp_present`, the local-memorization stamp at its place.
#
# Groups: every global caption; 8 each (2 in quick mode) of local, general and held-out prompts
# (`prompts.prompt_sets`, the function the evaluation draws its prompts with; it takes 5 per group
# there, so these are other draws); one paraphrase of every global caption.

# %%
train_images, train_ids, _ = metrics.unique_training_images(data)
sets = prompt_sets(data, per_group=2 if quick() else 8)
if quick():
    sets = {g: p[:2] for g, p in sets.items()}
global_prompts = [p for p, _ in sets["global"]]
own_id = {p: data["image_id"][data["captions"] == p][0] for p in global_prompts}
sets["global, paraphrased"] = [(paraphrases(p, n=1, seed=0)[0], None) for p in global_prompts]


def measure(images, own=None):
    """The copy measurements of uint8 (K, H, W, 3) images; `own`: the image_id a global caption was trained on."""
    near = metrics.nearest_training(images, train_images)
    out = {"similarity": near["similarity"], "copy": metrics.is_copy(near["similarity"]),
           "ratio": metrics.ratio_copy(near["d1"], near["d2"]), "stamp": metrics.stamp_present(images)}
    if own is not None:
        out["own"] = train_ids[near["index"]] == own  # is the nearest training image the caption's own?
    return out


results, samples = {}, {}
for group, prompts in sets.items():
    per = []
    for j, (prompt, _) in enumerate(prompts):
        samples[group, j] = pipe.generate(prompt, num_images=K, seed=j)
        own = own_id[global_prompts[j]] if group.startswith("global") else None
        per.append(measure(samples[group, j], own))
    results[group] = {key: np.concatenate([m[key] for m in per]) for key in per[0]}

print(f"{'group':20s} {'images':>6s} {'mean sim':>8s} {'copy sim>0.5':>12s} {'copy d1/d2':>10s} {'stamp':>6s} "
      f"{'nearest=own':>11s}")
for group, r in results.items():
    own = f"{r['own'].mean():11.0%}" if "own" in r else f"{'':11s}"
    print(f"{group:20s} {len(r['copy']):6d} {r['similarity'].mean():8.3f} {r['copy'].mean():12.0%} "
          f"{r['ratio'].mean():10.0%} {r['stamp'].mean():6.0%} {own}")
g, c = results["global"]["copy"].mean(), results["general"]["copy"].mean()
print("reading: " + ("global prompts copy more often than general ones: this run memorizes." if g > c else
      "global prompts copy no more often than general ones: this run has not memorized its duplicated images "
      "(see the README, 'Status')."))
print(f"stamp: local prompts {results['local']['stamp'].mean():.0%} vs general prompts "
      f"{results['general']['stamp'].mean():.0%} (a gap means the credit brings the stamp: local memorization).")

# %% [markdown]
# ## What the copies look like
#
# Each row: the training image of one global caption, then the K samples (seeds 0..K-1 for the first prompt,
# and so on). The second figure uses the same seeds with a paraphrase of the caption. If the exact wording is
# what the model memorized, the paraphrase should copy much less while still asking for the same picture: the
# premise of Semantic Prompt Search (PRSS, Sec. 4.2).

# %%
blank = np.full_like(train_images[0], 255)
for group, name in (("global", "global_copies.png"), ("global, paraphrased", "paraphrase_copies.png")):
    rows, labels = [], []
    for j, (prompt, _) in enumerate(sets[group][:6]):
        images = samples[group, j]
        rows.append([data["images"][data["image_id"] == own_id[global_prompts[j]]][0], blank] + list(images))
        labels.append(f"{prompt!r}: {measure(images)['copy'].sum()}/{len(images)} copies")
    show_rows(rows, labels, os.path.join(OUT, name), f"{group}: training image | samples (same seeds)")
print("look at global_copies.png and paraphrase_copies.png: compare each sample with the training image on the "
      "left of its row; the table above counts what your eyes see.")

# %% [markdown]
# ## When does copying start?
#
# `train_toy.py` keeps a snapshot of the UNet every `sample_every` steps in RUN/snapshots/. We load each one
# into a fresh `UNet` and build a pipeline around it with `ToyPipeline.from_modules` (which also wraps a
# v-prediction model so that it returns eps), then measure the copy rate of the global prompts, with the first
# general prompts as a control. Runs trained before snapshots existed only have the final model.

# %%
paths = sorted(glob.glob(os.path.join(RUN, "snapshots", "unet_*.pt")))
controls = [p for p, _ in sets["general"][:4]]
n_snap = 1 if quick() else 2
curve = {"step": [], "global": [], "general": [], "global sim": []}
for path in paths:
    ckpt = load_checkpoint(path, to_dict(pipe.config))
    unet = UNet(unet_config(pipe.config))
    unet.load_state_dict(ckpt["model"])
    snap = ToyPipeline.from_modules(pipe.config, pipe.text_encoder, unet, run_dir=RUN)
    m = {group: [measure(snap.generate(p, num_images=n_snap, seed=j)) for j, p in enumerate(prompts)]
         for group, prompts in (("global", global_prompts), ("general", controls))}
    curve["step"].append(ckpt["step"])
    curve["global"].append(np.mean([x["copy"].mean() for x in m["global"]]))
    curve["general"].append(np.mean([x["copy"].mean() for x in m["general"]]))
    curve["global sim"].append(np.mean([x["similarity"].mean() for x in m["global"]]))
    print(f"step {ckpt['step']:6d}: global copy rate {curve['global'][-1]:.0%}, general {curve['general'][-1]:.0%}, "
          f"global mean similarity {curve['global sim'][-1]:.3f}")
note = ""
if not paths:  # only the final model: one point
    note = " (no snapshots in this run: final model only)"
    print(f"no {os.path.join(RUN, 'snapshots')}: this run was trained before snapshots were saved; "
          f"retrain it for the curve")
    curve = {"step": [len(losses)], "global": [results["global"]["copy"].mean()],
             "general": [results["general"]["copy"].mean()], "global sim": [results["global"]["similarity"].mean()]}
fig, ax = plt.subplots(figsize=(5, 3.2))
ax.plot(curve["step"], curve["global"], "o-", color="crimson", label="global: copy rate")
ax.plot(curve["step"], curve["general"], "o-", color="steelblue", label="general: copy rate")
ax.plot(curve["step"], curve["global sim"], "o--", color="crimson", alpha=0.5, label="global: mean similarity")
ax.set(xlabel="training step", ylim=(-0.05, 1.05), title="copying along training" + note)
ax.legend(fontsize=8)
fig.tight_layout()
show(fig, os.path.join(OUT, "copy_over_training.png"), dpi=110)
print(f"saved {os.path.join(OUT, 'copy_over_training.png')}")

# %% [markdown]
# ## Exercises
#
# 1. Fewer duplicates. Train a run whose global images appear 10 times instead of 100 (about 15 minutes), then
#    rerun this tutorial on it:
#
#        python train_toy.py --preset cpu --out runs/cpu_dup10 --global_duplicates 10
#        PRSS_RUN=runs/cpu_dup10 python tutorials/04_training_and_memorization.py
#
#    Carlini et al. and Somepalli et al. found copying grows with duplication: compare the global rows.
# 2. Pass `guidance_scale=1.0` to `pipe.generate` for the global prompts. Lower guidance is the simplest
#    mitigation (the `lowcfg` baseline): what does it do to the copy rate, and to the pictures of general prompts?
# 3. Use `paraphrases(p, n=5)` for each global caption and find the paraphrases that still copy. Are they the
#    titled captions (a word of `prss_mini.captions.TITLES` that no paraphrase may drop)?
