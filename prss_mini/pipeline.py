"""A trained run folder, loaded: prompts in, images out (like a diffusers pipeline).

    pipe = ToyPipeline("runs/cpu")
    images = pipe.generate("a red circle in the top left", seed=0, num_images=4)   # uint8 (4, H, W, 3)
"""

import json
import os

import numpy as np
import torch

from .checkpoint import CheckpointError, load_checkpoint
from .config import from_dict, to_dict
from .diffusion import EpsilonModel, NoiseSchedule, sample
from .text_encoder import TextEncoder, TextEncoderConfig, Tokenizer
from .unet import UNet, UNetConfig


def text_encoder_config(cfg):
    return TextEncoderConfig(dim=cfg.text_dim, layers=cfg.text_layers)


def unet_config(cfg):
    return UNetConfig(image_size=cfg.image_size, base_channels=cfg.base_channels,
                      channel_mults=tuple(cfg.channel_mults), num_res_blocks=cfg.num_res_blocks,
                      attn_levels=tuple(cfg.attn_levels), context_dim=cfg.text_dim)


def as_epsilon_model(unet, config, schedule):
    """The network as an eps predictor, whatever it was trained to predict (config.prediction_type)."""
    return EpsilonModel(unet, schedule) if config.prediction_type == "v_prediction" else unet


def read_config(run_dir):
    path = os.path.join(run_dir, "config.json")
    if not os.path.exists(path):
        raise CheckpointError(f"{run_dir} is not a run folder (no config.json). Make one with "
                              f"`python train_toy.py --preset cpu --out {run_dir}`.")
    with open(path) as f:
        return from_dict(json.load(f))


def images_to_tensor(images):
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1], the range the diffusion model works in."""
    return torch.as_tensor(np.asarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1


def tensor_to_images(x):
    """float (N, 3, H, W) in [-1, 1] -> uint8 (N, H, W, 3)."""
    x = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


class ToyPipeline:
    """Tokenizer + frozen text encoder + UNet + noise schedule of one run folder."""

    def __init__(self, run_dir, device="cpu"):
        config = read_config(run_dir)
        cfg_dict = to_dict(config)
        unet_path = os.path.join(run_dir, "unet.pt")
        if not os.path.exists(unet_path):
            raise CheckpointError(f"{run_dir} has no trained model (unet.pt): training did not finish. Rerun "
                                  f"`python train_toy.py --preset {config.preset} --out {run_dir}` to resume.")
        text_encoder = TextEncoder(text_encoder_config(config))
        text_encoder.load_state_dict(load_checkpoint(os.path.join(run_dir, "text_encoder.pt"), cfg_dict)["model"])
        unet = UNet(unet_config(config))
        unet.load_state_dict(load_checkpoint(unet_path, cfg_dict)["model"])
        self._setup(config, text_encoder, unet, device, run_dir)

    @classmethod
    def from_modules(cls, config, text_encoder, unet, device="cpu", run_dir=None):
        """A pipeline from modules in memory (tests, notebooks) instead of a run folder."""
        pipe = cls.__new__(cls)
        pipe._setup(config, text_encoder, unet, device, run_dir)
        return pipe

    def _setup(self, config, text_encoder, unet, device, run_dir):
        self.config, self.device, self.run_dir = config, device, run_dir
        self.tokenizer = Tokenizer()
        self.schedule = NoiseSchedule(1000, self.config.beta_schedule).to(device)
        self.text_encoder = text_encoder.to(device).eval().requires_grad_(False)
        self.unet = as_epsilon_model(unet.to(device).eval().requires_grad_(False), config, self.schedule)
        self.image_shape = (3, self.config.image_size, self.config.image_size)
        self._dataset, self._empty = None, None

    @property
    def dataset(self):
        """RUN/dataset.npz as a dict of arrays (loaded on first use)."""
        if self._dataset is None:
            with np.load(os.path.join(self.run_dir, "dataset.npz"), allow_pickle=False) as f:
                self._dataset = dict(f)
        return self._dataset

    @property
    def thresholds(self):
        """PRSS's thresholds for this run (lambda_ss, lambda_pr, tau): RUN/thresholds.json, calibrated on first use."""
        if getattr(self, "_thresholds", None) is None:
            if self.run_dir is None:
                return None
            from .guidance.calibrate import load_or_calibrate
            self._thresholds = load_or_calibrate(self)
        return self._thresholds

    @thresholds.setter
    def thresholds(self, value):
        self._thresholds = value

    @torch.no_grad()
    def encode(self, prompts):
        """Prompts (list of str) -> per-token text embeddings (B, L, D), the UNet's cross-attention context."""
        return self.text_encoder(self.tokenizer(prompts).to(self.device))[0]

    @property
    def empty(self):
        """The empty prompt's embeddings (1, L, D): the unconditional branch of CFG, encoded once and kept
        (the frozen text encoder always gives the same; the sampling loop asks for it at every step)."""
        if self._empty is None:
            self._empty = self.encode([""])
        return self._empty

    def initial_noise(self, num_images, seed):
        """x_T for `num_images` samples from one seed, drawn on the CPU so every device sees the same numbers."""
        g = torch.Generator().manual_seed(seed)
        return torch.randn((num_images, *self.image_shape), generator=g).to(self.device)

    def run_hook(self, hook, x_T, num_inference_steps=None, sampler="ddim", eta=0.0, seed=0, progress=False):
        """Sample with any guidance hook from a given x_T; returns float (B, 3, H, W) in [-1, 1]."""
        g = torch.Generator().manual_seed(seed + 1)  # only used by ddpm / eta > 0
        return sample(hook, tuple(x_T.shape), self.schedule, num_inference_steps or self.config.num_inference_steps,
                      sampler=sampler, eta=eta, generator=g, x_T=x_T, device=self.device, progress=progress)

    def generate(self, prompt, method="cfg", num_images=4, seed=0, guidance_scale=None, num_inference_steps=None,
                 sampler="ddim", eta=0.0, progress=False, return_info=False, **knobs):
        """`num_images` images of one prompt with a guidance method (prss_mini.guidance.METHODS): uint8 (K, H, W, 3).

        The same seed gives the same x_T for every method, so methods can be compared image by image."""
        from .guidance import build_hook

        s = self.config.guidance_scale if guidance_scale is None else guidance_scale
        x_T = self.initial_noise(num_images, seed)                                      # (K, 3, H, W)
        hook, info = build_hook(method, self, prompt, x_T, s, seed=seed, **knobs)
        images = tensor_to_images(self.run_hook(hook, x_T, num_inference_steps, sampler, eta, seed, progress))
        return (images, info) if return_info else images
