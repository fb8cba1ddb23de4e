"""Semantic Prompt Search: the batched search PRSS runs gives every sample what its own search gives."""

import numpy as np
import torch

from prss_mini.guidance.ss import search_one_sample, semantic_search

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


def test_one_sample_takes_the_first_candidate_at_most_lambda_ss():
    values = {"p": 2.0, "a": 1.5, "b": 0.9, "c": 0.1}
    result = search_one_sample("p", ["a", "b", "c"], values.get, LAMBDA)
    assert (result.prompt, result.triggered, list(result.magnitudes)) == ("b", True, ["p", "a", "b"])


def test_one_sample_takes_the_smallest_seen_when_none_passes_the_prompt_included():
    values = {"p": 1.2, "a": 1.5, "b": 1.3}
    assert search_one_sample("p", ["a", "b"], values.get, LAMBDA).prompt == "p"
