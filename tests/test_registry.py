"""One registry, read by everyone: a method declared in its own file and named once in METHODS reaches the
command line, the evaluation's sweep and every table, with no other edit."""

import types

import pytest

from prss_mini import analysis, evaluate, pooling, report, sample
from prss_mini.diffusion import cfg_hook
from prss_mini.guidance import METHODS, build_hook
from prss_mini.guidance.knobs import Knob
from prss_mini.guidance.rows import encode_rows


def fake_results(methods):
    """One evaluate-style result per (method, knobs) job, every number 0.5."""
    groups = {g: {k: 0.5 for k in ("similarity", "copy", "ratio_copy", "stamp", "clip", "attr",
                                   "unet_evals_per_image", "seconds_per_image")} for g in evaluate.GROUPS}
    return [{"method": m, "knobs": k, "label": analysis.label(m, k), "groups": groups}
            for m, k in evaluate.jobs_for(methods)]


def fake_pooled(methods):
    """The pooled metrics (pooling.pool) of one fake run whose every per-prompt number is 0.5."""
    row = {k: 0.5 for k in ("similarity", "copy", "ratio_copy", "stamp", "clip", "attr", "triggered", "evals",
                            "seconds")}
    results = fake_results(methods)
    for r in results:
        for g in r["groups"].values():
            g["per_prompt"] = [{**row, "prompt": "p", "chosen_prompt": "p", "samples": 1}]
    run = {"name": "run", "seed": 0, "results": results, "prompts": {g: ["p"] for g in evaluate.GROUPS},
           "scores": {"first_step_magnitude": {g: [0.5] for g in evaluate.GROUPS}}}
    return pooling.pool([run], n=5)


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_declares_what_the_registry_reads(method):
    module = METHODS[method]
    assert isinstance(module.TITLE, str) and module.SWEEP and isinstance(module.BASELINE, bool)
    names = {k.name for k in module.KNOBS}
    for setting in module.SWEEP + module.VARIANTS:  # a setting names the method's knobs (or the guidance scale)
        assert set(setting) <= names | {"guidance_scale"}, (method, setting)


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_is_reachable_from_the_cli_swept_and_tabled(method):
    args, knobs = sample.parse_args(["--run", "r", "--prompt", "p", "--out", "x.png", "--method", method])
    assert args.method == method and knobs == {}
    for knob in METHODS[method].KNOBS:
        if knob.type is not list:
            assert method in sample.command_line_knobs()[knob.name][1]
    jobs = evaluate.jobs_for([method])
    assert jobs[0] == ("cfg", {}) and [k for m, k in jobs if m == method] == (
        METHODS[method].SWEEP + METHODS[method].VARIANTS if method != "cfg" else [{}])
    results = fake_results([method])
    cost = analysis.cost(results)
    assert method in cost
    baseline_rows = {r["baseline"] for r in analysis.dominance(results)}
    assert (analysis.label(method, METHODS[method].SWEEP[0]) in baseline_rows) == METHODS[method].BASELINE


def toy_method():
    """A new method, as a learner would write it: its file's declarations and a build."""
    def build(pipe, prompt, x_T, guidance_scale, seed, strength):
        cond = encode_rows(pipe, prompt, len(x_T))
        return cfg_hook(pipe.unet, cond, pipe.empty, guidance_scale * strength), {"strength": strength}

    return types.SimpleNamespace(TITLE="toy (a test)", BASELINE=True, build=build, VARIANTS=[{"strength": 0.9}],
                                 KNOBS=(Knob("strength", float, 1.0, "multiply the guidance scale"),),
                                 SWEEP=[{}, {"strength": 0.5}])


def test_a_new_method_needs_its_file_and_one_registry_line(monkeypatch, random_pipe):
    monkeypatch.setitem(METHODS, "toy", toy_method())   # the one line
    args, knobs = sample.parse_args(["--run", "r", "--prompt", "p", "--out", "x.png", "--method", "toy",
                                     "--strength", "0.25"])
    assert args.method == "toy" and knobs == {"strength": 0.25}
    _, info = build_hook("toy", random_pipe, "a red circle", random_pipe.initial_noise(1, 0), 2.0)
    assert info == {"strength": 1.0}  # the declared default filled in
    jobs = evaluate.jobs_for(list(METHODS))
    assert [k for m, k in jobs if m == "toy"] == [{}, {"strength": 0.5}, {"strength": 0.9}]
    results = fake_results(list(METHODS))
    assert {"toy", "toy strength=0.9"} <= set(analysis.cost(results))
    assert {"toy", "toy strength=0.5"} <= {r["baseline"] for r in analysis.dominance(results)}
    assert "toy strength=0.5" in report.dominance_table(fake_pooled(list(METHODS))["dominance"])


def test_a_knob_the_method_does_not_have_is_an_error(random_pipe):
    with pytest.raises(ValueError, match=r"method 'gni' has no option \['lambda_ss'\]; its options: \['noise_scale'\]"):
        build_hook("gni", random_pipe, "a red circle", random_pipe.initial_noise(1, 0), 2.0, lambda_ss=1.0)


def test_ablation_rows_take_their_names_from_the_methods():
    table = report.ablation_table(fake_pooled(list(report.ABLATION))["results"])
    assert all(METHODS[m].TITLE in table for m in report.ABLATION)
    assert len(table.splitlines()) == 2 + len(report.ABLATION)  # header, rule, one row each


def test_the_ablation_table_lists_the_methods_after_the_paper_below_its_rows():
    rows = report.ablation_table(fake_pooled(list(report.ABLATION + report.BEYOND))["results"]).splitlines()[2:]
    assert [r.split(" | ")[0][2:] for r in rows] == [METHODS[m].TITLE for m in report.ABLATION + report.BEYOND]


def test_every_method_but_prss_and_cfg_has_a_colour_of_its_own_in_the_figures():
    from prss_mini.figures import method_colour
    others = [m for m in METHODS if m not in ("prss", "cfg")]
    assert len({method_colour(m) for m in others}) == len(others)
