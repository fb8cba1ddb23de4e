"""What the evaluation's numbers say: PRSS's frontier, its margin over every baseline point, and the cost table.

Privacy is such that lower is better (similarity to the nearest training image; the stamp rate for local
memorization), utility such that higher is better (judge CLIP score against the original prompt).
"""

import numpy as np

from .guidance import METHODS
from .prompts import CONTROL, MEMORIZED

PANELS = {"global": ("similarity", "similarity to nearest training image (lower = more private)"),
          "local": ("stamp", "stamp rate (lower = more private)")}


def label(method, knobs):
    """The name of one setting: "prss", "prss lambda_ss_factor=0.7", "prss per_prompt"."""
    return method + "".join(f" {k}" if v is True else f" {k}={v:g}" for k, v in knobs.items())


def points(results, method, group):
    """(privacy, utility) points of one method in one panel, sorted by privacy.

    PRSS's curve ends at plain CFG: with lambda_SS above every magnitude nothing triggers and PRSS gives CFG's
    images bit for bit (tests/test_guidance.py), so the measured CFG point is PRSS at lambda_SS = infinity."""
    key = PANELS[group][0]
    members = ("prss", "cfg") if method == "prss" else (method,)
    return sorted((r["groups"][group][key], r["groups"][group]["clip"]) for r in results if r["method"] in members)


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
        pts = points(results, "prss", group)
        xs, ys = np.array(pts).T if pts else (np.zeros(0), np.zeros(0))
        front = np.array(frontier(pts)).T if pts else None
        for r in results:
            if not METHODS[r["method"]].BASELINE:
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

    One row per method at its first setting (its default), plus one per declared variant (e.g. prss per_prompt)."""
    ref = next(r for r in results if r["method"] == "cfg")["groups"]
    variants = {label(m, v) for m, module in METHODS.items() for v in module.VARIANTS}
    out = {}
    for r in results:
        first = r is next(x for x in results if x["method"] == r["method"])
        if not (first or r["label"] in variants):
            continue
        row = {}
        for name, groups in (("memorized", MEMORIZED), ("control", CONTROL)):
            groups = [g for g in groups if g in r["groups"]]  # the evaluation's sets may leave a group out
            if not groups:
                continue
            sec = np.mean([r["groups"][g]["seconds_per_image"] for g in groups])
            row[name + "_unet_evals_per_image"] = float(np.mean([r["groups"][g]["unet_evals_per_image"] for g in groups]))
            row[name + "_time_vs_cfg"] = float(sec / np.mean([ref[g]["seconds_per_image"] for g in groups]))
        out[r["method"] if first else r["label"]] = row
    return out


def summarize(results):
    return {"dominance": dominance(results), "cost": cost(results)}
