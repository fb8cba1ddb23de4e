# %% [markdown]
# # 07 · Prompt Re-anchoring (PR)
#
# Plain CFG starts from the unconditional prediction and pushes towards the prompt:
#
#     eps_hat = eps_u + s * (eps_p - eps_u)
#
# When e_p is memorized, "towards eps_p" is exactly the direction that rebuilds the training image. PR keeps
# three predictions per step, eps_u = eps(x_t, e_0), eps_p = eps(x_t, e_p) and eps_ss = eps(x_t, e_ss) (the
# target: the searched paraphrase of tutorial 08), and makes the memorized prompt the **anchor** that guidance
# starts from and pushes away from:
#
#     eps_hat = eps_p + s * (eps_ss - eps_p)                                     (full re-anchoring)
#
# We look at its geometry, at the ramp that switches it on, check the code against the equations, and watch
# it on memorized prompts.

# %%
from common import get_run, hardest_titled, image_table, out_dir, quick, show

import matplotlib.pyplot as plt
import numpy as np
import torch

from prss_mini import metrics
from prss_mini.diffusion import classifier_free_guidance, predict_noise, timesteps_for
from prss_mini.prompts import prompt_sets
from prss_mini.guidance.detect import magnitude_trace, noise_magnitude
from prss_mini.guidance.paraphrase import paraphrases
from prss_mini.guidance.pr import prompt_reanchor, reanchor_strength
from prss_mini.pipeline import ToyPipeline
from prss_mini.captions import parse_caption

RUN = get_run()
OUT = out_dir("07_prompt_reanchoring")
pipe = ToyPipeline(RUN)
FIGURES = ["pr_geometry.png", "pr_ramp.png", "pr_before_after.png", "pr_traces.png"]

sets = prompt_sets(pipe.dataset, per_group=8, seed=0)
untitled = [p for p, _ in sets["global"] if parse_caption(p)[1] is None]
titled = hardest_titled([p for p, _ in sets["global"]], pipe.dataset) or untitled[1:]   # the hard case first
s, steps = pipe.config.guidance_scale, pipe.config.num_inference_steps
lam_pr, tau = pipe.thresholds["lambda_pr"], pipe.thresholds["tau"]
print(f"s = {s}, lambda_PR = {lam_pr:.3f}, tau = {tau:.3f} (calibrated, see prss_mini/guidance/calibrate.py)")

# %% [markdown]
# ## The geometry, as a cartoon
#
# Noise predictions live in a space of 3 x H x W dimensions; the cartoon squeezes them into a plane with
# **made-up** 2-D vectors (and s = 2.5 so that everything fits on the page). CFG starts at eps_u and
# extrapolates through eps_p. PR starts at eps_p and extrapolates through eps_ss, i.e. *away* from eps_p. The
# cartoon's points are computed with the library's own `prompt_reanchor`, fed (1, 2, 1, 1) tensors.

# %%
cart = {"eps_u": (0.0, 0.0), "eps_p": (0.6, 1.5), "eps_ss": (1.3, 0.6)}   # made-up, not model outputs
eu, ep, ess = (torch.tensor(v).view(1, 2, 1, 1) for v in cart.values())
sc = 2.5
m_c = float(noise_magnitude(ess, eu))   # the cartoon's m_t = ||eps_ss - eps_u||
ends = {
    "CFG on e_p: eps_u + s(eps_p - eps_u)": (eu, classifier_free_guidance(eu, ep, sc), "crimson"),
    "CFG on e_ss (SS only)": (eu, classifier_free_guidance(eu, ess, sc), "gray"),
    "full PR (m_t >= tau): eps_p + s(eps_ss - eps_p)": (ep, prompt_reanchor(eu, ep, ess, sc, 0.1, 0.5 * m_c),
                                                        "royalblue"),
    "ramped PR, s_pr = 1.75": (ep, prompt_reanchor(eu, ep, ess, sc, m_c - 1.0, m_c + 1.0), "mediumpurple"),
}
fig, ax = plt.subplots(figsize=(6.5, 5.5))
for label, (start, end, colour) in ends.items():
    tip = tuple(end.flatten().tolist())
    ax.annotate("", xy=tip, xytext=tuple(start.flatten().tolist()), arrowprops=dict(arrowstyle="->", color=colour))
    ax.plot(*tip, "o", color=colour, ms=4, label=label)   # the tip as a point, so the axes make room for it
for name, (x, y) in cart.items():
    ax.plot(x, y, "ko")
    ax.annotate(name, (x, y), textcoords="offset points", xytext=(6, 6), fontsize=11)
ax.plot(*zip(cart["eps_u"], cart["eps_p"]), "k:", lw=0.8)
ax.plot(*zip(cart["eps_p"], cart["eps_ss"]), "k:", lw=0.8)
ax.margins(0.15)
ax.set(aspect="equal", title="CARTOON (made-up 2-D vectors, s = 2.5): CFG vs PR updates")
ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.08))
ax.grid(alpha=0.3)
show(fig, f"{OUT}/pr_geometry.png", dpi=110, bbox_inches="tight")
print(f"saved {OUT}/pr_geometry.png\nLook at: the red arrow runs through eps_p (towards the copy); the blue one "
      "starts at eps_p and points away from it, past eps_ss.")

# %% [markdown]
# ## The ramp: PR switches on gradually
#
# PR is only needed while the target itself still looks memorized, so PRSS measures the target's magnitude
# m_t = ||eps_ss - eps_u|| at every step and mixes:
#
#     s_pr    = min(1 + (s - 1) * (m_t - lambda_PR) / (tau - lambda_PR), s)
#     eps_hat = eps_p + s_pr * (eps_ss - eps_p) + (s - s_pr) * (eps_ss - eps_u)      if m_t > lambda_PR
#     eps_hat = eps_u + s * (eps_ss - eps_u)                                          otherwise
#
# Collect the terms in s_pr and it reads as one line (expand both sides to check):
#
#     eps_hat = [eps_u + s * (eps_ss - eps_u)] + (s_pr - 1) * (eps_u - eps_p)
#
# CFG on the target, plus (s_pr - 1) times a push from eps_p back towards eps_u: negative guidance on the
# memorized prompt. At s_pr = 1 (m_t = lambda_PR) it is plain CFG on e_ss, so the switch has no jump; at
# s_pr = s (m_t >= tau) it is eps_p + s * (eps_ss - eps_p), full re-anchoring.

# %%
m = torch.linspace(0, 1.6 * tau, 400)
raw = reanchor_strength(m, s, lam_pr, tau)
s_pr = torch.where(m > lam_pr, raw, torch.ones_like(raw))   # below lambda_PR: plain CFG, i.e. s_pr = 1
fig, ax = plt.subplots(figsize=(7, 4))
ax.plot(m.numpy(), s_pr.numpy(), lw=2.5, color="crimson", label="s_pr: weight of (eps_ss - eps_p)")
ax.plot(m.numpy(), (s - s_pr).numpy(), lw=1.5, ls="--", color="steelblue",
        label="s - s_pr: weight of (eps_ss - eps_u)")
low = m <= lam_pr
ax.plot(m[low].numpy(), raw[low].numpy(), ls=":", color="gray", label="the s_pr formula below lambda_PR (unused)")
for x, name in ((lam_pr, "lambda_PR"), (tau, "tau")):
    ax.axvline(x, color="k", lw=0.8, ls="--")
    ax.text(x, s + 0.2, name, ha="center", fontsize=9)
ax.set(xlabel="m_t = ||eps_ss - eps_u||", ylabel="weight", ylim=(-0.5, s + 0.8),
       title=f"the re-anchoring ramp of this run (s = {s})")
ax.legend(fontsize=8, loc="center right")
fig.tight_layout()
show(fig, f"{OUT}/pr_ramp.png", dpi=110)
print(f"saved {OUT}/pr_ramp.png\nLook at: s_pr is 1 up to lambda_PR, climbs linearly, and is capped at s from tau on.")

# %% [markdown]
# ## The code does what the equations say
#
# Real predictions from the model at the first step, for a memorized prompt and one paraphrase as target.
# Choosing lambda_PR and tau around the measured m_t puts every sample in one regime of the ramp.

# %%
prompt = untitled[0]
target = paraphrases(prompt, n=1, seed=0)[0]
print(f"e_p: {prompt}\ne_ss: {target}")
x_T = pipe.initial_noise(4, seed=0)
t = timesteps_for(steps, pipe.schedule)[0]
eps_u, eps_ss, eps_p = predict_noise(pipe.unet, x_T, t, [pipe.empty, pipe.encode([target]), pipe.encode([prompt])])
m_t = noise_magnitude(eps_ss, eps_u)                                  # (4,)
print("m_t per sample:", [round(v, 3) for v in m_t.tolist()])
cfg_target = classifier_free_guidance(eps_u, eps_ss, s)
full_pr = eps_p + s * (eps_ss - eps_p)
lo, hi = float(m_t.max()) + 1.0, 0.9 * float(m_t.min())           # above every m_t / below every m_t
lam_mid, tau_mid = 0.5 * float(m_t.min()), 2.0 * float(m_t.max())  # every m_t strictly on the ramp
w = reanchor_strength(m_t, s, lam_mid, tau_mid).view(-1, 1, 1, 1)  # s_pr per sample, (4, 1, 1, 1)
checks = {  # what it is: (lambda_PR, tau, what prompt_reanchor should return)
    "m_t <= lambda_PR  vs  eps_u + s(eps_ss - eps_u)": (lo, lo + 1, cfg_target),
    "m_t >= tau        vs  eps_p + s(eps_ss - eps_p)": (hi / 2, hi, full_pr),
    "on the ramp       vs  CFG on e_ss + (s_pr - 1)(eps_u - eps_p)": (lam_mid, tau_mid,
                                                                      cfg_target + (w - 1) * (eps_u - eps_p)),
}
for name, (lam, ta, expected) in checks.items():
    got = prompt_reanchor(eps_u, eps_p, eps_ss, s, lam, ta)
    assert torch.allclose(got, expected, atol=1e-4), f"{name}: prompt_reanchor disagrees with the equation"
    print(f"{name}: max abs difference {float((got - expected).abs().max()):.2e}")
print(f"for scale, CFG on e_ss and full PR differ by up to {float((cfg_target - full_pr).abs().max()):.2f}")

# %% [markdown]
# ## Before and after, on memorized prompts
#
# Same prompts, same seeds: plain CFG, SS only, PR only and PRSS. "SS only" runs plain CFG on the searched
# paraphrase (no re-anchoring); "PR only" re-anchors towards PE's optimized embedding (tutorial 06) instead of
# a paraphrase; PRSS re-anchors towards the paraphrase. All three act only on samples whose first-step
# magnitude is above lambda_SS (they are "triggered"); the others run plain CFG. The first row is the training
# image each prompt was memorized from. P1 is the hard case: a titled caption whose image was also trained
# under other phrasings that keep the title, so every paraphrase still carries part of the memorization. Compare
# its SS-only and PRSS rows with the printed similarities: what SS leaves, PR has to remove. Then trust your eyes
# too: the copy metric compares blurred, normalized images, and a sample can score well under the copy threshold
# while its background still looks like the training image's.

# %%
K = 2 if quick() else 3
mem = [untitled[0], titled[0], sets["local"][0][0]]   # global, global with a title word, local (stamp)
train_images, _, _ = metrics.unique_training_images(pipe.dataset)
data = pipe.dataset
rows = {"training\nimage": [], "CFG": [], "SS only": [], "PR only": [], "PRSS": []}
infos = {}
for j, p in enumerate(mem):
    print(f"P{j}: {p}")
    rows["training\nimage"].append(np.repeat(data["images"][np.flatnonzero(data["captions"] == p)[0]][None], K, 0))
    for name, method in (("CFG", "cfg"), ("SS only", "ss"), ("PR only", "pr"), ("PRSS", "prss")):
        images, infos[j, method] = pipe.generate(p, method=method, num_images=K, seed=j, return_info=True)
        rows[name].append(images)
rows = {k: np.concatenate(v) for k, v in rows.items()}

image_table(rows, [f"P{c // K} #{c % K}" for c in range(len(mem) * K)], f"{OUT}/pr_before_after.png",
            "memorized prompts, same seeds: CFG, SS only, PR only, PRSS")
print(f"saved {OUT}/pr_before_after.png\nLook at: rows that match the training image are copies; P2's white centre "
      "label is the local stamp.")

for name in ("CFG", "SS only", "PR only", "PRSS"):
    sim = metrics.nearest_training(rows[name], train_images)["similarity"].reshape(len(mem), K).mean(1)
    stamp = metrics.stamp_present(rows[name]).reshape(len(mem), K).mean(1)
    print(f"{name:8s} mean similarity per prompt {np.round(sim, 3)}  stamp rate per prompt {stamp}")
for j in range(len(mem)):
    info = infos[j, "prss"]
    print(f"P{j} PRSS triggered {info['triggered']}, e_ss {info['prompt'][0]!r}")

# %% [markdown]
# ## Magnitude traces, before and after
#
# Before (plain CFG): m_t = ||eps(x_t, e_p) - eps_u|| along CFG's own trajectory (`detect.magnitude_trace`).
# After: PRSS records m_t = ||eps_ss - eps_u|| of its target at every step (`info["trace"]`), the number that
# sets s_pr; for PR only the target is PE's embedding. Only triggered samples are averaged.

# %%
fig, axes = plt.subplots(1, len(mem), figsize=(4 * len(mem), 3.4), sharey=True, squeeze=False)
for j, p in enumerate(mem):
    ax = axes[0, j]
    ax.plot(magnitude_trace(pipe, pipe.encode([p]), pipe.initial_noise(K, j)).mean(0).numpy(), color="crimson",
            label="CFG (before)")
    for method, colour in (("pr", "darkorange"), ("prss", "royalblue")):
        info = infos[j, method]
        on = torch.tensor(info["triggered"])
        if info["trace"] and on.any():
            ax.plot(torch.stack(info["trace"], 1)[on].mean(0).numpy(), color=colour, label=f"{method} (after)")
        else:
            print(f"P{j} {method}: no sample triggered, so it ran plain CFG (no trace)")
    ax.axhline(lam_pr, color="k", ls="--", lw=0.8)
    ax.axhline(tau, color="k", ls=":", lw=0.8)
    ax.set(title=f"P{j}", xlabel="step (0 = noisiest)")
axes[0, 0].set_ylabel("m_t  (dashed lambda_PR, dotted tau)")
axes[0, 0].legend(fontsize=8)
fig.tight_layout()
show(fig, f"{OUT}/pr_traces.png", dpi=110)
print(f"saved {OUT}/pr_traces.png\nLook at: steps above the dashed line re-anchor (above the dotted one fully);\n"
      "a target whose m_t stays under lambda_PR makes PR plain CFG on e_ss.")

# %% [markdown]
# ## Exercises
#
# 1. Pass `tau=lam_pr * 1.1` to `pipe.generate(..., method="prss")`: the ramp becomes a step, full PR as soon
#    as m_t > lambda_PR. Expect the PRSS row to move further from the training image, and maybe lose attributes.
# 2. Change the cartoon: put eps_ss on the far side of eps_u from eps_p. What does full PR do then, and why is
#    a target that keeps the meaning (SS) important for utility?
# 3. Verify the one-line identity by hand for s_pr = s. Then pick `lam_mid` between the smallest and largest
#    m_t and rerun the checks: which samples now break the "on the ramp" identity, and why? (Look at the
#    `torch.where` in `prompt_reanchor`: it picks the regime per sample.)
