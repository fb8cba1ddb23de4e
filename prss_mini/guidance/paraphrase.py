"""A toy paraphraser: the stand-in for the LLM of Semantic Prompt Search (Chen et al., CVPR 2025, Sec. 4.2).

The paper asks an LLM for 25 rewrites of a prompt that keep its meaning. Our prompts come from a small grammar
(prss_mini/world.py), so we can do it exactly: read the prompt's meaning back (shape, colour, position, title,
credit) and draw fresh phrasings of that meaning (other synonyms, templates, prepositions, fillers).
A title word is a name, so it is kept verbatim; a credit keeps its meaning (it still names acme) but may change form.
"""

import numpy as np

from ..captions import CREDITS, make_caption, parse_caption, split_words, vocabulary

_KNOWN_WORDS = set(vocabulary())


def _normal_form(text):
    # Two strings that tokenize the same are the same prompt for the model ("zorvex: a" == "zorvex : a").
    return " ".join(split_words(text))


def paraphrases(prompt, n=25, seed=0):
    """Up to `n` distinct prompts that mean what `prompt` means, none equal to it; deterministic for a seed.

    Raises ValueError for a prompt outside the toy grammar (the paraphraser cannot read its meaning)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    attributes, title, credit = parse_caption(prompt)
    unknown = [w for w in split_words(prompt) if w not in _KNOWN_WORDS]
    if None in attributes or unknown:
        missing = [name for name, a in zip(("shape", "colour", "position"), attributes) if a is None]
        raise ValueError(f"cannot paraphrase {prompt!r}: the toy paraphraser only knows the toy grammar "
                         f"(missing {missing or 'nothing'}, unknown words {unknown or 'none'}). "
                         f"Pass the candidate paraphrases explicitly instead.")
    rng = np.random.default_rng(seed)
    seen, out = {_normal_form(prompt)}, []
    # The grammar has hundreds of phrasings per meaning; the attempt cap only guards an unlucky draw.
    for _ in range(50 * n):
        if len(out) == n:
            break
        text = make_caption(attributes, rng, title=title, credit=rng.choice(CREDITS) if credit else None)
        if _normal_form(text) not in seen:
            seen.add(_normal_form(text))
            out.append(text)
    return out


def same_meaning(a, b):
    """Do two prompts name the same attributes and title, and both (or neither) carry a credit?"""
    (attr_a, title_a, credit_a), (attr_b, title_b, credit_b) = parse_caption(a), parse_caption(b)
    return attr_a == attr_b and title_a == title_b and (credit_a is None) == (credit_b is None)
