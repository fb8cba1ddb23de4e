# %% [markdown]
# # 05 · Detecting memorization before the image exists
#
# Wen et al. (ICLR 2024, "Detecting, explaining, and mitigating memorization in diffusion models") noticed that
# memorized prompts make the text-conditional noise prediction unusually large. With e_p the prompt's token
# embeddings, e_0 the empty prompt's, and the UNet's eps(x_t, e):
#
#     m_t = || eps(x_t, e_p) - eps(x_t, e_0) ||_2          (per sample, over the whole image tensor)
#
# This is exactly the term CFG scales by s. Measured at the first sampling step from the seeded x_T it costs
# one batched UNet call (prompt and empty prompt) and no image: PRSS uses it to decide whether to act at all, and
# reuses those predictions as its first sampling step. The code is
# `prss_mini/guidance/detect.py`; the thresholds PRSS uses come from `prss_mini/guidance/calibrate.py`.
#
# **Why it works.** From `predict_x0`, eps = (x_t - sqrt(abar_t) x0_hat) / sqrt(1 - abar_t). Subtract the
# unconditional version at the same x_t:
#
#     eps(x_t, e_p) - eps(x_t, e_0) = -sqrt(abar_t / (1 - abar_t)) * (x0_hat(e_p) - x0_hat(e_0))
#
# so m_t is the distance between the model's two guesses of the clean image, times a factor fixed by t.
# At the first step (t = 999 for 50 DDIM steps) both guesses are averages over what the model thinks is
# plausible. A general caption pins the shape down but leaves the background open, so its guess differs from
# the unconditional one in a small region.
# A memorized caption pins down one training image, background and all: its guess should differ everywhere.
# A local caption pins down the stamp: somewhere in between.

# %%
from common import get_run, out_dir, quick, show

import os

import matplotlib.pyplot as plt
import numpy as np
import torch

from prss_mini import figures, metrics, physics
from prss_mini.diffusion import predict_noise, predict_x0
from prss_mini.prompts import prompt_sets
from prss_mini.guidance.detect import detection_score, first_step_magnitude, magnitude_trace, noise_magnitude
from prss_mini.images import tensor_to_images
from prss_mini.pipeline import ToyPipeline

RUN = get_run()
OUT = out_dir("05_detecting_memorization")
FIGURES = ["first_step_x0.png", "traces.png", "first_step_hist.png", "roc.png"]
pipe = ToyPipeline(RUN)
data = pipe.dataset
COLOURS = {"global": "crimson", "local": "darkorange", "general": "steelblue", "heldout": "seagreen"}
sets = prompt_sets(data, per_group=4 if quick() else 24)  # every global caption; up to 24 of each other group
th = pipe.thresholds  # RUN/thresholds.json (calibrated and written on first use)
print({k: round(th[k], 3) for k in ("lambda_ss", "lambda_pr", "tau")}, "-", th["rule"])

# %% [markdown]
# ## The first step, by hand and with the library

# %%
prompts = {g: sets[g][0][0] for g in ("global", "local", "general")}
x_T = pipe.initial_noise(4, seed=0)                                                 # (4, 3, H, W)
t = pipe.detection_timestep                      # the first (noisiest) step of the run's schedule: detection
abar = pipe.schedule.alphas_cumprod[t]
panels, labels = [], []
with torch.no_grad():
    for group, prompt in prompts.items():
        eps_u, eps_c = predict_noise(pipe.unet, x_T, t, [pipe.empty, pipe.encode([prompt])])
        m = noise_magnitude(eps_c, eps_u)                                           # (4,)
        x0_u, x0_c = predict_x0(x_T, eps_u, abar), predict_x0(x_T, eps_c, abar)
        via_x0 = (abar / (1 - abar)).sqrt() * (x0_c - x0_u).flatten(1).norm(dim=1)
        lib = first_step_magnitude(pipe, pipe.encode([prompt]), x_T)[0]
        assert torch.allclose(m, via_x0, rtol=1e-3), "m_t must equal the x0_hat form of the same gap"
        assert torch.allclose(m, lib, rtol=1e-4), "the library's first_step_magnitude must give the same m"
        print(f"{group:8s} m at t={t}: {m.numpy().round(3)} (= the x0_hat form = first_step_magnitude) | {prompt!r}")
        own = data["images"][data["captions"] == prompt][0]
        panels.append([tensor_to_images(x0_u[:1])[0], tensor_to_images(x0_c[:1])[0], own])
        labels.append(f"{group}: m = {float(m[0]):.3f}")
fig, axes = plt.subplots(len(panels), 3, figsize=(5, 1.7 * len(panels)))
for r, (row, label) in enumerate(zip(panels, labels)):
    for c, (image, name) in enumerate(zip(row, ("x0_hat(e_0)", "x0_hat(e_p)", "a training image of e_p"))):
        axes[r, c].imshow(image, interpolation="nearest")
        axes[r, c].set_title(f"{label}\n{name}" if c == 0 else name, fontsize=7)
        axes[r, c].axis("off")
fig.tight_layout()
show(fig, os.path.join(OUT, "first_step_x0.png"), dpi=120)
print(f"saved {os.path.join(OUT, 'first_step_x0.png')}")
print("look at first_step_x0.png: the middle column is the model's guess at the noisiest step. If the global "
      "row already looks like its training image (right) while the general row is a blurred shape, the model "
      "has memorized, and m should be large.")

# %% [markdown]
# ## m_t along sampling, beside Stable Diffusion
#
# `magnitude_trace` runs plain-CFG DDIM and records m_t at every step. PRSS's thresholds were designed on Stable
# Diffusion's curves (Wen et al.'s per-step plots, SD v1.4): a clean prompt starts low (0.5-0.8), rises to a flat
# plateau (2-2.7) and falls to about 1 at the very end; a memorized prompt starts high (about 5), dips, and
# climbs to 13-19 at the end. SD's lambda_PR = 3 sits just above the clean plateau, so re-anchoring (PR) stays
# mostly off on a clean prompt and acts where a trajectory pulls harder than a clean one does. Norms grow with
# the tensor's size, so compare shapes and ratios, not values (both panels are on a log scale):
#
#     r1 = first-step m, memorized / clean                        SD: about 8
#     r2 = clean: mean m_t of the last 10% of steps / of steps 20%-80%       SD: about 1 or below
#     r3 = whole-trajectory mean m_t, memorized / clean           SD: about 4-5
#
# `python -m prss_mini.physics --run RUN` measures the same on 10 prompts per group x 4 x_T, with the samples'
# attribute accuracy and copy rates.

# %%
x_T = pipe.initial_noise(1 if quick() else 2, seed=7)
traces = {}
for group, items in sets.items():
    prompts = [p for p, _ in items[:2 if quick() else 6]]
    contexts = pipe.encode(prompts).repeat_interleave(len(x_T), 0)                  # (P * K, L, D)
    traces[group] = magnitude_trace(pipe, contexts, x_T.repeat(len(prompts), 1, 1, 1)).numpy()  # (P * K, steps)
show(figures.physics_plot(traces, th, {"clean": physics.SD_CLEAN, "memorized": physics.SD_MEMORIZED}),
     os.path.join(OUT, "traces.png"))
ratios = physics.ratios(traces["general"], traces["global"])
for name, value in ratios.items():
    op, bar = physics.TARGETS[name]
    print(f"{name} = {value:.2f}   (Stable Diffusion: {physics.SD[name]}; the toy's bar: {op} {bar})")
print(f"saved {os.path.join(OUT, 'traces.png')}")
print("look at traces.png: do the red (global) and orange (local) curves stand above the blue and green ones, "
      "and at which steps? These are the prompts' own curves under CFG; PR switches on the SEARCHED prompt's m_t\n"
      "along PRSS's own trajectory (tutorial 07), so read them as where a memorized prompt pulls hardest.")

# %% [markdown]
# ## First-step magnitudes and the SS threshold
#
# PRSS triggers when the first-step m of a sample exceeds lambda_SS. A deployer does not know which prompts are
# memorized, so `calibrate.py` sets lambda_SS from general training prompts only: their 95th percentile, i.e.
# about 5% false triggers on them by construction (on its own x_T; ours differ). lambda_PR sits where Stable
# Diffusion's lambda_PR = 3 sits on its curves, just above the plateau of the clean prompts' m_t: the 95th
# percentile of general prompts' m_t over the middle 60% of the steps (traces.png, the dashed line), and
# tau = 5/3 lambda_PR as officially. So re-anchoring stays mostly off along a clean trajectory and acts where a
# prompt pulls harder than any clean one does.

# %%
x_T = pipe.initial_noise(2 if quick() else 4, seed=0)
first = {g: first_step_magnitude(pipe, pipe.encode([p for p, _ in items]), x_T).flatten().numpy()
         for g, items in sets.items()}                                              # group -> (P * B,)
bins = np.linspace(0, max(v.max() for v in first.values()) * 1.05, 40)
fig, ax = plt.subplots(figsize=(6, 3.4))
for group, values in first.items():
    ax.hist(values, bins=bins, alpha=0.5, color=COLOURS[group], label=f"{group} ({len(values)} samples)")
    print(f"{group:8s} first-step m: median {np.median(values):.3f}, "
          f"above lambda_ss: {np.mean(values > th['lambda_ss']):.0%}")
ax.axvline(th["lambda_ss"], color="k", ls="--", label=f"lambda_ss = {th['lambda_ss']:.2f}")
ax.set(xlabel="first-step magnitude m", ylabel="samples", title=f"t = {t}: one prompt x {len(x_T)} seeded x_T each")
ax.legend(fontsize=8)
fig.tight_layout()
show(fig, os.path.join(OUT, "first_step_hist.png"), dpi=110)
print(f"saved {os.path.join(OUT, 'first_step_hist.png')}: samples right of the dashed line trigger SS and PR")

# %% [markdown]
# ## How good a detector is it? ROC and AUC
#
# Score each prompt by its first-step m averaged over a few x_T (`detection_score`), call the memorized groups
# positives and the general and held-out prompts negatives, and sweep a threshold: the ROC curve plots the
# fraction of positives caught against the fraction of negatives falsely flagged. The area under it, AUC, is the
# chance that a random memorized prompt scores above a random clean one (0.5: useless, 1: perfect).

# %%
scores = {g: detection_score(pipe, [p for p, _ in items], seeds=(0,), num_images=len(x_T)).numpy()
          for g, items in sets.items()}                                             # group -> (P,)
negative = np.concatenate([scores["general"], scores["heldout"]])
fig, ax = plt.subplots(figsize=(4.4, 4.2))
for group in ("global", "local"):
    fpr, tpr = metrics.roc_curve(scores[group], negative)
    auc = metrics.roc_auc(scores[group], negative)
    ax.plot(fpr, tpr, color=COLOURS[group], label=f"{group} vs not memorized: AUC {auc:.2f}")
    ax.plot(np.mean(negative > th["lambda_ss"]), np.mean(scores[group] > th["lambda_ss"]), "*",
            color=COLOURS[group], ms=10)
    print(f"{group:6s}: AUC {auc:.3f} over {len(scores[group])} positive and {len(negative)} negative prompts")
ax.plot([0, 1], [0, 1], "k:", lw=0.8)
ax.set(xlabel="false positive rate", ylabel="true positive rate", title="first-step detection (stars: lambda_ss)")
ax.legend(fontsize=8, loc="lower right")
fig.tight_layout()
show(fig, os.path.join(OUT, "roc.png"), dpi=110)
print(f"saved {os.path.join(OUT, 'roc.png')}")

# %% [markdown]
# The detector needs no training image and no sampling: one batched UNet call (prompt and empty prompt).
# It is only as good as the model's memorization is visible at the first step; the README's "Status" says how
# the current toy run fares.
#
# ## Exercises
#
# 1. Score by the mean of m_t over the first 5 steps (`magnitude_trace(...)[:, :5].mean(1)`) instead of the first
#    step alone, and recompute the AUC. Is the extra compute worth it on this run?
# 2. Score the paraphrases of the global captions (`prss_mini.guidance.paraphrase.paraphrases`). How many fall
#    below lambda_ss? Those are the ones Semantic Prompt Search would pick.
# 3. Change `num_images` in `detection_score` from 4 to 1 and to 16: how much does averaging over x_T help?
