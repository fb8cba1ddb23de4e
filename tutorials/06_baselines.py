# %% [markdown]
# # 06 · The baselines PRSS is compared with
#
# Before we look at PRSS itself, we meet the mitigations it must beat (docs/math.md, "The baselines"). Every one
# of them changes only *sampling*; the trained model stays as it is. With eps_u = eps(x_t, e_0) and
# eps_p = eps(x_t, e_p), plain CFG is
#
#     eps_hat = eps_u + s * (eps_p - eps_u)
#
# and the baselines change one ingredient of it:
#
# | method | what it changes | knob |
# |---|---|---|
# | lower guidance (`lowcfg`) | another s; a smaller one pushes less from e_0 towards e_p | `guidance_scale` |
# | GNI (Somepalli et al.) | e_p -> e_p + lambda * N(0, I), then CFG | `noise_scale` (lambda) |
# | RTA (Somepalli et al.) | k random vocabulary words inserted into the prompt, then CFG | `num_tokens` (k) |
# | PE (Wen et al.) | AdamW on the embedding e at the first step until m(e) <= target, then CFG with e | `target` |
# | transition (Jain et al.) | s_i = early_scale (default 0) for steps i < transition_step, then s | `transition_step` |
#
# where m(e) = ||eps(x_T, e) - eps(x_T, e_0)||_2 is Wen et al.'s first-step memorization detector.
#
# Each knob trades privacy (fewer copies) against utility (images that still show what the prompt asks for).
# Lower guidance is the trivial trade-off: any method worth having must sit above its curve.

# %%
from common import get_run, hardest_titled, out_dir, quick, show

import time

import matplotlib.pyplot as plt
import numpy as np

from prss_mini import metrics
from prss_mini.evaluate import CountingUNet
from prss_mini.prompts import prompt_sets
from prss_mini.judges import Judges
from prss_mini.pipeline import ToyPipeline
from prss_mini.captions import parse_caption

RUN = get_run()
OUT = out_dir("06_baselines")
pipe = ToyPipeline(RUN)
FIGURES = ["baselines.png", "baselines_tradeoff.png"]

judges = Judges.load(RUN)
train_images, _, _ = metrics.unique_training_images(pipe.dataset)   # one copy of each training image
sets = prompt_sets(pipe.dataset, per_group=8, seed=0)               # group -> [(prompt, attributes (3,))]
untitled = [p for p in sets["global"] if parse_caption(p[0])[1] is None]
hardest = hardest_titled([p for p, _ in sets["global"]], pipe.dataset)   # titled prompts, the hard case first
titled = sorted([pa for pa in sets["global"] if pa[0] in hardest], key=lambda pa: hardest.index(pa[0])) or untitled[1:]
steps, s = pipe.config.num_inference_steps, pipe.config.guidance_scale
lam_ss = pipe.thresholds["lambda_ss"]   # PE's default target: the calibrated SS threshold (tutorial 08)
print(f"DDIM steps {steps}, guidance scale s = {s}, calibrated lambda_SS = {lam_ss:.3f}")

# %% [markdown]
# ## Every method on the same prompts and seeds
#
# The same seed gives the same x_T for every method, so each column of the grid below starts from the same
# noise: differences between rows are the method's doing. Each method runs at its default knob (the first
# entry of its sweep below). Columns: two globally memorized prompts (one of them carries a title word) and
# one general prompt, which a good mitigation should leave alone.

# %%
K = 2 if quick() else 3       # images (seeds) per prompt
SWEEP = {                     # method -> knob settings; the first one is its default
    "cfg": [{}],
    "lowcfg": [{"guidance_scale": 2.0}, {"guidance_scale": 1.0}, {"guidance_scale": 3.0}],
    "gni": [{"noise_scale": 0.5}, {"noise_scale": 0.25}, {"noise_scale": 1.0}],
    "rta": [{"num_tokens": 2}, {"num_tokens": 4}],
    "pe": [{"target": lam_ss}, {"target": 0.5 * lam_ss}],
    "transition": [{"transition_step": steps // 5}, {"transition_step": 2 * steps // 5},
                   {"transition_step": 3 * steps // 5}],
}
if quick():
    SWEEP = {m: v[:1] for m, v in SWEEP.items()}

grid_prompts = [untitled[0], titled[0], sets["general"][0]]
for j, (prompt, _) in enumerate(grid_prompts):
    print(f"P{j}: {prompt}")


def show_rows(rows, col_titles, path, title):
    """rows: {label: uint8 images (N, H, W, 3)}, one figure row each, N = len(col_titles)."""
    fig, axes = plt.subplots(len(rows), len(col_titles), squeeze=False,
                             figsize=(0.9 * len(col_titles) + 1.8, 0.9 * len(rows) + 0.8))
    for r, (label, images) in enumerate(rows.items()):
        for c, image in enumerate(images):
            ax = axes[r, c]
            ax.imshow(image, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
            if r == 0:
                ax.set_title(col_titles[c], fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    show(fig, path, dpi=100)
    print(f"saved {path}")


rows = {}
for method, knobs in SWEEP.items():
    label = method + "".join(f"\n{k}={v:.3g}" for k, v in knobs[0].items())
    rows[label] = np.concatenate([pipe.generate(p, method=method, num_images=K, seed=j, **knobs[0])
                                  for j, (p, _) in enumerate(grid_prompts)])
show_rows(rows, [f"P{j} #{k}" for j in range(len(grid_prompts)) for k in range(K)],
          f"{OUT}/baselines.png", "every baseline at its default knob: same prompts, same seeds")
print("Look at: the P2 columns (a general prompt) should change little; on P0/P1, does a method move the\n"
      "picture away from the CFG row while keeping the asked-for shape, colour and position?")

# %% [markdown]
# ## Knob sweeps: privacy against utility, and what each method costs
#
# For every knob setting we sample the global prompts and measure, per image:
#
# - **privacy** (lower is better): similarity to the nearest training image (`metrics.nearest_training`, our
#   SSCD stand-in), and the copy rate, the share of images with similarity > 0.5 (`metrics.is_copy`);
# - **utility** (higher is better), always against the ORIGINAL prompt: the judge CLIP score and the
#   attribute accuracy (`judges.clip_score`, `judges.attribute_correct`).
#
# Cost: we wrap the UNet in `CountingUNet`, which adds the batch size to a counter at every call, so the
# counter reads "UNet evaluations", one per sample per forward pass. Plain CFG needs two per step (eps_u and
# eps_p), so 2 x steps per image; lowcfg, GNI, RTA and transition change only numbers or words, so they cost
# the same. PE adds its optimisation at the first step: forward passes (counted) and backward passes (not
# counted, but the wall time sees them).

# %%
def measure(method, knobs, prompts, num_images):
    counter = CountingUNet(pipe.unet)
    real_unet, pipe.unet = pipe.unet, counter     # every method reaches the UNet through pipe.unet
    sims, clips, attrs, seconds = [], [], [], 0.0
    try:
        for j, (prompt, attributes) in enumerate(prompts):
            t0 = time.perf_counter()
            images = pipe.generate(prompt, method=method, num_images=num_images, seed=100 + j, **knobs)
            seconds += time.perf_counter() - t0
            sims += list(metrics.nearest_training(images, train_images)["similarity"])
            clips += list(judges.clip_score(images, [prompt] * len(images)))
            attrs += list(judges.attribute_correct(images, np.repeat(attributes[None], len(images), 0)).mean(1))
    finally:
        pipe.unet = real_unet
    n = len(sims)
    return {"similarity": float(np.mean(sims)), "copy": float(np.mean(metrics.is_copy(sims))),
            "clip": float(np.mean(clips)), "attr": float(np.mean(attrs)),
            "evals": counter.count / n, "seconds": seconds / n}


sweep_prompts = sets["global"][:2] if quick() else sets["global"][:6]
n_img = 2 if quick() else 3
results = {m: [(knobs, measure(m, knobs, sweep_prompts, n_img)) for knobs in values] for m, values in SWEEP.items()}

print(f"{len(sweep_prompts)} global prompts x {n_img} images per setting")
print(f"{'setting':28s} {'similarity':>10s} {'copy rate':>9s} {'CLIP':>6s} {'attr acc':>8s}")
for m, pts in results.items():
    for knobs, r in pts:
        name = m + "".join(f" {k}={v:.3g}" for k, v in knobs.items())
        print(f"{name:28s} {r['similarity']:10.3f} {r['copy']:9.0%} {r['clip']:6.3f} {r['attr']:8.0%}")

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 4))
for ax, key, name in zip(axes, ("clip", "attr"), ("judge CLIP score", "attribute accuracy")):
    for m, pts in results.items():
        pts = sorted((r["similarity"], r[key]) for _, r in pts)
        style = dict(marker="*", ms=14, color="k", ls="") if m == "cfg" else dict(marker="o", ms=5)
        ax.plot(*zip(*pts), label=m, **style)
    ax.set(xlabel="similarity to nearest training image (lower = more private)",
           ylabel=f"{name} (higher = more useful)", title=f"global prompts: privacy vs {name}")
    ax.grid(alpha=0.3)
axes[0].legend(fontsize=8)
fig.tight_layout()
show(fig, f"{OUT}/baselines_tradeoff.png", dpi=110)
print(f"saved {OUT}/baselines_tradeoff.png\nLook at: up and to the left is better. Where does each curve sit "
      "relative to lowcfg's, and relative to the black star (plain CFG)?")

# %%
ref = results["cfg"][0][1]
print(f"cost at the default knob ({steps} DDIM steps; plain CFG needs 2 x {steps} = {2 * steps} evaluations)")
print(f"{'method':12s} {'UNet evals / image':>18s} {'seconds / image':>16s} {'time vs CFG':>12s}")
for m, pts in results.items():
    r = pts[0][1]
    print(f"{m:12s} {r['evals']:18.1f} {r['seconds']:16.3f} {r['seconds'] / ref['seconds']:11.2f}x")
print("(wall times of a few images are noisy; UNet evaluation counts are exact)")

# %% [markdown]
# ## What to take away
#
# Every baseline buys privacy with utility, and the sweeps show at what rate: GNI and RTA blur the prompt
# itself, so they can lose the attributes it names too; lowcfg and transition weaken the prompt everywhere or
# early; PE moves the embedding until the detector is quiet, whatever that does to the meaning. None of them
# knows *which* part of the prompt triggers the copy. PRSS (tutorials 07 to 09) keeps the meaning through a
# paraphrase and pushes away from the memorized prompt only when it is detected.
#
# On the `cpu` run the model reproduces the local stamp far more than whole global images (see the README's
# status), so the global similarity differences may be small: read the printed numbers, not just the plot.

# %% [markdown]
# ## Exercises
#
# 1. Add a local "photo by acme" prompt (`sets["local"]`) to `sweep_prompts` and record
#    `metrics.stamp_present(images)` in `measure`: which baseline removes the stamp, and at what CLIP cost?
# 2. Try opposite guidance: add `{"transition_step": steps // 5, "early_scale": -2.0}` to the transition
#    sweep. Expect a stronger push away from the memorized image early on, and check the attribute accuracy.
# 3. Give PE more room: pass `max_iters=30` (a knob of `prss_mini.guidance.pe.build`). Watch the UNet
#    evaluation count and the time go up; does the similarity go down?
