"""The evaluation's figures: the privacy-utility trade-off, image grids, magnitude traces and the ROC curve.

Drawing only: what is drawn is computed in evaluate.py and analysis.py.
"""

import matplotlib.pyplot as plt
import numpy as np

from .analysis import PANELS, frontier, points
from .guidance import METHODS
from .images import enlarge
from .metrics import roc_auc, roc_curve
from .prompts import CONTROL, MEMORIZED

GROUP_COLOURS = {"global": "crimson", "local": "darkorange", "general": "steelblue", "heldout": "seagreen"}
# PRSS is red and CFG black; every other method takes the next of these, in the order of METHODS
PALETTE = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:gray", "tab:olive",
           "tab:cyan", "navy", "darkgoldenrod")


def method_colour(method):
    others = [m for m in METHODS if m not in ("prss", "cfg")]
    return PALETTE[others.index(method) % len(PALETTE)] if method in others else None


def tradeoff_plot(results, path):
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, group in zip(axes, PANELS):
        for method in dict.fromkeys(r["method"] for r in results):
            pts = points(results, method, group)
            if method == "prss":  # every setting as a star, the line along the best ones (flat past the last)
                front = frontier(pts)
                ax.plot(*zip(*pts), "*", ms=12, color="crimson")
                ax.plot(*zip(*front), lw=2.5, color="crimson", label="prss (frontier of its settings)")
                ax.plot([front[-1][0], pts[-1][0]], [front[-1][1]] * 2, lw=1.5, ls="--", color="crimson")
            elif method == "cfg":
                ax.plot(*zip(*pts), "X", ms=10, color="black", label="cfg (no mitigation)")
            else:
                ax.plot(*zip(*pts), marker="o", ms=5, label=method, color=method_colour(method))
        ax.set(xlabel=PANELS[group][1], ylabel="judge CLIP score (higher = more useful)",
               title=f"{group} memorization")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("privacy-utility trade-off: up and to the left is better")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def method_grid(grid_images, sets, path, per_group=(("global", 4), ("local", 2), ("general", 2)), scale=4):
    """Rows: methods (first setting); columns: the first seed of a few prompts per group, same seeds everywhere."""
    cols = [(g, j) for g, n in per_group for j in range(min(n, len(sets[g])))]
    rows = [np.concatenate([grid_images[m][c][0] for c in cols], axis=1) for m in grid_images]
    grid = np.concatenate(rows, axis=0)
    fig, ax = plt.subplots(figsize=(1 + 0.7 * len(cols), 0.7 * len(rows) + 0.8))
    ax.imshow(enlarge(grid, scale))
    size = grid.shape[0] // len(rows) * scale
    ax.set_yticks([size * (i + 0.5) for i in range(len(rows))], list(grid_images))
    ax.set_xticks([size * (i + 0.5) for i in range(len(cols))], [f"{g} {j}" for g, j in cols], rotation=45, fontsize=7)
    ax.set_title("same prompts, same seeds: every method")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def traces_plot(traces, lambda_pr, path):
    """traces: group -> list of (m_t under CFG, m_t of the prompt PRSS used, or None if nothing triggered)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for group, curves in traces.items():
        for k, (cfg_trace, prss_trace) in enumerate(curves):
            axes[0].plot(cfg_trace, color=GROUP_COLOURS[group], alpha=0.7, label=group if k == 0 else None)
            if group in ("global", "local"):
                shown, ls = (cfg_trace, ":") if prss_trace is None else (prss_trace, "-")
                axes[1].plot(shown, color=GROUP_COLOURS[group], alpha=0.7, ls=ls)
    for ax, title in zip(axes, ("plain CFG: ||eps(x_t, e_p) - eps(x_t, e_0)||", "PRSS: the same for the prompt used")):
        ax.axhline(lambda_pr, color="k", ls="--", lw=0.8)
        ax.set(xlabel="sampling step (0 = noisiest)", title=title)
    axes[0].set_ylabel("magnitude m_t")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def roc_plot(scores, path):
    """scores: score name -> group -> detection scores; one panel per score, memorized groups against the controls."""
    fig, axes = plt.subplots(1, len(scores), figsize=(4.2 * len(scores), 4), squeeze=False)
    for ax, (name, by_group) in zip(axes[0], scores.items()):
        negative = np.concatenate([by_group[g] for g in CONTROL])
        for group in MEMORIZED:
            fpr, tpr = roc_curve(by_group[group], negative)
            ax.plot(fpr, tpr, label=f"{group} vs not memorized: AUC {roc_auc(by_group[group], negative):.2f}")
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"detection: {name}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def physics_plot(traces, thresholds, sd_ranges, path=None):
    """Left: the toy's mean m_t per step under CFG for every group (10-90% band for clean and memorized) with
    lambda_PR and tau; right: Stable Diffusion v1.4's ranges at a few steps (sd_ranges: "clean" / "memorized" ->
    [(step, low, high)]) with the official thresholds 1, 3, 5. Same shape of curves is the goal, not the values.
    Saved to `path`; without one the figure is returned (a notebook shows it)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for group, trace in traces.items():
        steps = np.arange(trace.shape[1])
        axes[0].plot(steps, trace.mean(0), color=GROUP_COLOURS[group], lw=2, label=group)
        if group in ("general", "global"):
            axes[0].fill_between(steps, np.percentile(trace, 10, 0), np.percentile(trace, 90, 0),
                                 color=GROUP_COLOURS[group], alpha=0.15)
    for name, ls in (("lambda_ss", "-."), ("lambda_pr", "--"), ("tau", ":")):
        axes[0].axhline(thresholds[name], color="k", ls=ls, lw=0.8, label=f"{name} {thresholds[name]:.2f}")
    # log scales on both panels: only ratios carry over from SD's 4x64x64 latents to the toy's 3x16x16 pixels
    axes[0].set(title="the toy (plain CFG): mean m_t, 10-90% of samples shaded", xlabel="sampling step (0 = noisiest)",
                ylabel="m_t = ||eps(x_t, e_p) - eps(x_t, e_0)|| (log scale)", yscale="log")
    axes[0].legend(fontsize=7)
    for kind, colour in (("clean", GROUP_COLOURS["general"]), ("memorized", GROUP_COLOURS["global"])):
        steps, low, high = np.array(sd_ranges[kind]).T
        axes[1].errorbar(steps, (low + high) / 2, yerr=(high - low) / 2, fmt="o", color=colour, capsize=3,
                         label=f"{kind} (ranges at a few steps only)")
    for value, name, ls in ((1, "lambda_SS = 1", "-."), (3, "lambda_PR = 3", "--"), (5, "tau = 5", ":")):
        axes[1].axhline(value, color="k", ls=ls, lw=0.8, label=name)
    axes[1].set(title="Stable Diffusion v1.4 (read by eye from Wen et al.'s plots)", xlabel="sampling step",
                ylabel="m_t (log scale)", yscale="log")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    if path is None:
        return fig
    fig.savefig(path, dpi=110)
    plt.close(fig)


def sample_rows(images, num_images, path, per_group=10, scale=4):
    """One row per group: the first image (first x_T) of up to `per_group` prompts; images: group -> (P * K, ...)."""
    rows = {g: im[::num_images][:per_group] for g, im in images.items()}
    width = max(len(r) for r in rows.values())
    blank = np.full_like(next(iter(rows.values()))[0], 255)
    grid = np.concatenate([np.concatenate(list(r) + [blank] * (width - len(r)), axis=1) for r in rows.values()])
    fig, ax = plt.subplots(figsize=(0.7 * width + 1.2, 0.75 * len(rows) + 0.6))
    ax.imshow(enlarge(grid, scale))
    size = grid.shape[0] // len(rows) * scale
    ax.set_yticks([size * (i + 0.5) for i in range(len(rows))], list(rows))
    ax.set_xticks([])
    ax.set_title("plain CFG, first x_T of each prompt")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def mask_rows(images, masks, num_images, path, per_group=6):
    """For each group, the first sample of up to `per_group` prompts (top) over its end-token mask (bottom, each
    scaled to its own maximum); images: group -> uint8 (P * K, H, W, 3), masks: group -> (P * K, H, W)."""
    groups = list(masks)
    fig, axes = plt.subplots(2 * len(groups), per_group, figsize=(1.1 * per_group, 2.2 * len(groups)), squeeze=False)
    for row, g in enumerate(groups):
        for j in range(per_group):
            top, bottom = axes[2 * row, j], axes[2 * row + 1, j]
            for ax in (top, bottom):
                ax.axis("off")
            k = j * num_images
            if k >= len(masks[g]):
                continue
            top.imshow(images[g][k], interpolation="nearest")
            bottom.imshow(np.asarray(masks[g][k]), cmap="magma", interpolation="nearest")
        axes[2 * row, 0].set_title(g, fontsize=9, loc="left")
    fig.suptitle("<eos> cross-attention at the last step (Bright Ending's mask), under each sample", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
