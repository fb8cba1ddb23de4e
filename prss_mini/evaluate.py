"""Evaluate PRSS and the baselines on a trained run: privacy, utility, cost, and the figures that show them.

    python -m prss_mini.evaluate --run runs/cpu                 # ~12 minutes on 2 CPU cores
    python -m prss_mini.evaluate --run runs/tiny --quick        # a smoke test

Protocol (../shared/PRSS-MATH.md, "Evaluation protocol", in miniature): the same prompts and the same seeds
for every method; privacy = similarity to the nearest training image (and the d1/d2 test, and the stamp for
local memorization); utility = judge CLIP score against the ORIGINAL prompt and attribute accuracy.
Writes to RUN/eval/ (or --out): metrics.json, metrics.csv, tradeoff.png, ablation.md, grid.png, traces.png, roc.png.
While it runs, partial.npz there holds every finished prompt: rerun the same command to resume after Ctrl-C.
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


MEASURES = ("similarity", "copy", "ratio_copy", "stamp", "clip", "attr", "triggered", "identical")


def measure(judges, train_images, images, prompt, attributes, info, reference=None):
    """Privacy and utility of one prompt's images uint8 (K, H, W, 3): measure -> K values (see MEASURES)."""
    near = metrics.nearest_training(images, train_images)
    values = {"similarity": near["similarity"], "copy": metrics.is_copy(near["similarity"]),
              "ratio_copy": metrics.ratio_copy(near["d1"], near["d2"]), "stamp": metrics.stamp_present(images),
              "clip": judges.clip_score(images, [prompt] * len(images)),
              "attr": judges.attribute_correct(images, np.repeat(attributes[None], len(images), 0)).mean(1),
              "triggered": info.get("triggered", [False] * len(images))}
    if reference is not None:  # same seed, same x_T: is it plain CFG's image, bit for bit?
        values["identical"] = (images == reference).all(axis=(1, 2, 3))
    return {k: [float(v) for v in vals] for k, vals in values.items()}


def _signature(pipe, jobs, sets, num_images):
    """What a saved partial evaluation must match to be resumed: settings, prompts, seeds, thresholds, model."""
    model = os.path.join(pipe.run_dir, "unet.pt") if getattr(pipe, "run_dir", None) else None
    stamp = [os.path.getsize(model), os.path.getmtime(model)] if model and os.path.exists(model) else None
    return json.dumps({"jobs": jobs, "prompts": {g: [p for p, _ in v] for g, v in sets.items()},
                       "num_images": num_images, "thresholds": getattr(pipe, "thresholds", None), "model": stamp},
                      sort_keys=True, default=float)


def _load_partial(path, signature):
    """(job index, group, prompt index) -> finished entry, from `path` if it holds this same evaluation."""
    if path is None or not os.path.exists(path):
        return {}
    with np.load(path, allow_pickle=False) as f:
        meta = json.loads(str(f["meta"]))
        if meta["signature"] != signature:
            print(f"{path} belongs to another evaluation: starting afresh")
            return {}
        done = {}
        for name, entry in meta["entries"].items():
            k, group, j = name.split("|")
            done[(int(k), group, int(j))] = {**entry, "images": f[name]}
    print(f"resuming from {path}: {len(done)} prompt x setting runs already done")
    return done


def _save_partial(path, done, signature):
    if path is None:
        return
    names = {f"{k}|{g}|{j}": e for (k, g, j), e in done.items()}
    meta = {"signature": signature, "entries": {n: {key: v for key, v in e.items() if key != "images"}
                                                for n, e in names.items()}}
    np.savez(path + ".tmp.npz", meta=np.array(json.dumps(meta)), **{n: e["images"] for n, e in names.items()})
    os.replace(path + ".tmp.npz", path)  # atomic: an interruption leaves the previous file whole


def run_jobs(pipe, judges, train_images, sets, jobs, num_images, partial_path=None, progress=True):
    """Generate every prompt of every group with every (method, knobs) job and measure it. Returns (results,
    images): one result dict and one {(group, j): uint8 (K, H, W, 3)} per job.

    Prompt by prompt, all jobs back to back: this machine's speed drifts by about 10% over minutes, and this
    way a drift hits every method alike, so the time ratios compare like with like. jobs[0] must be plain
    CFG, whose images the others are compared with. With `partial_path` (.npz) every finished prompt is saved,
    and a rerun of the same evaluation resumes after it: an interrupted run loses nothing it finished."""
    if not jobs or tuple(jobs[0]) != ("cfg", {}):
        raise ValueError("jobs[0] must be ('cfg', {}): every other method is compared with plain CFG's images")
    from tqdm.auto import tqdm

    signature = _signature(pipe, jobs, sets, num_images)
    done = _load_partial(partial_path, signature)
    counter = CountingUNet(pipe.unet)
    real_unet, pipe.unet = pipe.unet, counter
    try:
        with tqdm(total=sum(map(len, sets.values())) * len(jobs), desc="prompts x settings",
                  disable=not progress) as bar:
            for group, prompts in sets.items():
                for j, (prompt, attributes) in enumerate(prompts):
                    for k, (method, knobs) in enumerate(jobs):
                        if (k, group, j) not in done:
                            count0, t0 = counter.count, time.perf_counter()
                            out, info = pipe.generate(prompt, method=method, num_images=num_images, seed=1000 + j,
                                                      return_info=True, **resolve_knobs(pipe, method, knobs))
                            entry = {"seconds": time.perf_counter() - t0, "evals": counter.count - count0}
                            reference = done[(0, group, j)]["images"] if k else None
                            entry.update(measure(judges, train_images, out, prompt, attributes, info, reference))
                            done[(k, group, j)] = {**entry, "images": out}
                        bar.update()
                    _save_partial(partial_path, done, signature)
    finally:
        pipe.unet = real_unet
    results, images = [], []
    for k, (method, knobs) in enumerate(jobs):
        rows = {}
        for group, prompts in sets.items():
            entries = [done[(k, group, j)] for j in range(len(prompts))]
            n = len(prompts) * num_images
            rows[group] = {m: float(np.mean([v for e in entries for v in e[m]])) for m in MEASURES if m in entries[0]}
            rows[group]["unet_evals_per_image"] = sum(e["evals"] for e in entries) / n
            rows[group]["seconds_per_image"] = sum(e["seconds"] for e in entries) / n
        results.append({"method": method, "knobs": knobs, "label": label(method, knobs), "groups": rows})
        images.append({(group, j): done[(k, group, j)]["images"] for group in sets for j in range(len(sets[group]))})
    return results, images


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
    methods = ["cfg"] + [m for m in methods if m != "cfg"]  # the reference every other method is compared with
    if args.quick:
        args.per_group, args.num_images = 2, 1
    try:
        from .judges import Judges
        from .pipeline import ToyPipeline
        pipe = ToyPipeline(args.run, device=args.device)
        judges = Judges.load(args.run, device=args.device)
    except CheckpointError as e:
        sys.exit(f"error: {e}")
    from . import figures

    out_dir = args.out or os.path.join(args.run, "eval")
    os.makedirs(out_dir, exist_ok=True)
    train_images, _, _ = metrics.unique_training_images(pipe.dataset)
    sets = prompt_sets(pipe.dataset, args.per_group)
    if args.quick:
        sets = {g: p[:2] for g, p in sets.items()}
    print(f"thresholds: {json.dumps({k: round(v, 3) for k, v in pipe.thresholds.items() if k in ('lambda_ss', 'lambda_pr', 'tau')})}")

    jobs = [(m, k) for m in methods for k in (SWEEPS[m][:1] if args.quick else SWEEPS[m])]
    partial = os.path.join(out_dir, "partial.npz")
    results, images = run_jobs(pipe, judges, train_images, sets, jobs, args.num_images, partial)
    grid_images = {m: im for (m, k), im in zip(jobs, images) if k == SWEEPS[m][0]}
    for r in results:
        g = r["groups"]
        print(f"{r['label']:32s} global sim {g['global']['similarity']:.3f} copy {g['global']['copy']:.2f}  "
              f"local stamp {g['local']['stamp']:.2f}  clip {g['global']['clip']:.3f}  attr {g['global']['attr']:.2f}")

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
    os.remove(partial)  # everything is in metrics.json now
    print(f"wrote {out_dir}: metrics.json metrics.csv ablation.md tradeoff.png grid.png traces.png roc.png")


if __name__ == "__main__":
    main()
