"""Tokenizer and the tiny CLIP-style text encoder."""

import pytest
import torch

from prss_mini.text_encoder import ImageEncoder, TextEncoder, TextEncoderConfig, Tokenizer, clip_loss

SMALL = dict(dim=64, layers=2)


def test_tokenizer_round_trip():
    tok = Tokenizer()
    text = "zorvex : a picture of a crimson disc at the upper left , photo by acme"
    assert tok.decode(tok.encode(text)) == text


def test_tokenizer_pads_to_max_length_with_bos_and_eos():
    tok = Tokenizer()
    ids = tok.encode("a red circle")
    assert len(ids) == tok.max_length
    assert ids[:5] == [tok.bos_id, tok.ids["a"], tok.ids["red"], tok.ids["circle"], tok.eos_id]
    assert set(ids[5:]) == {tok.pad_id}


def test_empty_prompt_is_bos_eos():
    tok = Tokenizer()
    assert tok.encode("")[:2] == [tok.bos_id, tok.eos_id]


def test_unknown_word_error_names_the_word_and_the_vocabulary():
    with pytest.raises(ValueError, match=r"unknown word.*'banana'.*vocabulary"):
        Tokenizer().encode("a red banana")


def test_too_long_prompt_is_a_clear_error():
    with pytest.raises(ValueError, match="at most"):
        Tokenizer().encode(" ".join(["red"] * 30))


def test_text_encoder_shapes():
    torch.manual_seed(0)
    enc = TextEncoder(TextEncoderConfig(**SMALL))
    tokens, pooled = enc(Tokenizer()(["a red circle", "a blue square in the top left"]))
    assert tokens.shape == (2, 24, 64) and pooled.shape == (2, 64)


def test_padding_does_not_change_the_real_tokens():
    """Padding is masked inside the encoder: a prompt's states do not depend on what fills the rest."""
    torch.manual_seed(0)
    enc = TextEncoder(TextEncoderConfig(**SMALL)).eval()
    long_tok = Tokenizer(max_length=24)
    short_tok = Tokenizer(max_length=12)
    a, _ = enc(long_tok(["a red circle"]))
    b, _ = enc(short_tok(["a red circle"]))
    assert torch.allclose(a[:, :5], b[:, :5], atol=1e-5)


def test_clip_loss_is_lower_for_matching_pairs():
    torch.manual_seed(0)
    emb = torch.randn(8, 16)
    assert clip_loss(emb, emb, torch.tensor(3.0)) < clip_loss(emb, torch.randn(8, 16), torch.tensor(3.0))


def test_image_encoder_shape():
    assert ImageEncoder(embed_dim=32)(torch.randn(2, 3, 16, 16)).shape == (2, 32)


def test_a_causal_encoder_token_sees_only_the_tokens_before_it():
    """CLIP's text transformer is causal: changing a word changes no state before it, and <bos> is one constant."""
    torch.manual_seed(0)
    enc = TextEncoder(TextEncoderConfig(**SMALL)).eval()
    a, _ = enc(Tokenizer()(["a red circle in the top left"]))
    b, _ = enc(Tokenizer()(["a red square"]))
    assert torch.allclose(a[:, :3], b[:, :3], atol=1e-6)       # <bos> a red
    assert not torch.allclose(a[:, 3], b[:, 3], atol=1e-3)     # circle / square


def test_a_bidirectional_encoder_lets_later_words_change_earlier_states():
    torch.manual_seed(0)
    enc = TextEncoder(TextEncoderConfig(**SMALL, causal=False)).eval()
    a, _ = enc(Tokenizer()(["a red circle"]))
    b, _ = enc(Tokenizer()(["a red square"]))
    assert not torch.allclose(a[:, 0], b[:, 0], atol=1e-3)


def test_runs_made_before_text_causal_existed_read_as_bidirectional():
    from prss_mini.config import from_dict, make_config, to_dict
    old = {k: v for k, v in to_dict(make_config("tiny")).items() if k != "text_causal"}
    assert from_dict(old).text_causal is False and make_config("tiny").text_causal is True


def test_the_judges_text_encoder_is_bidirectional_whatever_the_model_uses():
    from prss_mini.config import make_config
    from prss_mini.judges import judge_text_config
    assert judge_text_config(make_config("tiny", text_causal=True)).causal is False
