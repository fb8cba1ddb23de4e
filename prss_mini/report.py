"""The evaluation's written outputs: metrics.json, metrics.csv, per_prompt.csv and ablation.md (markdown tables).

Every figure is pooled over the evaluated runs (pooling.py): its value, its 95% interval from resampling prompts,
and each run's own value.
"""

import csv
import json
import os

from .guidance import METHODS

ABLATION = ("cfg", "pe", "pr", "ss", "prss")  # the paper's ablation rows: none / PE / PR only / SS only / PR + SS
BEYOND = ("pe_be", "prss_be", "init_noise")  # beside or after the paper (Bright Ending, Han et al.): below its rows
PER_PROMPT_COLUMNS = ("method", "setting", "group", "prompt", "run", "seed", "copy", "ratio_copy", "stamp",
                      "similarity", "attribute_accuracy", "triggered", "chosen_prompt")


def cell(fig, form=".3f"):
    """'0.123 (0.100-0.150) [0.11, 0.14, 0.12]': value (95% interval) [per run], or '-' where it did not run."""
    if fig is None or fig.get("value") is None:
        return "-"
    low, high = fig["ci95"]
    runs = ", ".join(f"{v:{form}}" for v in fig["per_run"].values() if v is not None)
    interval = "" if low is None else f" ({low:{form}}-{high:{form}})"
    return f"{fig['value']:{form}}{interval}" + (f" [{runs}]" if len(fig["per_run"]) > 1 else "")


def ablation_table(results):
    lines = ["| method | global sim | global copy rate | d1/d2 copy rate | global CLIP | global attr acc | "
             "local stamp rate | local CLIP | local attr acc |", "|---" * 9 + "|"]
    for method in ABLATION + BEYOND:
        r = next((r for r in results if r["method"] == method), None)
        if r is None:
            continue
        g, l = r["groups"]["global"], r["groups"]["local"]
        lines.append(f"| {METHODS[method].TITLE} | {cell(g['similarity'])} | {cell(g['copy'], '.0%')} | "
                     f"{cell(g['ratio_copy'], '.0%')} | {cell(g['clip'])} | {cell(g['attr'], '.0%')} | "
                     f"{cell(l['stamp'], '.0%')} | {cell(l['clip'])} | {cell(l['attr'], '.0%')} |")
    return "\n".join(lines)


def cost_table(cost_rows):
    lines = ["| method | UNet evals / image (memorized) | time vs CFG (memorized) | UNet evals / image (others) "
             "| time vs CFG (others) |", "|---|---|---|---|---|"]
    for m, r in cost_rows.items():
        lines.append(f"| {m} | {cell(r.get('memorized_unet_evals_per_image'), '.0f')} | "
                     f"{cell(r.get('memorized_time_vs_cfg'), '.2f')} | {cell(r.get('control_unet_evals_per_image'), '.0f')} "
                     f"| {cell(r.get('control_time_vs_cfg'), '.2f')} |")
    return "\n".join(lines)


def dominance_table(rows):
    lines = ["| panel | baseline point | its privacy | its CLIP | PRSS CLIP at that privacy | PRSS - baseline | "
             "verdict |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['panel']} | {r['baseline']} | {cell(r['privacy'])} | {cell(r['utility'])} | "
                     f"{cell(r['prss_utility'])} | {cell(r['margin'], '+.3f')} | {r['verdict']} |")
    counts = {v: sum(r["verdict"] == v for r in rows) for v in ("beaten", "tied", "losing", "outside")}
    lines.append(f"\nOf {len(rows)} baseline points, PRSS beats {counts['beaten']} (the 95% interval of the CLIP "
                 f"difference is above 0), ties {counts['tied']}, loses to {counts['losing']}; {counts['outside']} "
                 f"lie outside the privacy range of its settings.")
    return "\n".join(lines)


def contrast_table(contrasts):
    lines = ["| the paper's ablation claim, as a paired comparison of two defaults | pooled (95% interval) [per run] |",
             "|---|---|"]
    lines += [f"| {name} | {cell(fig, '+.3f' if '/' not in name else '.3f')} |" for name, fig in contrasts.items()]
    return "\n".join(lines)


def write_reports(out_dir, metrics, prompt_rows):
    """metrics.json (every pooled figure), metrics.csv (one row per setting, group and measure), per_prompt.csv
    (one row per setting, group, prompt and run) and ablation.md (the three tables). Returns ablation.md's text."""
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2, default=float)
    with open(os.path.join(out_dir, "metrics.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["method", "setting", "group", "measure", "value", "ci95_low", "ci95_high"])
        for r in metrics["results"]:
            for g, row in r["groups"].items():
                for name, fig in row.items():
                    writer.writerow([r["method"], r["label"], g, name, fig["value"], *fig["ci95"]])
    with open(os.path.join(out_dir, "per_prompt.csv"), "w", newline="") as f:
        columns = list(PER_PROMPT_COLUMNS) + [k for k in prompt_rows[0] if k not in PER_PROMPT_COLUMNS]
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(prompt_rows)
    text = (ablation_table(metrics["results"]) + "\n\n" + contrast_table(metrics.get("contrasts", {})) + "\n\n"
            + cost_table(metrics["cost"]) + "\n\n" + dominance_table(metrics["dominance"]) + "\n")
    with open(os.path.join(out_dir, "ablation.md"), "w") as f:
        f.write(text)
    return text
