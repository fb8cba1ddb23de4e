"""Evaluate PRSS and the baselines on a trained run: privacy, utility, cost, and the figures that show them.

    python -m prss_mini.evaluate --run runs/cpu                 # ~12 minutes on 2 CPU cores
    python -m prss_mini.evaluate --run runs/tiny --quick        # a smoke test

Protocol (../shared/PRSS-MATH.md, "Evaluation protocol", in miniature): the same prompts and the same seeds
for every method; privacy = similarity to the nearest training image (and the d1/d2 test, and the stamp for
local memorization); utility = judge CLIP score against the ORIGINAL prompt and attribute accuracy.
Writes to RUN/eval/ (or --out): metrics.json, metrics.csv, tradeoff.png, ablation.md, grid.png, traces.png, roc.png.
"""

import argparse
import csv
import json
import os
import sys
import time

import numpy as np

from . import metrics
from .checkpoint import CheckpointError
from .world import memorized_captions

GROUPS = ("global", "local", "general", "heldout")
MEMORIZED, CONTROL = ("global", "local"), ("general", "heldout")

# method -> the knob values swept (the first is the method's default); thresholds are multiples of the
# calibrated ones, so the sweep means the same on any run.
SWEEPS = {
    "cfg": [{}],
    # PRSS's trigger threshold spans the privacy axis: a higher lambda_ss triggers (and so changes) fewer
    # samples, up to plain CFG (figures.py counts the cfg point as lambda_ss = infinity); a lower one also makes
    # the search pickier. A larger tau re-anchors more gently; per_prompt detects on all of a prompt's seeds.
    "prss": [{}, {"lambda_ss_factor": 0.7}, {"lambda_ss_factor": 1.5}, {"tau_factor": 4}, {"per_prompt": True}],
    "pr": [{}],
    "ss": [{}],
    "pe": [{"target_factor": 1.0}, {"target_factor": 0.5}, {"target_factor": 2.0}],
    "gni": [{"noise_scale": 0.5}, {"noise_scale": 1.0}, {"noise_scale": 2.0}],
    "rta": [{"num_tokens": 2}, {"num_tokens": 4}, {"num_tokens": 6}],
    "lowcfg": [{"guidance_scale": 1.5}, {"guidance_scale": 1.0}, {"guidance_scale": 0.5}],  # below the default 2
    "transition": [{"transition_step": 10}, {"transition_step": 20}, {"transition_step": 30}],
}


def prompt_sets(data, per_group=8, seed=0):
    """group -> list of (prompt, attributes (3,)), drawn once so every method sees the same prompts."""
    rng = np.random.default_rng(seed)
    sets = {}
    for group in ("global", "local", "general"):
        captions, first = np.unique(data["captions"][data["group"] == group], return_index=True)
        attrs = data["attributes"][data["group"] == group][first]
        if group == "global":  # every memorized caption (not the title-keeping variants of titled images)
            pick = np.flatnonzero(np.isin(captions, memorized_captions(data)))
        else:
            pick = rng.choice(len(captions), per_group, replace=False)
        sets[group] = [(str(captions[i]), attrs[i]) for i in sorted(pick)]
    pick = rng.choice(len(data["heldout_captions"]), min(per_group, len(data["heldout_captions"])), replace=False)
    sets["heldout"] = [(str(data["heldout_captions"][i]), data["heldout_attributes"][i]) for i in sorted(pick)]
    return sets


class CountingUNet:
    """Wraps the UNet to count evaluations (one per sample per forward): the cost every method pays."""

    def __init__(self, unet):
        self.unet, self.count = unet, 0

    def __call__(self, x, t, context):
        self.count += len(x)
        return self.unet(x, t, context)


def resolve_knobs(pipe, method, knobs):
    """Sweep entries given as multiples of the calibrated thresholds -> the method's own knobs."""
    knobs = dict(knobs)
    th = pipe.thresholds
    if "tau_factor" in knobs:  # a stronger (smaller tau) or gentler (larger tau) re-anchoring ramp
        knobs["tau"] = th["lambda_pr"] + knobs.pop("tau_factor") * (th["tau"] - th["lambda_pr"])
    if "lambda_ss_factor" in knobs:
        knobs["lambda_ss"] = knobs.pop("lambda_ss_factor") * th["lambda_ss"]
    if "target_factor" in knobs:
        knobs["target"] = knobs.pop("target_factor") * th["lambda_ss"]
    return knobs


def run_method(pipe, judges, train_images, sets, method, knobs, num_images, reference=None):
    """Generate every prompt of every group with one method setting and measure it. Returns (rows, images)."""
    counter = CountingUNet(pipe.unet)
    real_unet, pipe.unet = pipe.unet, counter
    rows, images = {}, {}
    try:
        for group, prompts in sets.items():
            per = {k: [] for k in ("similarity", "copy", "ratio_copy", "stamp", "clip", "attr", "triggered",
                                   "identical")}
            count0, t0 = counter.count, time.perf_counter()
            for j, (prompt, attributes) in enumerate(prompts):
                out, info = pipe.generate(prompt, method=method, num_images=num_images, seed=1000 + j,
                                          return_info=True, **resolve_knobs(pipe, method, knobs))
                images[(group, j)] = out
                near = metrics.nearest_training(out, train_images)
                per["similarity"] += list(near["similarity"])
                per["copy"] += list(metrics.is_copy(near["similarity"]))
                per["ratio_copy"] += list(metrics.ratio_copy(near["d1"], near["d2"]))
                per["stamp"] += list(metrics.stamp_present(out))
                per["clip"] += list(judges.clip_score(out, [prompt] * len(out)))
                per["attr"] += list(judges.attribute_correct(out, np.repeat(attributes[None], len(out), 0)).mean(1))
                per["triggered"] += list(info.get("triggered", [False] * len(out)))
                if reference is not None:
                    per["identical"] += list((out == reference[(group, j)]).all(axis=(1, 2, 3)))
            n = len(prompts) * num_images
            rows[group] = {k: float(np.mean(v)) for k, v in per.items() if v}
            rows[group]["unet_evals_per_image"] = (counter.count - count0) / n
            rows[group]["seconds_per_image"] = (time.perf_counter() - t0) / n
    finally:
        pipe.unet = real_unet
    return rows, images


def label(method, knobs):
    return method + "".join(f" {k}" if v is True else f" {k}={v:g}" for k, v in knobs.items())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="run folder written by train_toy.py")
    parser.add_argument("--per-group", type=int, default=5, help="prompts per group (global: all of them)")
    parser.add_argument("--num-images", type=int, default=2, help="seeds per prompt")
    parser.add_argument("--methods", default=",".join(SWEEPS), help="comma-separated subset of " + ",".join(SWEEPS))
    parser.add_argument("--quick", action="store_true", help="defaults only, 2 prompts per group, 1 image")
    parser.add_argument("--out", default=None, help="output folder (default: RUN/eval)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    methods = args.methods.split(",")
    unknown = [m for m in methods if m not in SWEEPS]
    if unknown:
        parser.error(f"unknown method(s) {unknown}; choose from {', '.join(SWEEPS)}")
    if "cfg" not in methods:
        methods = ["cfg"] + methods  # the reference every other method is compared with
    if args.quick:
        args.per_group, args.num_images = 2, 1
    try:
        from .judges import Judges
        from .pipeline import ToyPipeline
        pipe = ToyPipeline(args.run, device=args.device)
        judges = Judges.load(args.run, device=args.device)
    except CheckpointError as e:
        sys.exit(f"error: {e}")
    from tqdm.auto import tqdm

    from . import figures

    out_dir = args.out or os.path.join(args.run, "eval")
    os.makedirs(out_dir, exist_ok=True)
    train_images, _, _ = metrics.unique_training_images(pipe.dataset)
    sets = prompt_sets(pipe.dataset, args.per_group)
    if args.quick:
        sets = {g: p[:2] for g, p in sets.items()}
    print(f"thresholds: {json.dumps({k: round(v, 3) for k, v in pipe.thresholds.items() if k in ('lambda_ss', 'lambda_pr', 'tau')})}")

    results, grid_images, reference = [], {}, None
    jobs = [(m, k) for m in methods for k in (SWEEPS[m][:1] if args.quick else SWEEPS[m])]
    for method, knobs in tqdm(jobs, desc="methods x knobs"):
        rows, images = run_method(pipe, judges, train_images, sets, method, knobs, args.num_images, reference)
        if method == "cfg":
            reference = images
        if knobs == SWEEPS[method][0]:
            grid_images[method] = images
        results.append({"method": method, "knobs": knobs, "label": label(method, knobs), "groups": rows})
        tqdm.write(f"{label(method, knobs):32s} global sim {rows['global']['similarity']:.3f} "
                   f"copy {rows['global']['copy']:.2f}  local stamp {rows['local']['stamp']:.2f}  "
                   f"clip {rows['global']['clip']:.3f}  attr {rows['global']['attr']:.2f}")

    summary = figures.summarize(results)
    scores = figures.trace_and_roc_plots(pipe, sets, out_dir)  # first-step detection scores, per group
    negative = np.concatenate([scores["general"], scores["heldout"]])
    detection = {"first_step_magnitude": {g: float(np.mean(v)) for g, v in scores.items()},
                 **{f"roc_auc_{g}": metrics.roc_auc(scores[g], negative) for g in MEMORIZED}}
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump({"thresholds": pipe.thresholds, "num_images": args.num_images, "detection": detection,
                   "prompts": {g: [p for p, _ in v] for g, v in sets.items()}, "results": results, **summary},
                  f, indent=2, default=float)
    with open(os.path.join(out_dir, "metrics.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        keys = sorted({k for r in results for g in r["groups"].values() for k in g})
        writer.writerow(["method", "knobs", "group"] + keys)
        for r in results:
            for g, row in r["groups"].items():
                writer.writerow([r["method"], json.dumps(r["knobs"]), g] + [row.get(k, "") for k in keys])
    with open(os.path.join(out_dir, "ablation.md"), "w") as f:
        f.write(figures.ablation_table(results) + "\n\n" + figures.cost_table(summary["cost"]) + "\n\n"
                + figures.dominance_table(summary["dominance"]) + "\n")
    figures.tradeoff_plot(results, os.path.join(out_dir, "tradeoff.png"))
    figures.method_grid(grid_images, sets, os.path.join(out_dir, "grid.png"))
    print(open(os.path.join(out_dir, "ablation.md")).read())
    print("first-step detection ROC-AUC: " + ", ".join(f"{g} {detection[f'roc_auc_{g}']:.3f}" for g in MEMORIZED))
    print(f"wrote {out_dir}: metrics.json metrics.csv ablation.md tradeoff.png grid.png traces.png roc.png")


if __name__ == "__main__":
    main()
