"""The toy world: captions, paraphrase material, the three training groups, held-out prompts."""

import numpy as np
import pytest

from prss_mini.config import make_config, world_config
from prss_mini.world import (CREDITS, TITLES, WorldConfig, all_combinations, build_dataset, make_caption,
                             memorized_captions, num_variants, parse_caption, render, stamp_pattern, vocabulary)

SMALL = world_config(make_config("cpu", num_general=60, num_global=3, global_duplicates=5, title_variants=(2,),
                                 num_local=6, seed=3))


@pytest.fixture(scope="module")
def data():
    return build_dataset(SMALL)


def test_dataset_arrays_follow_the_contract(data):
    n = 60 + 3 * 5 + 6
    assert data["images"].shape == (n, 16, 16, 3) and data["images"].dtype == np.uint8
    assert data["captions"].shape == data["group"].shape == (n,)
    assert data["attributes"].shape == (n, 3) and data["attributes"].dtype == np.int64
    assert list(data["attribute_names"]) == ["shape", "colour", "position"]
    assert data["heldout_captions"].shape[0] == data["heldout_attributes"].shape[0] > 0
    for key, value in data.items():  # plain arrays: loadable with allow_pickle=False
        assert value.dtype != object, key


def test_same_seed_gives_the_same_dataset(data):
    again = build_dataset(SMALL)
    assert all(np.array_equal(data[k], again[k]) for k in data)


def test_global_images_are_duplicated_under_their_fixed_caption(data):
    glob = data["group"] == "global"
    for image_id in np.unique(data["image_id"][glob]):
        rows = data["image_id"] == image_id
        captions, counts = np.unique(data["captions"][rows], return_counts=True)
        assert rows.sum() == SMALL.global_duplicates
        assert counts.max() >= SMALL.global_duplicates - max(SMALL.title_variants)
        assert (data["images"][rows] == data["images"][rows][0]).all()


def test_memorized_captions_do_not_occur_in_the_general_group(data):
    memorized = set(data["captions"][data["group"] == "global"])
    assert not memorized & set(data["captions"][data["group"] == "general"])


def test_titled_memorized_captions_carry_a_title_word(data):
    captions = memorized_captions(data)
    assert len(captions) == SMALL.num_global
    assert sum(any(t in c.split() for t in TITLES) for c in captions) == len(SMALL.title_variants)


def test_titled_images_also_appear_under_title_keeping_variants(data):
    titled = [c for c in memorized_captions(data) if parse_caption(c)[1]]
    titled = sorted(titled, key=lambda c: TITLES.index(parse_caption(c)[1]))  # in the order of title_variants
    for caption, expected in zip(titled, SMALL.title_variants):
        image_id = data["image_id"][data["captions"] == caption][0]
        variants = set(data["captions"][data["image_id"] == image_id]) - {caption}
        assert 0 < num_variants(data, caption) == len(variants) <= expected
        assert all(parse_caption(v) == parse_caption(caption) for v in variants)  # same meaning, same title


def test_untitled_global_images_have_one_caption(data):
    untitled = [c for c in memorized_captions(data) if not parse_caption(c)[1]]
    assert untitled and all(num_variants(data, c) == 0 for c in untitled)


def test_title_variants_must_leave_some_fixed_captions():
    with pytest.raises(ValueError, match="title_variants"):
        WorldConfig(**{**vars(SMALL), "global_duplicates": 4, "title_variants": (4,)})


def test_local_images_share_the_credit_and_the_stamp(data):
    local = data["group"] == "local"
    assert all(c.endswith(CREDITS[0]) for c in data["captions"][local])
    patch, o = stamp_pattern(16)
    k = patch.shape[0]
    centre = data["images"][local][:, o:o + k, o:o + k] / 255.0
    assert np.abs(centre - patch).max() < 0.01


def test_heldout_combinations_never_occur_in_training(data):
    train = {tuple(a) for a in data["attributes"]}
    assert not train & {tuple(a) for a in data["heldout_attributes"]}


def test_captions_parse_back_to_their_attributes(data):
    for caption, attributes in zip(data["captions"], data["attributes"]):
        assert parse_caption(caption)[0] == list(attributes)


def test_every_caption_word_is_in_the_vocabulary(data):
    words = set(vocabulary())
    for caption in np.concatenate([data["captions"], data["heldout_captions"]]):
        assert set(caption.split()) <= words


def test_two_renders_of_one_caption_differ():
    """The unnamed details (background, jitter) make a copy distinguishable from a new image."""
    rng = np.random.default_rng(0)
    a, b = render([0, 0, 0], rng), render([0, 0, 0], rng)
    assert np.abs(a - b).mean() > 0.05


def test_the_background_carries_more_energy_than_the_shape():
    """Why the memorization detector works here: what captions do not say outweighs what they say."""
    rng = np.random.default_rng(0)
    combos = all_combinations()
    images = np.stack([render(combos[i % len(combos)], rng) for i in range(400)])
    same_caption = np.stack([render(combos[0], rng) for _ in range(100)])
    total = images.var(axis=0).sum()
    unexplained = same_caption.var(axis=0).sum()  # variance left once the caption is fixed
    assert unexplained > 0.5 * total


def test_make_caption_is_deterministic_for_a_seed():
    a = make_caption([1, 2, 3], np.random.default_rng(5))
    assert a == make_caption([1, 2, 3], np.random.default_rng(5))
