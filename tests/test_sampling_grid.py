"""The sampling grid of prss_mini/diffusion.py (`timesteps_for`): which timesteps a sampler visits, by spacing
and offset, as diffusers' schedulers do; the rest of diffusion.py's spec is in test_diffusion.py."""
import pytest
import torch

from prss_mini.diffusion import NoiseSchedule, sample, timesteps_for

SHAPE = (2, 3, 4, 4)  # (B, C, H, W)


def toy_hook(x_t, t, i):
    return 0.1 * x_t + 0.01 * t


# ---- the sampling grid --------------------------------------------------------------------

def test_trailing_spacing_runs_from_999_down_to_19_like_diffusers():
    ts = timesteps_for(50, NoiseSchedule(1000, timestep_spacing="trailing"))
    assert len(ts) == 50 and ts[:2] == [999, 979] and ts[-1] == 19


def test_trailing_spacing_of_a_count_that_does_not_divide_1000_rounds_each_step_from_the_top():
    """round(1000 - i 1000 / n) - 1: 7 steps are 1000 - i 142.857... = 1000, 857.1, 714.3, 571.4, 428.6, 285.7, 142.9,
    rounded and minus one (diffusers' "trailing"); 3 steps: 1000, 666.7, 333.3."""
    s = NoiseSchedule(1000, timestep_spacing="trailing")
    assert timesteps_for(7, s) == [999, 856, 713, 570, 428, 285, 142]
    assert timesteps_for(3, s) == [999, 666, 332]


@pytest.mark.parametrize("offset", [-1, 1000, 1.0])
def test_steps_offset_must_be_an_int_in_0_to_T(offset):
    with pytest.raises(ValueError, match=r"steps_offset must be an int in \[0, 1000\)"):
        NoiseSchedule(1000, steps_offset=offset)


def test_steps_offset_at_the_last_trained_timestep_is_allowed():
    assert timesteps_for(1, NoiseSchedule(1000, steps_offset=999)) == [999]


def test_steps_offset_shifts_leading_timesteps_like_stable_diffusion():
    ts = timesteps_for(50, NoiseSchedule(1000, steps_offset=1))
    assert ts[0] == 981 and ts[-1] == 1


# every grid that exists: offset 5 with 333 steps (t = 1001) and 999 steps (t = 1003) would not
GRIDS = ([(n, spacing, 0) for n in (1, 3, 7, 50, 333, 999, 1000) for spacing in ("leading", "trailing")]
         + [(n, "leading", 1) for n in (1, 3, 7, 50, 333, 999)] + [(n, "leading", 5) for n in (1, 3, 7, 50)]
         + [(n, "trailing", 5) for n in (1, 50, 1000)])


@pytest.mark.parametrize("n, spacing, offset", GRIDS)
def test_every_grid_visits_n_distinct_trained_timesteps_noisiest_first(n, spacing, offset):
    ts = timesteps_for(n, NoiseSchedule(1000, timestep_spacing=spacing, steps_offset=offset))
    assert len(ts) == n and all(a > b for a, b in zip(ts, ts[1:])) and 0 <= ts[-1] and ts[0] <= 999


@pytest.mark.parametrize("n, offset, first, largest_offset", [(1000, 1, 1000, 0), (500, 2, 1000, 1),
                                                               (333, 5, 1001, 3)])
def test_leading_steps_offset_past_the_last_trained_timestep_raises_naming_the_settings(n, offset, first,
                                                                                       largest_offset):
    """diffusers' leading grid would start at t = first >= 1000 (and its first step fail); clamping would repeat
    t = 999. The message names both settings and the largest offset that fits."""
    with pytest.raises(ValueError, match=rf"num_inference_steps={n} .* steps_offset={offset} would start at "
                                         rf"t = {first}.*steps_offset <= {largest_offset}"):
        timesteps_for(n, NoiseSchedule(1000, steps_offset=offset))


def test_leading_steps_offset_that_ends_exactly_at_the_last_trained_timestep_is_allowed():
    assert timesteps_for(500, NoiseSchedule(1000, steps_offset=1))[:2] == [999, 997]


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_ddpm_visits_every_trained_timestep_once_with_offset_zero(spacing):
    seen = []
    sample(lambda x_t, t, i: seen.append(t) or toy_hook(x_t, t, i), SHAPE, NoiseSchedule(20, timestep_spacing=spacing),
           num_inference_steps=20, sampler="ddpm", generator=torch.Generator().manual_seed(0))
    assert seen == list(range(19, -1, -1))


def test_ddpm_with_a_leading_steps_offset_raises():
    with pytest.raises(ValueError, match="steps_offset=1"):
        sample(toy_hook, SHAPE, NoiseSchedule(20, steps_offset=1), num_inference_steps=20, sampler="ddpm")


def test_unknown_timestep_spacing_raises():
    with pytest.raises(ValueError, match="timestep_spacing"):
        NoiseSchedule(1000, timestep_spacing="linspace")
