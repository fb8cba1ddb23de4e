"""Every tutorial runs on the `tiny` run from a clean checkout and writes every figure it promises; one that needs an
optional package (REQUIRES) is skipped without it, or fails under PRSS_REQUIRE_SD=1 (conftest.importorskip)."""

import ast
import glob
import json
import os
import subprocess
import sys

import pytest
from conftest import REQUIRE_SD, importorskip

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TUTORIALS = sorted(glob.glob(os.path.join(ROOT, "tutorials", "[0-9][0-9]_*.py")))


def module_list(path, name, default=None):
    """The tutorial's module-level list `name` (FIGURES, REQUIRES), read without running it."""
    for node in ast.parse(open(path).read()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    if default is None:
        raise AssertionError(f"{path} has no {name} list")
    return default


def test_there_are_eleven_tutorials():
    assert len(TUTORIALS) == 11, TUTORIALS


# A notebook kernel started in tutorials/ (what Jupytext, VS Code and nbclient do): the cells run one by one in
# one namespace, without __file__, with the notebook's folder as the working directory and on sys.path.
AS_NOTEBOOK = """
import os, re, sys
path = sys.argv[1]
os.chdir(os.path.dirname(path))
sys.path.insert(0, "")
namespace = {"__name__": "__main__"}
for cell in re.split(r"(?m)^# %%.*$", open(path).read()):
    exec(compile(cell, path, "exec"), namespace)
"""


def test_a_missing_optional_package_skips_the_test(monkeypatch):
    monkeypatch.delenv(REQUIRE_SD, raising=False)
    with pytest.raises(pytest.skip.Exception, match="needs no_such_module_prss"):
        importorskip("no_such_module_prss", reason="needs no_such_module_prss")


def test_a_missing_optional_package_fails_the_test_under_prss_require_sd(monkeypatch):
    monkeypatch.setenv(REQUIRE_SD, "1")
    message = r"needs no_such_module_prss \(ModuleNotFoundError: .*\)\. PRSS_REQUIRE_SD=1 requires it"
    with pytest.raises(pytest.fail.Exception, match=message):
        importorskip("no_such_module_prss", reason="needs no_such_module_prss")


def test_an_installed_optional_package_is_returned_under_prss_require_sd(monkeypatch):
    monkeypatch.setenv(REQUIRE_SD, "1")
    assert importorskip("json", reason="needs json") is json


@pytest.mark.slow
@pytest.mark.parametrize("way", ["script", "notebook"])
@pytest.mark.parametrize("path", TUTORIALS, ids=[os.path.basename(p) for p in TUTORIALS])
def test_tutorial_runs_and_writes_its_figures(path, way, request, tmp_path):
    for package in module_list(path, "REQUIRES", default=[]):  # optional packages (tutorial 10: diffusers)
        importorskip(package, reason=f"{os.path.basename(path)} needs {package}")
    env = dict(os.environ, PRSS_QUICK="1", PRSS_TUTORIAL_OUT=str(tmp_path), MPLBACKEND="Agg")
    if "get_run(" in open(path).read():  # a tutorial on a trained toy run: the tiny one, trained once per session
        env["PRSS_RUN"] = str(request.getfixturevalue("tiny_run"))
    command = [sys.executable, path] if way == "script" else [sys.executable, "-c", AS_NOTEBOOK, path]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = tmp_path / os.path.splitext(os.path.basename(path))[0]
    missing = [f for f in module_list(path, "FIGURES") if not (out / f).exists()]
    assert not missing, f"{os.path.basename(path)} did not write {missing}"
