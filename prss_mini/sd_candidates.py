"""The paraphrases Semantic Prompt Search chooses from, for Stable Diffusion (prss_mini/stable_diffusion.py).

`generate(pipe, prompt, candidates=...)` takes them as a list of strings, or as the path of the official PRSS
code's jsonl: one JSON object per line, the memorized prompt under "caption" and its paraphrases under
"caption1" ... "caption25".
"""

import json
import os
import re


def read_candidates(path):
    """The official code's candidate file: {caption: [caption1, ..., caption25]} from its jsonl.

    Each line is a JSON object with the memorized prompt under "caption" and its paraphrases under "caption1",
    "caption2", ... (other fields, such as "index" and "url", are ignored)."""
    table = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            record = json.loads(line)
            if "caption" not in record:
                raise ValueError(f"{path}, line {n}: no 'caption' field (expected the official jsonl format: "
                                 f"'caption' and its paraphrases 'caption1' ... 'caption25')")
            numbered = {int(m[1]): record[k] for k in record if (m := re.fullmatch(r"caption(\d+)", k))}
            table[record["caption"]] = [numbered[j] for j in sorted(numbered)]
    return table


def resolve_candidates(prompt, candidates):
    """candidates as given to `generate`: a list of paraphrases, or the path of a jsonl (see read_candidates)."""
    if candidates is None or isinstance(candidates, (list, tuple)):
        return list(candidates or [])
    if not isinstance(candidates, (str, os.PathLike)) or not os.path.isfile(candidates):
        raise ValueError(f"candidates must be a list of paraphrases or the path of a jsonl file, got {candidates!r}")
    table = read_candidates(candidates)
    if prompt not in table:
        raise ValueError(f"{prompt!r} is not a 'caption' in {candidates}: pass its paraphrases as a list instead")
    return table[prompt]
