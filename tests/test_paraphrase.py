import pytest

from prss_mini.captions import parse_caption
from prss_mini.guidance.paraphrase import paraphrases, same_meaning
from prss_mini.text_encoder import Tokenizer

PLAIN = "a red circle in the top left"
TITLED = "zorvex : a blue square at the bottom right"
CREDITED = "a green triangle in the top right , photo by acme"


@pytest.mark.parametrize("prompt", [PLAIN, TITLED, CREDITED])
def test_paraphrases_keep_meaning_and_differ_from_prompt(prompt):
    out = paraphrases(prompt, n=25, seed=0)
    assert len(out) == 25
    assert all(same_meaning(p, prompt) for p in out)
    assert all(" ".join(Tokenizer.split(p)) != " ".join(Tokenizer.split(prompt)) for p in out)


def test_paraphrases_are_distinct():
    out = paraphrases(PLAIN, n=25, seed=0)
    assert len(set(out)) == len(out)


def test_paraphrases_deterministic_for_a_seed():
    assert paraphrases(CREDITED, seed=3) == paraphrases(CREDITED, seed=3)
    assert paraphrases(CREDITED, seed=3) != paraphrases(CREDITED, seed=4)


def test_paraphrases_keep_title_word_and_credit():
    assert all(p.split()[0] == "zorvex" for p in paraphrases(TITLED))
    assert all("acme" in p.split() for p in paraphrases(CREDITED))
    assert not any("acme" in p.split() for p in paraphrases(PLAIN))


@pytest.mark.parametrize("seed", range(5))
def test_paraphrases_fit_the_tokenizer(seed):
    """A long prompt (16 words: title, filler, corner, credit) still gets all 25 paraphrases, each at most
    max_length = 24 tokens with <bos> and <eos>, i.e. at most 22 words."""
    tok = Tokenizer()
    out = paraphrases("zorvex : a picture of a crimson disc toward the top left corner , acme photo", seed=seed)
    assert len(out) == 25
    assert all(len(Tokenizer.split(p)) + 2 <= tok.max_length == 24 for p in out)
    assert (tok(out) == tok.eos_id).sum(dim=1).tolist() == [1] * 25      # every one encodes whole, <eos> kept


def test_unknown_grammar_prompt_raises():
    with pytest.raises(ValueError, match="toy grammar"):
        paraphrases("a red thing somewhere")          # no shape, no position
    with pytest.raises(ValueError, match="candidate"):
        paraphrases("an astronaut riding a red circle in the top left")   # words outside the grammar


def test_same_meaning_rules():
    assert same_meaning(PLAIN, "an image of a scarlet dot at the upper left")
    assert not same_meaning(PLAIN, "a red circle in the top right")
    assert not same_meaning(PLAIN, "zorvex : " + PLAIN)
    assert not same_meaning(PLAIN, PLAIN + " , photo by acme")
    assert same_meaning(CREDITED, "a green triangle in the top right , acme photo")


@pytest.mark.parametrize("written", ["Zorvex: a blue square at the bottom right",
                                     "ZORVEX : A Blue Square at the Bottom Right"])
def test_the_reader_and_the_tokenizer_read_capitals_and_attached_punctuation_alike(written):
    """One normalisation (captions.split_words): what the model reads is what the paraphraser reads."""
    assert Tokenizer.split(written) == Tokenizer.split(TITLED)
    assert parse_caption(written) == parse_caption(TITLED)
    assert all(p.split()[0] == "zorvex" for p in paraphrases(written))


def test_a_comma_written_against_a_word_still_separates_the_credit():
    assert parse_caption("a green triangle in the top right, photo by acme") == parse_caption(CREDITED)
    assert same_meaning(CREDITED, "A Green Triangle in the top right, photo by acme")
