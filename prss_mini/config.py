"""One flat configuration for a whole run, its presets, and `--key value` overrides.

Flat on purpose: every knob of the toy world, the encoders, the UNet and training is one line below, and any of
them can be changed from the command line (`python train_toy.py --preset cpu --train_steps 500`). This file is
the only place their defaults live: `world_config`, `text_encoder_config` and `unet_config` read each module's
own config out of it, field by field, by name.
"""

import json
import os
from dataclasses import asdict, dataclass, fields

from .checkpoint import CheckpointError
from .diffusion import NoiseSchedule, check_beta_schedule, check_prediction_type, timesteps_for
from .loss import LOSS_WEIGHTINGS
from .text_encoder import TextEncoderConfig
from .unet import UNetConfig
from .world import WorldConfig


@dataclass
class Config:
    preset: str = "cpu"
    seed: int = 0
    # toy world (prss_mini/world.py): global images are 1000 of 5100 training items
    image_size: int = 16
    num_general: int = 4000
    num_global: int = 10
    global_duplicates: int = 100
    title_variants: tuple = (3, 5, 7, 9)  # one entry per titled global image (world.py)
    num_local: int = 100
    num_heldout_combos: int = 8
    heldout_phrasings: int = 3
    # ... and its look: shapes big enough to read, a two-tone high-contrast background with a grain that no caption
    # names, striking duplicated images (docs/results.md measures each)
    shape_radius: tuple = (0.18, 0.23)
    antialias: bool = False  # hard edges: soft ones are a detail only a model told the shape can pin down late
    position_jitter: float = 0.06
    background_value: tuple = (0.05, 1.0)
    background_saturation: tuple = (0.1, 0.45)
    background_sharpness: float = 12.0
    grain: float = 0.06
    global_pick: int = 20
    # text encoder and its CLIP pre-training (prss_mini/text_encoder.py)
    text_dim: int = 64
    text_layers: int = 2
    text_causal: bool = True  # causal attention, as CLIP's (docs/results.md: the causal text encoder)
    clip_steps: int = 600
    # UNet (prss_mini/unet.py): 32 channels at full resolution, where shapes are drawn
    base_channels: int = 32
    channel_mults: tuple = (1, 2, 2)
    num_res_blocks: int = 1
    attn_levels: tuple = (1, 2)
    # diffusion (prss_mini/diffusion.py)
    num_train_timesteps: int = 1000
    beta_schedule: str = "scaled_linear"
    # v-prediction (Salimans & Ho 2022; SD 2): at high noise the network predicts the image, not an eps it would
    # have to get right to 1 / sqrt(abar_t) = 15x precision (docs/history.md and docs/results.md: eps-prediction).
    prediction_type: str = "v_prediction"
    # training
    train_steps: int = 4500
    batch_size: int = 32
    lr: float = 2e-3
    cond_drop_prob: float = 0.3  # SD: 0.1; a small model's empty-caption branch needs more data to be as precise
    # The unconditional branch learns the de-duplicated data: an image's caption is dropped with probability
    # cond_drop_prob / (its number of duplicates). In Stable Diffusion duplicates are a negligible share of billions,
    # so its unconditional model does not know them; here they are a fifth of the data, and without this the
    # unconditional branch memorizes them too.
    dedup_uncond: bool = True
    loss_weighting: str = "truncated_snr"  # loss.loss_weights: "uniform", "min_snr" or "truncated_snr"
    snr_gamma: float = 5.0                 # min_snr's cap
    snr_floor: float = 0.2                 # truncated_snr's floor
    ema_decay: float = 0.999  # sampling uses an exponential moving average of the weights (0: the raw weights)
    # judges (prss_mini/judges.py): trained apart from the model under test, on fresh renders
    judge_steps: int = 2400       # the attribute classifier's
    judge_clip_steps: int = 800   # the judge CLIP's
    judge_depth: int = 2          # convs per resolution of the judges' image encoders (text_encoder.ImageEncoder)
    judge_pool: int = 8000        # fresh renders they train on
    # sampling defaults
    guidance_scale: float = 2.0  # higher scales over-saturate this pixel-space toy (copies get less exact)
    num_inference_steps: int = 50
    timestep_spacing: str = "trailing"  # diffusion.timesteps_for: "trailing" 999..19, or "leading" 980..0
    steps_offset: int = 0               # added to "leading" timesteps (Stable Diffusion: 1, i.e. 981..1)
    # bookkeeping
    checkpoint_every: int = 250
    sample_every: int = 1500


PRESETS = {
    # tests: trains everything in well under 2 minutes on 2 CPU cores
    "tiny": dict(num_general=200, num_global=4, global_duplicates=100, title_variants=(3, 7), num_local=30,
                 clip_steps=150, base_channels=16, channel_mults=(1, 2), attn_levels=(1,),
                 train_steps=600, batch_size=32, lr=2e-3, judge_steps=200, judge_clip_steps=200, judge_depth=1,
                 judge_pool=4000, checkpoint_every=100, sample_every=200, num_inference_steps=20),
    # a laptop CPU (2 cores): at most 15 minutes in all
    "cpu": dict(),
    # one consumer GPU: 32x32 images, a larger UNet, longer training
    "gpu": dict(image_size=32, num_general=8000, num_global=20, global_duplicates=100, num_local=300,
                title_variants=(3, 5, 7, 9, 11, 13), clip_steps=2000, base_channels=64, channel_mults=(1, 2, 2, 2),
                num_res_blocks=2, attn_levels=(1, 2, 3), train_steps=30000, batch_size=128, lr=2e-4, judge_steps=3000,
                checkpoint_every=1000, sample_every=5000),
}


def _part(cls, cfg, **renamed):
    """An instance of the dataclass `cls` whose fields are read from the flat Config by name.

    `renamed` maps a field of `cls` to the Config field it reads; fields Config does not have keep cls's default."""
    names = {f.name for f in fields(Config)}
    values = {f.name: getattr(cfg, renamed.get(f.name, f.name)) for f in fields(cls)
              if renamed.get(f.name, f.name) in names}
    return cls(**values)


def world_config(cfg):
    return _part(WorldConfig, cfg)


def text_encoder_config(cfg):
    return _part(TextEncoderConfig, cfg, dim="text_dim", layers="text_layers", causal="text_causal")


def unet_config(cfg):
    return _part(UNetConfig, cfg, context_dim="text_dim")


def noise_schedule(cfg):
    """The run's noise schedule, with its sampling grid (timestep_spacing, steps_offset)."""
    return NoiseSchedule(cfg.num_train_timesteps, cfg.beta_schedule, cfg.timestep_spacing, cfg.steps_offset)


def _check(cfg):
    """Every rule a run's config must follow, checked before anything is trained or written (ValueError)."""
    at_least_one = ("num_general", "num_global", "global_duplicates", "num_local", "clip_steps", "train_steps",
                    "batch_size", "judge_steps", "judge_clip_steps", "judge_depth", "judge_pool", "checkpoint_every",
                    "sample_every", "num_inference_steps", "text_layers", "num_res_blocks")
    bad = [f"--{k} {getattr(cfg, k)}" for k in at_least_one if getattr(cfg, k) < 1]
    if bad:
        raise ValueError(f"{', '.join(bad)}: these must be at least 1")
    check_prediction_type(cfg.prediction_type)  # diffusion.py's own checks, before the other rules below
    check_beta_schedule(cfg.beta_schedule)
    if cfg.loss_weighting not in LOSS_WEIGHTINGS:
        raise ValueError(f"unknown loss_weighting {cfg.loss_weighting!r}; use one of {LOSS_WEIGHTINGS}")
    if not 0 < cfg.cond_drop_prob < 1:
        raise ValueError(f"cond_drop_prob must be in (0, 1): CFG needs both the empty and the real caption in "
                         f"training, got {cfg.cond_drop_prob}")
    if cfg.snr_gamma <= 0 or cfg.snr_floor < 0:
        raise ValueError(f"need snr_gamma > 0 and snr_floor >= 0, got {cfg.snr_gamma} and {cfg.snr_floor}")
    if not 0 <= cfg.ema_decay < 1 or cfg.lr <= 0:
        raise ValueError(f"need 0 <= ema_decay < 1 and lr > 0, got ema_decay={cfg.ema_decay}, lr={cfg.lr}")
    if cfg.guidance_scale < 0:
        raise ValueError(f"guidance_scale must be >= 0, got {cfg.guidance_scale}")
    if not cfg.num_inference_steps <= cfg.num_train_timesteps:
        raise ValueError(f"num_inference_steps ({cfg.num_inference_steps}) must be at most num_train_timesteps "
                         f"({cfg.num_train_timesteps})")
    timesteps_for(cfg.num_inference_steps, noise_schedule(cfg))  # e.g. a leading steps_offset past T - 1
    # the module configs check their own rules (e.g. world.WorldConfig.__post_init__)
    world_config(cfg)
    text_encoder_config(cfg)
    unet_config(cfg)


def make_config(preset="cpu", **overrides):
    """The preset's Config with `overrides` applied, checked. Unknown presets or keys, or a value that breaks a rule
    (a world without general images, an image size the UNet cannot halve, ...), raise a clear ValueError."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    known = {f.name for f in fields(Config)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown config key(s) {unknown}; known keys: {sorted(known)}")
    cfg = Config(**{**PRESETS[preset], **overrides, "preset": preset})
    _check(cfg)
    return cfg


def _typed(default, value):
    """A command-line string typed like a Config default: '1,2,4' for tuples (of the default's element type),
    true/false (or 1/0) for switches."""
    if isinstance(default, tuple):
        return tuple(type(default[0] if default else 0)(v) for v in value.split(",") if v)
    if isinstance(default, bool):
        if value.lower() not in ("true", "false", "1", "0"):
            raise ValueError(value)
        return value.lower() in ("true", "1")
    return type(default)(value)


def parse_overrides(pairs):
    """['--train_steps', '500', '--lr', '1e-3'] -> {'train_steps': 500, 'lr': 0.001}, typed like Config."""
    defaults = {f.name: f.default for f in fields(Config)}
    if len(pairs) % 2:
        raise ValueError(f"overrides come as --key value pairs, got {pairs}")
    out = {}
    for key, value in zip(pairs[::2], pairs[1::2]):
        name = key.lstrip("-").replace("-", "_")
        if not key.startswith("--") or name not in defaults:
            raise ValueError(f"unknown option {key!r}; known: {', '.join('--' + k for k in sorted(defaults))}")
        try:
            out[name] = _typed(defaults[name], value)
        except ValueError:
            raise ValueError(f"--{name} expects a {type(defaults[name]).__name__} like {defaults[name]!r}, "
                             f"got {value!r}") from None
    return out


def to_dict(cfg):
    """JSON-friendly dict (tuples become lists)."""
    return json.loads(json.dumps(asdict(cfg)))


def from_dict(d):
    known = {f.name: f for f in fields(Config)}
    d = {"text_causal": False, **d}  # runs made before the field existed had a bidirectional text encoder
    return Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in known})


def read_config(run_dir):
    """RUN/config.json as a Config; a missing or unreadable file is a CheckpointError that says what to do."""
    path = os.path.join(run_dir, "config.json")
    if not os.path.exists(path):
        raise CheckpointError(f"{run_dir} is not a run folder (no config.json). Make one with "
                              f"`python train_toy.py --preset cpu --out {run_dir}`.")
    try:
        with open(path) as f:
            return from_dict(json.load(f))
    except (ValueError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{path} is corrupt ({type(e).__name__}: {e}). Delete the run folder and train again, "
                              f"or restore the file.") from None
