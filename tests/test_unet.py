"""Rules the UNet must follow. Small tensors, fixed seeds, CPU only."""
import pytest
import torch
import torch.nn as nn

from prss_mini.config import make_config, unet_config
from prss_mini.unet import UNet, count_parameters, timestep_embedding


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny tensors gain nothing from threads, and on a busy machine OpenMP threads that wait
    # for each other can make a 20 ms forward take seconds. Restored after this file.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make(preset="tiny", seed=0, random_head=False):
    torch.manual_seed(seed)
    model = UNet(unet_config(make_config(preset)))
    if random_head:
        # The final conv is zero-initialised, so the untrained output is 0 whatever the input;
        # give it random weights so the output can show what it depends on.
        nn.init.normal_(model.conv_out.weight, std=0.1)
        nn.init.normal_(model.conv_out.bias, std=0.1)
    return model.eval()


def inputs(model, batch=2, seq_len=5, seed=1):
    c = model.config
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, c.in_channels, c.image_size, c.image_size, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    context = torch.randn(batch, seq_len, c.context_dim, generator=g)
    return x, t, context


@pytest.mark.parametrize("preset,batch", [("tiny", 2), ("cpu", 2), ("gpu", 1)])
def test_output_shape_equals_input_shape(preset, batch):
    model = make(preset)
    x, t, context = inputs(model, batch=batch)
    with torch.no_grad():
        assert model(x, t, context).shape == x.shape


def test_untrained_model_predicts_zero_noise():
    model = make("tiny")
    with torch.no_grad():
        assert torch.all(model(*inputs(model)) == 0)


def test_output_depends_on_context():
    model = make("tiny", random_head=True)
    x, t, context = inputs(model)
    with torch.no_grad():
        a = model(x, t, context)
        b = model(x, t, torch.randn_like(context))
    assert not torch.allclose(a, b)


def test_gradient_flows_to_context_even_with_zero_init_head_after_one_step():
    model = make("tiny").train()
    x, t, context = inputs(model)
    (model(x, t, context) - torch.randn_like(x)).pow(2).mean().backward()
    with torch.no_grad():  # one plain SGD step moves conv_out away from zero
        for p in model.parameters():
            p -= 0.1 * p.grad
    context.requires_grad_(True)
    model(x, t, context).pow(2).sum().backward()
    assert context.grad.abs().sum() > 0


def test_output_depends_on_timestep():
    model = make("tiny", random_head=True)
    x, t, context = inputs(model)
    with torch.no_grad():
        a = model(x, t, context)
        b = model(x, (t + 500) % 1000, context)
    assert not torch.allclose(a, b)


def test_timestep_embedding_is_sinusoidal_with_requested_dim():
    emb = timestep_embedding(torch.tensor([0, 10, 999]), 16)
    assert emb.shape == (3, 16)
    assert torch.allclose(emb[0], torch.cat([torch.zeros(8), torch.ones(8)]))  # sin(0)=0, cos(0)=1
    assert timestep_embedding(torch.tensor([3]), 7).shape == (1, 7)  # odd dims are padded


@pytest.mark.parametrize("what,shapes,message", [
    ("spatial size", dict(x=(2, 3, 15, 15)), "divisible by 2"),
    ("channels", dict(x=(2, 1, 16, 16)), r"\(B, 3, H, W\), got \(2, 1, 16, 16\)"),
    ("context dim", dict(context=(2, 5, 32)), r"D=64\), got \(2, 5, 32\)"),
    ("context batch", dict(context=(3, 5, 64)), "B=2"),
    ("t shape", dict(t=(2, 1)), r"t must be \(2,\)"),
])
def test_bad_shapes_raise_value_error_with_helpful_message(what, shapes, message):
    model = make("tiny")
    x, t, context = inputs(model)
    x = torch.randn(*shapes.get("x", x.shape))
    t = torch.zeros(*shapes.get("t", t.shape), dtype=torch.long)
    context = torch.randn(*shapes.get("context", context.shape))
    with pytest.raises(ValueError, match=message):
        model(x, t, context)


def test_same_seed_gives_identical_parameters():
    a, b = make("tiny", seed=123), make("tiny", seed=123)
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(pa, pb), name
    c = make("tiny", seed=124)
    assert not torch.equal(a.conv_in.weight, c.conv_in.weight)


@pytest.mark.parametrize("preset,low,high", [
    ("tiny", 50_000, 400_000), ("gpu", 5_000_000, 20_000_000)])
def test_preset_parameter_counts_are_in_documented_range(preset, low, high):
    assert low <= count_parameters(make(preset)) <= high


def test_cpu_preset_unet_has_exactly_the_documented_parameter_count():
    """The README's "UNet 1.18M parameters" (its timings and results were measured on this model): 1,176,547,
    counted once with count_parameters. A change to the cpu preset's architecture must show here."""
    assert count_parameters(make("cpu")) == 1_176_547


@pytest.mark.parametrize("channels", [8, 16, 24, 40, 96, 320])
def test_group_norm_has_at_least_8_channels_per_group_so_colour_means_survive(channels):
    from prss_mini.unet import group_norm
    norm = group_norm(channels)
    assert channels % norm.num_groups == 0
    assert channels // norm.num_groups >= 8
