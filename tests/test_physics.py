"""The toy's magnitude physics, summarised as Stable Diffusion's three ratios (prss_mini/physics.py)."""

import numpy as np
import pytest

from prss_mini import physics


def test_ratios_follow_their_definitions_on_50_steps():
    clean = np.ones((3, 50))
    clean[:, 10:40] = 2.0     # the plateau
    clean[:, 45:] = 1.0       # the last 5 steps
    memorized = 4 * np.ones((2, 50))
    memorized[:, 0] = 6.0
    r = physics.ratios(clean, memorized)
    assert r["r1"] == pytest.approx(6.0)                     # first step: 6 vs 1
    assert r["r2"] == pytest.approx(0.5)                     # last 5 (1) vs steps 10-39 (2)
    assert r["r3"] == pytest.approx((49 * 4 + 6) / 50 / clean.mean())


def test_r2_windows_scale_with_the_step_count():
    clean = np.arange(1, 21, dtype=float)[None].repeat(2, 0)  # 20 steps: the last 2 against steps 4-15
    r = physics.ratios(clean, clean)
    assert r["r2"] == pytest.approx(np.mean([19, 20]) / np.mean(range(5, 17)))


def test_ratios_refuse_traces_of_different_step_counts():
    with pytest.raises(ValueError, match="one step count"):
        physics.ratios(np.ones((2, 50)), np.ones((2, 20)))


@pytest.mark.parametrize("name, value, met", [("r1", 3.0, True), ("r1", 2.9, False), ("r2", 1.3, True),
                                              ("r2", 1.31, False), ("r3", 2.5, True)])
def test_the_bars_are_the_issues(name, value, met):
    assert physics.meets(name, value) is met
