"""Bright Ending's end-token mask and its measures, against values computed by hand."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from prss_mini import sample
from prss_mini.diffusion import classifier_free_guidance, predict_noise
from prss_mini.guidance import METHODS, build_hook, prss
from prss_mini.guidance.bright_ending import down_cross_attention, end_token_mask, masked_magnitude, mass_on
from prss_mini.guidance.detect import noise_magnitude

PROMPT = "a red circle in the top left"


def test_the_mask_is_the_eos_attention_of_the_finest_down_layers_at_the_last_step(random_pipe, record_steps):
    """Rebuilt by hand: run plain CFG, take the last step's x_t, call the UNet once with the layers recording, and
    average the prompt branch's maps over heads and the finest layers at the <eos> position (token 4 here)."""
    prompt, x_T, steps = "a red circle", random_pipe.initial_noise(2, 0), random_pipe.config.num_inference_steps
    mask = end_token_mask(random_pipe, prompt, x_T)
    cond = random_pipe.encode([prompt]).expand(2, -1, -1)

    def cfg(x_t, t, i):
        return classifier_free_guidance(*predict_noise(random_pipe.unet, x_t, t, [random_pipe.empty, cond]),
                                        random_pipe.config.guidance_scale)

    _, seen = record_steps(random_pipe, cfg, x_T, steps)
    x_last, t_last, _ = seen[-1]
    layers = down_cross_attention(random_pipe.unet)
    for m in layers:
        m.record = True
    predict_noise(random_pipe.unet, x_last, t_last, [random_pipe.empty, cond])
    maps = [m.weights[2:] for m in layers]
    for m in layers:
        m.record, m.weights = False, None
    finest = [w for w in maps if w.shape[2] == max(w.shape[2] for w in maps)]
    side = int(finest[0].shape[2] ** 0.5)
    by_hand = torch.stack(finest).mean(0).mean(1)[:, :, 4].view(2, 1, side, side)
    assert torch.allclose(mask, F.interpolate(by_hand, size=(16, 16), mode="nearest")[:, 0], atol=1e-6)
    assert mask.shape == (2, 16, 16) and (mask >= 0).all()


def test_mass_on_is_the_share_of_the_mask_on_the_region():
    mask = torch.tensor([[[1.0, 3.0], [0.0, 0.0]], [[1.0, 1.0], [1.0, 1.0]]])           # (2, 2, 2)
    region = torch.tensor([[False, True], [False, False]])
    assert torch.allclose(mass_on(mask, region), torch.tensor([0.75, 0.25]))


def test_masked_magnitude_weighs_the_gap_by_the_mask_over_its_mean():
    eps_c, eps_u = torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)
    eps_c[0, 0, 0, 0], eps_c[0, 0, 1, 1] = 3.0, 4.0
    mask = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])                                      # mean 0.25
    assert torch.allclose(masked_magnitude(eps_c, eps_u, mask), torch.tensor([3.0 / 0.25]))


def test_a_flat_mask_gives_wen_s_magnitude():
    eps_c, eps_u = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0)), torch.zeros(2, 3, 4, 4)
    flat = torch.full((2, 4, 4), 0.3)
    assert torch.allclose(masked_magnitude(eps_c, eps_u, flat), noise_magnitude(eps_c, eps_u))


# ---------------------------------------------------------------------------------------------------------------
# PE + BE and PRSS + BE: where the masked magnitude replaces Wen's (the official `ours_A` runs)


def first_step(pipe, prompt, x_T):
    """(eps_u, eps_c) of `prompt` on x_T at the detection timestep."""
    cond = pipe.encode([prompt]).expand(len(x_T), -1, -1)
    return predict_noise(pipe.unet, x_T, pipe.detection_timestep, [pipe.empty, cond])


def corner_mask(num_samples, size=16, corner=4):
    """Weight 1 on the top-left corner x corner pixels, 0 elsewhere: (B, size, size)."""
    mask = torch.zeros(num_samples, size, size)
    mask[:, :corner, :corner] = 1.0
    return mask


def test_pe_be_minimises_the_masked_magnitude_under_the_plain_cfg_run_s_mask(random_pipe):
    x_T = random_pipe.initial_noise(2, 0)
    _, info = build_hook("pe_be", random_pipe, PROMPT, x_T, random_pipe.config.guidance_scale, target=0.0,
                         max_iters=1)
    mask = end_token_mask(random_pipe, PROMPT, x_T)
    eps_u, eps_c = first_step(random_pipe, PROMPT, x_T)
    assert torch.equal(info["mask"], mask)
    before = torch.tensor(info["magnitude_before"])
    assert torch.allclose(before, masked_magnitude(eps_c, eps_u, mask), rtol=1e-4)
    assert not torch.allclose(before, noise_magnitude(eps_c, eps_u), rtol=1e-3)   # a random UNet's map: near flat


def test_prss_search_with_a_mask_triggers_on_the_masked_magnitude(random_pipe):
    """One sample, lambda_SS halfway between its plain and its masked magnitude: only the masked one triggers."""
    x_T, mask = random_pipe.initial_noise(1, 0), corner_mask(1)
    eps_u, eps_c = first_step(random_pipe, PROMPT, x_T)
    plain, masked = noise_magnitude(eps_c, eps_u).item(), masked_magnitude(eps_c, eps_u, mask).item()
    assert masked > 1.5 * plain   # a corner holds more than its share of the gap's norm, per unit of mask
    lambda_ss = (plain + masked) / 2
    no_candidates = lambda text: []
    with_mask = prss.search(random_pipe, PROMPT, x_T, 0, lambda_ss, no_candidates, mask=mask)
    without = prss.search(random_pipe, PROMPT, x_T, 0, lambda_ss, no_candidates)
    assert with_mask.info["triggered"] == [True] and without.info["triggered"] == [False]
    assert with_mask.info["magnitudes"][0][PROMPT] == pytest.approx(masked, rel=1e-5)
    assert without.info["magnitudes"][0][PROMPT] == pytest.approx(plain, rel=1e-5)


def test_prss_be_scores_candidates_on_the_masked_magnitude_and_reanchors_on_the_plain_one(random_pipe):
    x_T = random_pipe.initial_noise(2, 1)
    candidates = ["a red circle at the top left", "a crimson disc in the upper left"]
    hook, info = build_hook("prss_be", random_pipe, PROMPT, x_T, random_pipe.config.guidance_scale, lambda_ss=0.0,
                            lambda_pr=0.0, tau=1.0, candidates=candidates)
    mask = end_token_mask(random_pipe, PROMPT, x_T)
    assert info["triggered"] == [True, True] and torch.equal(info["mask"], mask)
    for text in candidates:   # lambda_SS = 0: every candidate is scored, each on every sample's own mask
        eps_u, eps_c = first_step(random_pipe, text, x_T)
        by_hand = masked_magnitude(eps_c, eps_u, mask)
        assert [info["magnitudes"][b][text] for b in range(2)] == pytest.approx(by_hand.tolist(), rel=1e-4)
    hook(x_T, random_pipe.detection_timestep, 0)   # PR's m_t at step 0: the chosen prompt's plain magnitude
    chosen = torch.cat([first_step(random_pipe, p, x_T[b:b + 1])[1] for b, p in enumerate(info["prompt"])])
    eps_u = first_step(random_pipe, PROMPT, x_T)[0]
    assert torch.allclose(info["trace"][0], noise_magnitude(chosen, eps_u), rtol=1e-4)


def test_prss_be_leaves_untriggered_samples_with_cfg_s_images_bit_for_bit(random_pipe):
    kw = dict(num_images=2, seed=3, num_inference_steps=5)
    images, info = random_pipe.generate(PROMPT, method="prss_be", lambda_ss=1e9, lambda_pr=0.0, tau=1.0,
                                         return_info=True, **kw)
    assert info["triggered"] == [False, False]
    assert np.array_equal(images, random_pipe.generate(PROMPT, method="cfg", **kw))


@pytest.mark.parametrize("method", ["prss_be", "pe_be"])
def test_the_be_methods_are_one_registry_line_each_and_on_the_command_line(method, capsys):
    assert method in METHODS
    with pytest.raises(SystemExit):
        sample.main(["--help"])
    assert method in capsys.readouterr().out


def test_be_detection_score_is_each_prompt_s_first_step_masked_magnitude_averaged_over_its_x_T(random_pipe):
    from prss_mini.guidance import DETECTION_SCORES
    prompts = [PROMPT, "a blue square in the bottom right"]
    scores = DETECTION_SCORES["masked_magnitude"](random_pipe, prompts, seeds=(0, 5), num_images=2)
    for p, text in enumerate(prompts):
        by_hand = []
        for seed in (0, 5):
            x_T = random_pipe.initial_noise(2, seed)
            eps_u, eps_c = first_step(random_pipe, text, x_T)
            by_hand.append(masked_magnitude(eps_c, eps_u, end_token_mask(random_pipe, text, x_T)).mean())
        assert scores[p].item() == pytest.approx(torch.stack(by_hand).mean().item(), rel=1e-4)
