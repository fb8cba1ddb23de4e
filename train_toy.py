"""Train everything a prss-mini run needs, in one command.

    python train_toy.py --preset cpu --out runs/cpu          # about 15 minutes on 2 CPU cores
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
from dataclasses import dataclass, field

import numpy as np
import torch

from prss_mini.checkpoint import (CheckpointError, config_differences, load_checkpoint, load_state, save_atomic,
                                  write_json_atomic)
from prss_mini.config import (PRESETS, make_config, noise_schedule, parse_overrides, text_encoder_config, to_dict,
                              unet_config, world_config)
from prss_mini.diffusion import as_epsilon_model
from prss_mini.images import images_to_tensor, save_grid, tensor_to_images
from prss_mini.loss import diffusion_loss
from prss_mini.pipeline import check_device
from prss_mini.text_encoder import ImageEncoder, TextEncoder, Tokenizer, train_clip
from prss_mini.unet import UNet, count_parameters
from prss_mini.world import build_dataset, preview_grid


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
    save_grid([list(tensor_to_images(x))], os.path.join(out, f"samples_{step:06d}.png"))


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


def embed_captions(encoder, captions, device):
    """Every distinct caption through the frozen text encoder, once: it never changes while the UNet trains.

    Returns contexts (U, L, D), one row per distinct caption; caption_index (N,), each training item's row; and
    null (1, L, D), the empty caption's tokens (the unconditional branch's, for CFG)."""
    tokenizer = Tokenizer()
    with torch.no_grad():
        unique, caption_index = np.unique(captions, return_inverse=True)
        contexts = torch.cat([encoder(tokenizer(list(unique[i:i + 512])).to(device))[0]
                              for i in range(0, len(unique), 512)])                       # (U, L, D)
        null = encoder(tokenizer([""]).to(device))[0]                                      # (1, L, D)
    return contexts, torch.as_tensor(caption_index, device=device), null


def learning_rate(cfg, step):
    """Cosine decay from lr to 10% of lr over train_steps: settles the weights so late samples are stable."""
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(step / cfg.train_steps, 1.0))))


@dataclass
class TrainState:
    """Everything that changes while the UNet trains: what unet_train.pt holds, to resume bit for bit."""
    unet: torch.nn.Module
    ema: torch.nn.Module            # the weights we sample with (see ema_update)
    optimizer: torch.optim.Optimizer
    generator: torch.Generator      # draws every batch, timestep, noise and caption drop
    step: int = 0                   # steps done
    losses: list = field(default_factory=list)


def new_train_state(cfg, device):
    """A fresh UNet (initial weights from cfg.seed), its EMA copy, AdamW, and the batch generator (cfg.seed)."""
    torch.manual_seed(cfg.seed)
    unet = UNet(unet_config(cfg)).to(device)
    ema = copy.deepcopy(unet).requires_grad_(False)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=0.0)
    return TrainState(unet, ema, optimizer, torch.Generator().manual_seed(cfg.seed))


def training_checkpoint(state, cfg):
    """The dict unet_train.pt holds: weights, EMA, optimizer, generator, step and losses (resume_training reads it)."""
    return {"model": state.unet.state_dict(), "ema": state.ema.state_dict(), "optimizer": state.optimizer.state_dict(),
            "generator": state.generator.get_state(), "step": state.step, "losses": state.losses,
            "config": to_dict(cfg)}


def resume_training(state, state_path, cfg):
    """Load an interrupted run's unet_train.pt into `state`, if there is one: training goes on where it stopped."""
    if not os.path.exists(state_path):
        return
    saved = load_checkpoint(state_path, to_dict(cfg), keys=("model", "ema", "optimizer", "generator", "step",
                                                             "losses"))
    state.unet.load_state_dict(saved["model"])
    state.ema.load_state_dict(saved["ema"])
    state.optimizer.load_state_dict(saved["optimizer"])
    state.generator.set_state(saved["generator"])
    state.step, state.losses = saved["step"], list(saved["losses"])
    print(f"[3/4] resuming UNet training at step {state.step}")


def get_batch(images, contexts, caption_index, drop_prob, batch_size, generator, device):
    """batch_size training items drawn at random (with replacement): x0 (B, 3, H, W), their captions' tokens
    (B, L, D) and their caption-drop probabilities (B,)."""
    batch = torch.randint(len(images), (batch_size,), generator=generator).to(device)    # (B,)
    return images[batch], contexts[caption_index[batch]], drop_prob[batch.cpu()]


def training_step(cfg, state, x0, context, drop_prob, null, schedule):
    """One AdamW step on the diffusion loss (loss.diffusion_loss), then the EMA update; state.step += 1."""
    for group in state.optimizer.param_groups:
        group["lr"] = learning_rate(cfg, state.step)
    loss = diffusion_loss(state.unet, x0, context, null, schedule, drop_prob, state.generator, cfg.prediction_type,
                          cfg.loss_weighting, cfg.snr_gamma, cfg.snr_floor)
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    state.optimizer.step()
    ema_update(state.ema, state.unet, cfg.ema_decay, state.step)
    state.losses.append(loss.item())
    state.step += 1


def preview_items(data, cfg):
    """The training items the progress figures sample: up to 4 memorized (global), 4 general and 4 local ones."""
    return torch.as_tensor(np.concatenate([np.flatnonzero(data["group"] == g)[::k][:4] for g, k in
                                           (("global", cfg.global_duplicates), ("general", 1), ("local", 1))]))


def save_along_the_way(cfg, out, state, state_path, preview_contexts, null, schedule, device):
    """Every checkpoint_every steps unet_train.pt (to resume); every sample_every steps a snapshot of the EMA
    weights (tutorial 04 measures the copy rate along training with them), loss.png and a grid of samples.
    Both at the last step too."""
    done = state.step
    if done % cfg.checkpoint_every == 0 or done == cfg.train_steps:
        save_atomic(training_checkpoint(state, cfg), state_path)
    if done % cfg.sample_every == 0 or done == cfg.train_steps:
        save_atomic({"model": state.ema.state_dict(), "step": done, "config": to_dict(cfg)},
                    os.path.join(out, "snapshots", f"unet_{done:06d}.pt"))
        save_progress_figures(out, state.losses, state.ema, cfg, preview_contexts, null, schedule, done, device)


def stage_unet(cfg, out, data, encoder, device):
    """Train the UNet from scratch or from unet_train.pt, and write its EMA weights to unet.pt."""
    final_path, state_path = os.path.join(out, "unet.pt"), os.path.join(out, "unet_train.pt")
    if os.path.exists(final_path):
        return
    contexts, caption_index, null = embed_captions(encoder, data["captions"], device)  # (U, L, D), (N,), (1, L, D)
    images = images_to_tensor(data["images"]).to(device)                                  # (N, 3, H, W)
    drop_prob = caption_drop_probabilities(data["image_id"], cfg.cond_drop_prob, cfg.dedup_uncond)   # (N,)
    state = new_train_state(cfg, device)
    schedule = noise_schedule(cfg).to(device)
    resume_training(state, state_path, cfg)
    print(f"[3/4] UNet: {count_parameters(state.unet) / 1e6:.2f}M parameters, {cfg.train_steps} steps")
    preview_contexts = contexts[caption_index[preview_items(data, cfg)]]
    from tqdm.auto import tqdm
    bar = tqdm(range(state.step, cfg.train_steps), initial=state.step, total=cfg.train_steps, desc="UNet training")
    for _ in bar:
        x0, context, drop = get_batch(images, contexts, caption_index, drop_prob, cfg.batch_size, state.generator,
                                      device)
        training_step(cfg, state, x0, context, drop, null, schedule)
        bar.set_postfix(loss=f"{np.mean(state.losses[-50:]):.4f}")
        save_along_the_way(cfg, out, state, state_path, preview_contexts, null, schedule, device)
    save_atomic({"model": state.ema.state_dict(), "losses": state.losses, "config": to_dict(cfg)}, final_path)
    os.remove(state_path)
    print(f"[3/4] UNet: loss {np.mean(state.losses[:50]):.4f} -> {np.mean(state.losses[-200:]):.4f}; loss.png, "
          f"samples_*.png")


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
