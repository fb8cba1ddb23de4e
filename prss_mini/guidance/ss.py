"""Semantic Prompt Search, SS (Chen et al., CVPR 2025, Sec. 4.2; ../shared/PRSS-MATH.md "Semantic Prompt Search").

If the prompt's first-step magnitude is above lambda_SS (memorization triggered), look through paraphrases that
keep its meaning and take the first whose magnitude is at most lambda_SS; if none is, the one with the smallest
magnitude, the original prompt included. Untriggered prompts are passed through unchanged.
"""

from dataclasses import dataclass, field


@dataclass
class SearchResult:
    prompt: str                  # the chosen prompt e_ss
    triggered: bool              # was memorization detected on the original prompt?
    magnitudes: dict = field(default_factory=dict)  # prompt -> first-step magnitude, in the order scored


def semantic_search(prompt, candidates, magnitude_fn, lambda_ss):
    """Choose e_ss. `magnitude_fn(list of prompts)` returns their first-step magnitudes (same seeded x_T).

    Candidates are scored one at a time in order, so the search stops as soon as one passes (early stop)."""
    if lambda_ss < 0:
        raise ValueError(f"lambda_ss must be >= 0, got {lambda_ss}")
    seen = {prompt: float(magnitude_fn([prompt])[0])}
    if seen[prompt] <= lambda_ss:
        return SearchResult(prompt, False, seen)
    for candidate in candidates:
        if candidate in seen:
            continue
        seen[candidate] = float(magnitude_fn([candidate])[0])
        if seen[candidate] <= lambda_ss:
            return SearchResult(candidate, True, seen)
    return SearchResult(min(seen, key=seen.get), True, seen)
