"""Random token addition, RTA (Somepalli et al., "Understanding and Mitigating Copying in Diffusion Models",
NeurIPS 2023): insert k random vocabulary words at random places in the prompt, then plain CFG.

A memorized caption is a fixed string; a few extra words break the exact match that triggers the copy, while
most of the meaning survives. The knob k (`num_tokens`) is swept by the evaluation.
"""

import numpy as np

from ..diffusion import cfg_hook
from ..captions import split_words, vocabulary
from .knobs import Knob
from .rows import blocks

TITLE = "RTA (Somepalli et al.)"
KNOBS = (Knob("num_tokens", int, 2, "number of random words inserted into the prompt"),)
SWEEP = [{"num_tokens": 2}, {"num_tokens": 4}, {"num_tokens": 6}]
VARIANTS = []
BASELINE = True

# Punctuation carries no content, so it is not a "random word" (and ':' would fake a title).
WORDS = [w for w in vocabulary() if w not in (",", ":")]


def add_random_tokens(prompt, num_tokens, rng, max_length=24):
    """`prompt` with `num_tokens` random vocabulary words inserted at random positions (numpy Generator `rng`).

    max_length is the tokenizer's (bos and eos included); a result that would not fit raises ValueError."""
    if num_tokens < 0:
        raise ValueError(f"num_tokens must be >= 0, got {num_tokens}")
    if num_tokens == 0:
        return prompt
    words = split_words(prompt)                  # the tokenizer's words, so ',' and ':' count as it counts them
    room = max_length - 2 - len(words)
    if num_tokens > room:
        raise ValueError(f"cannot add {num_tokens} words to {prompt!r}: it has {len(words)} words and the "
                         f"tokenizer takes {max_length - 2}, so at most {max(room, 0)} more fit")
    for word in rng.choice(WORDS, size=num_tokens):
        words.insert(int(rng.integers(len(words) + 1)), str(word))   # any gap, both ends included
    return " ".join(words)


def build(pipe, prompt, x_T, guidance_scale, seed, num_tokens):
    """Plain CFG where each sample of x_T (B, C, H, W) gets its own randomly augmented prompt (drawn from the
    prompt's seed, so a prompt gets the same words alone or in a batch)."""
    prompts = []
    for text, sd, rows in blocks(prompt, len(x_T), seed):
        rng = np.random.default_rng(sd)
        prompts += [add_random_tokens(text, num_tokens, rng, pipe.tokenizer.max_length)
                    for _ in range(rows.stop - rows.start)]
    cond = pipe.encode(prompts)                                              # (B, L, D)
    return cfg_hook(pipe.unet, cond, pipe.empty, guidance_scale), {"prompts": prompts}
