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
from .prompts import CONTROL, MEMORIZED

RESAMPLES = 1000
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


def summary(results):
    """What the tables read, on one set of results: the means, PRSS's margins, the cost table."""
    return {"results": results, **analysis.summarize(results)}


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
