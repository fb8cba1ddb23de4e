"""Sample images from a trained run with any guidance method.

    python -m prss_mini.sample --run runs/cpu --prompt "a red circle in the top left" --out red.png
    python -m prss_mini.sample --run runs/cpu --prompt "..." --method prss --num-images 8 --seed 1 --out x.npz

`.png` writes a grid, `.npz` the key `images`, uint8 (K, H, W, 3). Each method's knob has its own option
(--lambda-ss, --noise-scale, ...); options that do not belong to the chosen method are ignored.
"""

import argparse
import os
import sys

import numpy as np

from .checkpoint import CheckpointError
from .guidance import METHODS

# option -> (method(s) it belongs to, type, help)
KNOBS = {
    "lambda_ss": (("prss", "pr", "ss"), float, "SS threshold on the first-step magnitude (default: calibrated)"),
    "lambda_pr": (("prss", "pr", "ss"), float, "PR: plain CFG below this per-step magnitude (default: calibrated)"),
    "tau": (("prss", "pr", "ss"), float, "PR: full re-anchoring from this magnitude on (default: calibrated)"),
    "n_s": (("prss", "ss"), int, "number of paraphrase candidates (default 25)"),
    "per_prompt": (("prss", "pr", "ss"), bool, "detect and search once for all images, on the RMS of their "
                                               "magnitudes (the official code's batch norm), not per image"),
    "target": (("pe",), float, "PE: target first-step magnitude (default: calibrated lambda_ss)"),
    "noise_scale": (("gni",), float, "GNI: std of the noise added to the prompt embedding"),
    "num_tokens": (("rta",), int, "RTA: number of random words inserted"),
    "transition_step": (("transition",), int, "transition: step index where normal guidance starts"),
    "early_scale": (("transition",), float, "transition: guidance scale before it (0 none, <0 opposite)"),
}


def save_images(images, path, scale=4):
    """images uint8 (K, H, W, 3) -> a .png grid or a .npz with key `images`."""
    if path.endswith(".npz"):
        np.savez(path, images=images)
    elif path.endswith(".png"):
        from PIL import Image
        cols = min(len(images), 8)
        rows = -(-len(images) // cols)
        pad = np.zeros((rows * cols - len(images), *images.shape[1:]), np.uint8)
        grid = np.concatenate([images, pad]).reshape(rows, cols, *images.shape[1:])
        grid = grid.transpose(0, 2, 1, 3, 4).reshape(rows * images.shape[1], cols * images.shape[2], 3)
        Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST).save(path)
    else:
        raise ValueError(f"--out must end in .png or .npz, got {path!r}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="run folder written by train_toy.py")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--method", default="cfg", choices=list(METHODS))
    parser.add_argument("--num-images", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help=".png (grid) or .npz (key images)")
    parser.add_argument("--guidance-scale", type=float, default=None, help="default: the run's (config.json)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the run's, 50)")
    parser.add_argument("--sampler", default="ddim", choices=["ddim", "ddpm"])
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM eta: 0 deterministic, 1 DDPM-like")
    parser.add_argument("--device", default="cpu")
    for name, (_, kind, help_text) in KNOBS.items():
        if kind is bool:  # a switch: absent = the method's default
            parser.add_argument("--" + name.replace("_", "-"), action="store_true", default=None, help=help_text)
        else:
            parser.add_argument("--" + name.replace("_", "-"), type=kind, default=None, help=help_text)
    args = parser.parse_args(argv)
    if not args.out.endswith((".png", ".npz")):
        parser.error(f"--out must end in .png or .npz, got {args.out!r}")
    if args.num_images < 1:
        parser.error("--num-images must be at least 1")
    knobs = {k: getattr(args, k) for k, (methods, _, _) in KNOBS.items()
             if args.method in methods and getattr(args, k) is not None}
    try:
        from .pipeline import ToyPipeline
        pipe = ToyPipeline(args.run, device=args.device)
        steps = args.steps or (1000 if args.sampler == "ddpm" else None)
        images, info = pipe.generate(args.prompt, method=args.method, num_images=args.num_images, seed=args.seed,
                                     guidance_scale=args.guidance_scale, num_inference_steps=steps,
                                     sampler=args.sampler, eta=args.eta, progress=True, return_info=True, **knobs)
    except (CheckpointError, ValueError) as e:
        sys.exit(f"error: {e}")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    save_images(images, args.out)
    if "triggered" in info:
        print(f"memorization triggered on {sum(info['triggered'])}/{len(info['triggered'])} samples; "
              f"prompts used: {sorted(set(info['prompt']))}")
    print(f"wrote {args.out}: {len(images)} images {images.shape[1]}x{images.shape[2]}")


if __name__ == "__main__":
    main()
