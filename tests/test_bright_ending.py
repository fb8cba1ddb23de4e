"""Bright Ending's end-token mask and its measures, against values computed by hand."""

import torch
import torch.nn.functional as F

from prss_mini.diffusion import classifier_free_guidance, predict_noise
from prss_mini.guidance.bright_ending import down_cross_attention, end_token_mask, masked_magnitude, mass_on


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
