"""Image formats, and saving a grid of images.

The toy keeps three formats apart:
    float   (H, W, 3) in [0, 1]            what `world.render` draws
    uint8   (N, H, W, 3) in 0..255         every image outside the model: the data set, samples, metrics, files
    tensor  float (N, 3, H, W) in [-1, 1]  what the diffusion model works in

and one way to look at them: `save_grid` (rows of images -> one PNG, enlarged with `enlarge`).
"""

import numpy as np
import torch
from PIL import Image


def to_uint8(images):
    """float images in [0, 1] -> uint8 (N, H, W, 3), the toy's image format everywhere outside the model."""
    return np.clip(np.round(np.asarray(images) * 255), 0, 255).astype(np.uint8)


def check_images(images, name="images", n=None):
    """`images` itself if it is a uint8 numpy array (N, H, W, 3) (with N == n if given), else a clear ValueError."""
    if not (isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 4
            and images.shape[-1] == 3):
        got = f"{type(images).__name__} {getattr(images, 'dtype', '')} {getattr(images, 'shape', '')}"
        raise ValueError(f"{name} must be a uint8 numpy array (N, H, W, 3), got {got}")
    if n is not None and len(images) != n:
        raise ValueError(f"{len(images)} {name} but {n} attribute rows / prompts")
    return images


def images_to_tensor(images):
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1], the range the diffusion model works in."""
    return torch.as_tensor(np.asarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1


def tensor_to_images(x):
    """float (N, 3, H, W) in [-1, 1] -> uint8 (N, H, W, 3)."""
    x = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def enlarge(grid, scale=4):
    """uint8 (H, W, 3) -> a PIL image `scale` times larger, each pixel a scale x scale block (nearest neighbour:
    a 16x16 picture stays sharp instead of blurring)."""
    grid = np.asarray(grid)
    return Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)


def save_grid(rows, path, scale=4):
    """Save `rows` (a list of rows, each a list of uint8 (H, W, 3) images, all rows equally long; or a uint8 array
    (rows, columns, H, W, 3)) as one PNG grid, enlarged `scale` times (`enlarge`); returns the path. Pad short rows
    yourself, with a black or white image."""
    lengths = {len(row) for row in rows}
    if len(lengths) != 1:
        raise ValueError(f"every row needs the same number of images (pad the short ones), got {sorted(lengths)}")
    grid = np.concatenate([np.concatenate(list(row), axis=1) for row in rows], axis=0)
    enlarge(grid, scale).save(path)
    return path
