"""Evaluate PRSS and the baselines on a trained run: privacy, utility, cost, and the figures that show them.

    python -m prss_mini.evaluate --run runs/cpu                 # every method and its sweep
    python -m prss_mini.evaluate --run runs/tiny --quick        # a smoke test

Protocol (docs/math.md, "Evaluation protocol", in miniature): the same prompts and the same seeds for every
method; privacy = similarity to the nearest training image (and the d1/d2 test, and the stamp for local
memorization); utility = judge CLIP score against the ORIGINAL prompt and attribute accuracy. Every method of
prss_mini.guidance.METHODS runs its SWEEP and VARIANTS (a baseline's sweep on the memorized prompts only: `runs_on`).
Writes to RUN/eval/ (or --out): metrics.json, metrics.csv, tradeoff.png, ablation.md, grid.png, traces.png, roc.png.
While it runs, partial.npz there holds every finished prompt: rerun the same command to resume after Ctrl-C.
"""

import argparse
import json
import os
import sys
import time

import numpy as np
from tqdm.auto import tqdm

from . import figures, metrics
from .analysis import label, summarize
from .checkpoint import CheckpointError, load_partial, save_partial
from .guidance import METHODS
from .guidance.detect import detection_score, magnitude_trace
from .judges import Judges
from .pipeline import ToyPipeline, check_device
from .report import write_reports
from .captions import ATTRIBUTE_NAMES
from .world import memorized_captions

GROUPS = ("global", "local", "general", "heldout")
MEMORIZED, CONTROL = ("global", "local"), ("general", "heldout")


def prompt_sets(data, per_group=8, seed=0):
    """group -> list of (prompt, attributes (3,)), drawn once so every method sees the same prompts."""
    rng = np.random.default_rng(seed)
    largest = min(len(np.unique(data["captions"][data["group"] == g])) for g in ("local", "general"))
    largest = min(largest, len(data["heldout_captions"]))
    if not 1 <= per_group <= largest:
        raise ValueError(f"per_group must be in [1, {largest}] (the smallest group of this run has {largest} "
                         f"captions), got {per_group}")
    sets = {}
    for group in ("global", "local", "general"):
        captions, first = np.unique(data["captions"][data["group"] == group], return_index=True)
        attrs = data["attributes"][data["group"] == group][first]
        if group == "global":  # every memorized caption (not the title-keeping variants of titled images)
            pick = np.flatnonzero(np.isin(captions, memorized_captions(data)))
        else:
            pick = rng.choice(len(captions), per_group, replace=False)
        sets[group] = [(str(captions[i]), attrs[i]) for i in sorted(pick)]
    pick = rng.choice(len(data["heldout_captions"]), per_group, replace=False)
    sets["heldout"] = [(str(data["heldout_captions"][i]), data["heldout_attributes"][i]) for i in sorted(pick)]
    return sets


def jobs_for(methods, quick=False):
    """[(method, knobs)]: plain CFG first (the reference), then each method's SWEEP and VARIANTS (quick: its first
    setting only), in the order of METHODS."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    chosen = ["cfg"] + [m for m in METHODS if m in methods and m != "cfg"]
    return [(m, k) for m in chosen
            for k in (METHODS[m].SWEEP[:1] if quick else METHODS[m].SWEEP + METHODS[m].VARIANTS)]


def runs_on(group, method, knobs):
    """Does the evaluation run this setting on this group? Memorized prompts get every setting. Control prompts
    (general, held-out) get every setting of PRSS and its ablations (do they leave normal prompts alone?) but only
    the default of a baseline: its sweep traces the privacy-utility curve, which only memorized prompts have."""
    return group in MEMORIZED or not METHODS[method].BASELINE or knobs == METHODS[method].SWEEP[0]


class CountingUNet:
    """Wraps the UNet to count evaluations (one per sample per forward): the cost every method pays."""

    def __init__(self, unet):
        self.unet, self.count = unet, 0

    def __call__(self, x, t, context):
        self.count += len(x)
        return self.unet(x, t, context)


MEASURES = ("similarity", "copy", "ratio_copy", "stamp", "clip", "attr", "attr_shape", "attr_colour", "attr_position",
            "triggered", "identical")


def measure(judges, train_images, images, prompt, attributes, info, reference=None):
    """Privacy and utility of one prompt's images uint8 (K, H, W, 3): measure -> K values (see MEASURES)."""
    near = metrics.nearest_training(images, train_images)
    correct = judges.attribute_correct(images, np.repeat(attributes[None], len(images), 0))          # (K, 3)
    values = {"similarity": near["similarity"], "copy": metrics.is_copy(near["similarity"]),
              "ratio_copy": metrics.ratio_copy(near["d1"], near["d2"]), "stamp": metrics.stamp_present(images),
              "clip": judges.clip_score(images, [prompt] * len(images)), "attr": correct.mean(1),
              **{f"attr_{name}": correct[:, a] for a, name in enumerate(ATTRIBUTE_NAMES)},
              "triggered": info.get("triggered", [False] * len(images))}
    if reference is not None:  # same seed, same x_T: is it plain CFG's image, bit for bit?
        values["identical"] = (images == reference).all(axis=(1, 2, 3))
    return {k: [float(v) for v in vals] for k, vals in values.items()}


def signature(pipe, jobs, sets, num_images):
    """What a saved partial evaluation must match to be resumed: settings, prompts, seeds, thresholds, model."""
    model = os.path.join(pipe.run_dir, "unet.pt") if getattr(pipe, "run_dir", None) else None
    stamp = [os.path.getsize(model), os.path.getmtime(model)] if model and os.path.exists(model) else None
    return json.dumps({"jobs": jobs, "prompts": {g: [p for p, _ in v] for g, v in sets.items()},
                       "num_images": num_images, "thresholds": getattr(pipe, "thresholds", None), "model": stamp},
                      sort_keys=True, default=float)


def run_jobs(pipe, judges, train_images, sets, jobs, num_images, partial_path=None, progress=True):
    """Generate every prompt of every group with every (method, knobs) job and measure it. Returns (results,
    images): one result dict and one {(group, j): uint8 (K, H, W, 3)} per job.

    Prompt by prompt, all jobs back to back: the machine's speed drifts over minutes, and this way a drift hits
    every method alike, so the time ratios compare like with like. jobs[0] must be plain CFG, whose images the
    others are compared with. With `partial_path` (.npz) every finished prompt is saved, and a rerun of the same
    evaluation resumes after it: an interrupted run loses nothing it finished."""
    if not jobs or tuple(jobs[0]) != ("cfg", {}):
        raise ValueError("jobs[0] must be ('cfg', {}): every other method is compared with plain CFG's images")
    sig = signature(pipe, jobs, sets, num_images)
    done = load_partial(partial_path, sig) if partial_path else {}
    if done:
        print(f"resuming from {partial_path}: {len(done)} prompt x setting runs already done")
    key = lambda k, group, j: f"{k}|{group}|{j}"
    groups = [[g for g in sets if runs_on(g, method, knobs)] for method, knobs in jobs]  # per job
    counter = CountingUNet(pipe.unet)
    real_unet, pipe.unet = pipe.unet, counter
    try:
        total = sum(len(sets[g]) for job_groups in groups for g in job_groups)
        with tqdm(total=total, desc="prompts x settings", disable=not progress) as bar:
            for group, prompts in sets.items():
                for j, (prompt, attributes) in enumerate(prompts):
                    for k, (method, knobs) in enumerate(jobs):
                        if group not in groups[k]:
                            continue
                        if key(k, group, j) not in done:
                            count0, t0 = counter.count, time.perf_counter()
                            out, info = pipe.generate(prompt, method=method, num_images=num_images, seed=1000 + j,
                                                      return_info=True, **knobs)
                            entry = {"seconds": time.perf_counter() - t0, "evals": counter.count - count0}
                            reference = done[key(0, group, j)]["images"] if k else None
                            entry.update(measure(judges, train_images, out, prompt, attributes, info, reference))
                            done[key(k, group, j)] = {**entry, "images": out}
                        bar.update()
                    if partial_path:
                        save_partial(partial_path, done, sig)
    finally:
        pipe.unet = real_unet
    results, images = [], []
    for k, (method, knobs) in enumerate(jobs):
        rows = {}
        for group in groups[k]:
            prompts = sets[group]
            entries = [done[key(k, group, j)] for j in range(len(prompts))]
            n = len(prompts) * num_images
            rows[group] = {m: float(np.mean([v for e in entries for v in e[m]])) for m in MEASURES if m in entries[0]}
            rows[group]["samples"] = n
            rows[group]["unet_evals_per_image"] = sum(e["evals"] for e in entries) / n
            rows[group]["seconds_per_image"] = sum(e["seconds"] for e in entries) / n
        results.append({"method": method, "knobs": knobs, "label": label(method, knobs), "groups": rows})
        images.append({(group, j): done[key(k, group, j)]["images"] for group in groups[k]
                       for j in range(len(sets[group]))})
    return results, images


def detection(pipe, sets, num_images=2, per_group=4):
    """Per-step magnitudes and first-step detection scores of the evaluation's prompts.

    Returns (traces: group -> [(m_t under CFG, m_t of the prompt PRSS used or None)] for `per_group` prompts,
    averaged over `num_images` x_T; scores: group -> (P,) first-step scores of every prompt, 4 x_T each)."""
    x_T = pipe.initial_noise(num_images, 7)
    traces = {}
    for group, prompts in sets.items():
        traces[group] = []
        for prompt, _ in prompts[:per_group]:
            cfg_trace = magnitude_trace(pipe, pipe.encode([prompt]), x_T).mean(0).numpy()
            prss_trace = None
            if group in MEMORIZED:
                _, info = pipe.generate(prompt, method="prss", num_images=num_images, seed=7, return_info=True)
                if info["trace"]:
                    prss_trace = np.stack([m.numpy() for m in info["trace"]], 1).mean(0)
            traces[group].append((cfg_trace, prss_trace))
    scores = {g: detection_score(pipe, [p for p, _ in prompts], num_images=4).numpy() for g, prompts in sets.items()}
    return traces, scores


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="run folder written by train_toy.py")
    parser.add_argument("--per-group", type=int, default=5, help="prompts per group (global: all of them)")
    parser.add_argument("--num-images", type=int, default=4, help="seeds per prompt")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    parser.add_argument("--quick", action="store_true", help="first settings only, 2 prompts per group, 1 image")
    parser.add_argument("--out", default=None, help="output folder (default: RUN/eval)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.quick:
        args.per_group, args.num_images = 2, 1
    if args.num_images < 1:
        parser.error(f"--num-images must be at least 1, got {args.num_images}")
    try:
        jobs = jobs_for(args.methods.split(","), args.quick)
        pipe = ToyPipeline(args.run, device=check_device(args.device))
        judges = Judges.load(args.run, device=args.device)
        sets = prompt_sets(pipe.dataset, args.per_group)
        thresholds = pipe.thresholds
    except (CheckpointError, ValueError) as e:
        sys.exit(f"error: {e}")
    if args.quick:
        sets = {g: p[:2] for g, p in sets.items()}
    out_dir = args.out or os.path.join(args.run, "eval")
    os.makedirs(out_dir, exist_ok=True)
    train_images, _, _ = metrics.unique_training_images(pipe.dataset)
    print(f"thresholds: {json.dumps({k: round(thresholds[k], 3) for k in ('lambda_ss', 'lambda_pr', 'tau')})}")

    partial = os.path.join(out_dir, "partial.npz")
    results, images = run_jobs(pipe, judges, train_images, sets, jobs, args.num_images, partial)
    grid_images = {m: im for (m, k), im in zip(jobs, images) if k == METHODS[m].SWEEP[0]}
    for r in results:
        g = r["groups"]
        print(f"{r['label']:32s} global sim {g['global']['similarity']:.3f} copy {g['global']['copy']:.2f}  "
              f"local stamp {g['local']['stamp']:.2f}  clip {g['global']['clip']:.3f}  attr {g['global']['attr']:.2f}")

    traces, scores = detection(pipe, sets)
    negative = np.concatenate([scores[g] for g in CONTROL])
    detected = {"first_step_magnitude": {g: float(np.mean(v)) for g, v in scores.items()},
                **{f"roc_auc_{g}": metrics.roc_auc(scores[g], negative) for g in MEMORIZED}}
    text = write_reports(out_dir, {"thresholds": thresholds, "num_images": args.num_images, "detection": detected,
                                   "prompts": {g: [p for p, _ in v] for g, v in sets.items()}, "results": results,
                                   **summarize(results)})
    figures.tradeoff_plot(results, os.path.join(out_dir, "tradeoff.png"))
    figures.method_grid(grid_images, sets, os.path.join(out_dir, "grid.png"))
    figures.traces_plot(traces, thresholds["lambda_pr"], os.path.join(out_dir, "traces.png"))
    figures.roc_plot(scores, os.path.join(out_dir, "roc.png"))
    print(text)
    print("first-step detection ROC-AUC: " + ", ".join(f"{g} {detected[f'roc_auc_{g}']:.3f}" for g in MEMORIZED))
    os.remove(partial)  # everything is in metrics.json now
    print(f"wrote {out_dir}: metrics.json metrics.csv ablation.md tradeoff.png grid.png traces.png roc.png")


if __name__ == "__main__":
    main()
