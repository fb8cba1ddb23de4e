"""The world's prompt groups, and the prompts the measurements draw from them.

    global   the memorized captions: each global image's one fixed caption (global memorization)
    local    captions with the credit phrase, whose images all carry the stamp (local memorization)
    general  non-memorized training captions                                         (controls)
    heldout  captions of attribute combinations never seen in training               (controls)
"""

import numpy as np

GROUPS = ("global", "local", "general", "heldout")
MEMORIZED, CONTROL = ("global", "local"), ("general", "heldout")


def memorized_captions(data):
    """The memorized prompts: the fixed caption of every global image (its most frequent caption), sorted."""
    out = []
    for image_id in np.unique(data["image_id"][data["group"] == "global"]):
        captions, counts = np.unique(data["captions"][data["image_id"] == image_id], return_counts=True)
        out.append(str(captions[counts.argmax()]))
    return sorted(out)


def num_variants(data, caption):
    """How many other phrasings the image of `caption` was trained under (0 for a caption of one fixed string)."""
    image_id = data["image_id"][data["captions"] == caption][0]
    return len(np.unique(data["captions"][data["image_id"] == image_id])) - 1


def prompt_sets(data, per_group=8, seed=0):
    """group -> list of (prompt, attributes (3,)), drawn once so every method sees the same prompts."""
    rng = np.random.default_rng(seed)
    largest = min(len(np.unique(data["captions"][data["group"] == g])) for g in ("local", "general"))
    largest = min(largest, len(data["heldout_captions"]))
    if not 1 <= per_group <= largest:
        raise ValueError(f"per_group must be in [1, {largest}] (the smallest group of this run has {largest} "
                         f"captions), got {per_group}")
    sets = {}
    for group in ("global", "local", "general"):
        captions, first = np.unique(data["captions"][data["group"] == group], return_index=True)
        attrs = data["attributes"][data["group"] == group][first]
        if group == "global":  # every memorized caption (not the title-keeping variants of titled images)
            pick = np.flatnonzero(np.isin(captions, memorized_captions(data)))
        else:
            pick = rng.choice(len(captions), per_group, replace=False)
        sets[group] = [(str(captions[i]), attrs[i]) for i in sorted(pick)]
    pick = rng.choice(len(data["heldout_captions"]), per_group, replace=False)
    sets["heldout"] = [(str(data["heldout_captions"][i]), data["heldout_attributes"][i]) for i in sorted(pick)]
    return sets
