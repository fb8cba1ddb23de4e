"""An evaluation pooled over training seeds: every figure with a 95% interval that resamples prompts.

One run has 10 global prompts, and a prompt's samples move together (a prompt that copies tends to copy on
every x_T), so an interval that treats samples as independent is too narrow, and one training seed's verdict moves
with the seed (and with the machine: CPU training is not bit-reproducible across processors). So:

    figure   = mean over every prompt of every run of that prompt's mean over its samples
    ci95     = 2.5% and 97.5% percentiles of the figure over RESAMPLES cluster-bootstrap resamples: in each,
               every run's prompts of each group are drawn with replacement (the samples of a prompt stay
               together; the runs stay as they are), the same draw for every method, so differences are paired
    per_run  = the figure on each run alone

A figure that is a function of several means (PRSS's margin over a baseline point, a time ratio) is recomputed on
each resample, so its interval carries the same uncertainty.
"""

import numpy as np

from . import analysis, metrics
from .checkpoint import config_differences
from .config import to_dict
from .guidance import DETECTION_SCORES
from .prompts import CONTROL, MEMORIZED

RESAMPLES = 1000
DETECTION_COLUMNS = tuple(DETECTION_SCORES)  # per_prompt.csv's columns of the detection scores
KEEP = ("method", "knobs", "label", "panel", "baseline", "dominated")  # names, not figures


def figure(value, draws, per_run):
    """{"value", "ci95": [2.5%, 97.5%] of the draws (NaN draws left out), "per_run": {run: value}}."""
    draws = np.asarray([np.nan if d is None else d for d in draws], dtype=np.float64)
    draws = draws[~np.isnan(draws)]
    ci = [float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))] if len(draws) else [None, None]
    return {"value": None if value is None else float(value), "ci95": ci, "per_run": per_run}


def tables(runs):
    """Per (job k, group): (columns, [values (P_r, M) for each run r]) of the per-prompt rows, with the columns
    "evals", "seconds" and "samples" last: what results_at averages."""
    out = []
    for k, first in enumerate(runs[0]["results"]):
        out.append({})
        for g in first["groups"]:
            rows = [run["results"][k]["groups"][g]["per_prompt"] for run in runs]
            cols = sorted({c for c, v in rows[0][0].items() if isinstance(v, float)} - {"evals", "seconds"})
            cols += ["evals", "seconds", "samples"]
            out[k][g] = (cols, [np.array([[row[c] for c in cols] for row in rr], dtype=np.float64) for rr in rows])
    return out


def results_at(runs, picks=None, table=None):
    """The evaluation's `results` (evaluate.run_jobs' structure, means only) pooled over runs, on the prompts
    `picks[r][group]` (index arrays) of each run r; None: every prompt once."""
    table = tables(runs) if table is None else table
    out = []
    for k, first in enumerate(runs[0]["results"]):
        groups = {}
        for g, (cols, values) in table[k].items():
            if picks is not None:
                values = [v[picks[r][g]] for r, v in enumerate(values)]
            values = np.concatenate(values)                                                 # (sum of P_r, M)
            total, means = values.sum(0), values.mean(0)
            groups[g] = {c: float(v) for c, v in zip(cols[:-3], means[:-3])}
            samples = total[-1]
            groups[g].update(samples=int(samples), unet_evals_per_image=float(total[-3] / samples),
                             seconds_per_image=float(total[-2] / samples))
        out.append({"method": first["method"], "knobs": first["knobs"], "label": first["label"], "groups": groups})
    return out


def resamples(runs, n=RESAMPLES, seed=0):
    """n draws of picks: per run, per group, prompt indices drawn with replacement."""
    rng = np.random.default_rng(seed)
    sizes = [{g: len(p) for g, p in run["prompts"].items()} for run in runs]
    return [[{g: rng.integers(size, size=size) for g, size in s.items()} for s in sizes] for _ in range(n)]


def _walk(pooled, draws, per_run, make):
    """Apply `make` to matching leaves of the pooled, resampled and per-run structures (nested dicts / lists)."""
    if isinstance(pooled, dict):
        return {k: v if k in KEEP else _walk(v, [d.get(k) if d else None for d in draws], {r: (p or {}).get(k) for r, p in per_run.items()},
                         make) for k, v in pooled.items()}
    if isinstance(pooled, list):
        return [_walk(v, [d[i] if d and i < len(d) else None for d in draws],
                      {r: p[i] if p and i < len(p) else None for r, p in per_run.items()}, make)
                for i, v in enumerate(pooled)]
    return make(pooled, draws, per_run)


def _leaf(value, draws, per_run):
    if isinstance(value, bool) or isinstance(value, str) or not isinstance(value, (int, float, type(None))):
        return value
    if value is None and all(d is None for d in draws):
        return None
    return figure(value, draws, per_run)


def verdict(margin):
    """A baseline point against PRSS at its privacy, from the interval of the CLIP difference (PRSS - baseline):
    "beaten" (above 0), "losing" (PRSS below it: the interval is under 0), "tied" (it holds 0), "outside"."""
    if margin is None or margin["value"] is None:
        return "outside"
    low, high = margin["ci95"]
    return "beaten" if low is not None and low > 0 else "losing" if high is not None and high < 0 else "tied"


def detection(runs, picks=None):
    """Every detection score over the pooled prompts: its mean per group, and the ROC-AUC of each memorized group
    against the control groups."""
    out = {}
    for name in runs[0]["scores"]:
        scores = {g: np.concatenate([np.asarray(run["scores"][name][g])[None if picks is None else picks[r][g]].ravel()
                                     for r, run in enumerate(runs)]) for g in runs[0]["scores"][name]}
        negative = np.concatenate([scores[g] for g in CONTROL if g in scores])
        out[name] = {"mean": {g: float(np.mean(v)) for g, v in scores.items()},
                     **{f"roc_auc_{g}": metrics.roc_auc(scores[g], negative) for g in MEMORIZED if g in scores}}
    return out


# The paper's ablation claims as paired comparisons of two methods' defaults: (a, b, group, measure, "-" or "/").
CONTRASTS = {
    "PR adds privacy over SS only: global similarity, prss - ss": ("prss", "ss", "global", "similarity", "-"),
    "PR adds privacy over SS only: global copy rate, prss - ss": ("prss", "ss", "global", "copy", "-"),
    "PR adds privacy over SS only: local stamp rate, prss - ss": ("prss", "ss", "local", "stamp", "-"),
    "SS adds utility over PR only: global CLIP, prss - pr": ("prss", "pr", "global", "clip", "-"),
    "SS adds utility over PR only: local CLIP, prss - pr": ("prss", "pr", "local", "clip", "-"),
    "global attribute accuracy, prss / cfg": ("prss", "cfg", "global", "attr", "/"),
}


def contrasts(results):
    """CONTRASTS on one set of results (each method's first setting); those whose methods did not run are left out."""
    first = {}
    for r in results:
        first.setdefault(r["method"], r["groups"])
    out = {}
    for name, (a, b, group, measure, op) in CONTRASTS.items():
        if a in first and b in first and group in first[a] and group in first[b]:
            x, y = first[a][group][measure], first[b][group][measure]
            out[name] = x - y if op == "-" else (x / y if y else None)
    return out


def summary(results):
    """What the tables read, on one set of results: the means, PRSS's margins, the cost table, the contrasts."""
    return {"results": results, **analysis.summarize(results), "contrasts": contrasts(results)}


def check_same_protocol(configs, names):
    """Runs pooled together must be the same model but for the training seed (a clear ValueError otherwise)."""
    first = to_dict(configs[0])
    for cfg, name in zip(configs[1:], names[1:]):
        diff = [k for k in config_differences(first, to_dict(cfg)) if k != "seed"]
        if diff:
            raise ValueError(f"{name} and {names[0]} differ in {', '.join(diff)}: only runs that differ in --seed "
                             f"alone can be pooled")


def pool(runs, n=RESAMPLES, seed=0):
    """runs: [{"name", "seed", "results" (run_jobs'), "prompts" ({group: [...]}), "scores" ({score: {group: (P,)}})}], the
    same jobs and prompt counts in each. Returns metrics: every figure as {"value", "ci95", "per_run"}."""
    names = [run["name"] for run in runs]
    if len(set(names)) != len(names):
        raise ValueError(f"runs must have distinct names, got {names}")
    picks, table = resamples(runs, n, seed), tables(runs)
    point = {**summary(results_at(runs, table=table)), "detection": detection(runs)}
    draws = [{**summary(results_at(runs, p, table)), "detection": detection(runs, p)} for p in picks]
    per_run = {run["name"]: {**summary(results_at([run])), "detection": detection([run])} for run in runs}
    out = _walk(point, draws, per_run, _leaf)
    for row in out["dominance"]:
        row["verdict"] = verdict(row["margin"])
    out["bootstrap"] = {"resamples": n, "seed": seed, "unit": "prompt, resampled within each run and group"}
    return out


def prompt_rows(runs):
    """per_prompt.csv: one row per (setting, group, prompt, run), rates as fractions of the prompt's samples."""
    rows = []
    for run in runs:
        for r in run["results"]:
            for g, group in r["groups"].items():
                for j, row in enumerate(group["per_prompt"]):
                    rows.append({"method": r["method"], "setting": r["label"], "group": g, "prompt": row["prompt"],
                                 "run": run["name"], "seed": run["seed"], "copy": row["copy"],
                                 "ratio_copy": row["ratio_copy"], "stamp": row["stamp"],
                                 "similarity": row["similarity"], "attribute_accuracy": row["attr"],
                                 "triggered": row["triggered"], "chosen_prompt": row["chosen_prompt"],
                                 "clip": row["clip"], "identical": row.get("identical", ""),
                                 **{k: row[k] for k in row if k.startswith("attr_")},
                                 **{name: float(s[g][j]) for name, s in run["scores"].items()}, "samples": row["samples"],
                                 "unet_evals": row["evals"], "seconds": row["seconds"]})
    return rows


def runs_from_rows(rows):
    """The runs `pool` reads, rebuilt from per_prompt.csv's rows (csv.DictReader): pooling again needs no sampling."""
    number = lambda v: float(v) if v not in ("", None) else None
    renamed = {"attribute_accuracy": "attr", "unet_evals": "evals"}
    skip = ("method", "setting", "group", "prompt", "run", "seed", "chosen_prompt", "samples")
    runs = {}
    for row in rows:
        run = runs.setdefault(row["run"], {"name": row["run"], "seed": int(row["seed"]), "results": {},
                                           "prompts": {}, "scores": {}})
        result = run["results"].setdefault(row["setting"], {"method": row["method"], "knobs": {},
                                                            "label": row["setting"], "groups": {}})
        values = {renamed.get(k, k): number(v) for k, v in row.items() if k not in skip}
        entry = {k: v for k, v in values.items() if v is not None and k not in DETECTION_COLUMNS}
        entry.update(prompt=row["prompt"], chosen_prompt=row["chosen_prompt"], samples=int(float(row["samples"])))
        result["groups"].setdefault(row["group"], {"per_prompt": []})["per_prompt"].append(entry)
        if row["method"] == "cfg":  # every prompt of every group, once
            run["prompts"].setdefault(row["group"], []).append(row["prompt"])
            for name in DETECTION_COLUMNS:
                if name in row:
                    run["scores"].setdefault(name, {}).setdefault(row["group"], []).append(float(row[name]))
    return [{**run, "results": list(run["results"].values())} for run in runs.values()]


def main(argv=None):
    """python -m prss_mini.pooling DIR: pool DIR/per_prompt.csv again (e.g. with another number of resamples) and
    rewrite DIR's metrics.json, metrics.csv and ablation.md."""
    import argparse
    import csv
    import json
    import os

    from .report import write_reports
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("dir", help="an evaluation's output folder (with per_prompt.csv)")
    parser.add_argument("--resamples", type=int, default=RESAMPLES)
    args = parser.parse_args(argv)
    path = os.path.join(args.dir, "per_prompt.csv")
    if not os.path.exists(path):
        parser.error(f"{path} is missing: run `python -m prss_mini.evaluate --run RUN --out {args.dir}` first")
    with open(path) as f:
        rows = list(csv.DictReader(f))
    old = {}
    if os.path.exists(os.path.join(args.dir, "metrics.json")):
        with open(os.path.join(args.dir, "metrics.json")) as f:
            old = {k: v for k, v in json.load(f).items() if k in ("runs", "num_images", "prompts")}
    runs = runs_from_rows(rows)
    print(write_reports(args.dir, {**pool(runs, args.resamples), **old}, prompt_rows(runs)))


if __name__ == "__main__":
    main()
