"""The toy world: small pictures, their captions (captions.py), and memorization on purpose.

Each picture is one coloured shape (the part a caption names: shape, colour, position) on a two-tone background
with a fine grain, neither of which any caption names. The background carries most of a picture's energy, so a
model that has memorized a training image reproduces much more than its caption asks for, and that is what the
memorization detector of Wen et al. (2024) picks up: the text-conditional noise prediction pulls far away from
the unconditional one. The grain is visible only at low noise, where only a model that memorized the image knows
it: a memorized prompt's m_t climbs at the end of sampling, as in Stable Diffusion.

Three training groups, as in LAION:
    general  many unique images, each caption drawn afresh from the grammar (synonyms, templates, fillers)
    global   a few images, each duplicated many times under ONE fixed caption string (global memorization:
             the whole image is copied). They are striking ones, the most contrasted of several renders, as LAION's
             most duplicated images are posters and product shots. Some of these captions carry a made-up title
             word, like a product name, that no paraphrase can drop. A titled image also appears under other
             phrasings that keep the title (as LAION duplicates come with slightly different captions), a
             different number for each titled image: the more variants, the more of the memorization moves from
             the exact string to the title word, and the more a paraphrase still triggers it. These are the hard
             cases for Semantic Prompt Search, where Prompt Re-anchoring has to do the rest.
    local    different images whose captions share the credit "photo by acme" and that all carry the same
             stamp (a white label with a dark dot) in the middle (local memorization: only the stamp is copied)
Held-out prompts name attribute combinations that never occur in training.
"""

from dataclasses import dataclass

import numpy as np

from .captions import ATTRIBUTE_NAMES, COLOURS, CREDITS, POSITIONS, SHAPES, TITLES, VALUES, make_caption
from .images import save_grid, to_uint8

SHAPE_COLOURS = {"red": (0.90, 0.16, 0.14), "green": (0.10, 0.75, 0.25), "blue": (0.12, 0.30, 0.95),
                 "yellow": (0.98, 0.85, 0.10), "purple": (0.62, 0.18, 0.85)}
QUADRANT_CENTRES = {"top left": (0.27, 0.27), "top right": (0.73, 0.27),  # (x, y) as fractions of the side
                    "bottom left": (0.27, 0.73), "bottom right": (0.73, 0.73)}


@dataclass
class WorldConfig:
    """The world's knobs. A run reads them from prss_mini/config.py (`world_config`), where their defaults live."""
    image_size: int
    num_general: int          # unique images with freshly drawn captions
    num_global: int           # globally memorized images ...
    global_duplicates: int    # ... each repeated this many times under one caption
    # titled global image k: this many of its duplicates carry a fresh title-keeping phrasing instead of the fixed
    # caption (one entry per titled image, so len(title_variants) of the global captions carry a title word)
    title_variants: tuple
    num_local: int            # stamped images whose captions share the credit phrase
    num_heldout_combos: int   # attribute combinations kept out of training
    heldout_phrasings: int    # captions per held-out combination
    seed: int
    # the look of a picture (`render`)
    shape_radius: tuple           # (low, high) radius, as fractions of the side
    antialias: bool               # soft shape edges (coverage of 4x4 sub-pixels) or hard ones (pixel centres)
    position_jitter: float        # the centre moves up to this fraction of the side around its quadrant's centre
    background_value: tuple       # (low, high) HSV value of the two background colours
    background_saturation: tuple  # (low, high) HSV saturation of the two background colours
    background_sharpness: float   # 0: the two colours blend smoothly; larger: two crisper tones
    grain: float                  # std of a fixed per-pixel grey grain on the background (0-1 units)
    global_pick: int              # each global image is the most contrasted of this many renders (1: any)

    def __post_init__(self):
        _check_world(self)


def _check_world(world):
    """A clear ValueError for a WorldConfig whose knobs cannot make a world."""
    n_combos = len(SHAPES) * len(COLOURS) * len(POSITIONS)
    if world.image_size < 8:
        raise ValueError(f"image_size must be at least 8 pixels, got {world.image_size}")
    for name in ("num_general", "num_global", "global_duplicates", "num_local", "heldout_phrasings", "global_pick"):
        if getattr(world, name) < 1:
            raise ValueError(f"{name} must be at least 1, got {getattr(world, name)}")
    if not 1 <= world.num_heldout_combos <= n_combos - world.num_global:
        raise ValueError(f"num_heldout_combos must be in [1, {n_combos - world.num_global}] (there are {n_combos} "
                         f"attribute combinations and num_global={world.num_global} need their own), "
                         f"got {world.num_heldout_combos}")
    if len(world.title_variants) > min(world.num_global, len(TITLES)):
        raise ValueError(f"title_variants has {len(world.title_variants)} entries (one per titled image), but there "
                         f"are only num_global={world.num_global} global images and {len(TITLES)} title words")
    if any(not 0 <= v < world.global_duplicates for v in world.title_variants):
        raise ValueError(f"every entry of title_variants={tuple(world.title_variants)} must lie in "
                         f"[0, global_duplicates={world.global_duplicates}): some duplicates keep the fixed caption")
    for name in ("shape_radius", "background_value", "background_saturation"):
        low, high = getattr(world, name)
        if not 0 <= low <= high <= 1:
            raise ValueError(f"{name} must be a range (low, high) with 0 <= low <= high <= 1, got {(low, high)}")
    if min(world.position_jitter, world.background_sharpness, world.grain) < 0:
        raise ValueError("position_jitter, background_sharpness and grain must be >= 0")


# ---------------------------------------------------------------------------------------------------------------
# Rendering: one picture


def _smooth_field(rng, size, grid=3):
    """A smooth random field in [0, 1]: a coarse random grid, bilinearly upsampled (low frequency on purpose)."""
    coarse = rng.random((grid, grid))
    pos = np.linspace(0, grid - 1, size)
    i0 = np.clip(np.floor(pos).astype(int), 0, grid - 2)
    f = pos - i0
    rows = coarse[i0] * (1 - f)[:, None] + coarse[i0 + 1] * f[:, None]            # (size, grid)
    field = rows[:, i0] * (1 - f)[None, :] + rows[:, i0 + 1] * f[None, :]          # (size, size)
    return (field - field.min()) / (field.max() - field.min() + 1e-8)


def _background_colour(rng, saturation, value):
    """A random RGB colour of the given HSV saturation and value ranges (any hue)."""
    hue, sat, val = rng.random(), rng.uniform(*saturation), rng.uniform(*value)
    k = (np.array([5, 3, 1]) + hue * 6) % 6
    return val - val * sat * np.clip(np.minimum(k, 4 - k), 0, 1)


def _shape_mask(shape, size, cx, cy, r, supersample=4):
    """Anti-aliased coverage (size, size) in [0, 1] of a shape centred at (cx, cy) with radius r (pixels)."""
    n = size * supersample
    y, x = (np.mgrid[0:n, 0:n] + 0.5) / supersample
    dx, dy = x - cx, y - cy
    if shape == "circle":
        m = dx ** 2 + dy ** 2 <= r ** 2
    elif shape == "square":
        m = (np.abs(dx) <= 0.85 * r) & (np.abs(dy) <= 0.85 * r)
    elif shape == "triangle":
        m = (dy >= -r) & (dy <= 0.8 * r) & (np.abs(dx) <= (dy + r) / 1.8)
    else:  # cross
        arm = 0.38 * r
        m = ((np.abs(dx) <= arm) & (np.abs(dy) <= r)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= r))
    return m.reshape(size, supersample, size, supersample).mean(axis=(1, 3))


def stamp_pattern(size):
    """The local-memorization stamp: a white label with a dark dot, 3/8 of the side wide, in the centre.

    Mostly bright on purpose: a logo whose mean stands out from the background is visible even in the model's
    blurry guess of x0 at the noisiest step, where detection looks (a fine checker averages out to grey there).
    Returns (patch (k, k, 3) in [0, 1], top-left corner offset)."""
    k = size * 3 // 8
    dot = max(1, k // 3)
    patch = np.full((k, k), 0.94)
    a = (k - dot) // 2
    patch[a:a + dot, a:a + dot] = 0.06
    return np.repeat(patch[:, :, None], 3, axis=2), (size - k) // 2


def render(attributes, rng, world, stamp=False):
    """Draw one picture (size, size, 3) float in [0, 1] of `world` (a WorldConfig): the background no caption
    names (two tones and a grain) and the named shape. Position and radius are jittered, so two pictures with the
    same caption still differ."""
    size = world.image_size
    shape, colour, position = (VALUES[a][attributes[a]] for a in range(3))
    mix = _smooth_field(rng, size)[:, :, None]
    if world.background_sharpness > 0:  # a steeper blend: more of the picture is one tone or the other
        k = world.background_sharpness
        mix = (np.tanh(k * (mix - 0.5)) / np.tanh(k / 2) + 1) / 2
    tones = [_background_colour(rng, world.background_saturation, world.background_value) for _ in range(2)]
    image = tones[0] * (1 - mix) + tones[1] * mix                                   # (H, W, 3)
    fx, fy = QUADRANT_CENTRES[position]
    j = world.position_jitter
    cx, cy = (fx + rng.uniform(-j, j)) * size, (fy + rng.uniform(-j, j)) * size
    r = rng.uniform(*world.shape_radius) * size
    if world.grain > 0:
        grain = rng.random((size, size))
        image = np.clip(image + ((grain - grain.mean()) / (grain.std() + 1e-8) * world.grain)[:, :, None], 0, 1)
    alpha = _shape_mask(shape, size, cx, cy, r, supersample=4 if world.antialias else 1)[:, :, None]
    image = image * (1 - alpha) + np.array(SHAPE_COLOURS[colour]) * alpha
    if stamp:
        patch, o = stamp_pattern(size)
        image[o:o + patch.shape[0], o:o + patch.shape[1]] = patch
    return image


# ---------------------------------------------------------------------------------------------------------------
# The data set


def all_combinations():
    """Every (shape, colour, position) index triple, (4 * 5 * 4, 3)."""
    grids = np.meshgrid(*[np.arange(len(v)) for v in VALUES], indexing="ij")
    return np.stack([g.ravel() for g in grids], axis=1)


def build_dataset(cfg: WorldConfig):
    """Render the three training groups and the held-out prompts (the arrays of RUN/dataset.npz).

    Returns a dict: images uint8 (N, H, W, 3) with every duplicate, captions (N,), group (N,), attributes (N, 3),
    image_id (N,) (duplicates share it), attribute_names (3,), heldout_captions (M,), heldout_attributes (M, 3)."""
    num_titled = len(cfg.title_variants)
    rng = np.random.default_rng(cfg.seed)
    combos = all_combinations()
    order = rng.permutation(len(combos))
    heldout, train_combos = combos[order[:cfg.num_heldout_combos]], combos[order[cfg.num_heldout_combos:]]

    items = []  # (image, caption, group, attributes, image_id)

    def add(attributes, caption, group, copies=1, stamp=False, variants=(), pick=1):
        # pick > 1: the render farthest from mid-grey (the most contrasted) of `pick`: a striking image
        image = max((to_uint8(render(attributes, rng, cfg, stamp=stamp)) for _ in range(pick)),
                    key=lambda im: float(((im / 255.0 - 0.5) ** 2).sum()))
        image_id = len({it[4] for it in items}) if items else 0
        items.extend([(image, caption, group, attributes, image_id)] * (copies - len(variants)))
        items.extend((image, v, group, attributes, image_id) for v in variants)  # the same image, other words

    fixed_captions = set()
    for k, idx in enumerate(rng.choice(len(train_combos), cfg.num_global, replace=False)):
        title = TITLES[k] if k < num_titled else None
        caption = make_caption(train_combos[idx], rng, title=title)
        # The variants have their own generator: changing title_variants leaves the rest of the world as it is.
        variant_rng = np.random.default_rng([cfg.seed, k])
        variants = [make_caption(train_combos[idx], variant_rng, title=title)
                    for _ in range(cfg.title_variants[k] if title else 0)]
        fixed_captions.add(caption)
        add(train_combos[idx], caption, "global", copies=cfg.global_duplicates, variants=variants,
            pick=cfg.global_pick)
    for _ in range(cfg.num_general):
        attributes = train_combos[rng.integers(len(train_combos))]
        caption = make_caption(attributes, rng)
        while caption in fixed_captions:  # the memorized strings belong to their images alone
            caption = make_caption(attributes, rng)
        add(attributes, caption, "general")
    for _ in range(cfg.num_local):
        attributes = train_combos[rng.integers(len(train_combos))]
        add(attributes, make_caption(attributes, rng, credit=CREDITS[0]), "local", stamp=True)

    heldout_captions = [make_caption(a, rng) for a in heldout for _ in range(cfg.heldout_phrasings)]
    images, captions, group, attributes, image_id = zip(*items)
    return {
        "images": np.stack(images),
        "captions": np.array(captions),
        "group": np.array(group),
        "attributes": np.stack(attributes).astype(np.int64),
        "image_id": np.array(image_id, dtype=np.int64),
        "attribute_names": np.array(ATTRIBUTE_NAMES),
        "heldout_captions": np.array(heldout_captions),
        "heldout_attributes": np.repeat(heldout, cfg.heldout_phrasings, axis=0).astype(np.int64),
    }


def preview_grid(dataset, path, per_group=8, scale=4):
    """Save a PNG: one row per group (general, global, local), `per_group` distinct images each, enlarged."""
    rows = []
    for g in ("general", "global", "local"):
        ids = np.unique(dataset["image_id"][dataset["group"] == g])[:per_group]
        first = [np.flatnonzero(dataset["image_id"] == i)[0] for i in ids]
        row = [dataset["images"][j] for j in first]
        rows.append(row + [np.zeros_like(dataset["images"][0])] * (per_group - len(row)))
    return save_grid(rows, path, scale)
