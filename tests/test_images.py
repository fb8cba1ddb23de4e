"""prss_mini/images.py: the image formats, and the one way the toy saves a grid of images."""
import numpy as np
import pytest
import torch
from PIL import Image

from prss_mini.images import check_images, images_to_tensor, save_grid, tensor_to_images


def test_save_grid_enlarges_each_pixel_to_a_scale_by_scale_block(tmp_path):
    rng = np.random.default_rng(0)
    rows = [list(rng.integers(0, 256, (3, 5, 4, 3), dtype=np.uint8)) for _ in range(2)]  # 2 rows of 3 (5x4) images
    path = save_grid(rows, str(tmp_path / "grid.png"), scale=3)
    saved = np.asarray(Image.open(path))
    grid = np.concatenate([np.concatenate(row, axis=1) for row in rows], axis=0)           # (10, 12, 3)
    assert saved.shape == (10 * 3, 12 * 3, 3)
    assert np.array_equal(saved, grid.repeat(3, axis=0).repeat(3, axis=1))               # nearest neighbour
    with pytest.raises(ValueError, match="same number of images"):
        save_grid([rows[0], rows[1][:2]], str(tmp_path / "ragged.png"))


def test_uint8_images_survive_the_round_trip_through_the_models_range():
    images = np.random.default_rng(1).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    x = images_to_tensor(check_images(images))
    assert x.shape == (4, 3, 8, 8) and x.min() >= -1 and x.max() <= 1
    assert np.array_equal(tensor_to_images(x), images)
    assert np.array_equal(tensor_to_images(torch.full((1, 3, 2, 2), 5.0)), np.full((1, 2, 2, 3), 255))  # clamped
    with pytest.raises(ValueError, match="uint8"):
        check_images(images.astype(np.float32))
