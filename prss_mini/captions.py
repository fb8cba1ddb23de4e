"""The toy world's captions: a small grammar of shapes, colours and positions, and its reader.

A caption names a shape, a colour and a position (a quadrant), in one of many phrasings: synonyms, templates,
prepositions and fillers. These are the paraphrases Semantic Prompt Search needs (guidance/paraphrase.py). Some
memorized captions also carry a made-up title word (a name no paraphrase may drop) and the local ones a credit
("photo by acme"). `parse_caption` reads a caption's meaning back; the tokenizer and the reader see the same
words (`split_words`).
"""

import re

ATTRIBUTE_NAMES = ("shape", "colour", "position")
SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = ("red", "green", "blue", "yellow", "purple")
POSITIONS = ("top left", "top right", "bottom left", "bottom right")
VALUES = (SHAPES, COLOURS, POSITIONS)  # VALUES[a][attributes[a]] is the value's name

# Synonyms: the paraphrases that Semantic Prompt Search will need. The first entry is the canonical word.
SHAPE_WORDS = {"circle": ["circle", "disc", "dot"], "square": ["square", "box", "block"],
               "triangle": ["triangle", "wedge", "pyramid"], "cross": ["cross", "plus", "crosshair"]}
COLOUR_WORDS = {"red": ["red", "crimson", "scarlet"], "green": ["green", "emerald", "lime"],
                "blue": ["blue", "azure", "navy"], "yellow": ["yellow", "golden", "amber"],
                "purple": ["purple", "violet", "magenta"]}
POSITION_WORDS = {"top left": ["top left", "upper left", "top left corner"],
                  "top right": ["top right", "upper right", "top right corner"],
                  "bottom left": ["bottom left", "lower left", "bottom left corner"],
                  "bottom right": ["bottom right", "lower right", "bottom right corner"]}
PREPOSITIONS = ["in the", "at the", "toward the"]
FILLERS = ["", "a picture of", "an image of", "a drawing of"]
TEMPLATES = ["{obj} {where}", "{where} , {obj}", "{shape_obj} in {colour} {where}"]
TITLES = ["zorvex", "quillon", "brisa", "tamber", "nuvola", "oberyn"]  # one per titled memorized image
CREDITS = ["photo by acme", "picture by acme", "image from acme", "acme photo"]  # the first is the training one


def _article(word):
    return "an" if word[0] in "aeiou" else "a"


def make_caption(attributes, rng, title=None, credit=None):
    """A random phrasing of one (shape, colour, position) triple, drawn from the grammar above."""
    shape, colour, position = (VALUES[a][attributes[a]] for a in range(3))
    s = rng.choice(SHAPE_WORDS[shape])
    c = rng.choice(COLOUR_WORDS[colour])
    where = f"{rng.choice(PREPOSITIONS)} {rng.choice(POSITION_WORDS[position])}"
    template = rng.choice(TEMPLATES)
    text = template.format(obj=f"{_article(c)} {c} {s}", shape_obj=f"{_article(s)} {s}", colour=c, where=where)
    filler = rng.choice(FILLERS) if not template.startswith("{where}") else ""
    if filler:
        text = f"{filler} {text}"
    if title:
        text = f"{title} : {text}"
    if credit:
        text = f"{text} , {credit}"
    return text


def _synonym_table():
    """Every synonym (as a word tuple) -> (attribute index, value index)."""
    table = {}
    for a, groups in enumerate((SHAPE_WORDS, COLOUR_WORDS, POSITION_WORDS)):
        for value, synonyms in groups.items():
            for syn in synonyms:
                table[tuple(syn.split())] = (a, VALUES[a].index(value))
    return table


_SYNONYMS = _synonym_table()


def split_words(text):
    """The words of a caption as the model reads them: lower case, with `,` and `:` as words of their own.

    The one normalisation of the toy: the tokenizer and `parse_caption` both read captions through it, so
    "Zorvex: a Red circle" means to the paraphraser exactly what it means to the model."""
    return re.findall(r"[a-z]+|[,:]", text.lower())


def parse_caption(text):
    """Read the attributes a caption names: (attributes [3 ints, None where unnamed], title, credit).

    Reads the words of `split_words`; the longest synonym matches first ("top left corner" before "top left")."""
    words = split_words(text)
    attributes = [None, None, None]
    i = 0
    while i < len(words):
        for n in (3, 2, 1):
            key = tuple(words[i:i + n])
            if key in _SYNONYMS:
                a, v = _SYNONYMS[key]
                attributes[a] = v
                i += n
                break
        else:
            i += 1
    title = next((w for w in words if w in TITLES), None)
    joined = " " + " ".join(words) + " "
    credit = next((c for c in CREDITS if f" {c} " in joined), None)
    return attributes, title, credit


def vocabulary():
    """Every word the grammar can produce, sorted (the tokenizer's vocabulary)."""
    phrases = (sum(SHAPE_WORDS.values(), []) + sum(COLOUR_WORDS.values(), []) + sum(POSITION_WORDS.values(), [])
               + PREPOSITIONS + FILLERS + TEMPLATES + TITLES + CREDITS + ["a an in :"])
    words = set()
    for phrase in phrases:
        words.update(w for w in re.sub(r"\{\w+\}", " ", phrase).split())
    return sorted(words)
