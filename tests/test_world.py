"""The toy world: captions, paraphrase material, the three training groups, held-out prompts."""

import numpy as np
import pytest

from prss_mini.config import make_config, world_config
from prss_mini.captions import CREDITS, TITLES, make_caption, parse_caption, vocabulary
from prss_mini.prompts import memorized_captions, num_variants
from prss_mini.world import WorldConfig, all_combinations, build_dataset, render, stamp_pattern

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
    a, b = render([0, 0, 0], rng, SMALL), render([0, 0, 0], rng, SMALL)
    assert np.abs(a - b).mean() > 0.05


def test_the_background_carries_more_energy_than_the_shape():
    """Why the memorization detector works here: what captions do not say outweighs what they say."""
    rng = np.random.default_rng(0)
    combos = all_combinations()
    images = np.stack([render(combos[i % len(combos)], rng, SMALL) for i in range(400)])
    same_caption = np.stack([render(combos[0], rng, SMALL) for _ in range(100)])
    total = images.var(axis=0).sum()
    unexplained = same_caption.var(axis=0).sum()  # variance left once the caption is fixed
    assert unexplained > 0.5 * total


def test_make_caption_is_deterministic_for_a_seed():
    a = make_caption([1, 2, 3], np.random.default_rng(5))
    assert a == make_caption([1, 2, 3], np.random.default_rng(5))


def test_the_grain_lies_on_the_background_only():
    world = WorldConfig(**{**vars(SMALL), "grain": 0.1, "shape_radius": (0.2, 0.2), "position_jitter": 0.0})
    image = render([0, 0, 0], np.random.default_rng(1), world)                 # a red circle, top left
    assert np.allclose(image[4, 4], (0.90, 0.16, 0.14), atol=1e-6)            # inside the shape: its colour
    smooth = render([0, 0, 0], np.random.default_rng(1), WorldConfig(**{**vars(world), "grain": 0.0}))
    grain = (image - smooth)[12:, :, 0]                                          # the bottom rows: background
    assert abs(grain.std() - 0.1) < 0.03 and np.abs(np.diff(grain, axis=1)).mean() > 0.05  # per-pixel, std ~0.1


def test_global_pick_keeps_the_most_contrasted_render():
    plain = build_dataset(WorldConfig(**{**vars(SMALL), "global_pick": 1}))
    picked = build_dataset(WorldConfig(**{**vars(SMALL), "global_pick": 20}))
    contrast = lambda d: ((d["images"][d["group"] == "global"] / 255 - 0.5) ** 2).mean()
    assert contrast(picked) > 1.5 * contrast(plain)


def test_a_sharper_background_has_more_pixels_near_one_of_its_two_tones():
    soft, sharp = (WorldConfig(**{**vars(SMALL), "background_sharpness": k, "grain": 0.0}) for k in (0.0, 12.0))
    mixes = []
    for world in (soft, sharp):
        image = render([0, 0, 0], np.random.default_rng(2), world)[10:, 10:]   # a corner away from the shape
        lo, hi = image.reshape(-1, 3).min(0), image.reshape(-1, 3).max(0)
        mixes.append(((image - lo) / (hi - lo + 1e-9)).mean(-1))               # where between the two tones
    middle = [((m > 0.2) & (m < 0.8)).mean() for m in mixes]
    assert middle[1] < middle[0]


@pytest.mark.parametrize("field, value", [("shape_radius", (0.3, 0.2)), ("background_value", (0.0, 1.5)),
                                          ("grain", -0.1), ("global_pick", 0)])
def test_a_look_outside_its_range_is_refused(field, value):
    with pytest.raises(ValueError, match=field):
        WorldConfig(**{**vars(SMALL), field: value})


def test_hard_edges_paint_each_pixel_with_the_shape_or_the_background_and_soft_ones_blend():
    """antialias=False: a pixel is the shape's colour or the background's; antialias=True blends the border."""
    white = dict(vars(SMALL), grain=0.0, background_value=(1.0, 1.0), background_saturation=(0.0, 0.0))
    hard, soft = (render([0, 0, 0], np.random.default_rng(4), WorldConfig(**{**white, "antialias": aa}))
                  for aa in (False, True))                                          # a red circle on white
    colours = lambda image: {tuple(np.round(c, 6)) for c in image.reshape(-1, 3)}
    assert colours(hard) == {(1.0, 1.0, 1.0), (0.9, 0.16, 0.14)}
    assert len(colours(soft)) > 2
