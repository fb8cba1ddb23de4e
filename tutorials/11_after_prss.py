# %% [markdown]
# # 11 · Beyond the paper: Bright Ending, initial-noise adjustment and anisotropy
#
# PRSS (CVPR 2025) is not the last word. The library has three later pieces, each a small file of
# `prss_mini/guidance/`:
#
# | file | paper | what it does |
# |---|---|---|
# | `bright_ending.py` | Chen et al., ICLR 2025 | *where* is the copy? a mask from the end token's attention |
# | `init_noise.py` | Han et al., NeurIPS 2025 | mitigation by moving the initial noise x_T |
# | `anisotropy.py` | Asthana & Belagiannis, ICLR 2026 | detection from the guidance's norm *and* direction |
#
# We run each on the toy's prompt groups (`prompt_sets`, as in tutorials 05-09) and measure what it buys. One of
# them does not carry over: Bright Ending's mask barely localizes on this toy, and its methods (`pe_be`, `prss_be`)
# inherit that. We measure it anyway, since a negative result you can reproduce is worth as much as a positive one.

# %%
from common import get_run, image_table, out_dir, quick, show

import time

import matplotlib.pyplot as plt
import numpy as np
import torch

from prss_mini import metrics
from prss_mini.diffusion import predict_noise
from prss_mini.evaluate import CountingUNet
from prss_mini.guidance.anisotropy import anisotropy_score, anisotropy_terms
from prss_mini.guidance.bright_ending import end_token_mask, mass_on, masked_magnitude
from prss_mini.guidance.detect import detection_score, noise_magnitude
from prss_mini.guidance.init_noise import adjust_per_sample
from prss_mini.physics import stamp_region
from prss_mini.pipeline import ToyPipeline
from prss_mini.prompts import CONTROL, GROUPS, MEMORIZED, prompt_sets

RUN = get_run()
OUT = out_dir("11_after_prss")
FIGURES = ["end_token_masks.png", "init_noise.png", "init_noise_descent.png", "anisotropy.png"]
pipe = ToyPipeline(RUN)
COLOURS = {"global": "crimson", "local": "darkorange", "general": "steelblue", "heldout": "seagreen"}
sets = prompt_sets(pipe.dataset, per_group=4 if quick() else 10, seed=0)   # group -> [(prompt, attributes)]
train_images, _, _ = metrics.unique_training_images(pipe.dataset)
steps, t1 = pipe.config.num_inference_steps, pipe.detection_timestep
print(f"DDIM steps {steps}, guidance scale {pipe.config.guidance_scale}, first timestep t_1 = {t1}, "
      f"lambda_ss = {pipe.thresholds['lambda_ss']:.3f}")

# %% [markdown]
# ## 1. Bright Ending: where does the end token look?
#
# Wen et al.'s magnitude m = ||eps_c - eps_u|| (tutorial 05) sums the guidance over the whole image. That is
# right for *global* memorization, where the whole picture is copied, and weak for *local* memorization, where
# only a small part is (our stamp, 14% of the pixels): the stamp's share of the norm is diluted by everything else.
#
# Chen et al. noticed that in Stable Diffusion the cross-attention of the **end token** `<eos>` at the **last**
# sampling step is bright exactly where a memorized prompt copies (CLIP's text encoder is causal, so `<eos>` is
# the one token that has read the whole prompt). They keep that map as a mask M (B, H, W), one per sample:
#
#     M = mean over heads and finest-grid down-path cross-attention layers of softmax(q k^T / sqrt(d))[..., eos]
#
# and weigh the magnitude with it:
#
#     m_BE = || (eps_c - eps_u) * M || / mean(M)
#
# **Why this helps, if M localizes.** Take M = 1 on a region R of area a (a fraction of the pixels), 0 elsewhere,
# and write the guidance g = eps_c - eps_u as its part on R and its part off R. Then
#
#     m    = sqrt(||g_R||^2 + ||g_rest||^2)        m_BE = ||g_R|| / a
#
# A locally memorized prompt has a large g_R (the stamp is pinned down) and an ordinary g_rest (the rest is a
# general picture). In m, the ordinary part adds to both the local and the clean prompt's score and shrinks their
# ratio; in m_BE it is gone, and what is left compares g_R with g_R. BE then plugs m_BE into existing detectors
# (Wen's threshold) and mitigations (PE's loss, so the embedding is moved only where the copy is).
#
# That needs one thing: **a mask that concentrates on the memorized region**. Let us look. `mass_on(M, R)` is the
# share of each mask's total on the stamp's region R; a flat map puts area(R) there.

# %%
K = 2 if quick() else 4                                     # x_T per prompt
x_T = pipe.initial_noise(K, seed=0)
region = stamp_region(pipe.config.image_size)               # bool (H, W): where the stamp sits
be_groups = ("local", "global", "general")
masks, samples = {}, {}
for g in be_groups:
    prompts = [p for p, _ in sets[g]]
    masks[g] = end_token_mask(pipe, prompts, x_T.repeat(len(prompts), 1, 1, 1))        # (P * K, H, W)
    samples[g] = pipe.generate(prompts, num_images=K, seed=[0] * len(prompts))         # the same x_T: CFG's images
print(f"stamp region: {region.sum()} pixels, area {region.mean():.2f} of the image")
for g in be_groups:
    share = mass_on(masks[g], region)
    print(f"{g:8s} mask mass on the stamp region: {float(share.mean()):.2f} (min {float(share.min()):.2f}, "
          f"max {float(share.max()):.2f}; a flat map: {region.mean():.2f}); stamp in the samples: "
          f"{metrics.stamp_present(samples[g]).mean():.0%}")

# %%
n_col = min(6, max(len(sets[g]) for g in be_groups))
fig, axes = plt.subplots(2 * len(be_groups), n_col, figsize=(1.2 * n_col, 2.5 * len(be_groups)), squeeze=False)
ys, xs = np.nonzero(region)
box = dict(xy=(xs.min() - 0.5, ys.min() - 0.5), width=np.ptp(xs) + 1, height=np.ptp(ys) + 1, fill=False, ec="cyan")
for r, g in enumerate(be_groups):
    for j in range(n_col):
        for ax in axes[2 * r:2 * r + 2, j]:
            ax.set_xticks([]), ax.set_yticks([])
        k = j * K                                            # the first sample of prompt j
        if k >= len(samples[g]):                             # a group with fewer prompts (global on tiny: 4)
            axes[2 * r, j].axis("off"), axes[2 * r + 1, j].axis("off")
            continue
        axes[2 * r, j].imshow(samples[g][k], interpolation="nearest")
        axes[2 * r + 1, j].imshow(masks[g][k].numpy(), cmap="magma", interpolation="nearest")
        axes[2 * r + 1, j].add_patch(plt.Rectangle(**box))
        axes[2 * r + 1, j].set_title(f"{float(mass_on(masks[g][k:k + 1], region)):.2f} on box", fontsize=6)
    axes[2 * r, 0].set_ylabel(g, fontsize=9)
fig.suptitle(f"CFG samples over their <eos> attention at the last step\n"
             f"(each map scaled to its own maximum); cyan: the stamp region (area {region.mean():.2f})", fontsize=8)
fig.tight_layout()
show(fig, f"{OUT}/end_token_masks.png", dpi=110)
print(f"saved {OUT}/end_token_masks.png\nLook at: do the local rows' masks light up inside the cyan box, where "
      "their samples carry the stamp, more than the general rows' do?")

# %% [markdown]
# On the trained `cpu` runs the answer is "barely": the local prompts' masks put 0.22 / 0.17 / 0.16 of their mass on
# the stamp region over three training seeds (an earlier training of the same seeds: 0.31 / 0.08 / 0.14), against
# its area 0.14. Our UNet's finest cross-attention grid is 8x8 (SD's: 64x64), its text encoder has read a few
# thousand captions, and the `<eos>` state of a credit phrase need not learn to point at the stamp
# (`python -m prss_mini.physics --run RUN` prints the same number for your run).
#
# To see what BE would give *if* the mask localized, compare three first-step detectors of local against general
# prompts, on the same x_T: Wen's m, m_BE with the `<eos>` mask, and m_BE with an **oracle** mask, the stamp
# region itself (what a perfect Bright Ending would find).

# %%
def first_step_scores(prompts, mask_of):
    """Per prompt (P,): m, m_BE with the <eos> mask, m_BE with the oracle mask, each averaged over the K x_T."""
    eps_u, eps_c = predict_noise(pipe.unet, x_T.repeat(len(prompts), 1, 1, 1), t1,
                                 [pipe.empty, pipe.encode(prompts).repeat_interleave(K, 0)])
    oracle = torch.as_tensor(region, dtype=torch.float32).expand(len(eps_c), -1, -1)
    m = [noise_magnitude(eps_c, eps_u), masked_magnitude(eps_c, eps_u, mask_of), masked_magnitude(eps_c, eps_u, oracle)]
    return [v.view(len(prompts), K).mean(1).numpy() for v in m]


with torch.no_grad():
    be = {g: first_step_scores([p for p, _ in sets[g]], masks[g]) for g in ("local", "general")}
for i, name in enumerate(["m (Wen)", "m_BE, <eos> mask", "m_BE, oracle mask"]):
    loc, gen = be["local"][i], be["general"][i]
    print(f"{name:18s} local {loc.mean():6.3f}  general {gen.mean():6.3f}  ratio {loc.mean() / gen.mean():5.2f}  "
          f"AUC local vs general {metrics.roc_auc(loc, gen):.2f}")
print("A mask helps detection only as much as it concentrates on the copied region: compare the last two rows.\n"
      "If even the oracle row does not separate, this run's local prompts do not pin the stamp down at the first\n"
      "step: check the stamp column above (the tiny run does not learn the stamp at all; the cpu runs do).")

# %% [markdown]
# Whatever the mask, the official code plugs m_BE into two methods, and so does the library (`pe_be.py`,
# `prss_be.py`: one file and one registry line each). **PE + BE** minimises m_BE instead of m. **PRSS + BE** detects
# and scores its candidates with m_BE; PR's per-step m_t stays Wen's. Both take the mask from a plain CFG run on the
# same x_T, one sampling run more. Side by side with their unmasked selves, on the local prompts and the same x_T:

# %%
local = [p for p, _ in sets["local"]]
for method in ("cfg", "pe", "pe_be", "prss", "prss_be"):
    images, info = pipe.generate(local, method=method, num_images=K, seed=[0] * len(local), return_info=True)
    triggered = f"triggered {np.mean(info['triggered']):4.0%}" if "triggered" in info else " " * 13
    print(f"{method:8s} stamp in {metrics.stamp_present(images).mean():4.0%} of the samples  {triggered}")
print("Where the guidance g is spread evenly over the image, m_BE is about m x rms(M) / mean(M) >= m: a peaked mask\n"
      "raises m_BE on every prompt, and lambda_SS was calibrated for m. So PRSS + BE triggers on more samples and\n"
      "PE + BE pushes harder, clean prompts included. Pooled over three cpu seeds (docs/results.md), PRSS + BE\n"
      "triggers on 92% of general samples and PE + BE takes their CLIP from 0.886 to 0.444.")

# %% [markdown]
# ## 2. Initial-noise adjustment: move x_T out of the basin
#
# Han et al. see memorization as an *attraction basin*: from most x_T, CFG with a memorized prompt falls into the
# training image within the first steps. Instead of changing the prompt (PE, SS) or the guidance (PR, transition),
# they change the starting point. The first-step magnitude is a function of x_T,
#
#     l(x_T) = || eps(x_T, t_1, e_p) - eps(x_T, t_1, e_0) ||
#
# and the per-sample variant runs AdamW on x_T until l(x_T) <= target (default: the calibrated lambda_SS, the
# same line PRSS and PE use), then samples with plain CFG from the moved x_T. A sample already below the target is
# not touched and gives CFG's image bit for bit. The batch-wise variant takes a fixed number of finite-difference
# steps instead and delays CFG by a few steps (see the docstring of `init_noise.py`).
#
# Cost: each AdamW step is one forward on prompt and empty prompt (2 UNet evaluations per sample, counted below)
# plus one backward through the UNet (not counted, but the wall time sees it).

# %%
K_IN = 3 if quick() else 6
SEED = 20
mem = {"global": sets["global"][0][0], "local": sets["local"][0][0]}
for g, p in mem.items():
    print(f"{g}: {p!r}")
variants = {"CFG": dict(method="cfg"), "init_noise": dict(method="init_noise"),
            "init_noise\nbatch-wise": dict(method="init_noise", batch_wise=True)}
rows, infos = {}, {}
print(f"{'method':22s} {'prompt':7s} {'similarity':>10s} {'copies':>7s} {'stamp':>6s} {'UNet evals/img':>15s} "
      f"{'s/img':>6s}")
for label, kw in variants.items():
    rows[label] = []
    for g, prompt in mem.items():
        counter = CountingUNet(pipe.unet)
        real_unet, pipe.unet = pipe.unet, counter          # every method reaches the UNet through pipe.unet
        try:
            t0 = time.perf_counter()
            images, infos[label, g] = pipe.generate(prompt, num_images=K_IN, seed=SEED, return_info=True, **kw)
            seconds = time.perf_counter() - t0
        finally:
            pipe.unet = real_unet
        rows[label].append(images)
        sim = metrics.nearest_training(images, train_images)["similarity"]
        print(f"{label.replace(chr(10), ' '):22s} {g:7s} {sim.mean():10.3f} {metrics.is_copy(sim).mean():7.0%} "
              f"{metrics.stamp_present(images).mean():6.0%} {counter.count / K_IN:15.1f} {seconds / K_IN:6.3f}")
print(f"(plain CFG: 2 x {steps} = {2 * steps} evaluations per image; similarity to the nearest training image; "
      "copies: similarity > 0.5; stamp: metrics.stamp_present)")
rows = {label: np.concatenate(images) for label, images in rows.items()}
image_table(rows, [f"{g} #{k}" for g in mem for k in range(K_IN)], f"{OUT}/init_noise.png",
            "same prompts, same seeds: plain CFG against moving x_T first")
print(f"saved {OUT}/init_noise.png")
for g in mem:
    info = infos["init_noise", g]
    print(f"{g}: target {info['target']:.3f}; first-step m before {np.round(info['magnitude_before'], 3)}, after "
          f"{np.round(info['magnitude_after'], 3)}, AdamW steps {info['steps']}")

# %% [markdown]
# The table gives the first-step magnitude before and after; `adjust_per_sample` also returns its whole descent.
# We rerun it on the global prompt's x_T (the same seed, so the same numbers as above) and plot each sample's
# l(x_T) against the AdamW steps.

# %%
info = infos["init_noise", "global"]
_, path, n_steps = adjust_per_sample(pipe.unet, pipe.encode([mem["global"]]), pipe.empty,
                                     pipe.initial_noise(K_IN, SEED), t1, info["target"])
path = torch.stack(path).numpy()                                                  # (iterations + 1, K_IN)
fig, ax = plt.subplots(figsize=(5.5, 3.4))
for k in range(K_IN):
    ax.plot(path[:int(n_steps[k]) + 1, k], marker=".", label=f"#{k}: {int(n_steps[k])} steps")
ax.axhline(info["target"], color="k", ls="--", label=f"target = lambda_ss = {info['target']:.2f}")
ax.set(xlabel="AdamW step on x_T", ylabel="first-step magnitude l(x_T)", title=f"global prompt: {mem['global']}")
ax.title.set_fontsize(8)
ax.legend(fontsize=7)
fig.tight_layout()
show(fig, f"{OUT}/init_noise_descent.png", dpi=110)
print(f"saved {OUT}/init_noise_descent.png\nLook at: how many steps each x_T needs, and whether the moved x_T "
      "also left the basin (init_noise.png: does the image still look like the CFG row?).")

# %% [markdown]
# Two things to read off. First, *lowering the first-step magnitude is not the same as not copying*: the target
# is the detector's line, and a sample just below it may still fall into the basin later (compare the similarity
# column with CFG's, and look at the pictures: a similarity that falls below 0.5 while the picture barely changes
# is a copy by eye all the same). Second, the cost: the untouched samples cost what CFG costs, the moved ones pay
# 2 evaluations and a backward pass per AdamW step, before sampling starts.

# %% [markdown]
# ## 3. Anisotropy: the direction of the guidance, not only its length
#
# Asthana & Belagiannis look at log p_t(x | prompt) around pure noise. At high noise it is nearly isotropic and
# only the guidance's *norm* tells memorized prompts apart (Wen's m). At low noise it is anisotropic, and there a
# memorized prompt's guidance points along the unconditional score: the model's "towards the data" direction is
# also its "towards this prompt" direction, because this prompt *is* a training image. Both are measured on the
# same x_T ~ N(0, I), with no denoising step (s = -eps / sigma_t, so cosines of scores are cosines of eps):
#
#     A(p) = gamma_1 || eps(x_T, t_1, e_p) - eps(x_T, t_1, e_0) ||
#          + gamma_2 mean_pixels cos_channels( eps(x_T, t_c, e_0), eps(x_T, t_c, e_p) - eps(x_T, t_c, e_0) )
#
# with t_1 the first (noisiest) step and t_c a low-noise step (SD's t = 41), and (gamma_1, gamma_2) = (1, 2) for
# SD v1.4. `anisotropy_terms` gives the two terms apart, so we can see what each contributes. The first term is
# exactly Wen's first-step magnitude, which we check.

# %%
x_A = pipe.initial_noise(K, seed=0)
score = {}
for g in GROUPS:
    prompts = [p for p, _ in sets[g]]
    norm, cosine = anisotropy_terms(pipe, pipe.encode(prompts), x_A)                   # (P, K) each
    wen = detection_score(pipe, prompts, seeds=(0,), num_images=K)                     # (P,)
    assert torch.allclose(norm.mean(1), wen, rtol=1e-4), "the norm term must be Wen's first-step magnitude"
    score[g] = {"norm (Wen)": norm.mean(1).numpy(), "cosine": cosine.mean(1).numpy(),
                "A (1, 2)": anisotropy_score(pipe, prompts, seeds=(0,), num_images=K).numpy()}
names = list(score["global"])
print(f"{'score':12s} " + " ".join(f"{g:>9s}" for g in GROUPS) + "   AUC memorized vs control (global, local)")
for name in names:
    pos = {g: score[g][name] for g in MEMORIZED}
    neg = np.concatenate([score[g][name] for g in CONTROL])
    auc = metrics.roc_auc(np.concatenate(list(pos.values())), neg)
    per = ", ".join(f"{metrics.roc_auc(v, neg):.2f}" for v in pos.values())
    print(f"{name:12s} " + " ".join(f"{score[g][name].mean():9.3f}" for g in GROUPS) + f"   {auc:.2f} ({per})")

# %%
fig, axes = plt.subplots(1, len(names), figsize=(3.3 * len(names), 3.4))
for ax, name in zip(axes, names):
    neg = np.concatenate([score[g][name] for g in CONTROL])
    auc = metrics.roc_auc(np.concatenate([score[g][name] for g in MEMORIZED]), neg)
    for i, g in enumerate(GROUPS):
        v = score[g][name]
        ax.plot(i + np.linspace(-0.15, 0.15, len(v)), v, "o", color=COLOURS[g], alpha=0.7, ms=4)
    ax.set_xticks(range(len(GROUPS)), GROUPS, fontsize=7)
    ax.set_title(f"{name}: AUC {auc:.2f}", fontsize=9)
    ax.grid(alpha=0.3)
axes[0].set_ylabel("score per prompt (mean over x_T)")
fig.suptitle("memorized (global, local) against control (general, heldout) prompts; AUC: memorized vs control",
             fontsize=8)
fig.tight_layout()
show(fig, f"{OUT}/anisotropy.png", dpi=110)
print(f"saved {OUT}/anisotropy.png\nLook at: which panel separates the red/orange points from the blue/green "
      "ones? An AUC below 0.5 ranks backwards: that term points the other way on this model. The weights (1, 2)\n"
      "were fitted on SD's units; on the toy the norm is in other units.")

# %% [markdown]
# ## What to take away
#
# - **Bright Ending** needs a model whose end-token attention points at the copy. On this toy it barely does (mask
#   mass on the stamp 0.16-0.22 against its area 0.14), so the masked magnitude detects worse than Wen's (pooled
#   ROC-AUC 0.83 / 0.66 against 1.00 / 1.00) and, with PRSS's thresholds, flags clean prompts; an oracle mask shows
#   what a localizing map would have bought for local memorization.
# - **Initial-noise adjustment** moves x_T until the first-step magnitude falls to the target: an
#   optimisation per memorized sample (forward and backward passes), nothing for the others. Whether the image
#   leaves the basin is a separate question from whether the detector is quiet: measure the similarity.
# - **Anisotropy** adds a second, nearly free signal (two more UNet calls per prompt) to Wen's norm. How much it
#   adds, and even its sign, depend on the model: on Stable Diffusion memorized prompts' guidance aligns with the
#   unconditional score; read the cosine's AUC on yours before trusting its weight.
#
# ## Exercises
#
# 1. **Trace a privacy-utility curve.** Run `pipe.generate(..., method="init_noise", target_factor=f)` for
#    f in (0.25, 0.5, 1, 2) on all global prompts and plot the similarity to the nearest training image against
#    the judge CLIP score (`prss_mini.judges.Judges.load(RUN).clip_score`, as in tutorial 06). Where does it sit
#    against PRSS's points in tutorial 09?
# 2. **Try the batch-wise variant's knobs.** It has no target: change `gamma`, `adj_iters` and `apply_cfg_step`.
#    How many of its samples were below lambda_SS already (info["triggered"] is always True here), and what does
#    it do to the general prompts, which per-sample adjustment leaves alone?
# 3. **Reweigh anisotropy.** Fit (gamma_1, gamma_2) on the toy: pick the gamma_2 / gamma_1 that maximizes the AUC on
#    one half of the prompts (`prompt_sets(..., seed=1)`) and test it on the other half. Does the cosine term ever
#    help against the norm alone? Try the cosine at another timestep (change `t_c` in a copy of
#    `anisotropy_terms`).
# 4. **What would a localized mask need?** Make an oracle mask blurrier or shifted (e.g. `np.roll(region, 3, 1)`)
#    and watch the oracle row's AUC fall: how much of its mass must sit on the stamp before m_BE beats m? Then
#    look at `masks` from an earlier sampling step (edit a copy of `end_token_mask`): is the `<eos>` map any more
#    localized there, or from the up path's layers?
# 5. **A threshold for m_BE.** PRSS + BE keeps lambda_SS, calibrated for Wen's m. Calibrate one for m_BE the way
#    `guidance/calibrate.py` does for m: the 95th percentile of `bright_ending.detection_score` over general
#    training prompts. Pass it as `lambda_ss=` to `method="prss_be"`: how many general samples trigger now, and
#    what is left of the stamp on the local prompts?
