"""The evaluation's bookkeeping: sweep knobs, and the dominance comparison on the privacy-utility plane."""

from types import SimpleNamespace

import pytest

from prss_mini import evaluate, figures


def result(method, points, label=None):
    """A fake evaluate result: the same (privacy, utility) point on the global and the local panel."""
    privacy, utility = points
    groups = {g: {"similarity": privacy, "stamp": privacy, "clip": utility} for g in ("global", "local")}
    return {"method": method, "label": label or method, "knobs": {}, "groups": groups}


PRSS_CURVE = [result("prss", (0.2, 0.7)), result("prss", (0.6, 0.8), "prss lambda_ss_factor=2")]


def test_dominance_interpolates_prss_utility_at_the_baseline_privacy():
    rows = figures.dominance(PRSS_CURVE + [result("pe", (0.4, 0.7))])
    assert {r["panel"] for r in rows} == {"global", "local"}
    for r in rows:
        assert r["prss_utility"] == pytest.approx(0.75)
        assert r["margin"] == pytest.approx(0.05)


def test_dominance_has_no_margin_outside_prss_range():
    rows = figures.dominance(PRSS_CURVE + [result("gni", (0.1, 0.3)), result("rta", (0.9, 0.9))])
    assert all(r["margin"] is None and r["prss_utility"] is None for r in rows)


def test_a_baseline_point_is_dominated_when_a_prss_point_is_as_private_and_as_useful():
    rows = figures.dominance(PRSS_CURVE + [result("lowcfg", (0.9, 0.75)), result("rta", (0.9, 0.85))])
    assert [r["dominated"] for r in rows if r["panel"] == "global"] == [True, False]


def test_prss_curve_ends_at_plain_cfg():
    rows = figures.dominance(PRSS_CURVE + [result("cfg", (0.9, 0.9)), result("rta", (0.8, 0.8))])
    assert rows[0]["prss_utility"] == pytest.approx(0.8 + 0.1 * 2 / 3)  # PRSS (0.6, 0.8) to CFG (0.9, 0.9)


def test_only_baselines_are_compared():
    rows = figures.dominance(PRSS_CURVE + [result("cfg", (0.9, 0.9)), result("ss", (0.3, 0.7))])
    assert rows == []


def test_sweep_factors_are_multiples_of_the_calibrated_thresholds():
    pipe = SimpleNamespace(thresholds={"lambda_ss": 0.5, "lambda_pr": 3.0, "tau": 5.0})
    assert evaluate.resolve_knobs(pipe, "prss", {"lambda_ss_factor": 2.0}) == {"lambda_ss": 1.0}
    assert evaluate.resolve_knobs(pipe, "prss", {"tau_factor": 0.5}) == {"tau": 4.0}
    assert evaluate.resolve_knobs(pipe, "pe", {"target_factor": 0.5}) == {"target": 0.25}


def test_every_sweep_starts_with_the_method_default_and_prss_spans_both_sides_of_it():
    factors = [k.get("lambda_ss_factor", 1.0) for k in evaluate.SWEEPS["prss"]]
    assert evaluate.SWEEPS["prss"][0] == {} and min(factors) < 1.0 < max(factors)


def timed(method, label, seconds, evals):
    r = result(method, (0.5, 0.5), label)
    for g in ("global", "local", "general", "heldout"):
        r["groups"][g] = {"seconds_per_image": seconds, "unet_evals_per_image": evals}
    return r


def test_cost_is_relative_to_cfg_with_one_row_per_default_and_prss_per_prompt():
    cost = figures.cost([timed("cfg", "cfg", 2.0, 100), timed("prss", "prss", 3.0, 150),
                         timed("prss", "prss tau_factor=4", 9.0, 150), timed("prss", "prss per_prompt", 2.5, 140),
                         timed("pe", "pe target_factor=1", 2.2, 102), timed("pe", "pe target_factor=2", 9.0, 102)])
    assert list(cost) == ["cfg", "prss", "prss per_prompt", "pe"]
    assert cost["prss"]["memorized_time_vs_cfg"] == pytest.approx(1.5)
    assert cost["pe"]["control_time_vs_cfg"] == pytest.approx(1.1)
    assert cost["prss per_prompt"]["control_unet_evals_per_image"] == 140


def test_frontier_keeps_the_points_no_other_point_beats_on_both_axes():
    points = [(0.2, 0.7), (0.25, 0.6), (0.5, 0.9), (0.5, 0.8), (0.9, 0.85)]
    assert figures.frontier(points) == [(0.2, 0.7), (0.5, 0.9)]


def test_a_dominated_prss_setting_does_not_lower_the_curve_baselines_are_compared_with():
    worse = result("prss", (0.4, 0.5), "prss tau_factor=4")  # less useful than PRSS at 0.2 and at 0.6
    rows = figures.dominance(PRSS_CURVE + [worse, result("gni", (0.4, 0.7))])
    assert rows[0]["prss_utility"] == pytest.approx(0.75)
