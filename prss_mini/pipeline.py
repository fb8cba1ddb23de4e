"""A trained run folder, loaded: prompts in, images out (like a diffusers pipeline).

    pipe = ToyPipeline("runs/cpu")
    images = pipe.generate("a red circle in the top left", seed=0, num_images=4)   # uint8 (4, H, W, 3)
"""

import os

import numpy as np
import torch

from .checkpoint import CheckpointError, load_state
from .config import noise_schedule, read_config, text_encoder_config, to_dict, unet_config
from .diffusion import as_epsilon_model, sample, timesteps_for
from .guidance import build_hook
from .guidance.calibrate import load_or_calibrate
from .images import tensor_to_images
from .text_encoder import TextEncoder, Tokenizer
from .unet import UNet


def check_device(device):
    """`device` if torch can use it here, else a clear ValueError (e.g. --device cuda on a machine without a GPU)."""
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as e:
        raise ValueError(f"cannot use --device {device} on this machine ({str(e).splitlines()[0]}); "
                         f"use --device cpu") from None
    return device


class ToyPipeline:
    """Tokenizer + frozen text encoder + UNet + noise schedule of one run folder."""

    def __init__(self, run_dir, device="cpu"):
        if not os.path.isdir(run_dir):
            raise CheckpointError(f"no run folder at {run_dir}. Make one with "
                                  f"`python train_toy.py --preset cpu --out {run_dir}`.")
        config = read_config(run_dir)
        unet_path = os.path.join(run_dir, "unet.pt")
        if not os.path.exists(unet_path):
            raise CheckpointError(f"{run_dir} has no trained model (unet.pt): training did not finish. Rerun "
                                  f"`python train_toy.py --preset {config.preset} --out {run_dir}` to resume.")
        text_encoder, unet = TextEncoder(text_encoder_config(config)), UNet(unet_config(config))
        load_state(text_encoder, os.path.join(run_dir, "text_encoder.pt"), to_dict(config))
        load_state(unet, unet_path, to_dict(config))
        self._setup(config, text_encoder, unet, device, run_dir)

    @classmethod
    def from_modules(cls, config, text_encoder, unet, device="cpu", run_dir=None):
        """A pipeline from modules in memory (tests, notebooks) instead of a run folder."""
        pipe = cls.__new__(cls)
        pipe._setup(config, text_encoder, unet, device, run_dir)
        return pipe

    def _setup(self, config, text_encoder, unet, device, run_dir):
        self.config, self.device, self.run_dir = config, check_device(device), run_dir
        self.tokenizer = Tokenizer()
        self.schedule = noise_schedule(config).to(device)
        self.text_encoder = text_encoder.to(device).eval().requires_grad_(False)
        # channels_last (NHWC): the convolutions run 10-15% faster on the CPU (docs/results.md, evaluation speed)
        unet = unet.to(device, memory_format=torch.channels_last).eval().requires_grad_(False)
        self.unet = as_epsilon_model(unet, config.prediction_type, self.schedule)
        self.image_shape = (3, config.image_size, config.image_size)
        self._dataset, self._empty, self._thresholds = None, None, None
        # the sampling settings of the current call (generate sets them for its duration; the run's defaults
        # otherwise): the thresholds a method reads are the ones calibrated at them
        self.sampling = {"guidance_scale": float(config.guidance_scale),
                         "num_inference_steps": int(config.num_inference_steps)}

    @property
    def dataset(self):
        """RUN/dataset.npz as a dict of arrays (loaded on first use)."""
        if self._dataset is None:
            path = os.path.join(self.run_dir or "", "dataset.npz")
            if self.run_dir is None or not os.path.exists(path):
                raise CheckpointError(f"{path} is missing: this needs the run's training set (the paraphraser and "
                                      f"the calibration read it). Rerun train_toy.py on the run folder to rebuild it.")
            with np.load(path, allow_pickle=False) as f:
                self._dataset = dict(f)
        return self._dataset

    @property
    def thresholds(self):
        """PRSS's thresholds (lambda_ss, lambda_pr, tau, ...) at the current sampling settings: pipe.sampling's
        guidance_scale and num_inference_steps, the run's timestep_spacing and steps_offset. Read from
        RUN/thresholds.json, calibrated for these settings on first use (guidance/calibrate.py); None without a run
        folder. Thresholds set by hand (pipe.thresholds = {...}) apply at any settings."""
        cache = self._thresholds if self._thresholds is not None else {}   # {settings: thresholds}
        if "any settings" in cache:
            return cache["any settings"]
        key = (self.sampling["guidance_scale"], self.sampling["num_inference_steps"], self.schedule.timestep_spacing,
               self.schedule.steps_offset)
        if key not in cache and self.run_dir is not None:
            cache[key] = load_or_calibrate(self)
            self._thresholds = cache
        return cache.get(key)

    @thresholds.setter
    def thresholds(self, value):
        # by hand (tests, notebooks): used at every setting until set to None, which also forgets the file's
        self._thresholds = None if value is None else {"any settings": value}

    @property
    def detection_timestep(self):
        """The timestep where memorization is detected (and the thresholds calibrated): the first step of the run's
        default schedule, whatever step count a sampling call then uses."""
        return timesteps_for(self.config.num_inference_steps, self.schedule)[0]

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
        steps = self.config.num_inference_steps if num_inference_steps is None else num_inference_steps
        return sample(hook, tuple(x_T.shape), self.schedule, steps,
                      sampler=sampler, eta=eta, generator=g, x_T=x_T, device=self.device, progress=progress)

    def generate(self, prompt, method="cfg", num_images=4, seed=0, guidance_scale=None, num_inference_steps=None,
                 sampler="ddim", eta=0.0, progress=False, return_info=False, **knobs):
        """`num_images` images of one prompt with a guidance method (prss_mini.guidance.METHODS): uint8 (K, H, W, 3).

        The same seed gives the same x_T for every method, so methods can be compared image by image. `prompt` may
        also be a list of P prompts with `seed` a list of P seeds: one batched run, prompt-major (P * K, H, W, 3):
        with DDIM at eta = 0 the same images as P calls, up to float rounding (a stochastic sampler draws one noise
        stream for the whole batch). A method may move the initial noise: then its info["x_T"] is where the sampling
        loop starts."""
        s = self.config.guidance_scale if guidance_scale is None else guidance_scale
        steps = self.config.num_inference_steps if num_inference_steps is None else num_inference_steps
        if num_images < 1 or s < 0:
            raise ValueError(f"need num_images >= 1 and guidance_scale >= 0, got {num_images} and {s}")
        seeds = list(seed) if isinstance(prompt, (list, tuple)) else [seed]
        if isinstance(prompt, (list, tuple)) and len(seeds) != len(prompt):
            raise ValueError(f"a list of {len(prompt)} prompts needs a list of as many seeds, got {seed!r}")
        x_T = torch.cat([self.initial_noise(num_images, sd) for sd in seeds])             # (P * K, 3, H, W)
        defaults, self.sampling = self.sampling, {"guidance_scale": float(s), "num_inference_steps": int(steps)}
        try:  # the call's settings, for the thresholds a method reads; the defaults again afterwards
            hook, info = build_hook(method, self, prompt, x_T, s, seed=seed, **knobs)
            start = info.get("x_T", x_T)  # a method that moves the initial noise (init_noise.py) says where to start
            images = tensor_to_images(self.run_hook(hook, start, steps, sampler, eta, seeds[0], progress))
        finally:
            self.sampling = defaults
        return (images, info) if return_info else images
