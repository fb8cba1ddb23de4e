"""Pooling over training seeds: a figure is the mean over prompts of every run, its interval resamples prompts
within each run (a prompt's samples move together), and each run's own value stands beside it."""

import numpy as np
import pytest

from prss_mini import evaluate, pooling
from prss_mini.config import make_config


def run(name, copies, seed=0, clip=None):
    """A fake evaluated run: plain CFG and one PRSS and one PE setting on the global and local groups, one row per
    prompt with the given copy rate (and CLIP score)."""
    clip = clip or [0.5] * len(copies)
    row = lambda c, u, method: {"similarity": c, "copy": c, "ratio_copy": c, "stamp": c, "clip": u, "attr": 1.0,
                                "triggered": 1.0, "evals": 100.0 + 50 * (method == "prss"), "seconds": 1.0,
                                "prompt": "p", "chosen_prompt": "p", "samples": 4}
    results = []
    for method, label, shift in (("cfg", "cfg", 0.0), ("prss", "prss", -0.5), ("pe", "pe", -0.5)):
        groups = {g: {"per_prompt": [row(max(c + shift, 0.0), u - 0.1 * (method == "pe"), method)
                                     for c, u in zip(copies, clip)]} for g in ("global", "local")}
        groups["general"] = {"per_prompt": [row(0.0, 0.5, method), row(0.0, 0.5, method)]}
        results.append({"method": method, "knobs": {}, "label": label, "groups": groups})
    prompts = {"global": ["p"] * len(copies), "local": ["p"] * len(copies), "general": ["q", "r"]}
    return {"name": name, "seed": seed, "results": results, "prompts": prompts,
            "scores": {"first_step_magnitude": {"global": [5.0] * len(copies), "local": [4.0] * len(copies),
                                                "general": [1.0, 2.0]}}}


def test_a_pooled_figure_is_the_mean_of_the_prompts_of_every_run_with_each_run_beside_it():
    pooled = pooling.pool([run("a", [1.0, 0.0]), run("b", [1.0, 1.0, 1.0, 1.0])], n=50)
    copy = pooled["results"][0]["groups"]["global"]["copy"]
    assert copy["value"] == pytest.approx(5 / 6) and copy["per_run"] == {"a": 0.5, "b": 1.0}


def test_the_interval_resamples_whole_prompts():
    """Two prompts that copy 0% and 100%: resampled means are 0, 1/2 or 1 with chances 1/4, 1/2, 1/4, so the 95%
    interval is [0, 1], whatever the number of samples behind each prompt."""
    copy = pooling.pool([run("a", [0.0, 1.0])], n=2000)["results"][0]["groups"]["global"]["copy"]
    assert copy["ci95"] == [0.0, 1.0]


def test_runs_are_kept_whole_and_never_resampled():
    """Every prompt of run a copies, none of run b: every resample keeps both runs, so the interval is one point."""
    copy = pooling.pool([run("a", [1.0, 1.0]), run("b", [0.0, 0.0])], n=200)["results"][0]["groups"]["global"]["copy"]
    assert copy["value"] == 0.5 and copy["ci95"] == [0.5, 0.5]


def test_every_method_sees_the_same_resampled_prompts():
    """PRSS = CFG - 0.5 on every prompt: paired resampling keeps the difference exact in every draw, so the margin
    of the PE point (0.1 lower CLIP than PRSS at the same privacy) has a one-point interval."""
    pooled = pooling.pool([run("a", [0.5, 1.0, 0.8], clip=[0.2, 0.9, 0.4])], n=300)
    row = next(r for r in pooled["dominance"] if r["panel"] == "global")
    assert row["margin"]["value"] == pytest.approx(0.1)
    assert row["margin"]["ci95"] == pytest.approx([0.1, 0.1]) and row["verdict"] == "beaten"


@pytest.mark.parametrize("ci, expected", [([0.01, 0.2], "beaten"), ([-0.1, 0.1], "tied"), ([-0.2, -0.01], "losing")])
def test_a_verdict_is_read_off_the_interval_of_the_clip_difference(ci, expected):
    assert pooling.verdict({"value": 0.0, "ci95": ci, "per_run": {}}) == expected
    assert pooling.verdict(None) == "outside"


def test_detection_auc_pools_every_run_s_prompts():
    pooled = pooling.pool([run("a", [1.0]), run("b", [1.0])], n=20)
    assert pooled["detection"]["first_step_magnitude"]["roc_auc_global"]["value"] == 1.0
    assert pooled["detection"]["first_step_magnitude"]["mean"]["general"]["value"] == 1.5


def test_cost_is_pooled_as_evaluations_per_image():
    pooled = pooling.pool([run("a", [1.0, 0.0])], n=20)
    assert pooled["cost"]["prss"]["memorized_unet_evals_per_image"]["value"] == pytest.approx(150 / 4)


def test_per_prompt_rows_name_the_run_and_its_training_seed():
    rows = pooling.prompt_rows([run("a", [1.0, 0.0], seed=7)])
    assert len(rows) == 3 * (2 + 2 + 2) and {r["run"] for r in rows} == {"a"} and {r["seed"] for r in rows} == {7}
    assert [r["copy"] for r in rows[:2]] == [1.0, 0.0] and rows[0]["attribute_accuracy"] == 1.0


def test_only_runs_that_differ_in_their_seed_alone_can_be_pooled():
    same = [make_config("tiny", seed=s) for s in (0, 1)]
    evaluate.check_same_protocol(same, ["r0", "r1"])
    with pytest.raises(ValueError, match="r1 and r0 differ in train_steps"):
        evaluate.check_same_protocol([same[0], make_config("tiny", seed=1, train_steps=700)], ["r0", "r1"])


def test_runs_with_one_name_cannot_be_pooled():
    with pytest.raises(ValueError, match="distinct names"):
        pooling.pool([run("a", [1.0]), run("a", [0.0])], n=5)


def test_several_runs_need_an_output_folder(tmp_path, capsys):
    with pytest.raises(SystemExit):
        evaluate.main(["--run", str(tmp_path / "a"), "--run", str(tmp_path / "b")])
    assert "--out" in capsys.readouterr().err


def test_a_contrast_is_the_paired_difference_of_two_defaults():
    pooled = pooling.pool([run("a", [0.6, 1.0, 0.8])], n=100)
    assert "PR adds privacy over SS only: global similarity, prss - ss" not in pooled["contrasts"]  # no ss here
    rows = {r["method"]: r for r in pooled["results"]}
    cfg_minus_prss = rows["cfg"]["groups"]["global"]["copy"]["value"] - rows["prss"]["groups"]["global"]["copy"]["value"]
    assert cfg_minus_prss == pytest.approx(0.5)
    ratio = pooled["contrasts"]["global attribute accuracy, prss / cfg"]
    assert ratio["value"] == 1.0 and ratio["ci95"] == [1.0, 1.0]


def test_pooling_again_from_per_prompt_csv_gives_the_same_figures(tmp_path):
    import csv
    runs = [run("a", [1.0, 0.0, 0.5], seed=0), run("b", [1.0, 1.0, 0.0], seed=1)]
    rows = pooling.prompt_rows(runs)
    with open(tmp_path / "per_prompt.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with open(tmp_path / "per_prompt.csv") as f:
        again = pooling.runs_from_rows(list(csv.DictReader(f)))
    first, second = pooling.pool(runs, n=50), pooling.pool(again, n=50)
    assert first["results"] == second["results"] and first["detection"] == second["detection"]
