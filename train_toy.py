"""Train everything a prss-mini run needs, in one command.

    python train_toy.py --preset cpu --out runs/cpu          # ~13 minutes on 2 CPU cores
    python train_toy.py --preset tiny --out runs/tiny        # ~1 minute: for tests and a first look
    python train_toy.py --preset cpu --out runs/cpu --train_steps 5000   # any Config field as --key value

Stages, each written to the run folder and skipped when already done (rerun the same command to resume):
    1. dataset.npz       the toy world (prss_mini/world.py) and preview.png
    2. text_encoder.pt   CLIP-style pre-training of the text encoder, then frozen (as SD freezes CLIP)
    3. unet.pt           the diffusion model (EMA weights); unet_train.pt holds the in-progress state, saved atomically;
                         snapshots/unet_<step>.pt the weights every `sample_every` steps
    4. judges.pt         attribute classifier and judge CLIP, trained apart from the model under test
"""

import argparse
import copy
import json
import math
import os
import sys
import time

import numpy as np
import torch

from prss_mini.checkpoint import (CheckpointError, config_differences, load_checkpoint, load_state, save_atomic,
                                  write_json_atomic)
from prss_mini.config import (PRESETS, make_config, noise_schedule, parse_overrides, text_encoder_config, to_dict,
                              unet_config, world_config)
from prss_mini.diffusion import as_epsilon_model, diffusion_loss
from prss_mini.pipeline import check_device
from prss_mini.text_encoder import ImageEncoder, TextEncoder, Tokenizer, train_clip
from prss_mini.unet import UNet, count_parameters
from prss_mini.world import build_dataset, images_to_tensor, preview_grid, tensor_to_images


def stage_dataset(cfg, out):
    path = os.path.join(out, "dataset.npz")
    if os.path.exists(path):
        with np.load(path, allow_pickle=False) as f:
            return dict(f)
    data = build_dataset(world_config(cfg))
    np.savez(path + ".tmp.npz", **data)
    os.replace(path + ".tmp.npz", path)
    preview_grid(data, os.path.join(out, "preview.png"))
    print(f"[1/4] dataset: {len(data['images'])} training items "
          f"({len(np.unique(data['image_id']))} distinct images), preview.png")
    return data


def stage_text_encoder(cfg, out, data, device):
    path = os.path.join(out, "text_encoder.pt")
    torch.manual_seed(cfg.seed)  # the modules' initial weights
    encoder = TextEncoder(text_encoder_config(cfg))
    if os.path.exists(path):
        load_state(encoder, path, to_dict(cfg))
        return encoder.to(device)
    encoder.to(device)
    image_encoder = ImageEncoder(embed_dim=encoder.cfg.embed_dim).to(device)
    _, first = np.unique(data["image_id"], return_index=True)  # one (image, caption) pair per distinct image
    losses = train_clip(encoder, image_encoder, images_to_tensor(data["images"][first]), data["captions"][first],
                        Tokenizer(), steps=cfg.clip_steps, generator=torch.Generator().manual_seed(cfg.seed),
                        device=device)
    save_atomic({"model": encoder.state_dict(), "losses": losses, "config": to_dict(cfg)}, path)
    print(f"[2/4] text encoder: CLIP loss {losses[0]:.3f} -> {np.mean(losses[-20:]):.3f}")
    return encoder


def save_progress_figures(out, losses, unet, cfg, contexts, null, schedule, step, device):
    """loss.png, and a grid of samples for a few training captions (first row: memorized ones)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from prss_mini.diffusion import cfg_hook, sample

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(losses, lw=0.5, alpha=0.4)
    k = max(1, len(losses) // 50)
    ax.plot(np.arange(len(losses) - k + 1) + k // 2, np.convolve(losses, np.ones(k) / k, "valid"), lw=1.5)
    ax.set(xlabel="step", ylabel=f"{cfg.prediction_type} loss ({cfg.loss_weighting})", yscale="log",
           title="diffusion training loss")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "loss.png"), dpi=100)
    plt.close(fig)
    unet.eval()
    model = as_epsilon_model(unet, cfg.prediction_type, schedule)
    x = sample(cfg_hook(model, contexts, null, cfg.guidance_scale), (len(contexts), 3, cfg.image_size, cfg.image_size),
               schedule, cfg.num_inference_steps, generator=torch.Generator().manual_seed(0), device=device)
    unet.train()
    grid = np.concatenate(list(tensor_to_images(x)), axis=1)
    Image.fromarray(grid).resize((grid.shape[1] * 4, grid.shape[0] * 4), Image.NEAREST).save(
        os.path.join(out, f"samples_{step:06d}.png"))


def caption_drop_probabilities(image_id, cond_drop_prob, dedup_uncond):
    """(N,) probability that each training item's caption is dropped: cond_drop_prob, or with dedup_uncond
    cond_drop_prob / (its image's number of duplicates), so the unconditional branch sees every distinct image
    about equally often (config.py: dedup_uncond)."""
    copies = torch.as_tensor(np.bincount(image_id)[image_id], dtype=torch.float32)                  # (N,)
    return cond_drop_prob / copies if dedup_uncond else torch.full_like(copies, cond_drop_prob)


@torch.no_grad()
def ema_update(ema, model, decay, step):
    """ema <- d * ema + (1 - d) * model, with d = min(decay, (1 + step) / (10 + step)) (diffusers' EMAModel warm-up).

    Sampling uses the exponential moving average of the weights (DDPM sec. 4 did the same): it averages away the
    step-to-step jitter of SGD, which in a diffusion model shows up as noise in the samples and blurs copies."""
    d = min(decay, (1 + step) / (10 + step))
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p, 1 - d)


def stage_unet(cfg, out, data, encoder, device):
    final_path, state_path = os.path.join(out, "unet.pt"), os.path.join(out, "unet_train.pt")
    if os.path.exists(final_path):
        return
    tokenizer = Tokenizer()
    with torch.no_grad():  # the text encoder is frozen: embed every distinct caption once
        captions, caption_index = np.unique(data["captions"], return_inverse=True)
        contexts = torch.cat([encoder(tokenizer(list(captions[i:i + 512])).to(device))[0]
                              for i in range(0, len(captions), 512)])                     # (U, L, D)
        null = encoder(tokenizer([""]).to(device))[0]                                      # (1, L, D)
    images = images_to_tensor(data["images"]).to(device)                                  # (N, 3, H, W)
    caption_index = torch.as_tensor(caption_index, device=device)
    drop_prob = caption_drop_probabilities(data["image_id"], cfg.cond_drop_prob, cfg.dedup_uncond)   # (N,)

    torch.manual_seed(cfg.seed)
    unet = UNet(unet_config(cfg)).to(device)
    ema = copy.deepcopy(unet).requires_grad_(False)  # the weights we sample with (see ema_update)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=0.0)
    # cosine decay to 10% of lr: settles the weights so late samples are stable
    lr_at = lambda s: cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s / cfg.train_steps, 1.0))))
    generator = torch.Generator().manual_seed(cfg.seed)
    schedule = noise_schedule(cfg).to(device)
    step, losses = 0, []
    if os.path.exists(state_path):
        state = load_checkpoint(state_path, to_dict(cfg), keys=("model", "ema", "optimizer", "generator", "step",
                                                                 "losses"))
        unet.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        step, losses = state["step"], list(state["losses"])
        print(f"[3/4] resuming UNet training at step {step}")
    print(f"[3/4] UNet: {count_parameters(unet) / 1e6:.2f}M parameters, {cfg.train_steps} steps")
    show = torch.as_tensor(np.concatenate([np.flatnonzero(data["group"] == g)[::k][:4] for g, k in
                                           (("global", cfg.global_duplicates), ("general", 1), ("local", 1))]))
    from tqdm.auto import tqdm
    bar = tqdm(range(step, cfg.train_steps), initial=step, total=cfg.train_steps, desc="UNet training")
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        batch = torch.randint(len(images), (cfg.batch_size,), generator=generator).to(device)
        loss = diffusion_loss(unet, images[batch], contexts[caption_index[batch]], null, schedule,
                              drop_prob[batch.cpu()], generator, cfg.prediction_type, cfg.loss_weighting,
                              cfg.snr_gamma, cfg.snr_floor)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        ema_update(ema, unet, cfg.ema_decay, step)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        done = step + 1
        if done % cfg.checkpoint_every == 0 or done == cfg.train_steps:
            save_atomic({"model": unet.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
                         "generator": generator.get_state(), "step": done, "losses": losses,
                         "config": to_dict(cfg)}, state_path)
        if done % cfg.sample_every == 0 or done == cfg.train_steps:
            # a snapshot of the weights so far (tutorial 04 measures the copy rate along training with them)
            save_atomic({"model": ema.state_dict(), "step": done, "config": to_dict(cfg)},
                        os.path.join(out, "snapshots", f"unet_{done:06d}.pt"))
            save_progress_figures(out, losses, ema, cfg, contexts[caption_index[show]], null, schedule, done, device)
    save_atomic({"model": ema.state_dict(), "losses": losses, "config": to_dict(cfg)}, final_path)
    os.remove(state_path)
    print(f"[3/4] UNet: loss {np.mean(losses[:50]):.4f} -> {np.mean(losses[-200:]):.4f}; loss.png, samples_*.png")


def stage_judges(cfg, out):
    path = os.path.join(out, "judges.pt")
    if os.path.exists(path):
        return
    from prss_mini.judges import train_judges
    judges = train_judges(cfg)
    save_atomic(judges, path)
    print(f"[4/4] judges: attribute accuracy on fresh renders {judges['accuracy']:.3f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    parser.add_argument("--out", required=True, help="run folder (created; rerun with the same folder to resume)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args, rest = parser.parse_known_args(argv)
    try:  # everything is checked before anything is written
        cfg = make_config(args.preset, **parse_overrides(rest))
        check_device(args.device)
    except ValueError as e:
        parser.error(str(e))
    config_path = os.path.join(args.out, "config.json")
    if os.path.exists(config_path):
        try:
            with open(config_path) as f:
                old = dict(json.load(f))
        except (ValueError, TypeError) as e:
            parser.error(f"{config_path} is corrupt ({type(e).__name__}): delete the run folder {args.out} to start "
                         f"afresh, or use another --out")
        diff = config_differences(old, to_dict(cfg))  # sampling defaults may change between runs
        if diff:
            parser.error(f"{args.out} holds a run made with other options ({', '.join(diff)} differ). "
                         f"Use the same preset and options to resume, or another --out.")
    os.makedirs(args.out, exist_ok=True)
    write_json_atomic(to_dict(cfg), config_path)

    start = time.time()
    try:
        data = stage_dataset(cfg, args.out)
        encoder = stage_text_encoder(cfg, args.out, data, args.device)
        encoder.eval().requires_grad_(False)
        stage_unet(cfg, args.out, data, encoder, args.device)
        stage_judges(cfg, args.out)
    except CheckpointError as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        sys.exit("interrupted: rerun the same command to resume from the last checkpoint")
    print(f"done in {time.time() - start:.0f} s: {args.out}")


if __name__ == "__main__":
    main()
