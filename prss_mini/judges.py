"""The utility judges: outside observers that say whether a generated image shows what its prompt asked for.

The paper measures utility with the CLIP score (Hessel et al. 2021, "CLIPScore"): the cosine similarity between
the CLIP embeddings of the image and of the ORIGINAL prompt. The judge must not be the model under test, so ours
are trained apart from it: on fresh renders of the world (every attribute combination, held-out ones included),
never on the diffusion training set, with their own text encoder and their own seeds.

    AttributeClassifier  image -> (shape, colour, position): the exact check a toy world allows
    judge CLIP           a separate TextEncoder + ImageEncoder pair: the "toy CLIP score"
"""

import dataclasses
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from .captions import CREDITS, TITLES, VALUES, make_caption
from .checkpoint import CheckpointError, load_checkpoint
from .config import from_dict, read_config, text_encoder_config, to_dict, world_config
from .images import check_images, images_to_tensor, to_uint8
from .text_encoder import ImageEncoder, TextEncoder, Tokenizer, train_clip
from .world import all_combinations, render

NUM_VALUES = tuple(len(v) for v in VALUES)  # (4, 5, 4): shapes, colours, positions
WIDTH = 16  # channels of the judges' CNNs: half the conditioning CLIP's (docs/history.md: what it costs)


def render_judge_data(cfg, n, rng):
    """n fresh (image uint8 (n, H, W, 3), attributes (n, 3), captions list) drawn from the whole world.

    Stamps (prob 0.1), titles (0.1) and credits (0.1) appear at random, so the judges see every word and every
    look, and learn that none of them says anything about shape, colour or position."""
    combos, world = all_combinations(), world_config(cfg)
    attributes = combos[rng.integers(len(combos), size=n)]                             # (n, 3)
    images, captions = [], []
    for a in attributes:
        images.append(render(a, rng, world, stamp=rng.random() < 0.1))
        title = TITLES[rng.integers(len(TITLES))] if rng.random() < 0.1 else None
        credit = CREDITS[rng.integers(len(CREDITS))] if rng.random() < 0.1 else None
        captions.append(make_caption(a, rng, title=title, credit=credit))
    return to_uint8(np.stack(images)), attributes.astype(np.int64), captions


class AttributeClassifier(nn.Module):
    """ImageEncoder with one logit per attribute value (4 + 5 + 4), read as three separate classifiers."""

    def __init__(self, depth=1):
        super().__init__()
        self.encoder = ImageEncoder(width=WIDTH, out_dim=sum(NUM_VALUES), depth=depth)

    def forward(self, images):
        """images float (N, 3, H, W) in [-1, 1] -> a tuple of logits (N, 4), (N, 5), (N, 4)."""
        return self.encoder(images).split(NUM_VALUES, dim=1)

    @torch.no_grad()
    def predict(self, images):
        """images float (N, 3, H, W) in [-1, 1] -> predicted attributes (N, 3) long."""
        return torch.stack([logits.argmax(dim=1) for logits in self(images)], dim=1)


def _train_classifier(classifier, images, attributes, steps, generator, progress):
    # A constant learning rate on purpose: shape is learned late (after colour and position), and a decaying
    # rate stops it before it is (docs/results.md).
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=2e-3, weight_decay=0.01)
    for _ in tqdm(range(steps), desc="judge: attribute classifier", disable=not progress):
        batch = torch.randint(len(images), (128,), generator=generator)
        logits = classifier(images[batch])
        loss = sum(F.cross_entropy(lg, attributes[batch, a]) for a, lg in enumerate(logits))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def judge_text_config(cfg):
    """The judge CLIP's text encoder: the run's size, always bidirectional, so that changing the model's text encoder
    (config.text_causal) does not change the instrument that scores it."""
    return dataclasses.replace(text_encoder_config(cfg), causal=False)


def train_judges(cfg, progress=True, device="cpu"):
    """Train both judges on cfg.judge_pool fresh renders (numpy seed cfg.seed + 12345), batch 128: the classifier
    for cfg.judge_steps steps, the judge CLIP for cfg.judge_clip_steps.

    Returns {"classifier", "clip_text", "clip_image": state dicts, "config": to_dict(cfg), "accuracy": the
    classifier's accuracy (mean over images and attributes) on 1000 further fresh renders}."""
    start = time.time()
    rng = np.random.default_rng(cfg.seed + 12345)
    images, attributes, captions = render_judge_data(cfg, cfg.judge_pool, rng)
    x, y = images_to_tensor(images).to(device), torch.as_tensor(attributes).to(device)  # (P, 3, H, W), (P, 3)

    with torch.random.fork_rng():  # seeded initialisation without touching the caller's random state
        torch.manual_seed(cfg.seed + 12345)
        classifier = AttributeClassifier(cfg.judge_depth).to(device)
        torch.manual_seed(cfg.seed + 777)
        clip_text = TextEncoder(judge_text_config(cfg)).to(device)
        clip_image = ImageEncoder(embed_dim=clip_text.cfg.embed_dim, width=WIDTH).to(device)
    _train_classifier(classifier, x, y, cfg.judge_steps, torch.Generator().manual_seed(cfg.seed + 12345), progress)
    train_clip(clip_text, clip_image, x, captions, Tokenizer(), steps=cfg.judge_clip_steps, batch_size=128, lr=2e-3,
               generator=torch.Generator().manual_seed(cfg.seed + 777), device=device, progress=progress)

    state = {name: {k: v.cpu() for k, v in module.state_dict().items()}
             for name, module in (("classifier", classifier), ("clip_text", clip_text), ("clip_image", clip_image))}
    state["config"] = to_dict(cfg)
    val_images, val_attributes, _ = render_judge_data(cfg, 1000, rng)  # the same rng, so new renders
    state["accuracy"] = Judges(state, device).attribute_accuracy(val_images, val_attributes)
    if progress:
        print(f"judges trained in {time.time() - start:.0f} s; classifier accuracy {state['accuracy']:.3f}")
    return state


class Judges:
    """The trained judges, frozen: attribute accuracy and the toy CLIP score of generated images."""

    def __init__(self, state, device="cpu"):
        """state: the dict returned by train_judges (or loaded from RUN/judges.pt)."""
        self.config, self.device = from_dict(state["config"]), device
        self.accuracy = state.get("accuracy")
        self.tokenizer = Tokenizer()
        self.classifier = AttributeClassifier(self.config.judge_depth)
        self.classifier.load_state_dict(state["classifier"])
        self.clip_text = TextEncoder(judge_text_config(self.config))
        self.clip_text.load_state_dict(state["clip_text"])
        self.clip_image = ImageEncoder(embed_dim=self.clip_text.cfg.embed_dim, width=WIDTH)
        self.clip_image.load_state_dict(state["clip_image"])
        for m in (self.classifier, self.clip_text, self.clip_image):
            m.to(device).eval().requires_grad_(False)

    @classmethod
    def load(cls, run_dir, device="cpu"):
        """RUN/judges.pt, checked against RUN/config.json."""
        cfg = read_config(run_dir)
        path = os.path.join(run_dir, "judges.pt")
        state = load_checkpoint(path, to_dict(cfg), keys=("classifier", "clip_text", "clip_image", "config"))
        try:
            return cls(state, device)
        except (RuntimeError, KeyError) as e:
            raise CheckpointError(f"{path} holds judges of another model ({str(e).splitlines()[0]}). Delete it and "
                                  f"rerun train_toy.py to train them again.") from None

    def _images(self, images, n):
        return images_to_tensor(check_images(images, n=n)).to(self.device)                # (N, 3, H, W)

    @torch.no_grad()
    def attribute_correct(self, images, attributes):
        """bool (N, 3): does the classifier see the asked-for shape, colour, position in each image?"""
        attributes = np.asarray(attributes)
        if attributes.ndim != 2 or attributes.shape[1] != 3:
            raise ValueError(f"attributes must be (N, 3) (shape, colour, position), got {attributes.shape}")
        x = self._images(images, len(attributes))
        predicted = torch.cat([self.classifier.predict(b) for b in x.split(512)])       # (N, 3)
        return predicted.cpu().numpy() == attributes

    def attribute_accuracy(self, images, attributes):
        """Mean of attribute_correct over images and attributes."""
        return float(self.attribute_correct(images, attributes).mean())

    @torch.no_grad()
    def clip_score(self, images, prompts):
        """(N,) cosine similarity of the judge's image embedding and its embedding of each prompt (Hessel et al.)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        x = self._images(images, len(prompts))
        image_emb = torch.cat([self.clip_image(b) for b in x.split(512)])                # (N, E)
        ids = self.tokenizer(prompts).to(self.device)                                    # (N, L)
        text_emb = torch.cat([self.clip_text(b)[1] for b in ids.split(512)])             # (N, E)
        return F.cosine_similarity(image_emb, text_emb, dim=1).cpu().numpy()
