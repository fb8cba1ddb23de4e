"""The evaluation's bookkeeping: sweep knobs, dominance on the privacy-utility plane, cost, and resuming."""

from types import SimpleNamespace

import numpy as np
import pytest

from prss_mini import analysis, evaluate, report
from prss_mini.guidance import METHODS, pe, prss


def result(method, points, label=None):
    """A fake evaluate result: the same (privacy, utility) point on the global and the local panel."""
    privacy, utility = points
    groups = {g: {"similarity": privacy, "stamp": privacy, "clip": utility} for g in ("global", "local")}
    return {"method": method, "label": label or method, "knobs": {}, "groups": groups}


PRSS_CURVE = [result("prss", (0.2, 0.7)), result("prss", (0.6, 0.8), "prss lambda_ss_factor=2")]


def test_dominance_interpolates_prss_utility_at_the_baseline_privacy():
    rows = analysis.dominance(PRSS_CURVE + [result("pe", (0.4, 0.7))])
    assert {r["panel"] for r in rows} == {"global", "local"}
    for r in rows:
        assert r["prss_utility"] == pytest.approx(0.75)
        assert r["margin"] == pytest.approx(0.05)


def test_dominance_has_no_margin_outside_prss_range():
    rows = analysis.dominance(PRSS_CURVE + [result("gni", (0.1, 0.3)), result("rta", (0.9, 0.9))])
    assert all(r["margin"] is None and r["prss_utility"] is None for r in rows)


def test_a_baseline_point_is_dominated_when_a_prss_point_is_as_private_and_as_useful():
    rows = analysis.dominance(PRSS_CURVE + [result("lowcfg", (0.9, 0.75)), result("rta", (0.9, 0.85))])
    assert [r["dominated"] for r in rows if r["panel"] == "global"] == [True, False]


def test_prss_curve_ends_at_plain_cfg():
    rows = analysis.dominance(PRSS_CURVE + [result("cfg", (0.9, 0.9)), result("rta", (0.8, 0.8))])
    assert rows[0]["prss_utility"] == pytest.approx(0.8 + 0.1 * 2 / 3)  # PRSS (0.6, 0.8) to CFG (0.9, 0.9)


def test_only_baselines_are_compared():
    rows = analysis.dominance(PRSS_CURVE + [result("cfg", (0.9, 0.9)), result("ss", (0.3, 0.7))])
    assert rows == []


def test_sweep_factors_are_multiples_of_the_calibrated_thresholds():
    pipe = SimpleNamespace(thresholds={"lambda_ss": 0.5, "lambda_pr": 3.0, "tau": 5.0})
    assert prss.threshold(pipe, "lambda_ss", None, factor=2.0) == 1.0
    assert prss.reanchor_thresholds(pipe, None, None, tau_factor=0.5) == (3.0, 4.0)
    assert prss.threshold(pipe, "lambda_ss", None, factor=0.5) == 0.25


def test_every_sweep_starts_with_the_method_default_and_prss_spans_both_sides_of_it():
    factors = [k.get("lambda_ss_factor", 1.0) for k in METHODS["prss"].SWEEP]
    assert METHODS["prss"].SWEEP[0] == {} and min(factors) < 1.0 < max(factors)


def timed(method, label, seconds, evals):
    r = result(method, (0.5, 0.5), label)
    for g in ("global", "local", "general", "heldout"):
        r["groups"][g] = {"seconds_per_image": seconds, "unet_evals_per_image": evals}
    return r


def test_cost_is_relative_to_cfg_with_one_row_per_default_and_prss_per_prompt():
    cost = analysis.cost([timed("cfg", "cfg", 2.0, 100), timed("prss", "prss", 3.0, 150),
                         timed("prss", "prss tau_factor=4", 9.0, 150), timed("prss", "prss per_prompt", 2.5, 140),
                         timed("pe", "pe target_factor=1", 2.2, 102), timed("pe", "pe target_factor=2", 9.0, 102)])
    assert list(cost) == ["cfg", "prss", "prss per_prompt", "pe"]
    assert cost["prss"]["memorized_time_vs_cfg"] == pytest.approx(1.5)
    assert cost["pe"]["control_time_vs_cfg"] == pytest.approx(1.1)
    assert cost["prss per_prompt"]["control_unet_evals_per_image"] == 140


def test_frontier_keeps_the_points_no_other_point_beats_on_both_axes():
    points = [(0.2, 0.7), (0.25, 0.6), (0.5, 0.9), (0.5, 0.8), (0.9, 0.85)]
    assert analysis.frontier(points) == [(0.2, 0.7), (0.5, 0.9)]


def test_a_dominated_prss_setting_does_not_lower_the_curve_baselines_are_compared_with():
    worse = result("prss", (0.4, 0.5), "prss tau_factor=4")  # less useful than PRSS at 0.2 and at 0.6
    rows = analysis.dominance(PRSS_CURVE + [worse, result("gni", (0.4, 0.7))])
    assert rows[0]["prss_utility"] == pytest.approx(0.75)


def test_past_the_frontier_prss_keeps_the_utility_of_its_more_private_settings():
    curve = [result("prss", (0.0, 0.7)), result("cfg", (1.0, 0.6))]  # CFG: less private AND less useful
    rows = analysis.dominance(curve + [result("gni", (0.9, 0.65))])
    assert rows[0]["prss_utility"] == pytest.approx(0.7) and rows[0]["dominated"]


def _stub_judges():
    return SimpleNamespace(clip_score=lambda images, prompts: np.zeros(len(images)),
                           attribute_correct=lambda images, attributes: np.ones((len(images), 3), bool))


SETS = {"global": [("a red circle in the top left", np.zeros(3, int)), ("a blue square", np.zeros(3, int))]}
JOBS = [("cfg", {}), ("lowcfg", {"guidance_scale": 1.0})]


def _run(pipe, path):
    train = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    return evaluate.run_jobs(pipe, _stub_judges(), train, SETS, JOBS, 2, path, progress=False)


def test_an_interrupted_evaluation_resumes_after_the_last_finished_group_and_setting(random_pipe, tmp_path,
                                                                                     monkeypatch):
    path, generate, calls = str(tmp_path / "partial.npz"), type(random_pipe).generate, []

    def generate_then_stop(self, *args, **kw):
        if len(calls) == 1:  # the group's second setting: Ctrl-C
            raise KeyboardInterrupt
        calls.append((args[0], kw.get("guidance_scale")))
        return generate(self, *args, **kw, num_inference_steps=3)

    monkeypatch.setattr(type(random_pipe), "generate", generate_then_stop)
    with pytest.raises(KeyboardInterrupt):
        _run(random_pipe, path)
    assert calls == [(["a red circle in the top left", "a blue square"], None)]  # both prompts in one batch
    calls.clear()
    resumed, images = _run(random_pipe, path)
    assert calls == [(["a red circle in the top left", "a blue square"], 1.0)]  # plain CFG was not run again
    monkeypatch.setattr(type(random_pipe), "generate", lambda self, *a, **kw: generate(self, *a, **kw,
                                                                                    num_inference_steps=3))
    fresh, fresh_images = _run(random_pipe, None)
    assert all((images[k][key] == fresh_images[k][key]).all() for k in range(2) for key in images[k])
    assert resumed[1]["groups"]["global"]["identical"] == fresh[1]["groups"]["global"]["identical"]


def test_each_setting_samples_the_memorized_groups_in_one_batch_and_the_controls_in_another(random_pipe,
                                                                                          monkeypatch):
    """BATCHES: global + local in one generate call, general + held-out in another, with each group's own seeds;
    a group's seconds and UNet evaluations are its share (by samples) of its batch's."""
    sets = {g: [("a red circle in the top left", np.zeros(3, int))] * (2 if g == "global" else 1)
            for g in ("global", "local", "general", "heldout")}
    generate, calls = type(random_pipe).generate, []
    def generate_logged(self, prompts, **kw):
        calls.append(kw["seed"])
        return generate(self, prompts, **kw, num_inference_steps=2)
    monkeypatch.setattr(type(random_pipe), "generate", generate_logged)
    results, _ = evaluate.run_jobs(random_pipe, _stub_judges(), np.zeros((2, 16, 16, 3), np.uint8), sets,
                                   [("cfg", {})], 1, progress=False)
    assert calls == [[1000, 1001, 1000], [1000, 1000]]  # seeds: 1000 + the prompt's index in its own group
    rows = results[0]["groups"]
    assert rows["global"]["unet_evals_per_image"] == rows["local"]["unet_evals_per_image"] == 2 * 2
    assert rows["global"]["seconds_per_image"] == pytest.approx(rows["local"]["seconds_per_image"])


def test_run_jobs_needs_plain_cfg_first(random_pipe):
    with pytest.raises(ValueError, match="jobs\\[0\\] must be"):
        evaluate.run_jobs(random_pipe, _stub_judges(), None, SETS, JOBS[::-1], 1)


def test_control_prompts_get_prss_settings_and_each_baseline_default_only():
    """Baselines sweep on memorized prompts (the trade-off curve); on general and held-out prompts the evaluation
    runs every PRSS / ablation setting and each baseline's default, which is what the tables read there."""
    jobs = evaluate.jobs_for(list(METHODS))
    on_controls = [(m, k) for m, k in jobs if evaluate.runs_on("general", m, k)]
    assert all(evaluate.runs_on(g, m, k) for g in evaluate.MEMORIZED for m, k in jobs)
    assert [k for m, k in on_controls if m == "prss"] == prss.SWEEP + prss.VARIANTS
    assert [k for m, k in on_controls if m == "gni"] == [METHODS["gni"].SWEEP[0]]
    assert on_controls == [(m, k) for m, k in jobs if evaluate.runs_on("heldout", m, k)]


def test_a_baseline_sweep_point_has_no_control_rows_and_still_reaches_the_tables(random_pipe):
    sets = {"global": SETS["global"][:1], "general": [("a blue square in the top right", np.zeros(3, int))]}
    jobs = [("cfg", {}), ("lowcfg", METHODS["lowcfg"].SWEEP[0]), ("lowcfg", METHODS["lowcfg"].SWEEP[1])]
    results, images = evaluate.run_jobs(random_pipe, _stub_judges(), np.zeros((2, 16, 16, 3), np.uint8), sets,
                                        jobs, 1, progress=False)
    assert set(results[1]["groups"]) == {"global", "general"} and set(results[2]["groups"]) == {"global"}
    assert ("general", 0) not in images[2]
    cost = analysis.cost(results)
    assert "control_time_vs_cfg" in cost["lowcfg"] and "| x | - | - | - | - |" in report.cost_table({"x": {}})


def _measured(info, reference=None):
    """evaluate.measure on 3 images of 2 prompts (stub judges): image 1 differs from image 0 in one pixel value."""
    images = np.zeros((3, 16, 16, 3), np.uint8)
    images[1, 5, 5, 0] = 1
    images[2] = 200
    train = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    return evaluate.measure(_stub_judges(), train, images, ["a red circle", "a red circle", "a blue square"],
                            np.zeros((3, 3), int), info, reference)


def test_measure_identical_is_whether_each_image_equals_cfg_s_bit_for_bit():
    reference = np.zeros((3, 16, 16, 3), np.uint8)
    reference[2] = 200                                       # images 0 and 2 are CFG's; image 1 is off by one value
    assert _measured({}, reference)["identical"] == [1.0, 0.0, 1.0]
    assert "identical" not in _measured({})                  # no reference (plain CFG itself): not measured


def test_measure_triggered_is_the_method_s_per_sample_flag_and_false_for_methods_that_do_not_detect():
    assert _measured({"triggered": [False, True, True]})["triggered"] == [0.0, 1.0, 1.0]
    assert _measured({})["triggered"] == [0.0, 0.0, 0.0]


def test_detection_traces_of_a_group_run_in_one_batch_are_each_prompt_s_own(random_pipe):
    texts = ["a red circle in the top left", "a blue square in the bottom right"]
    sets = {"general": [(p, np.zeros(3, int)) for p in texts]}
    traces, _ = evaluate.detection(random_pipe, sets, num_images=2)
    x_T = random_pipe.initial_noise(2, 7)
    for (cfg, prss), text in zip(traces["general"], texts):
        alone = evaluate.magnitude_trace(random_pipe, random_pipe.encode([text]), x_T).mean(0).numpy()
        assert prss is None and np.allclose(cfg, alone, atol=1e-5)
