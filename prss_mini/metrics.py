"""Measurements for the evaluation: copy detection, the stamp detector, ROC-AUC. No training happens here.

Privacy, as in the paper (Chen et al. 2025): the similarity of each generated image to its nearest training
image, with "> 0.5 counts as a copy" as for SSCD (Pizzi et al. 2022, "A self-supervised descriptor for image copy
detection"). SSCD is a learned descriptor; in the toy world a copy is a pixel copy, so a fixed descriptor does:
slightly blurred pixels, compared up to a one-pixel shift. Independent check (Gu et al. 2023, "On memorization in
diffusion models"): with d1, d2 the L2 distances to the nearest and second-nearest training image, a sample is a
copy if d1 / d2 < 1/3. Local memorization (only the stamp is copied) is measured by `stamp_score`.

Images at this boundary are uint8 numpy (N, H, W, 3), as the sampler returns them.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F

from .images import check_images, images_to_tensor
from .world import stamp_pattern

# The constants are calibrated on fresh renders (not copies) and perturbed training images (copies): docs/results.md
# has the table. No threshold separates them better at 16x16 or 32x32.
COPY_THRESHOLD = 0.5     # similarity above this counts as a copy (SSCD > 0.5 in the paper)
COPY_DISTANCE = 0.058    # blurred RMS distance at which similarity = 0.5
COPY_BLUR = 1.75         # Gaussian blur sigma in pixels: averages pixel noise away, keeps the layout
RATIO_THRESHOLD = 1 / 3  # Gu et al. 2023: d1 / d2 below this is a copy

STAMP_THRESHOLD = 0.5    # "at least half of the stamp's contrast, in the stamp's layout"


def _blur(x, sigma):
    """Separable Gaussian blur of (N, 3, H, W), edges replicated: averages away pixel noise, keeps the layout."""
    r = max(1, math.ceil(2 * sigma))
    k = torch.exp(-torch.arange(-r, r + 1, dtype=x.dtype) ** 2 / (2 * sigma ** 2))
    k = (k / k.sum()).repeat(3, 1, 1, 1)                                               # (3, 1, 1, 2r+1)
    x = F.pad(x, (r, r, r, r), mode="replicate")
    x = F.conv2d(x, k, groups=3)                                                       # along W
    return F.conv2d(x, k.transpose(2, 3), groups=3)                                    # along H


def _window(images, dy, dx):
    """The (H-2, W-2) window of uint8 (N, H, W, 3) images, moved (dy, dx) pixels from the centre.

    Comparing a moved window of one image with the centre window of another searches one-pixel shifts."""
    h, w = images.shape[1:3]
    return images[:, 1 + dy:h - 1 + dy, 1 + dx:w - 1 + dx]


def copy_descriptor(images):
    """Our "SSCD-like" descriptor, float (N, F): blurred pixels in [-1, 1], flattened, divided by sqrt(F).

    The blur (sigma = COPY_BLUR pixels) makes a noisy copy close to its original; the 1 / sqrt(F) makes the
    Euclidean distance between two descriptors the RMS pixel difference, comparable across image sizes."""
    x = images_to_tensor(check_images(images))                                        # (N, 3, H, W)
    x = _blur(x, COPY_BLUR).flatten(1)                                                 # (N, F)
    return x / math.sqrt(x.shape[1])


def similarity_from_distance(d):
    """Descriptor distance -> similarity in (0, 1]: 1 for an exact copy, 0.5 at COPY_DISTANCE (a Gaussian kernel)."""
    return 0.5 ** ((np.asarray(d) / COPY_DISTANCE) ** 2)


def unique_training_images(dataset):
    """One image per image_id of a dataset dict: (images uint8 (U, H, W, 3), image_id (U,), group (U,)).

    nearest_training needs this: with the duplicates of a globally memorized image left in, d1 = d2."""
    ids, first = np.unique(dataset["image_id"], return_index=True)
    return dataset["images"][first], ids, dataset["group"][first]


@torch.no_grad()
def nearest_training(images, train_images):
    """Compare each image with a DEDUPLICATED training set (see unique_training_images). Returns numpy arrays:

    similarity (N,)  copy similarity to the most similar training image (descriptor, up to a one-pixel shift)
    index (N,)       that training image
    d1, d2 (N,)      L2 pixel distances ([-1, 1] units) to the nearest and second-nearest training image (Gu et al.)
    d_index (N, 2)   those two training images"""
    check_images(images)
    check_images(train_images, "train_images")
    if images.shape[1:] != train_images.shape[1:]:
        raise ValueError(f"images {images.shape[1:]} and train_images {train_images.shape[1:]} differ in size")
    if len(train_images) < 2:
        raise ValueError("train_images needs at least 2 distinct images (d2 is the second-nearest)")
    train = copy_descriptor(_window(train_images, 0, 0))                               # (U, F)
    best = torch.full((len(images),), float("inf"))
    index = torch.zeros(len(images), dtype=torch.long)
    for dy in (-1, 0, 1):  # SSCD is trained to ignore small translations; here we search them
        for dx in (-1, 0, 1):
            d, i = torch.cdist(copy_descriptor(_window(images, dy, dx)), train).min(dim=1)  # (N,)
            better = d < best
            best[better], index[better] = d[better], i[better]
    pixels = torch.cdist(images_to_tensor(images).flatten(1), images_to_tensor(train_images).flatten(1))  # (N, U)
    d12, d_index = pixels.topk(2, dim=1, largest=False)                                # (N, 2)
    return {"similarity": similarity_from_distance(best.numpy()), "index": index.numpy(),
            "d1": d12[:, 0].numpy(), "d2": d12[:, 1].numpy(), "d_index": d_index.numpy()}


def is_copy(similarity):
    """bool (N,): similarity above COPY_THRESHOLD (the paper's SSCD > 0.5)."""
    return np.asarray(similarity) > COPY_THRESHOLD


def ratio_copy(d1, d2):
    """bool (N,): Gu et al. (2023) call a sample a copy if d1 / d2 < 1/3 (much closer to one image than any other)."""
    d1, d2 = np.asarray(d1, dtype=np.float64), np.asarray(d2, dtype=np.float64)
    if d1.shape != d2.shape:
        raise ValueError(f"d1 {d1.shape} and d2 {d2.shape} differ in shape")
    return d1 < RATIO_THRESHOLD * d2  # written as a product so that d2 = 0 gives False, not a division by zero


def copy_rate(mask):
    """Fraction of True in a bool mask (e.g. is_copy(...)): the copy rate."""
    mask = np.asarray(mask, dtype=bool)
    if mask.size == 0:
        raise ValueError("copy_rate of an empty mask")
    return float(mask.mean())


def wilson_interval(rate, n, z=1.96):
    """The 95% Wilson score interval (low, high) of a rate measured on n samples (Wilson 1927).

    Unlike rate +- z sqrt(rate (1 - rate) / n) it stays inside [0, 1] and is not empty at 0 of n copies:
    with 20 samples, 1 copy (5%) is compatible with anything from 0.9% to 24%."""
    if n < 1 or not 0 <= rate <= 1:
        raise ValueError(f"need n >= 1 and a rate in [0, 1], got n={n}, rate={rate}")
    centre = (rate + z ** 2 / (2 * n)) / (1 + z ** 2 / n)
    half = z / (1 + z ** 2 / n) * math.sqrt(rate * (1 - rate) / n + z ** 2 / (4 * n ** 2))
    return max(0.0, centre - half), min(1.0, centre + half)


def stamp_score(images):
    """(N,) float: how clearly the local-memorization stamp sits at its place (1 for a perfect stamp, ~0 without).

    Pearson correlation of the grayscale centre patch with the stamp's pattern, times its contrast (mean of the
    bright part minus mean of the dark dot) relative to the stamp's own, clipped to [0, 1]. The correlation
    alone would fire on faint background ripples; the contrast alone on any bright-dark edge."""
    check_images(images)
    patch, o = stamp_pattern(images.shape[1])
    k = patch.shape[0]
    pattern = patch[:, :, 0].ravel()                                                   # (k*k,)
    gray = images[:, o:o + k, o:o + k].astype(np.float64).mean(axis=-1).reshape(len(images), -1) / 255  # (N, k*k)
    g, p = gray - gray.mean(1, keepdims=True), pattern - pattern.mean()
    corr = g @ p / (np.linalg.norm(g, axis=1) * np.linalg.norm(p) + 1e-8)             # (N,)
    bright = pattern > 0.5
    contrast = gray[:, bright].mean(1) - gray[:, ~bright].mean(1)                      # (N,)
    full = pattern[bright].mean() - pattern[~bright].mean()
    return corr * np.clip(contrast / full, 0, 1)


def stamp_present(images):
    """bool (N,): stamp_score above STAMP_THRESHOLD."""
    return stamp_score(images) > STAMP_THRESHOLD


def roc_auc(positive_scores, negative_scores):
    """P(a random positive scores higher than a random negative), ties counting 1/2 (the Mann-Whitney U statistic)."""
    pos = np.asarray(positive_scores, np.float64).ravel()
    neg = np.sort(np.asarray(negative_scores, np.float64).ravel())
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("roc_auc needs at least one positive and one negative score")
    below = np.searchsorted(neg, pos, side="left")                                     # negatives < each positive
    ties = np.searchsorted(neg, pos, side="right") - below                             # negatives == each positive
    return float((below + 0.5 * ties).sum() / (len(pos) * len(neg)))


def roc_curve(positive_scores, negative_scores):
    """(fpr, tpr) arrays from (0, 0) to (1, 1), one point per distinct threshold (high to low), for plotting."""
    pos = np.sort(np.asarray(positive_scores, np.float64).ravel())
    neg = np.sort(np.asarray(negative_scores, np.float64).ravel())
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("roc_curve needs at least one positive and one negative score")
    thresholds = np.unique(np.concatenate([pos, neg]))[::-1]                           # high to low
    tpr = 1 - np.searchsorted(pos, thresholds, side="left") / len(pos)                # fraction scoring >= threshold
    fpr = 1 - np.searchsorted(neg, thresholds, side="left") / len(neg)
    return np.concatenate([[0.0], fpr]), np.concatenate([[0.0], tpr])
