# %% [markdown]
# # 03 · Diffusion: noising, denoising, and classifier-free guidance
#
# A diffusion model learns to undo noise (Ho et al. 2020, "Denoising diffusion probabilistic models", DDPM).
# Here we take the trained run apart: the forward process that noises an image, the noise schedules, the two
# samplers (DDPM and DDIM, Song et al. 2021, "Denoising diffusion implicit models") and classifier-free
# guidance (Ho & Salimans 2022). The code is `prss_mini/diffusion.py`; names follow diffusers.

# %%
from common import get_run, out_dir, quick, show, show_rows

import os
import time

import matplotlib.pyplot as plt
import numpy as np
import torch

from prss_mini.diffusion import SCHEDULES, NoiseSchedule, add_noise, cfg_hook, predict_x0, sample, timesteps_for
from prss_mini.images import images_to_tensor, tensor_to_images
from prss_mini.judges import Judges
from prss_mini.pipeline import ToyPipeline

RUN = get_run()
OUT = out_dir("03_diffusion")
FIGURES = ["forward.png", "schedules.png", "samplers.png", "cfg_sweep.png"]
pipe = ToyPipeline(RUN)
data = pipe.dataset
K = 2 if quick() else 4  # images per row


# %% [markdown]
# ## The forward process
#
# With betas beta_1..beta_T (T = 1000), alphas = 1 - betas and alphas_cumprod abar_t = prod_{s<=t} alpha_s,
# a noisy image at step t can be drawn in one go (DDPM eq. 4):
#
#     x_t = sqrt(abar_t) * x0 + sqrt(1 - abar_t) * eps,      eps ~ N(0, I)
#
# The UNet learns to undo this from (x_t, t, caption). By default it predicts v = sqrt(abar_t) eps -
# sqrt(1 - abar_t) x0 (v-prediction, as Stable Diffusion 2; config `prediction_type`), and the pipeline turns
# that back into a noise prediction eps_hat (`diffusion.EpsilonModel`), so everything downstream works on eps.
# Solving the noising equation for x0 gives the model's current guess of the clean image, `predict_x0`
# (diffusers: pred_original_sample):
#
#     x0_hat = (x_t - sqrt(1 - abar_t) * eps_hat) / sqrt(abar_t)

# %%
i = int(np.flatnonzero(data["group"] == "general")[0])
caption = str(data["captions"][i])
x0 = images_to_tensor(data["images"][i:i + 1])                                      # (1, 3, H, W) in [-1, 1]
ts = [0, 100, 250, 400, 550, 700, 850, 999]
t = torch.tensor(ts)                                                                # (8,)
noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0)).expand(len(ts), -1, -1, -1)
x_t = add_noise(x0.expand(len(ts), -1, -1, -1), noise, t, pipe.schedule)           # (8, 3, H, W)
abar = pipe.schedule.alphas_cumprod[t].view(-1, 1, 1, 1)
print("with the true eps, predict_x0 gives x0 back; max error:", (predict_x0(x_t, noise, abar) - x0).abs().max().item())
with torch.no_grad():
    eps_hat = pipe.unet(x_t, t, pipe.encode([caption]).expand(len(ts), -1, -1))  # the model's guess of eps
x0_hat = predict_x0(x_t, eps_hat, abar)
show_rows([tensor_to_images(x_t), tensor_to_images(x0_hat)],
          ["x_t at t = " + ", ".join(map(str, ts)) + f"  (beta_schedule={pipe.config.beta_schedule!r})",
           f"the model's x0_hat from each x_t, given the caption {caption!r}"],
          os.path.join(OUT, "forward.png"), "forward process and the model's guess of the clean image")
print("look at forward.png: by the last columns x_t is nearly pure noise; x0_hat should go from the image itself "
      "(small t) to a blurry guess of what the caption allows (large t), where the model cannot see the image.")

# %% [markdown]
# ## Three noise schedules
#
# `linear` is DDPM's choice, `scaled_linear` Stable Diffusion's (and this project's), `cosine` Nichol &
# Dhariwal's (2021). What matters is abar_t, the fraction of signal variance left at step t. Note the
# first step of 50-step DDIM sampling, t = 999 (the run's "trailing" spacing; diffusers' default "leading" one
# starts at 980): there x_t holds almost no trace of the image. That is the step where Wen et al.'s detector
# (tutorial 05) looks, and where the model commits to a layout.

# %%
t_first = timesteps_for(50, pipe.schedule)[0]
fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
for name in SCHEDULES:
    a = NoiseSchedule(1000, name).alphas_cumprod.numpy()
    axes[0].plot(a, label=name)
    axes[1].plot(np.log(a / (1 - a)), label=name)
    print(f"{name:14s} abar at t = {t_first}: {a[t_first]:.4f}   abar at t = 500: {a[500]:.3f}")
for ax, ylabel in zip(axes, ("alphas_cumprod (abar_t)", "log SNR = log(abar_t / (1 - abar_t))")):
    ax.axvline(t_first, color="k", ls=":", lw=0.8)
    ax.set(xlabel="t", ylabel=ylabel)
axes[0].legend(fontsize=8)
fig.tight_layout()
show(fig, os.path.join(OUT, "schedules.png"), dpi=110)
print(f"saved {os.path.join(OUT, 'schedules.png')}: the dotted line is t = {t_first}, the first DDIM step")

# %% [markdown]
# ## Sampling: DDPM and DDIM
#
# DDPM (Algorithm 2) walks back through all T = 1000 steps, adding fresh noise z at each:
#
#     x_{t-1} = (x_t - beta_t / sqrt(1 - abar_t) * eps_hat) / sqrt(alpha_t) + sigma_t * z
#
# DDIM (eq. 12) jumps between a few timesteps (50 of 1000, "trailing": 999, 979, ..., 39, 19, then to x0)
# through the predicted x0. A
# pixel-space model clips that guess to the data range [-1, 1] and uses the noise that matches the clipped guess
# (diffusers: clip_sample, use_clipped_model_output), as `sample` does:
#
#     x0_hat   = clip((x_t - sqrt(1 - abar_t) * eps_hat) / sqrt(abar_t), -1, 1)
#     eps'     = (x_t - sqrt(abar_t) * x0_hat) / sqrt(1 - abar_t)
#     x_prev   = sqrt(abar_prev) * x0_hat + sqrt(1 - abar_prev - sigma_t^2) * eps' + sigma_t * z
#
# (DDPM's step above clips the same way.)
# with sigma_t = eta * (DDPM's sigma for that jump). eta = 0 is deterministic: the same x_T always gives the
# same image, which is what lets PRSS and the baselines be compared image by image. `diffusion.sample` runs
# either one and asks a *guidance hook* `guidance(x_t, t, i) -> eps_hat` for the noise at every step; CFG,
# PRSS and every baseline are such hooks. `pipe.generate` builds the hook and draws x_T from the seed.

# %%
prompt = caption
x_T = pipe.initial_noise(K, seed=0)                                                 # (K, 3, H, W)
hook = cfg_hook(pipe.unet, pipe.encode([prompt]).expand(K, -1, -1), pipe.empty, pipe.config.guidance_scale)
by_hand = tensor_to_images(sample(hook, tuple(x_T.shape), pipe.schedule, 50, x_T=x_T))
assert np.array_equal(by_hand, pipe.generate(prompt, num_images=K, seed=0, num_inference_steps=50)), \
    "the loop written out must give pipe.generate's images bit for bit"
print("sample(cfg_hook(...)) == pipe.generate(...): the same images, bit for bit")

settings = [("DDIM, 10 steps", dict(num_inference_steps=10)),
            ("DDIM, 50 steps", dict(num_inference_steps=50)),
            ("DDIM, 100 steps", dict(num_inference_steps=100)),
            ("DDIM, 50 steps, eta = 1", dict(num_inference_steps=50, eta=1.0))]
if not quick():  # 1000 UNet calls per image: the slow one
    settings.append(("DDPM, 1000 steps (2 images)", dict(sampler="ddpm", num_inference_steps=1000)))
rows, labels = [], []
for label, kw in settings:
    n = 2 if kw.get("sampler") == "ddpm" else K
    start = time.perf_counter()
    images = pipe.generate(prompt, num_images=n, seed=0, **kw)
    rows.append(list(images) + [np.full_like(images[0], 255)] * (K - n))
    labels.append(f"{label}: {(time.perf_counter() - start) / n:.2f} s per image")
    print(labels[-1])
show_rows(rows, labels, os.path.join(OUT, "samplers.png"), f"same seed, same x_T: {prompt!r}")
print("look at samplers.png: deterministic DDIM should give similar pictures at 10, 50 or 100 steps (one ODE, "
      "solved more or less finely); eta = 1 and DDPM add fresh noise, so they can land on other pictures.")

# %% [markdown]
# ## Classifier-free guidance
#
# One network gives both predictions, because training replaced the caption by the empty prompt e_0 for part of
# the samples: with probability `cond_drop_prob` = 0.3 (Stable Diffusion: 0.1), divided by the number of copies of
# the sample's image (`dedup_uncond`, prss_mini/config.py), so the unconditional branch sees every distinct image
# about equally often and does not learn the duplicated ones by heart (on the `cpu` run, 24% of all training items).
# At sampling time, with eps_u = eps(x_t, e_0) and eps_c = eps(x_t, e_p):
#
#     eps_hat = eps_u + s * (eps_c - eps_u)
#
# s = 0 is the unconditional model, s = 1 the conditional one, s > 1 extrapolates past it, towards images the
# classifier p(caption | x) implied by the model is surest about (Ho & Salimans, sec. 3). Typically, larger s:
# the picture follows the caption more closely and the samples look more alike (less diversity). Memorization
# rides on the same term: eps_c - eps_u is the part of the prediction that the prompt adds, the quantity Wen et
# al. measure and that PR turns around. We sweep s for one general prompt, same seed, and let the judge (an
# attribute classifier trained apart from the model, `prss_mini/judges.py`) check shape, colour and position.

# %%
judges = Judges.load(RUN) if os.path.exists(os.path.join(RUN, "judges.pt")) else None  # train_toy's stage 4
attributes = np.repeat(data["attributes"][i][None], K, axis=0)                      # (K, 3)
scales = [0.0, 1.0, 5.0] if quick() else [0.0, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0]
rows, labels = [], []
for s in scales:
    images = pipe.generate(prompt, guidance_scale=s, num_images=K, seed=0)
    flat = images.reshape(K, -1).astype(np.float64)
    spread = np.mean([np.linalg.norm(a - b) for j, a in enumerate(flat) for b in flat[j + 1:]])
    rows.append(images)
    accuracy = f"{judges.attribute_accuracy(images, attributes):.2f}" if judges else "n/a (no judges.pt)"
    labels.append(f"s = {s:g}: attribute accuracy {accuracy}, mean pairwise pixel distance {spread:.0f}")
    print(labels[-1])
show_rows(rows, labels, os.path.join(OUT, "cfg_sweep.png"), f"guidance-scale sweep: {prompt!r}")
print(f"look at cfg_sweep.png: s = 0 ignores the prompt; the run's default is s = {pipe.config.guidance_scale:g}.")

# %% [markdown]
# ## Exercises
#
# 1. Change `ts` to run only over t in 900..999 and look at x0_hat: how early does the model decide where the
#    shape goes? (For a memorized prompt, tutorial 05 asks the same question about the whole picture.)
# 2. Sample with `sampler="ddim", eta=0.5`: between which two rows of samplers.png do the images fall?
# 3. Sweep s for a *global* caption (`data["captions"][data["group"] == "global"][0]`) instead. Does the
#    pairwise distance fall faster than for the general prompt? A memorized prompt has one training image to
#    collapse onto; check whether this run already does (README: "What the toy says about the paper", the
#    plain-CFG row of the ablation: global copies).
