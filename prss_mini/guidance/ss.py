"""Semantic Prompt Search, SS (Chen et al., CVPR 2025, Sec. 4.2; docs/math.md "Semantic Prompt Search").

Per sample (each has its own x_T): if the prompt's first-step magnitude m is at most lambda_SS, memorization is
not triggered and the prompt is kept. Otherwise the candidates, paraphrases that keep the prompt's meaning, are
scored in order, and the sample takes the first whose magnitude is at most lambda_SS (early stop); if none is,
the one with the smallest magnitude, the original prompt included.

`search_one_sample` is that algorithm for one sample, as the paper writes it. `semantic_search`, which PRSS runs,
does it for a whole batch at once: candidate k is scored for every sample still searching in ONE call, and a
sample leaves as soon as a candidate passes. Each sample gets exactly what its own search would give (a test
checks that the two agree). `search_prompts` runs the searches of several prompts side by side, so that round k
scores the k-th candidate of every prompt in one UNet call.
"""

from dataclasses import dataclass, field

import torch


@dataclass
class SearchResult:
    prompt: object               # the chosen prompt e_ss (a string, or whatever key the candidates are)
    triggered: bool              # was memorization detected on the original prompt?
    magnitudes: dict = field(default_factory=dict)  # prompt -> first-step magnitude, in the order scored


def search_one_sample(prompt, candidates, magnitude, lambda_ss):
    """SS for ONE sample: magnitude(p) -> the first-step magnitude of prompt p on this sample's x_T."""
    seen = {prompt: float(magnitude(prompt))}
    if seen[prompt] <= lambda_ss:                 # not memorized: keep the prompt, plain CFG
        return SearchResult(prompt, False, seen)
    for candidate in candidates:                  # in order; the first one at most lambda_SS wins (early stop)
        if candidate in seen:                     # the prompt itself, or a repeat
            continue
        seen[candidate] = float(magnitude(candidate))
        if seen[candidate] <= lambda_ss:
            return SearchResult(candidate, True, seen)
    return SearchResult(min(seen, key=seen.get), True, seen)   # none passed: the smallest, the prompt included


def root_mean_square(m):
    """(B,) -> (B,): every entry replaced by the RMS of all of them (the per_prompt reduction)."""
    return m.pow(2).mean().sqrt().expand(len(m))


def semantic_search(prompt, prompt_magnitudes, candidates, score, lambda_ss, per_prompt=False):
    """Choose e_ss for every sample: a list of B SearchResults.

    prompt_magnitudes: (B,) first-step magnitudes of the prompt, one per sample;
    score(candidate, rows) -> (len(rows),) first-step magnitudes of one candidate on the samples `rows` (a list
    of sample indices), measured on the same x_T as the prompt's.
    per_prompt=True decides once for all samples, on the root mean square of their magnitudes (the official
    code's norm over its whole batch, divided by sqrt(B) so that the same lambda_SS applies).

    The prompt itself and repeated candidates are not scored again. A passing candidate is always the smallest
    magnitude seen (everything scored before it was above lambda_SS), so every triggered sample takes its argmin."""
    score_all = lambda requests: [score(candidate, rows) for _, candidate, rows in requests]
    return search_prompts([(prompt, prompt_magnitudes, candidates)], score_all, lambda_ss, per_prompt)[0]


_DONE = object()  # no candidate left


def search_prompts(searches, score_all, lambda_ss, per_prompt=False):
    """semantic_search for several prompts at once, in lockstep: one list of SearchResults per prompt.

    searches: [(prompt, prompt_magnitudes (B_p,), candidates)], one per prompt;
    score_all(requests) -> one (len(rows),) tensor of magnitudes per request (i, candidate, rows): prompt i's
    candidate on its samples `rows`. Round k asks for the k-th candidate of every prompt still searching, all in
    ONE score_all call (the UNet scores them in one batch); each prompt's result is what its own search gives."""
    if lambda_ss < 0:
        raise ValueError(f"lambda_ss must be >= 0, got {lambda_ss}")
    reduce = root_mean_square if per_prompt else (lambda m: m)
    state = []  # per prompt: (magnitudes seen per sample, triggered per sample, candidates left, samples searching)
    for prompt, magnitudes, candidates in searches:
        m = reduce(torch.as_tensor(magnitudes, dtype=torch.float64).flatten())        # (B_p,)
        triggered = [v > lambda_ss for v in m.tolist()]
        left = iter([c for c in dict.fromkeys(candidates) if c != prompt])             # in order, no repeats
        state.append(([{prompt: float(v)} for v in m], triggered, left, [b for b, hit in enumerate(triggered) if hit]))
    while True:
        requests = []
        for i, (_, _, left, searching) in enumerate(state):
            candidate = next(left, _DONE) if searching else _DONE
            if candidate is not _DONE:
                requests.append((i, candidate, searching))
        if not requests:
            break
        for (i, candidate, rows), m in zip(requests, score_all(requests)):
            m = reduce(torch.as_tensor(m, dtype=torch.float64).flatten()).tolist()     # (len(rows),)
            seen = state[i][0]
            for b, v in zip(rows, m):
                seen[b][candidate] = v
            state[i] = (*state[i][:3], [b for b, v in zip(rows, m) if v > lambda_ss])
    return [[SearchResult(min(s, key=s.get) if hit else prompt, hit, s) for s, hit in zip(seen, triggered)]
            for (prompt, _, _), (seen, triggered, _, _) in zip(searches, state)]
