"""End to end on the `tiny` preset: the model memorizes what it should, PRSS copies less, the CLIs work."""

import numpy as np
import pytest

from prss_mini import metrics, sample
from prss_mini.pipeline import ToyPipeline

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pipe(tiny_run):
    return ToyPipeline(str(tiny_run))


def memorized_and_general(pipe):
    data = pipe.dataset
    memorized = sorted(set(data["captions"][data["group"] == "global"]))
    general = sorted(set(data["captions"][data["group"] == "general"]))[:len(memorized)]
    return memorized, general


def copy_rate(pipe, prompts, method="cfg", **knobs):
    train, _, _ = metrics.unique_training_images(pipe.dataset)
    copies = []
    for j, prompt in enumerate(prompts):
        images = pipe.generate(prompt, method=method, num_images=2, seed=j, **knobs)
        copies += list(metrics.is_copy(metrics.nearest_training(images, train)["similarity"]))
    return float(np.mean(copies))


NOT_YET = pytest.mark.xfail(strict=True, reason="the toy model does not memorize its duplicated images yet: its "
                            "x0 prediction at the first (noisiest) steps is not precise enough (issue 2 is open)")


@NOT_YET
def test_tiny_model_copies_memorized_prompts_and_not_general_ones(pipe):
    memorized, general = memorized_and_general(pipe)
    assert copy_rate(pipe, memorized) >= 0.75
    assert copy_rate(pipe, general) <= 0.25


@NOT_YET
def test_prss_copies_less_than_cfg(pipe):
    memorized, _ = memorized_and_general(pipe)
    assert copy_rate(pipe, memorized, "prss") < copy_rate(pipe, memorized, "cfg")


def test_sample_cli_writes_npz_with_uint8_images(tiny_run, tmp_path):
    out = tmp_path / "x.npz"
    sample.main(["--run", str(tiny_run), "--prompt", "a red circle in the top left", "--method", "prss",
                 "--num-images", "3", "--seed", "1", "--out", str(out), "--steps", "5"])
    with np.load(out, allow_pickle=False) as f:
        assert f["images"].shape == (3, 16, 16, 3) and f["images"].dtype == np.uint8


def test_sample_cli_writes_a_png_grid(tiny_run, tmp_path):
    out = tmp_path / "x.png"
    sample.main(["--run", str(tiny_run), "--prompt", "a red circle", "--num-images", "2", "--out", str(out),
                 "--steps", "3"])
    assert out.stat().st_size > 0


@pytest.mark.parametrize("argv, message", [
    (["--prompt", "a red banana"], "unknown word"),
    (["--prompt", "a red circle", "--method", "prss", "--tau", "0.1", "--lambda-pr", "1"], "tau"),
    (["--prompt", "a red circle", "--method", "prss", "--lambda-ss", "-1"], "lambda_ss"),
])
def test_sample_cli_bad_input_is_a_clear_error(tiny_run, tmp_path, argv, message):
    with pytest.raises(SystemExit, match=message):
        sample.main(["--run", str(tiny_run), "--out", str(tmp_path / "x.png"), "--steps", "2"] + argv)


def test_sample_cli_run_without_a_model_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="not a run folder"):
        sample.main(["--run", str(tmp_path), "--prompt", "a red circle", "--out", str(tmp_path / "x.png")])


def test_sample_cli_unknown_method_is_refused(tiny_run, tmp_path, capsys):
    with pytest.raises(SystemExit):
        sample.main(["--run", str(tiny_run), "--prompt", "a red circle", "--method", "nope",
                     "--out", str(tmp_path / "x.png")])
    assert "invalid choice: 'nope'" in capsys.readouterr().err


def test_evaluate_quick_writes_every_output(tiny_run):
    from prss_mini import evaluate
    evaluate.main(["--run", str(tiny_run), "--quick"])
    for name in ("metrics.json", "metrics.csv", "ablation.md", "tradeoff.png", "grid.png", "traces.png", "roc.png"):
        assert (tiny_run / "eval" / name).exists(), name
