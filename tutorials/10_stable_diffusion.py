# %% [markdown]
# # 10 · Past the toy: PRSS on Stable Diffusion
#
# The paper runs on Stable Diffusion v1.4. prss-mini's guidance code runs there unchanged:
# `prss_mini/stable_diffusion.py` is a DDIM loop over diffusers' UNet and scheduler whose guidance is the toy's
# own `classifier_free_guidance`, `noise_magnitude`, `semantic_search` and `prompt_reanchor`, per sample.
#
# | toy (tutorials 01-09) | Stable Diffusion v1.4 |
# |---|---|
# | pixel-space UNet on (B, 3, 16, 16) images | latent UNet on (B, 4, 64, 64); a VAE decodes latents to 512x512 images |
# | tiny text encoder over toy words | CLIP ViT-L/14's text encoder: (B, 77, 768) token states |
# | `diffusion.ddim_step` on the toy schedule | `DDIMScheduler.step`, scaled_linear betas, 50 steps |
# | s = 2 | s = 7.5 |
# | thresholds calibrated on the toy's general prompts | the official ones: lambda_SS = 1, lambda_PR = 3, tau = 5 |
#
# **Why the thresholds differ.** A magnitude is an L2 norm over the whole tensor of one sample, so it grows
# like the square root of its number of values: 16384 for SD's latent, 768 for the toy's image. No absolute
# threshold transfers between two models; ratios do. On SD v1.4 (read by eye from Wen et al.'s per-step plots)
# a clean prompt's first-step m is about 0.5-0.8 and a memorized one's about 5, so lambda_SS = 1 sits just
# above the clean ones. Along the trajectory a clean prompt's m_t climbs to a plateau of about 2-2.7:
# lambda_PR = 3 sits just above it and tau = 5 about twice as high, so PR barely touches a clean paraphrase.
# The toy's calibration (tutorial 05) puts its thresholds at the same places on its own clean prompts' curves:
# lambda_SS just above their first-step m, lambda_PR just above their plateau, tau = 5/3 lambda_PR.
#
# **What you need.** `pip install diffusers transformers`, the SD v1.4 weights and preferably a GPU (on a CPU a
# 50-step 512x512 image takes minutes):
#
#     PRSS_SD_MODEL=/path/to/stable-diffusion-v1-4 python tutorials/10_stable_diffusion.py
#
# PRSS_SD_MODEL is a local folder, or a hub id such as CompVis/stable-diffusion-v1-4 (then diffusers downloads
# about 4 GB into its cache: nothing is downloaded unless you set it). PRSS_SD_CANDIDATES may name a jsonl in
# the official code's format (one JSON object per line: the memorized prompt under "caption", its paraphrases
# under "caption1" ... "caption25"): its captions become the memorized prompts, the first one with its
# paraphrases is the one PRSS is shown on. Without PRSS_SD_MODEL (and in CI, with PRSS_QUICK=1), the same code
# runs on a tiny randomly initialised pipeline, and every number and picture is noise.

# %%
from common import image_table, out_dir, quick, show, show_grid

import os

import matplotlib.pyplot as plt
import numpy as np

from prss_mini import metrics
from prss_mini import stable_diffusion as sd

OUT = out_dir("10_stable_diffusion")
FIGURES = ["detection.png", "magnitude_trace.png", "cfg_ss_prss.png", "cfg_ss_prss_full.png"]
REQUIRES = ["diffusers", "transformers"]  # optional packages: tests/test_tutorials.py skips this tutorial without them
for package in REQUIRES:
    try:
        __import__(package)
    except ImportError:
        raise SystemExit(f"this tutorial needs {' and '.join(REQUIRES)}: pip install {' '.join(REQUIRES)}")

MODEL = os.environ.get("PRSS_SD_MODEL")
REAL = bool(MODEL) and not quick()
if REAL:
    pipe = sd.load_pipeline(MODEL)
    print(f"Stable Diffusion from {MODEL} on {pipe.device}")
else:
    pipe = sd.tiny_random_pipeline(seed=0)
    print("=" * 100 + "\nA TINY RANDOMLY INITIALISED PIPELINE (no PRSS_SD_MODEL, or PRSS_QUICK=1): the code is the "
          "real one,\nbut every magnitude, decision and image below is noise. Set PRSS_SD_MODEL for Stable Diffusion."
          "\n" + "=" * 100)
pipe.set_progress_bar_config(disable=True)
STEPS = 50 if REAL else 10
NUM_IMAGES = 4 if REAL else 2

# %% [markdown]
# ## The prompts
#
# A memorized prompt needs its paraphrases (the paper asks an LLM for 25; here a handful written by hand, or
# your jsonl). Captions that SD v1.4 is known to reproduce come from the extraction studies (Carlini et al.
# 2023; Webster 2023); the clean prompts are ordinary ones.

# %%
CANDIDATE_FILE = os.environ.get("PRSS_SD_CANDIDATES")
if CANDIDATE_FILE:
    table = sd.read_candidates(CANDIDATE_FILE)
    memorized = list(table)[:10]
    PROMPT, PARAPHRASES = memorized[0], table[memorized[0]]
else:
    PROMPT = "Living in the Light with Ann Graham Lotz"
    PARAPHRASES = ["Ann Graham Lotz, author of Living in the Light",
                   "a book cover of Living in the Light by Ann Graham Lotz",
                   "a portrait of the author Ann Graham Lotz",
                   "Living in the Light, a book written by Ann Graham Lotz",
                   "the cover of a Christian book by Ann Graham Lotz"]
    memorized = [PROMPT, "The No Limits Business Woman Podcast", "Mothers influence on her young hippo"]
clean = ["a watercolor painting of a fox in a snowy forest", "a red bicycle leaning against a brick wall",
         "an astronaut riding a horse on the moon", "a bowl of ramen on a wooden table, studio photo",
         "a lighthouse on a cliff at sunset, oil painting"]
print(f"PRSS is shown on {PROMPT!r} with {len(PARAPHRASES)} paraphrases")

# %% [markdown]
# ## Detection: the first-step magnitude (Wen et al.)
#
# `sd.detection_score` measures m = ||eps(x_T, e_p) - eps(x_T, e_0)|| at the first DDIM step on the x_T that
# `generate` draws for the same seed, averaged over NUM_IMAGES of them. Memorized prompts should score high,
# clean ones low, and the paraphrases (SS's premise) in between or low. ROC-AUC: memorized vs clean.

# %%
scores = {name: sd.detection_score(pipe, prompts, seed=0, num_images=NUM_IMAGES, num_inference_steps=STEPS)
          for name, prompts in (("memorized", memorized), ("paraphrases", PARAPHRASES), ("clean", clean))}
auc = metrics.roc_auc(scores["memorized"].numpy(), scores["clean"].numpy())
for name, s in scores.items():
    print(f"{name:12s} first-step m: " + ", ".join(f"{v:.3f}" for v in s.tolist()))
print(f"ROC-AUC memorized vs clean: {auc:.2f} ({len(memorized)} vs {len(clean)} prompts)")

if REAL:
    LAMBDA_SS, LAMBDA_PR, TAU = sd.LAMBDA_SS, sd.LAMBDA_PR, sd.TAU
else:  # SD's 1 : 3 : 5 mean nothing here; keep the ratios, scaled so that every branch of PRSS runs
    m = float(scores["memorized"][0])
    LAMBDA_SS, LAMBDA_PR, TAU = m / 6, m / 2, 5 * m / 6
print(f"thresholds: lambda_SS = {LAMBDA_SS:.3g}, lambda_PR = {LAMBDA_PR:.3g}, tau = {TAU:.3g}"
      + ("" if REAL else " (scaled to the tiny pipeline's magnitudes)"))

fig, ax = plt.subplots(figsize=(6, 3))
for x, (name, s) in enumerate(scores.items()):
    ax.scatter(np.full(len(s), x), s.numpy(), label=name)
ax.axhline(LAMBDA_SS, color="gray", ls="--", label="lambda_SS")
ax.set(xticks=range(len(scores)), xticklabels=list(scores), ylabel="first-step magnitude",
       title=f"detection on {'SD' if REAL else 'a tiny random pipeline (noise)'}: ROC-AUC {auc:.2f}")
ax.legend(fontsize=7)
fig.tight_layout()
show(fig, f"{OUT}/detection.png")
print(f"saved {OUT}/detection.png")

# %% [markdown]
# ## CFG, SS only and PRSS on the memorized prompt
#
# Same seed, so the same x_T for every method. Untriggered samples get CFG's images exactly; triggered ones are
# searched (the first paraphrase with m <= lambda_SS, else the smallest) and, with PRSS, re-anchored on the
# memorized prompt wherever the chosen prompt's m_t exceeds lambda_PR.

# %%
settings = dict(seed=0, num_images=NUM_IMAGES, num_inference_steps=STEPS, lambda_ss=LAMBDA_SS, lambda_pr=LAMBDA_PR,
              tau=TAU)
results = {method: sd.generate(pipe, PROMPT, method=method, candidates=PARAPHRASES, **settings)
           for method in ("cfg", "ss", "prss")}
_, info = results["prss"]
for b in range(NUM_IMAGES):
    print(f"sample {b}: first-step m = {info['magnitudes'][b]:.3f}, triggered {info['triggered'][b]}, "
          f"guided towards {info['prompts'][b]!r}")
rows = {method.upper(): np.stack([np.asarray(image) for image in images]) for method, (images, _) in results.items()}
image_table(rows, [f"seed 0, #{b}" for b in range(NUM_IMAGES)], f"{OUT}/cfg_ss_prss.png", title=PROMPT)
print(f"saved {OUT}/cfg_ss_prss.png")
show_grid(np.concatenate(list(rows.values())), f"{OUT}/cfg_ss_prss_full.png", nrow=NUM_IMAGES,
          scale=1 if REAL else 4)
print("rows of cfg_ss_prss_full.png: CFG, SS only, PRSS (full resolution)")

# %% [markdown]
# ## Where PR acts: m_t along the trajectory
#
# `info["trace"]` is m_t = ||eps(x_t, e) - eps(x_t, e_0)|| at every step for the prompt e each sample is guided
# towards: the memorized prompt under CFG, the chosen paraphrase under PRSS. PR is off below lambda_PR and
# full from tau on. On SD, expect the memorized prompt's curve under CFG high and climbing at the end, and the
# chosen paraphrase's lower.

# %%
_, clean_info = sd.generate(pipe, clean[0], method="cfg", **settings)
curves = {"CFG, the memorized prompt": results["cfg"][1]["trace"], "PRSS, the chosen prompt": info["trace"],
          f"CFG, a clean prompt ({clean[0]!r})": clean_info["trace"]}
fig, ax = plt.subplots(figsize=(6.5, 3.5))
for (label, trace), colour in zip(curves.items(), ("crimson", "steelblue", "gray")):
    for b, curve in enumerate(trace.numpy()):
        ax.plot(curve, color=colour, alpha=0.7, label=label if b == 0 else None)
for value, name in ((LAMBDA_PR, "lambda_PR"), (TAU, "tau")):
    ax.axhline(value, color="black", ls=":", lw=1)
    ax.annotate(name, (0, value), fontsize=7, va="bottom")
ax.set(xlabel="DDIM step", ylabel="m_t",
       title="per-step magnitude" + ("" if REAL else " (tiny random pipeline: noise)"))
ax.legend(fontsize=7)
fig.tight_layout()
show(fig, f"{OUT}/magnitude_trace.png")
print(f"saved {OUT}/magnitude_trace.png")

# %% [markdown]
# ## After PRSS: three newer methods on the same UNet
#
# `prss_mini/sd_after_prss.py` runs the toy's code for three later papers on diffusers' UNet, with their official
# code's defaults. Han et al. (NeurIPS 2025) move x_T itself, by AdamW, until its first-step m is at most 0.9,
# then sample with plain CFG. Asthana et al. (ICLR 2026) add to the first-step m twice the cosine between eps_u
# and the guidance eps_p - eps_u, read at t = 41 on the same pure noise. Bright Ending (Chen et al., ICLR 2025)
# keeps the end token's cross-attention at the last step of a CFG run: bright where a copy sits, it weighs m
# there. (On the tiny pipeline the target is scaled to its magnitudes, like the thresholds above.)

# %%
scheduler = sd.ddim_scheduler(pipe)
x_T = sd.initial_latents(pipe, scheduler, NUM_IMAGES, seed=0)                      # generate's x_T for seed 0
e_p, e_0 = sd.encode(pipe, [PROMPT]), sd.encode(pipe, [""])                         # (1, 77, D) x 2
adjust = {} if REAL else dict(target=0.9 * float(scores["memorized"][0]), lr=0.05, max_iters=20)
x_adj, adjusted = sd.adjust_initial_latents(pipe.unet, scheduler, x_T, e_p, e_0, num_inference_steps=STEPS, **adjust)
for b in range(NUM_IMAGES):
    print(f"sample {b}: first-step m {adjusted['magnitudes'][0, b]:.3f} -> {adjusted['magnitudes'][-1, b]:.3f} "
          f"after {int(adjusted['steps'][b])} AdamW steps on x_T (target {adjusted['target']:.3g})")
anisotropy = {name: sd.anisotropy_score_sd(pipe.unet, scheduler, x_T, sd.encode(pipe, prompts), e_0,
                                           num_inference_steps=STEPS) for name, prompts in
              (("memorized", memorized), ("clean", clean))}
auc_a = metrics.roc_auc(anisotropy["memorized"].numpy(), anisotropy["clean"].numpy())
print(f"anisotropy score: ROC-AUC memorized vs clean {auc_a:.2f} (first-step m alone: {auc:.2f})")
mask = sd.end_token_mask_sd(pipe.unet, scheduler, x_T, e_p, e_0, sd.end_token_index(pipe.tokenizer, [PROMPT]),
                            num_inference_steps=STEPS)                              # (NUM_IMAGES, h, w)
masked = sd.masked_magnitude_sd(pipe.unet, scheduler, x_T, e_p, e_0, mask, STEPS)
print(f"Bright Ending: mask {tuple(mask.shape)}, masked first-step m " + ", ".join(f"{v:.3f}" for v in masked))

# %% [markdown]
# ## Exercises
#
# 1. Point PRSS_SD_CANDIDATES at the official code's candidate file (its 500 memorized prompts) and add 100
#    clean prompts of your own: what ROC-AUC does the first-step score reach with num_images = 1, and with 4?
# 2. From `info["trace"]` of a memorized prompt, pick a lambda_PR above the whole PRSS curve and rerun
#    `sd.generate(..., method="prss", lambda_pr=..., tau=...)`: compare with SS only (the tests say why they
#    must agree).
# 3. `per_prompt=True` decides once for all NUM_IMAGES samples on the RMS of their magnitudes, as the official
#    code's norm over its batch does. Find a prompt whose samples trigger differently, and compare.
# 4. Compute m(memorized) / m(clean) at the first step here and in tutorial 05. Which transfers from the toy to
#    SD, the ratio or the values?
# 5. Sample from `x_adj` with `sd.denoise(pipe.unet, scheduler, x_adj, e_p, e_0)` and from x_T, decode both
#    (`pipe.vae.decode(latents / pipe.vae.config.scaling_factor)`), and put `mask` (upsampled 8x) beside them: does
#    the adjusted start still copy, and does the end token light up where the copy sits? Try
#    `batch_wise=True` too, sampled with `apply_cfg_step=adjusted["apply_cfg_step"]`.
