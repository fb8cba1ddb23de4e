"""The executable spec of prss_mini/metrics.py: one rule per test, named as the rule."""
import numpy as np
import pytest

from prss_mini.metrics import (
    COPY_DISTANCE, copy_rate, is_copy, nearest_training, ratio_copy, roc_auc, roc_curve, similarity_from_distance,
    stamp_present, unique_training_images, wilson_interval,
)
from prss_mini.config import make_config, world_config
from prss_mini.images import to_uint8
from prss_mini.world import all_combinations, build_dataset, render

WORLD = world_config(make_config("cpu"))


def renders(n, seed, stamp=False, combos=None):
    rng = np.random.default_rng(seed)
    combos = all_combinations() if combos is None else combos
    return to_uint8(np.stack([render(combos[rng.integers(len(combos))], rng, WORLD, stamp=stamp) for _ in range(n)]))


def perturb(images, std, seed):
    """Gaussian noise of `std` in [-1, 1] units, as uint8 again."""
    x = images / 127.5 - 1 + np.random.default_rng(seed).normal(0, std, images.shape)
    return np.round((np.clip(x, -1, 1) + 1) * 127.5).astype(np.uint8)


@pytest.fixture(scope="module")
def world():
    """The default (calibration) world: its distinct training images and their attributes."""
    data = build_dataset(world_config(make_config("cpu")))
    images, _, _ = unique_training_images(data)
    return images, data["attributes"][np.unique(data["image_id"], return_index=True)[1]]


def test_unique_training_images_keeps_one_image_per_id():
    data = build_dataset(world_config(make_config("cpu", num_general=20, num_global=2, global_duplicates=5,
                                                       title_variants=(1,), num_local=3)))
    images, ids, group = unique_training_images(data)
    assert len(images) == len(ids) == len(group) == len(np.unique(data["image_id"])) == 25
    assert (np.sort(ids) == np.unique(data["image_id"])).all()


def test_exact_copy_has_similarity_one_and_passes_ratio_test():
    train = renders(50, seed=0)
    out = nearest_training(train[:5], train)
    assert out["similarity"] == pytest.approx(1, abs=1e-4) and (out["index"] == np.arange(5)).all()  # float32
    assert is_copy(out["similarity"]).all() and ratio_copy(out["d1"], out["d2"]).all()


def test_fresh_renders_are_below_copy_threshold(world):
    train, attributes = world  # new backgrounds, of training and of unseen combinations: not copies
    fresh = np.concatenate([renders(150, seed=1, combos=attributes), renders(150, seed=2)])
    out = nearest_training(fresh, train)
    assert copy_rate(is_copy(out["similarity"])) <= 0.03  # calibrated: ~1% look alike (same colour and place)
    assert np.median(out["similarity"]) < 0.2 and not ratio_copy(out["d1"], out["d2"]).any()


def test_noisy_and_shifted_copies_are_above_copy_threshold(world):
    train, _ = world
    originals = train[np.random.default_rng(3).choice(len(train), 200, replace=False)]
    shifted = np.pad(originals, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")[:, :16, 2:]  # down 1, left 1
    for copies in (perturb(originals, 0.1, seed=4), perturb(originals, 0.2, seed=5), shifted):
        assert copy_rate(is_copy(nearest_training(copies, train)["similarity"])) >= 0.98


def test_d2_is_to_a_different_image_than_d1():
    train = renders(40, seed=6)
    out = nearest_training(perturb(train[:10], 0.05, seed=7), train)
    assert (out["d_index"][:, 0] != out["d_index"][:, 1]).all() and (out["d2"] >= out["d1"]).all()
    assert (out["d_index"][:, 0] == np.arange(10)).all()  # a light perturbation stays nearest its original


def test_similarity_is_one_for_an_exact_copy_and_one_half_at_the_copy_distance():
    """A Gaussian kernel 0.5 ** ((d / COPY_DISTANCE) ** 2): 1 at d = 0, 0.5 at the copy distance (the copy threshold
    itself, so not yet a copy), 0.5 ** 4 = 0.0625 at twice it."""
    d = COPY_DISTANCE
    assert similarity_from_distance([0.0, d, 2 * d]).tolist() == pytest.approx([1.0, 0.5, 0.0625])
    assert is_copy(similarity_from_distance([0.99 * d, d])).tolist() == [True, False]


def test_ratio_copy_is_d1_below_a_third_of_d2():
    assert ratio_copy([0.0, 1.0, 1.0, 1.0], [1.0, 3.1, 3.0, 2.0]).tolist() == [True, True, False, False]


def test_stamp_present_on_stamped_renders_and_absent_on_unstamped():
    assert stamp_present(renders(300, seed=8, stamp=True)).all()
    assert not stamp_present(renders(300, seed=9, stamp=False)).any()  # shapes that overlap the centre included


def test_roc_auc_perfect_reversed_identical():
    assert roc_auc([2, 3, 4], [0, 1]) == 1.0
    assert roc_auc([0, 1], [2, 3, 4]) == 0.0
    assert roc_auc([1, 1, 1], [1, 1]) == 0.5


def test_roc_auc_matches_brute_force_pair_count():
    rng = np.random.default_rng(10)
    pos, neg = rng.integers(0, 8, 40), rng.integers(0, 6, 30)  # small integers: many ties
    brute = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert roc_auc(pos, neg) == pytest.approx(brute)


def test_roc_curve_runs_from_origin_to_corner_and_its_area_is_the_auc():
    rng = np.random.default_rng(11)
    pos, neg = rng.normal(1, 1, 50), rng.normal(0, 1, 60)
    fpr, tpr = roc_curve(pos, neg)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
    assert (np.diff(fpr) >= 0).all() and (np.diff(tpr) >= 0).all()
    area = float(np.sum((fpr[1:] - fpr[:-1]) * (tpr[1:] + tpr[:-1]) / 2))  # the trapezoid rule, written out
    assert area == pytest.approx(roc_auc(pos, neg))


def test_bad_images_raise_value_error():
    good = renders(3, seed=12)
    for bad in (good.astype(np.float32), good[0], good[..., :2], list(good)):
        with pytest.raises(ValueError):
            nearest_training(bad, good)
        with pytest.raises(ValueError):
            stamp_present(bad)
    with pytest.raises(ValueError):
        ratio_copy([1.0, 2.0], [3.0])
    with pytest.raises(ValueError):
        roc_auc([], [1.0])


def test_wilson_interval_matches_the_textbook_values():
    low, high = wilson_interval(0.05, 20)              # 1 of 20
    assert (round(low, 3), round(high, 3)) == (0.009, 0.236)
    assert wilson_interval(0.0, 20)[0] == 0.0 and round(wilson_interval(0.0, 20)[1], 3) == 0.161  # 0 of 20
    assert wilson_interval(1.0, 10) == pytest.approx((0.722, 1.0), abs=1e-3)
