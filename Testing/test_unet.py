"""The generic U-Net (2-D and 3-D): shapes, the parameter-count formula, skip alignment, size checks, registry,
and that the 3-D compatibility layer keeps the state-dict keys of the shipped weights."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from MedSegAILib import nets  # noqa: E402
from MedSegAILib.nets.unet import UNet, unet_parameter_count  # noqa: E402
from MedSegAILib.nets.unet3d import UNet3D  # noqa: E402


@pytest.mark.parametrize("dims, shape", [(2, (24, 40)), (3, (16, 8, 24))])
def test_output_shapes(dims, shape):
    net = UNet(dims, in_channels=2, out_channels=3, features=4, levels=3).eval()
    with torch.no_grad():
        y = net(torch.zeros((2, 2) + shape))
    assert tuple(y.shape) == (2, 3) + shape


def test_carpal_configuration_five_levels_leaky_relu():
    net = nets.build("unet2d", in_channels=1, out_channels=4, features=4, levels=5, act="leaky_relu",
                     negative_slope=0.2).eval()
    acts = [m for m in net.modules() if isinstance(m, torch.nn.LeakyReLU)]
    assert len(acts) == 2 * (2 * 5 + 1) and all(a.negative_slope == 0.2 for a in acts)
    assert not any(isinstance(m, torch.nn.ReLU) for m in net.modules())
    with torch.no_grad():
        assert tuple(net(torch.zeros(1, 1, 64, 32)).shape) == (1, 4, 64, 32)


@pytest.mark.parametrize(
    "dims, kwargs, expected",
    [
        # 2-D hand count, levels=1, features [2, 4], 1 -> 1 channel (9 taps, 4 taps in the transposed conv):
        # enc0 9*1*2+9*2*2+4*2=62, enc1 9*2*4+9*4*4+4*4=232, up 4*4*2+2=34, dec 9*4*2+9*2*2+4*2=116, head 3
        (2, {"in_channels": 1, "out_channels": 1, "features": [2, 4], "levels": 1}, 447),
        # the same in 3-D (the count of the original UNet3D test)
        (3, {"in_channels": 1, "out_channels": 1, "features": [2, 4], "levels": 1}, 1_235),
        # the shipped MPI segmenter
        (3, {"in_channels": 1, "out_channels": 3, "features": [12, 24, 48, 96], "levels": 3}, 788_607),
        (2, {"in_channels": 2, "out_channels": 1, "features": [16, 32, 64, 128, 256], "levels": 4}, None),
        (2, {"in_channels": 1, "out_channels": 5, "features": 3, "levels": 5}, None),
    ],
)
def test_parameter_count_formula(dims, kwargs, expected):
    for norm in ("batch", "instance"):
        net = UNet(dims, norm=norm, **kwargs)
        n = sum(p.numel() for p in net.parameters())
        assert n == unet_parameter_count(dims, **kwargs)
        if expected is not None:
            assert n == expected


def _make_transparent(net: UNet) -> None:
    """Centre-tap identity convolutions, identity norms, all-ones transposed convolutions (nearest up-sampling):
    a non-negative input x then maps to x + U(P(x)) + U(U(P(P(x)))) + ... (P = 2x max-pool, U = 2x nearest)."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d)) and m.kernel_size[0] == 3:
                m.weight.zero_()
                m.weight[(slice(None), slice(None)) + (1,) * net.spatial_dims] = 1.0
            elif isinstance(m, (torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)):
                m.weight.fill_(1.0)
                m.bias.zero_()
            elif isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
                m.running_mean.zero_()
                m.running_var.fill_(1.0 - m.eps)
                m.weight.fill_(1.0)
                m.bias.zero_()
        net.head.weight.fill_(1.0)
        net.head.bias.zero_()


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("levels", [1, 3])
def test_delta_maps_to_same_location(dims, levels):
    net = UNet(dims, 1, 1, features=[1] * (levels + 1), levels=levels).eval()
    _make_transparent(net)
    size = 16
    rng = np.random.default_rng(10 * dims + levels)
    for _ in range(5):
        p = tuple(int(v) for v in rng.integers(1, size - 1, dims))
        x = torch.zeros((1, 1) + (size,) * dims)
        x[(0, 0) + p] = 1.0
        with torch.no_grad():
            y = net(x)[0, 0].numpy()
        expected = np.zeros((size,) * dims)
        expected[p] += 1.0
        for lvl in range(1, levels + 1):
            c = 2**lvl
            expected[tuple(slice((q // c) * c, (q // c) * c + c) for q in p)] += 1.0
        np.testing.assert_allclose(y, expected, atol=1e-4)
        assert np.unravel_index(np.argmax(y), y.shape) == p


def test_divisibility_and_input_errors():
    net = nets.build("unet2d", in_channels=2, out_channels=1, features=2, levels=4)
    with pytest.raises(ValueError, match=r"unet2d with 4 levels needs spatial sizes divisible by 16.*\(48, 64\)"):
        net(torch.zeros(1, 2, 40, 64))
    with pytest.raises(ValueError, match="expects a"):
        net(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="expects a"):
        net(torch.zeros(1, 2, 16, 16, 16))
    with pytest.raises(ValueError, match="levels\\+1"):
        nets.build("unet2d", features=[2, 4], levels=3)
    with pytest.raises(ValueError, match="act must be"):
        UNet(2, act="gelu")
    with pytest.raises(ValueError, match="spatial_dims"):
        UNet(1)


def test_softplus_output_is_non_negative_and_registry():
    assert {"unet2d", "unet3d"} <= set(nets.available())
    net = nets.build("unet2d", in_channels=2, out_channels=1, features=2, levels=2, out_act="softplus").eval()
    with torch.no_grad():
        net.head.bias.fill_(-50.0)
        y = net(torch.randn(2, 2, 16, 16))
    assert float(y.min()) >= 0.0
    with pytest.raises(ValueError, match="out_act"):
        nets.build("unet2d", out_act="sigmoid")


def test_unet3d_is_the_generic_net_with_the_original_keys():
    net = UNet3D(1, 3, features=[2, 4, 8], levels=2)
    assert isinstance(net, UNet) and net.spatial_dims == 3
    keys = set(net.state_dict())
    # the layout the shipped mpi-myocardium safetensors were written with
    assert {"encoders.0.0.weight", "encoders.0.1.running_mean", "encoders.2.4.weight", "ups.0.weight", "ups.1.bias",
            "decoders.1.3.weight", "head.weight", "head.bias"} <= keys
    assert not any(k.startswith(("encoders.0.2", "encoders.0.5")) for k in keys)  # activations have no state
