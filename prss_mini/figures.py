"""Tables and figures of the evaluation: the privacy-utility trade-off, the ablation, cost, image grids, traces.

Privacy is plotted so that lower is better (similarity to the nearest training image; stamp rate for local
memorization); utility so that higher is better (judge CLIP score against the original prompt).
"""

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

PANELS = {"global": ("similarity", "similarity to nearest training image (lower = more private)"),
          "local": ("stamp", "stamp rate (lower = more private)")}
BASELINES = ("pe", "gni", "rta", "lowcfg", "transition")
COLOURS = {"pe": "tab:blue", "pr": "tab:orange", "ss": "tab:green", "gni": "tab:purple", "rta": "tab:brown",
           "lowcfg": "tab:pink", "transition": "tab:gray"}  # no red: red is PRSS
ABLATION = [("cfg", "none (plain CFG)"), ("pe", "PE (Wen et al.)"), ("pr", "PR only (target: PE embedding)"),
            ("ss", "SS only"), ("prss", "PR + SS (PRSS)")]


def _points(results, method, group):
    """(privacy, utility) points of one method in one panel, sorted by privacy.

    PRSS's curve ends at plain CFG: with lambda_SS above every magnitude nothing triggers and PRSS gives CFG's
    images bit for bit (tests/test_guidance.py), so the measured CFG point is PRSS at lambda_SS = infinity."""
    key = PANELS[group][0]
    members = ("prss", "cfg") if method == "prss" else (method,)
    pts = [(r["groups"][group][key], r["groups"][group]["clip"]) for r in results if r["method"] in members]
    return sorted(pts)


def frontier(points):
    """The points that no other point beats on both axes (as private or more, and more useful), by privacy.

    Between two of them the straight line is reachable too: run one setting on some prompts and the other on
    the rest, and both averages move linearly."""
    out = []
    for privacy, utility in sorted(points, key=lambda p: (p[0], -p[1])):
        if not out or utility > out[-1][1]:
            out.append((privacy, utility))
    return out


def dominance(results):
    """For each baseline point: PRSS's utility at the same privacy level minus the baseline's. PRSS's utility at
    a privacy level is the best it reaches there or anywhere more private: linear along the frontier of its
    settings, flat after the frontier's last point. None where the baseline's privacy lies outside the range of
    PRSS's settings. `dominated`: some PRSS point is at least as private AND at least as useful."""
    rows = []
    for group in PANELS:
        points = _points(results, "prss", group)
        xs, ys = np.array(points).T if points else (np.zeros(0), np.zeros(0))
        front = np.array(frontier(points)).T if points else None
        for r in results:
            if r["method"] not in BASELINES:
                continue
            priv, util = r["groups"][group][PANELS[group][0]], r["groups"][group]["clip"]
            inside = len(xs) and xs.min() - 1e-9 <= priv <= xs.max() + 1e-9
            at = float(np.interp(priv, front[0], front[1])) if inside else None
            rows.append({"panel": group, "baseline": r["label"], "privacy": priv, "utility": util,
                         "prss_utility": at, "margin": None if at is None else at - util,
                         "dominated": bool(((xs <= priv + 1e-9) & (ys >= util - 1e-9)).any())})
    return rows


def cost(results):
    """UNet evaluations per image and wall time relative to plain CFG, on memorized and on control prompts.

    One row per method, at its default setting (PE: its first, default target), plus PRSS's per_prompt mode."""
    ref = next(r for r in results if r["method"] == "cfg")["groups"]
    out = {}
    for r in results:
        shown = r["label"] == r["method"] or r["method"] == "pe" or r["label"] == "prss per_prompt"
        if not shown:
            continue
        row = {}
        for name, groups in (("memorized", ("global", "local")), ("control", ("general", "heldout"))):
            sec = np.mean([r["groups"][g]["seconds_per_image"] for g in groups])
            row[name + "_unet_evals_per_image"] = float(np.mean([r["groups"][g]["unet_evals_per_image"] for g in groups]))
            row[name + "_time_vs_cfg"] = float(sec / np.mean([ref[g]["seconds_per_image"] for g in groups]))
        out.setdefault("pe" if r["method"] == "pe" else r["label"], row)  # PE: its first (default) target
    return out


def summarize(results):
    return {"dominance": dominance(results), "cost": cost(results)}


def ablation_table(results):
    lines = ["| method | global sim | global copy rate | d1/d2 copy rate | global CLIP | global attr acc | "
             "local stamp rate | local CLIP | local attr acc |", "|---" * 9 + "|"]
    for method, name in ABLATION:
        r = next((r for r in results if r["method"] == method), None)
        if r is None:
            continue
        g, l = r["groups"]["global"], r["groups"]["local"]
        lines.append(f"| {name} | {g['similarity']:.3f} | {g['copy']:.0%} | {g['ratio_copy']:.0%} | {g['clip']:.3f} | "
                     f"{g['attr']:.0%} | {l['stamp']:.0%} | {l['clip']:.3f} | {l['attr']:.0%} |")
    return "\n".join(lines)


def cost_table(cost_rows):
    lines = ["| method | UNet evals / image (memorized) | time vs CFG (memorized) | UNet evals / image (others) "
             "| time vs CFG (others) |", "|---|---|---|---|---|"]
    for m, r in cost_rows.items():
        lines.append(f"| {m} | {r['memorized_unet_evals_per_image']:.0f} | {r['memorized_time_vs_cfg']:.2f}x | "
                     f"{r['control_unet_evals_per_image']:.0f} | {r['control_time_vs_cfg']:.2f}x |")
    return "\n".join(lines)


def dominance_table(rows):
    lines = ["| panel | baseline point | its privacy | its CLIP | PRSS CLIP at that privacy | margin | "
             "a PRSS point dominates it |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        at = "outside PRSS's range" if r["prss_utility"] is None else f"{r['prss_utility']:.3f}"
        margin = "" if r["margin"] is None else f"{r['margin']:+.3f}"
        lines.append(f"| {r['panel']} | {r['baseline']} | {r['privacy']:.3f} | {r['utility']:.3f} | {at} | {margin} "
                     f"| {'yes' if r['dominated'] else 'no'} |")
    wins = sum(r["margin"] is not None and r["margin"] > 0 for r in rows)
    losses = sum(r["margin"] is not None and r["margin"] <= 0 for r in rows)
    lines.append(f"\nPRSS has higher utility at {wins} baseline points and not at {losses}; "
                 f"{sum(r['margin'] is None for r in rows)} lie outside its range; "
                 f"{sum(r['dominated'] for r in rows)} of {len(rows)} are dominated by a PRSS point.")
    return "\n".join(lines)


def tradeoff_plot(results, path):
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, group in zip(axes, PANELS):
        for method in dict.fromkeys(r["method"] for r in results):
            pts = _points(results, method, group)
            if method == "prss":  # every setting as a star, the line along the best ones (flat past the last)
                front = frontier(pts)
                ax.plot(*zip(*pts), "*", ms=12, color="crimson")
                ax.plot(*zip(*front), lw=2.5, color="crimson", label="prss (frontier of its settings)")
                ax.plot([front[-1][0], pts[-1][0]], [front[-1][1]] * 2, lw=1.5, ls="--", color="crimson")
            elif method == "cfg":
                ax.plot(*zip(*pts), "X", ms=10, color="black", label="cfg (no mitigation)")
            else:
                ax.plot(*zip(*pts), marker="o", ms=5, label=method, color=COLOURS.get(method))
        ax.set(xlabel=PANELS[group][1], ylabel="judge CLIP score (higher = more useful)",
               title=f"{group} memorization")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("privacy-utility trade-off: up and to the left is better")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def method_grid(grid_images, sets, path, per_group=(("global", 4), ("local", 2), ("general", 2)), scale=4):
    """Rows: methods (default knob); columns: the first seed of a few prompts per group, same seeds everywhere."""
    from PIL import Image
    cols = [(g, j) for g, n in per_group for j in range(min(n, len(sets[g])))]
    rows = [np.concatenate([grid_images[m][c][0] for c in cols], axis=1) for m in grid_images]
    grid = np.concatenate(rows, axis=0)
    img = Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
    fig, ax = plt.subplots(figsize=(1 + 0.7 * len(cols), 0.7 * len(rows) + 0.8))
    ax.imshow(img)
    size = grid.shape[0] // len(rows) * scale
    ax.set_yticks([size * (i + 0.5) for i in range(len(rows))], list(grid_images))
    ax.set_xticks([size * (i + 0.5) for i in range(len(cols))], [f"{g} {j}" for g, j in cols], rotation=45, fontsize=7)
    ax.set_title("same prompts, same seeds: every method")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def trace_and_roc_plots(pipe, sets, out_dir, num_images=2):
    """traces.png: m_t per step for memorized vs not, before (CFG) and after PRSS; roc.png: first-step detection."""
    import torch

    from . import metrics
    from .guidance.detect import detection_score, magnitude_trace

    x_T = pipe.initial_noise(num_images, 7)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    colours = {"global": "crimson", "local": "darkorange", "general": "steelblue", "heldout": "seagreen"}
    for group, prompts in sets.items():
        for k, (prompt, _) in enumerate(prompts[:4]):
            trace = magnitude_trace(pipe, pipe.encode([prompt]), x_T).mean(0)
            axes[0].plot(trace, color=colours[group], alpha=0.7, label=group if k == 0 else None)
            if group in ("global", "local"):
                _, info = pipe.generate(prompt, method="prss", num_images=num_images, seed=7, return_info=True)
                if info["trace"]:
                    axes[1].plot(torch.stack(info["trace"], 1).mean(0), color=colours[group], alpha=0.7)
                else:
                    axes[1].plot(trace, color=colours[group], alpha=0.7, ls=":")
    for ax, title in zip(axes, ("plain CFG: ||eps(x_t, e_p) - eps(x_t, e_0)||", "PRSS: the same for the prompt used")):
        ax.axhline(pipe.thresholds["lambda_pr"], color="k", ls="--", lw=0.8)
        ax.set(xlabel="sampling step (0 = noisiest)", title=title)
    axes[0].set_ylabel("magnitude m_t")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "traces.png"), dpi=110)
    plt.close(fig)

    scores = {g: detection_score(pipe, [p for p, _ in prompts], num_images=4).numpy() for g, prompts in sets.items()}
    negative = np.concatenate([scores["general"], scores["heldout"]])
    fig, ax = plt.subplots(figsize=(4.2, 4))
    for group in ("global", "local"):
        fpr, tpr = metrics.roc_curve(scores[group], negative)
        ax.plot(fpr, tpr, label=f"{group} vs not memorized: AUC {metrics.roc_auc(scores[group], negative):.2f}")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="first-step magnitude detection")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "roc.png"), dpi=110)
    plt.close(fig)
    return scores
