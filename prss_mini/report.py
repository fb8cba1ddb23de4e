"""The evaluation's written outputs: metrics.json, metrics.csv and ablation.md (markdown tables)."""

import csv
import json
import os

from .guidance import METHODS
from .metrics import wilson_interval

ABLATION = ("cfg", "pe", "pr", "ss", "prss")  # the paper's ablation rows: none / PE / PR only / SS only / PR + SS


def rate(row, key):
    """A rate with its 95% Wilson interval when the row says on how many samples it was measured: '6% (2-14%)'."""
    if "samples" not in row:
        return f"{row[key]:.0%}"
    low, high = wilson_interval(row[key], row["samples"])
    return f"{row[key]:.0%} ({low:.0%}-{high:.0%})"


def ablation_table(results):
    lines = ["| method | global sim | global copy rate | d1/d2 copy rate | global CLIP | global attr acc | "
             "local stamp rate | local CLIP | local attr acc |", "|---" * 9 + "|"]
    for method in ABLATION:
        r = next((r for r in results if r["method"] == method), None)
        if r is None:
            continue
        g, l = r["groups"]["global"], r["groups"]["local"]
        lines.append(f"| {METHODS[method].TITLE} | {g['similarity']:.3f} | {rate(g, 'copy')} | {rate(g, 'ratio_copy')} | "
                     f"{g['clip']:.3f} | {g['attr']:.0%} | {rate(l, 'stamp')} | {l['clip']:.3f} | {l['attr']:.0%} |")
    return "\n".join(lines)


def cost_table(cost_rows):
    lines = ["| method | UNet evals / image (memorized) | time vs CFG (memorized) | UNet evals / image (others) "
             "| time vs CFG (others) |", "|---|---|---|---|---|"]
    for m, r in cost_rows.items():
        cell = lambda key, form, unit="": f"{r[key]:{form}}{unit}" if key in r else "-"  # -: not run on those
        lines.append(f"| {m} | {cell('memorized_unet_evals_per_image', '.0f')} | "
                     f"{cell('memorized_time_vs_cfg', '.2f', 'x')} | {cell('control_unet_evals_per_image', '.0f')} | "
                     f"{cell('control_time_vs_cfg', '.2f', 'x')} |")
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


def write_reports(out_dir, metrics):
    """metrics.json (everything), metrics.csv (one row per setting and group) and ablation.md (the three tables).

    Returns the text of ablation.md."""
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2, default=float)
    results = metrics["results"]
    with open(os.path.join(out_dir, "metrics.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        keys = sorted({k for r in results for g in r["groups"].values() for k in g})
        writer.writerow(["method", "knobs", "group"] + keys)
        for r in results:
            for g, row in r["groups"].items():
                writer.writerow([r["method"], json.dumps(r["knobs"]), g] + [row.get(k, "") for k in keys])
    text = (ablation_table(results) + "\n\n" + cost_table(metrics["cost"]) + "\n\n"
            + dominance_table(metrics["dominance"]) + "\n")
    with open(os.path.join(out_dir, "ablation.md"), "w") as f:
        f.write(text)
    return text
