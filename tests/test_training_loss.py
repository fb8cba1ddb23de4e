"""The executable spec of the training side of prss_mini/diffusion.py: the loss, its targets, its caption dropout
and its per-step weights, and the wrapper that turns a v-predicting network into an eps one."""
import pytest
import torch

from prss_mini.diffusion import EpsilonModel, NoiseSchedule, add_noise
from prss_mini.loss import diffusion_loss, loss_weights, v_target
from test_diffusion import SHAPE, ToyModel, gen


def test_diffusion_loss_is_a_scalar_reproducible_from_the_generator_seed():
    s, x0 = NoiseSchedule(100), torch.randn(SHAPE, generator=gen(1))
    ctx, null = torch.randn(2, 5, 8, generator=gen(2)), torch.zeros(1, 5, 8)
    a = diffusion_loss(ToyModel(), x0, ctx, null, s, generator=gen(3))
    b = diffusion_loss(ToyModel(), x0, ctx, null, s, generator=gen(3))
    assert a.dim() == 0 and torch.equal(a, b)


def oracle(x0, s, target):
    """A network that knows x0: from x_t it recovers the true eps (DDPM eq. 4 solved for eps), or v from it."""
    def model(x_t, t, context):
        abar = s.alphas_cumprod[t].view(-1, 1, 1, 1)
        eps = (x_t - abar.sqrt() * x0) / (1 - abar).sqrt()
        return eps if target == "epsilon" else abar.sqrt() * eps - (1 - abar).sqrt() * x0
    return model


@pytest.mark.parametrize("predicts, prediction_type, zero", [
    ("epsilon", "epsilon", True), ("v_prediction", "v_prediction", True),
    ("epsilon", "v_prediction", False), ("v_prediction", "epsilon", False)])
def test_diffusion_loss_is_zero_for_an_oracle_of_its_target_and_positive_for_the_other(predicts, prediction_type,
                                                                                        zero):
    s, x0 = NoiseSchedule(1000, "scaled_linear"), torch.rand(8, 3, 4, 4, generator=gen(1)) * 2 - 1
    ctx, null = torch.randn(8, 5, 8, generator=gen(2)), torch.zeros(1, 5, 8)
    loss = diffusion_loss(oracle(x0, s, predicts), x0, ctx, null, s, generator=gen(3),
                          prediction_type=prediction_type).item()
    assert loss < 1e-8 if zero else loss > 0.1


@pytest.mark.parametrize("p, expect_null", [(1.0, True), (0.0, False)])
def test_diffusion_loss_caption_dropout_replaces_context_by_null_context(p, expect_null):
    s, model = NoiseSchedule(100), ToyModel()
    ctx, null = torch.ones(2, 5, 8), torch.zeros(1, 5, 8)
    diffusion_loss(model, torch.randn(SHAPE), ctx, null, s, cond_drop_prob=p, generator=gen())
    assert torch.equal(model.seen_contexts[0], null.expand(2, 5, 8) if expect_null else ctx)


def test_epsilon_model_turns_an_exact_v_prediction_into_the_exact_eps():
    s = NoiseSchedule(1000, "scaled_linear")
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(4, 3, 4, 4, generator=g), torch.randn(4, 3, 4, 4, generator=g)
    t = torch.tensor([0, 300, 700, 999])
    x_t = add_noise(x0, noise, t, s)
    oracle = lambda x, tt, c: v_target(x0, noise, tt, s)  # a network that knows v
    assert torch.allclose(EpsilonModel(oracle, s)(x_t, t, None), noise, atol=1e-4)


def test_unknown_prediction_type_raises():
    model = lambda x, t, c: x
    with pytest.raises(ValueError, match="prediction_type"):
        diffusion_loss(model, torch.zeros(2, 3, 4, 4), torch.zeros(2, 1, 1), torch.zeros(1, 1, 1),
                       NoiseSchedule(20), prediction_type="x0")


@pytest.mark.parametrize("weighting, x0_weight", [("min_snr", lambda snr: snr.clamp(max=5.0)),
                                                  ("truncated_snr", lambda snr: snr.clamp(min=0.2))])
def test_loss_weights_make_the_x0_weight_of_the_rule(weighting, x0_weight):
    s, t = NoiseSchedule(1000, "scaled_linear"), torch.tensor([999, 500, 19])
    snr = s.alphas_cumprod[t] / (1 - s.alphas_cumprod[t])
    for prediction_type, native in (("epsilon", snr), ("v_prediction", snr + 1)):  # the plain loss's x0 weight
        w = loss_weights(t, s, prediction_type, weighting, snr_gamma=5.0, snr_floor=0.2)
        assert torch.allclose(w * native, x0_weight(snr))
    assert torch.equal(loss_weights(t, s, "epsilon", "uniform"), torch.ones(3))


def test_caption_dropout_may_differ_per_sample():
    s, model = NoiseSchedule(100), ToyModel()
    ctx, null = torch.ones(2, 5, 8), torch.zeros(1, 5, 8)
    diffusion_loss(model, torch.randn(SHAPE), ctx, null, s, cond_drop_prob=torch.tensor([1.0, 0.0]), generator=gen())
    assert torch.equal(model.seen_contexts[0][0], null[0]) and torch.equal(model.seen_contexts[0][1], ctx[1])


@pytest.mark.parametrize("p", [-0.1, 1.5, torch.tensor([0.5, 1.2])])
def test_cond_drop_prob_must_be_a_probability_for_every_sample(p):
    ctx, null = torch.ones(2, 5, 8), torch.zeros(1, 5, 8)
    with pytest.raises(ValueError, match=r"cond_drop_prob must be in \[0, 1\]"):
        diffusion_loss(ToyModel(), torch.randn(SHAPE), ctx, null, NoiseSchedule(100), cond_drop_prob=p,
                       generator=gen())
