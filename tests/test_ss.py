"""Semantic Prompt Search (guidance/ss.py): the paper's rules, and the batched search PRSS runs giving every sample what
its own search gives."""

import numpy as np
import pytest
import torch

from prss_mini.guidance.ss import search_one_sample, search_prompts, semantic_search

LAMBDA = 1.0


def table(seed, B=6, n=8):
    """Random first-step magnitudes: prompt "p" and candidates "c0".."c7" on B samples (some repeated, and "p"
    itself among the candidates), around lambda_SS so that every branch of the algorithm is taken."""
    rng = np.random.default_rng(seed)
    names = ["p"] + [f"c{k}" for k in range(n)]
    values = {name: rng.uniform(0.6, 1.6, B) for name in names}
    candidates = ["c0", "c1", "p", "c1"] + [f"c{k}" for k in range(2, n)]
    return values, candidates


def test_the_batched_search_gives_each_sample_its_own_search_s_result():
    for seed in range(20):
        values, candidates = table(seed)
        batched = semantic_search("p", values["p"], candidates,
                                  lambda c, rows: torch.as_tensor(values[c][rows]), LAMBDA)
        for b, result in enumerate(batched):
            alone = search_one_sample("p", candidates, lambda c: values[c][b], LAMBDA)
            assert (result.prompt, result.triggered, result.magnitudes) == (alone.prompt, alone.triggered,
                                                                            alone.magnitudes)


def test_prompts_searched_side_by_side_get_what_each_prompt_s_own_search_gives():
    tables = [table(seed) for seed in range(6)]
    searches = [("p", values["p"], candidates) for values, candidates in tables]
    score_all = lambda requests: [torch.as_tensor(tables[i][0][c][rows]) for i, c, rows in requests]
    for per_prompt in (False, True):
        together = search_prompts(searches, score_all, LAMBDA, per_prompt)
        for (values, candidates), results in zip(tables, together):
            alone = semantic_search("p", values["p"], candidates, lambda c, rows: torch.as_tensor(values[c][rows]),
                                    LAMBDA, per_prompt)
            assert [(r.prompt, r.triggered, r.magnitudes) for r in results] == \
                   [(r.prompt, r.triggered, r.magnitudes) for r in alone]


def test_side_by_side_round_k_asks_for_every_searching_prompt_s_k_th_candidate_in_one_call():
    """Prompt 0 passes on its first candidate, prompt 1 on its second, prompt 2 never triggers: two calls."""
    magnitudes = {(0, "a"): 0.5, (1, "x"): 3.0, (1, "y"): 0.2}
    calls = []
    def score_all(requests):
        calls.append([(i, c, list(rows)) for i, c, rows in requests])
        return [[magnitudes[i, c]] * len(rows) for i, c, rows in requests]
    search_prompts([("p", [2.0], ["a", "b"]), ("q", [2.0, 0.3], ["x", "y"]), ("r", [0.1], ["z"])], score_all, LAMBDA)
    assert calls == [[(0, "a", [0]), (1, "x", [0])], [(1, "y", [0])]]


def test_one_sample_takes_the_first_candidate_at_most_lambda_ss():
    values = {"p": 2.0, "a": 1.5, "b": 0.9, "c": 0.1}
    result = search_one_sample("p", ["a", "b", "c"], values.get, LAMBDA)
    assert (result.prompt, result.triggered, list(result.magnitudes)) == ("b", True, ["p", "a", "b"])


def test_one_sample_takes_the_smallest_seen_when_none_passes_the_prompt_included():
    values = {"p": 1.2, "a": 1.5, "b": 1.3}
    assert search_one_sample("p", ["a", "b"], values.get, LAMBDA).prompt == "p"


class FakeMagnitudes:
    """magnitude_fn for SS tests: a fixed table, and a log of what was asked."""

    def __init__(self, table):
        self.table, self.asked = table, []

    def __call__(self, prompts):
        self.asked += prompts
        return [self.table[p] for p in prompts]


def search_one(prompt, candidates, fn, lambda_ss):
    """The batched search on one sample, asking `fn` as a one-by-one search would."""
    score = lambda candidate, rows: fn([candidate]) * len(rows)
    return semantic_search(prompt, fn([prompt]), candidates, score, lambda_ss)[0]


def test_ss_passes_untriggered_prompts_through():
    fn = FakeMagnitudes({"p": 0.5, "a": 0.1})
    result = search_one("p", ["a"], fn, lambda_ss=1.0)
    assert (result.prompt, result.triggered) == ("p", False)
    assert fn.asked == ["p"]  # no candidate was scored


def test_ss_stops_at_the_first_candidate_under_lambda_ss():
    fn = FakeMagnitudes({"p": 5.0, "a": 3.0, "b": 0.9, "c": 0.1})
    result = search_one("p", ["a", "b", "c"], fn, lambda_ss=1.0)
    assert (result.prompt, result.triggered) == ("b", True)
    assert fn.asked == ["p", "a", "b"]  # early stop: c was never scored


def test_ss_falls_back_to_the_smallest_magnitude():
    fn = FakeMagnitudes({"p": 5.0, "a": 3.0, "b": 2.0})
    assert search_one("p", ["a", "b"], fn, lambda_ss=1.0).prompt == "b"


def test_ss_fallback_includes_the_original_prompt():
    fn = FakeMagnitudes({"p": 2.0, "a": 3.0, "b": 4.0})
    result = search_one("p", ["a", "b"], fn, lambda_ss=1.0)
    assert (result.prompt, result.triggered) == ("p", True)


def test_ss_with_no_candidates_keeps_the_prompt():
    result = search_one("p", [], FakeMagnitudes({"p": 5.0}), lambda_ss=1.0)
    assert (result.prompt, result.triggered) == ("p", True)
    assert result.magnitudes == {"p": 5.0}


def test_ss_at_exactly_lambda_ss_the_prompt_does_not_trigger_and_a_candidate_passes():
    assert search_one("p", ["a"], FakeMagnitudes({"p": 1.0, "a": 0.1}), lambda_ss=1.0).triggered is False
    fn = FakeMagnitudes({"p": 5.0, "a": 1.0, "b": 0.1})
    assert search_one("p", ["a", "b"], fn, lambda_ss=1.0).prompt == "a" and fn.asked == ["p", "a"]


def test_ss_rejects_a_negative_threshold():
    with pytest.raises(ValueError, match="lambda_ss"):
        search_one("p", [], FakeMagnitudes({"p": 1.0}), lambda_ss=-1.0)


def test_ss_scores_neither_the_prompt_nor_a_repeated_candidate_again():
    """Candidates "a", the prompt, "a" again, "b": only "a" and "b" are scored, once each, for both samples."""
    table, scored = {"p": 5.0, "a": 3.0, "b": 2.0}, []
    score = lambda candidate, rows: scored.append((candidate, list(rows))) or [table[candidate]] * len(rows)
    results = semantic_search("p", [5.0, 5.0], ["a", "p", "a", "b"], score, lambda_ss=1.0)
    assert scored == [("a", [0, 1]), ("b", [0, 1])]
    assert [(r.prompt, r.magnitudes) for r in results] == [("b", {"p": 5.0, "a": 3.0, "b": 2.0})] * 2
