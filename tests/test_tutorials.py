"""Every tutorial runs on the `tiny` run from a clean checkout and writes every figure it promises."""

import ast
import glob
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TUTORIALS = sorted(glob.glob(os.path.join(ROOT, "tutorials", "[0-9][0-9]_*.py")))


def promised_figures(path):
    """The tutorial's module-level FIGURES list, read without running it."""
    for node in ast.parse(open(path).read()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "FIGURES" for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{path} has no FIGURES list")


def test_there_are_nine_tutorials():
    assert len(TUTORIALS) == 9, TUTORIALS


@pytest.mark.parametrize("path", TUTORIALS, ids=[os.path.basename(p) for p in TUTORIALS])
def test_tutorial_runs_and_writes_its_figures(path, tiny_run, tmp_path):
    env = dict(os.environ, PRSS_RUN=str(tiny_run), PRSS_QUICK="1", PRSS_TUTORIAL_OUT=str(tmp_path),
               MPLBACKEND="Agg")
    done = subprocess.run([sys.executable, path], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = tmp_path / os.path.splitext(os.path.basename(path))[0]
    missing = [f for f in promised_figures(path) if not (out / f).exists()]
    assert not missing, f"{os.path.basename(path)} did not write {missing}"
