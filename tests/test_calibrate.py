"""guidance/calibrate.py's refusal of a thresholds file it cannot trust (test_thresholds.py has the settings rules)."""

import json

import pytest

from prss_mini.checkpoint import CheckpointError
from prss_mini.guidance.calibrate import read_thresholds_file

SETTINGS = {"guidance_scale": 2.0, "num_inference_steps": 5, "timestep_spacing": "leading", "steps_offset": 0}
ENTRY = {**SETTINGS, "lambda_ss": 1.0, "lambda_pr": 2.0, "tau": 10 / 3, "timestep": 800}


@pytest.mark.parametrize("content, missing", [
    ({**ENTRY, "recalibrated": [{k: v for k, v in ENTRY.items() if k != "tau"}]}, r"\['tau'\]"),  # one entry short
    ({k: v for k, v in ENTRY.items() if k not in ("lambda_ss", "timestep")}, r"\['lambda_ss', 'timestep'\]"),
    ([ENTRY], r"\['a readable file \(AttributeError\)'\]"),                                   # JSON, not a dict
])
def test_a_thresholds_file_without_every_threshold_is_refused_naming_what_is_missing(tmp_path, content, missing):
    path = tmp_path / "thresholds.json"
    path.write_text(json.dumps(content))
    with pytest.raises(CheckpointError, match=rf"thresholds.json is not a thresholds file \(missing {missing}\)\. "
                                              r"Delete it: the next command calibrates again"):
        read_thresholds_file(str(path))


def test_a_complete_thresholds_file_is_read_as_written(tmp_path):
    path = tmp_path / "thresholds.json"
    path.write_text(json.dumps({**ENTRY, "recalibrated": [{**ENTRY, "guidance_scale": 4.0}]}))
    assert read_thresholds_file(str(path)) == {**ENTRY, "recalibrated": [{**ENTRY, "guidance_scale": 4.0}]}
