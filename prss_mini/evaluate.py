"""Evaluate PRSS and the baselines on a trained run: privacy, utility, cost, and the figures that show them.

    python -m prss_mini.evaluate --run runs/cpu                 # every method and its sweep
    python -m prss_mini.evaluate --run runs/tiny --quick        # a smoke test

Protocol (docs/math.md, "Evaluation protocol", in miniature): the same prompts and the same seeds for every
method; privacy = similarity to the nearest training image (and the d1/d2 test, and the stamp for local
memorization); utility = judge CLIP score against the ORIGINAL prompt and attribute accuracy. Every method of
prss_mini.guidance.METHODS runs its SWEEP and VARIANTS (a baseline's sweep on the memorized prompts only: `runs_on`).
    python -m prss_mini.evaluate --run runs/s0 --run runs/s1 --run runs/s2 --out runs/pooled   # pooled over seeds

Writes to RUN/eval/ (or --out): metrics.json (every figure pooled over the runs, with a 95% interval that
resamples prompts and each run's own value: pooling.py), metrics.csv, per_prompt.csv, ablation.md, tradeoff.png,
grid.png, traces.png, roc.png. While it runs, partial_<i>.npz there holds every finished group x setting of run i:
rerun the same command to resume after Ctrl-C.
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from . import figures, metrics
from .analysis import label
from .captions import ATTRIBUTE_NAMES
from .checkpoint import CheckpointError, load_partial, save_partial
from .config import read_config
from .guidance import DETECTION_SCORES, METHODS
from .guidance.detect import magnitude_trace
from .guidance.rows import encode_rows
from .judges import Judges
from .pipeline import ToyPipeline, check_device
from .pooling import check_same_protocol, pool, prompt_rows, results_at
from .report import cell, write_reports
from .prompts import CONTROL, GROUPS, MEMORIZED, prompt_sets

# The evaluation samples these groups together, one batch per job: memorized prompts, then controls.
BATCHES = (MEMORIZED, CONTROL)

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


def measure(judges, train_images, images, prompts, attributes, info, reference=None):
    """Privacy and utility of images uint8 (N, H, W, 3), each asked for by its own prompt (N str) with its
    attributes (N, 3): measure -> N values (see MEASURES)."""
    near = metrics.nearest_training(images, train_images)
    correct = judges.attribute_correct(images, attributes)                                        # (N, 3)
    values = {"similarity": near["similarity"], "copy": metrics.is_copy(near["similarity"]),
              "ratio_copy": metrics.ratio_copy(near["d1"], near["d2"]), "stamp": metrics.stamp_present(images),
              "clip": judges.clip_score(images, prompts), "attr": correct.mean(1),
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


def seeds_for(prompts):
    """The seed of each prompt's x_T: 1000 + its index in its group, for every method alike."""
    return [1000 + j for j in range(len(prompts))]


def run_batch(pipe, judges, train_images, sets, method, knobs, num_images, reference=None):
    """One setting on every prompt of the groups in `sets` (group -> prompts) in ONE batched sampling run (a UNet
    call on many samples costs less per sample than several calls on few), measured. Returns one entry per group:
    per-sample values (MEASURES, prompt-major), "chosen" (the prompt each sample was generated with), "images"
    (P * K, H, W, 3), and the batch's "seconds" and "evals" shared by its samples: a group's cost per image is its
    batch's. `reference`: group -> plain CFG's images of the same prompts and seeds."""
    prompts = [p for group in sets.values() for p in group]
    texts, attributes = [p for p, _ in prompts], np.stack([a for _, a in prompts])
    seeds = [s for group in sets.values() for s in seeds_for(group)]
    count0, t0 = pipe.unet.count, time.perf_counter()
    out, info = pipe.generate(texts, method=method, num_images=num_images, seed=seeds, return_info=True, **knobs)
    seconds, evals = time.perf_counter() - t0, pipe.unet.count - count0
    chosen = info.get("prompt", list(np.repeat(texts, num_images)))
    values = measure(judges, train_images, out, list(np.repeat(texts, num_images)),
                     np.repeat(attributes, num_images, 0), info,
                     None if reference is None else np.concatenate([reference[g] for g in sets]))
    entries, start = {}, 0
    for group, group_prompts in sets.items():
        own = slice(start, start + len(group_prompts) * num_images)
        share = (own.stop - own.start) / len(out)
        entries[group] = {"seconds": seconds * share, "evals": evals * share, "chosen": chosen[own],
                          **{m: v[own] for m, v in values.items()}, "images": out[own]}
        start = own.stop
    return entries


def per_prompt(entry, prompts, num_images):
    """A group's entry split by prompt: one dict per prompt with the mean of each measure over its samples, its
    share of the cost, and the prompt(s) its samples were generated with."""
    rows = []
    for j, (prompt, _) in enumerate(prompts):
        own = slice(j * num_images, (j + 1) * num_images)
        row = {m: float(np.mean(entry[m][own])) for m in MEASURES if m in entry}
        chosen = list(dict.fromkeys(str(c) for c in entry["chosen"][own]))
        row.update(prompt=prompt, chosen_prompt=" | ".join(chosen), seconds=entry["seconds"] / len(prompts),
                   evals=entry["evals"] / len(prompts), samples=num_images)
        rows.append(row)
    return rows


def run_jobs(pipe, judges, train_images, sets, jobs, num_images, partial_path=None, progress=True):
    """Generate every group of prompts with every (method, knobs) job and measure it. Returns (results, images):
    one result dict and one {(group, j): uint8 (K, H, W, 3)} per job. A result's groups[g] holds the means over
    the group's samples and "per_prompt", one row per prompt (see per_prompt).

    Batch by batch (BATCHES: the memorized groups in one, the controls in another), all jobs back to back: the
    machine's speed drifts over minutes, and this way a drift hits every method alike, so the time ratios compare
    like with like. Each job runs its groups of a batch in one sampling run (run_batch), so cost is measured per
    batch: memorized prompts apart from control prompts. jobs[0] must be plain CFG, whose images the others are
    compared with. With `partial_path` (.npz) every finished (group, job) is saved, and a rerun of the same
    evaluation resumes after it: an interrupted run loses nothing it finished."""
    if not set(sets) <= {g for batch in BATCHES for g in batch}:
        raise ValueError(f"groups {sorted(sets)}: run_jobs samples the groups of BATCHES {BATCHES} only")
    if not jobs or tuple(jobs[0]) != ("cfg", {}):
        raise ValueError("jobs[0] must be ('cfg', {}): every other method is compared with plain CFG's images")
    sig = signature(pipe, jobs, sets, num_images)
    done = load_partial(partial_path, sig) if partial_path else {}
    if done:
        print(f"resuming from {partial_path}: {len(done)} group x setting runs already done")
    key = lambda k, group: f"{k}|{group}"
    groups = [[g for g in sets if runs_on(g, method, knobs)] for method, knobs in jobs]  # per job
    real_unet, pipe.unet = pipe.unet, CountingUNet(pipe.unet)
    try:
        total = sum(len(job_groups) for job_groups in groups)
        with tqdm(total=total, desc="groups x settings", disable=not progress) as bar:
            for batch in BATCHES:
                for k, (method, knobs) in enumerate(jobs):
                    todo = {g: sets[g] for g in batch if g in groups[k] and key(k, g) not in done}
                    if todo:
                        reference = {g: done[key(0, g)]["images"] for g in todo} if k else None
                        entries = run_batch(pipe, judges, train_images, todo, method, knobs, num_images, reference)
                        done.update({key(k, g): entry for g, entry in entries.items()})
                        if partial_path:
                            save_partial(partial_path, done, sig)
                    bar.update(sum(g in groups[k] for g in batch))
    finally:
        pipe.unet = real_unet
    results, images = [], []
    for k, (method, knobs) in enumerate(jobs):
        rows = {}
        for group in groups[k]:
            entry, n = done[key(k, group)], len(sets[group]) * num_images
            rows[group] = {m: float(np.mean(entry[m])) for m in MEASURES if m in entry}
            rows[group].update(samples=n, unet_evals_per_image=entry["evals"] / n,
                               seconds_per_image=entry["seconds"] / n,
                               per_prompt=per_prompt(entry, sets[group], num_images))
        results.append({"method": method, "knobs": knobs, "label": label(method, knobs), "groups": rows})
        images.append({(group, j): done[key(k, group)]["images"][j * num_images:(j + 1) * num_images]
                       for group in groups[k] for j in range(len(sets[group]))})
    return results, images


def detection(pipe, sets, num_images=2, per_group=4):
    """Per-step magnitudes and first-step detection scores of the evaluation's prompts.

    Returns (traces: group -> [(m_t under CFG, m_t of the prompt PRSS used or None)] for `per_group` prompts,
    averaged over `num_images` x_T; scores: score name (guidance.DETECTION_SCORES) -> group -> (P,) scores of every
    prompt, 4 x_T each)."""
    traces = {}
    for group, prompts in sets.items():  # each group's prompts in one batched run, on the same num_images x_T
        texts = [p for p, _ in prompts[:per_group]]
        x_T = pipe.initial_noise(num_images, 7).repeat(len(texts), 1, 1, 1)              # (P * K, C, H, W)
        cfg = magnitude_trace(pipe, encode_rows(pipe, texts, len(x_T)), x_T)                  # (P * K, steps)
        cfg = cfg.view(len(texts), num_images, -1).mean(1).numpy()                           # (P, steps)
        prss = [None] * len(texts)
        if group in MEMORIZED:
            _, info = pipe.generate(texts, method="prss", num_images=num_images, seed=[7] * len(texts),
                                    return_info=True)
            if info["trace"]:  # m_t of every sample at every step (the prompt's own where not triggered)
                m = torch.stack(info["trace"], 1).view(len(texts), num_images, -1).mean(1).numpy()
                prss = [m[j] if any(info["triggered"][j * num_images:(j + 1) * num_images]) else None
                        for j in range(len(texts))]
        traces[group] = list(zip(cfg, prss))
    scores = {name: {g: score(pipe, [p for p, _ in prompts], num_images=4).numpy() for g, prompts in sets.items()}
              for name, score in DETECTION_SCORES.items()}
    return traces, scores


def evaluate_run(run_dir, args, jobs, out_dir, index):
    """One run's evaluation: its results, prompts and detection scores (what pooling.pool reads), its images and
    traces. Its partial file (resume after Ctrl-C) lives in out_dir."""
    pipe = ToyPipeline(run_dir, device=args.device)
    judges = Judges.load(run_dir, device=args.device)
    sets = prompt_sets(pipe.dataset, args.per_group)
    if args.quick:
        sets = {g: p[:2] for g, p in sets.items()}
    thresholds = pipe.thresholds
    print(f"{run_dir}: thresholds {json.dumps({k: round(thresholds[k], 3) for k in ('lambda_ss', 'lambda_pr', 'tau')})}")
    train_images, _, _ = metrics.unique_training_images(pipe.dataset)
    partial = os.path.join(out_dir, f"partial_{index}.npz")
    results, images = run_jobs(pipe, judges, train_images, sets, jobs, args.num_images, partial)
    traces, scores = detection(pipe, sets)
    run = {"name": run_dir, "seed": pipe.config.seed, "thresholds": thresholds, "results": results,
           "prompts": {g: [p for p, _ in v] for g, v in sets.items()}, "scores": {name: {g: v.tolist() for g, v in by_group.items()} for name, by_group in scores.items()}}
    return run, images, traces, partial


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, action="append", help="run folder written by train_toy.py; give it "
                        "several times to pool runs that differ in their training seed only")
    parser.add_argument("--per-group", type=int, default=5, help="prompts per group (global: all of them)")
    parser.add_argument("--num-images", type=int, default=4, help="seeds per prompt")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    parser.add_argument("--quick", action="store_true", help="first settings only, 2 prompts per group, 1 image")
    parser.add_argument("--out", default=None, help="output folder (default: RUN/eval for one run; several runs "
                        "need it)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.quick:
        args.per_group, args.num_images = 2, 1
    if args.num_images < 1:
        parser.error(f"--num-images must be at least 1, got {args.num_images}")
    if len(args.run) > 1 and args.out is None:
        parser.error("several --run folders are pooled into one evaluation: say where with --out DIR")
    if len(set(args.run)) != len(args.run):
        parser.error(f"a run folder is given twice: {args.run}")
    try:
        jobs = jobs_for(args.methods.split(","), args.quick)
        check_device(args.device)
        configs = [read_config(run) for run in args.run]
        check_same_protocol(configs, args.run)
        for run in args.run:  # every run is usable before hours are spent on the first
            ToyPipeline(run)
            Judges.load(run)
    except (CheckpointError, ValueError) as e:
        sys.exit(f"error: {e}")
    out_dir = args.out or os.path.join(args.run[0], "eval")
    os.makedirs(out_dir, exist_ok=True)

    runs, partials = [], []
    for i, run_dir in enumerate(args.run):
        try:
            run, images, traces, partial = evaluate_run(run_dir, args, jobs, out_dir, i)
        except (CheckpointError, ValueError) as e:
            sys.exit(f"error: {e}")
        runs.append(run)
        partials.append(partial)
        if i == 0:  # the pictures show the first run; the numbers pool them all
            grid_images = {m: im for (m, k), im in zip(jobs, images) if k == METHODS[m].SWEEP[0]}
            first_traces, first_sets = traces, {g: [(p, None) for p in v] for g, v in run["prompts"].items()}
    pooled = pool(runs)
    pooled["runs"] = [{"run": r["name"], "seed": r["seed"], "thresholds": r["thresholds"]} for r in runs]
    pooled["num_images"] = args.num_images
    pooled["prompts"] = {r["name"]: r["prompts"] for r in runs}
    text = write_reports(out_dir, pooled, prompt_rows(runs))
    figures.tradeoff_plot(results_at(runs), os.path.join(out_dir, "tradeoff.png"))
    figures.method_grid(grid_images, first_sets, os.path.join(out_dir, "grid.png"))
    figures.traces_plot(first_traces, runs[0]["thresholds"]["lambda_pr"], os.path.join(out_dir, "traces.png"))
    figures.roc_plot({name: {g: np.concatenate([r["scores"][name][g] for r in runs]) for g in by_group}
                      for name, by_group in runs[0]["scores"].items()}, os.path.join(out_dir, "roc.png"))
    print(text)
    for name, d in pooled["detection"].items():
        print(f"detection ROC-AUC, {name}: " + ", ".join(f"{g} {cell(d[f'roc_auc_{g}'])}" for g in MEMORIZED))
    for partial in partials:
        os.remove(partial)  # everything is in metrics.json and per_prompt.csv now
    print(f"wrote {out_dir}: metrics.json metrics.csv per_prompt.csv ablation.md tradeoff.png grid.png traces.png "
          f"roc.png")


if __name__ == "__main__":
    main()
