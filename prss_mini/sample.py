"""Sample images from a trained run with any guidance method.

    python -m prss_mini.sample --run runs/cpu --prompt "a red circle in the top left" --out red.png
    python -m prss_mini.sample --run runs/cpu --prompt "..." --method prss --num-images 8 --seed 1 --out x.npz

`.png` writes a grid, `.npz` the key `images`, uint8 (K, H, W, 3). Each method's knobs have their own options
(--lambda-ss, --noise-scale, ...); an option of another method than the chosen one is an error. The guidance
scale must be >= 0 (0: the unconditional model, 1: the conditional one), and >= 1 for the re-anchoring methods
(prss, pr). An empty prompt is allowed with cfg: its images are the unconditional model's.
"""

import argparse
import os
import sys

import numpy as np

from .checkpoint import CheckpointError
from .diffusion import SAMPLERS
from .guidance import METHODS
from .images import save_grid
from .pipeline import ToyPipeline, check_device


def command_line_knobs():
    """option name -> (Knob, the methods that take it), for every knob a method declares (list knobs: Python only)."""
    out = {}
    for method, module in METHODS.items():
        for knob in module.KNOBS:
            if knob.type is not list:
                out.setdefault(knob.name, (knob, []))[1].append(method)
    return out


def save_images(images, path, scale=4):
    """images uint8 (K, H, W, 3) -> a .png grid or a .npz with key `images`."""
    if path.endswith(".npz"):
        np.savez(path, images=images)
    elif path.endswith(".png"):  # rows of 8, the last one padded with black
        cols = min(len(images), 8)
        rows = -(-len(images) // cols)
        pad = np.zeros((rows * cols - len(images), *images.shape[1:]), np.uint8)
        save_grid(np.concatenate([images, pad]).reshape(rows, cols, *images.shape[1:]), path, scale)
    else:
        raise ValueError(f"--out must end in .png or .npz, got {path!r}")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="run folder written by train_toy.py")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--method", default="cfg", choices=list(METHODS))
    parser.add_argument("--num-images", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help=".png (grid) or .npz (key images)")
    parser.add_argument("--guidance-scale", type=float, default=None, help="default: the run's (config.json)")
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the run's num_inference_steps)")
    parser.add_argument("--sampler", default="ddim", choices=SAMPLERS, help="ddpm uses all 1000 steps")
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM eta: 0 deterministic, 1 DDPM-like")
    parser.add_argument("--device", default="cpu")
    knobs = command_line_knobs()
    for name, (knob, methods) in knobs.items():
        flag, text = "--" + name.replace("_", "-"), f"{', '.join(methods)}: {knob.help}"
        if knob.type is bool:  # a switch: absent = the method's default
            parser.add_argument(flag, action="store_true", default=None, help=text)
        else:
            parser.add_argument(flag, type=knob.type, default=None, help=text)
    args = parser.parse_args(argv)
    if not args.out.endswith((".png", ".npz")):
        parser.error(f"--out must end in .png or .npz, got {args.out!r}")
    if args.num_images < 1:
        parser.error(f"--num-images must be at least 1, got {args.num_images}")
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps must be at least 1, got {args.steps}")
    if args.guidance_scale is not None and args.guidance_scale < 0:
        parser.error(f"--guidance-scale must be >= 0, got {args.guidance_scale}")
    given = {name: getattr(args, name) for name in knobs if getattr(args, name) is not None}
    foreign = [name for name in given if args.method not in knobs[name][1]]
    if foreign:
        own = [k.name for k in METHODS[args.method].KNOBS if k.type is not list]
        parser.error(f"{', '.join('--' + n.replace('_', '-') for n in foreign)} belong(s) to other methods, not "
                     f"{args.method!r}; its options: {', '.join('--' + n.replace('_', '-') for n in own) or 'none'}")
    return args, given


def main(argv=None):
    args, knobs = parse_args(argv)
    try:
        pipe = ToyPipeline(args.run, device=check_device(args.device))
        steps = args.steps or (pipe.schedule.num_train_timesteps if args.sampler == "ddpm" else None)
        images, info = pipe.generate(args.prompt, method=args.method, num_images=args.num_images, seed=args.seed,
                                     guidance_scale=args.guidance_scale, num_inference_steps=steps,
                                     sampler=args.sampler, eta=args.eta, progress=True, return_info=True, **knobs)
    except (CheckpointError, ValueError) as e:
        sys.exit(f"error: {e}")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    save_images(images, args.out)
    if not args.prompt.strip():
        print("empty prompt: these are the unconditional model's images (e_p = e_0, so CFG has nothing to add)")
    if "triggered" in info:
        print(f"memorization triggered on {sum(info['triggered'])}/{len(info['triggered'])} samples; "
              f"prompts used: {sorted(set(info['prompt']))}")
    print(f"wrote {args.out}: {len(images)} images {images.shape[1]}x{images.shape[2]}")


if __name__ == "__main__":
    main()
