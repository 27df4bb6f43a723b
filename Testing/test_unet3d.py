"""The 3-D U-Net: skip alignment (the seed's output_padding bug), size checks, parameter count, registry."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from MedSegAILib import nets  # noqa: E402
from MedSegAILib.nets.unet3d import UNet3D, unet3d_parameter_count  # noqa: E402


def _make_transparent(net: UNet3D) -> None:
    """Weights that turn the U-Net (1 feature per level) into a known function of its input.

    Every 3x3x3 convolution becomes a centre tap of weight 1 (identity; the decoder's first conv sums the skip
    and the up-sampled channel), norms become identity, transposed convolutions become nearest-neighbour
    up-sampling (all-ones 2x2x2 kernel). For a non-negative input the output is then
    ``x + U(P(x)) + U(U(P(P(x)))) + ...`` (P = 2x max-pool, U = 2x nearest up-sampling): an impulse yields
    nested, *grid-aligned* cubes. A one-voxel skip misalignment moves the cubes off the impulse's cell.
    """
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.Conv3d) and m.kernel_size == (3, 3, 3):
                m.weight.zero_()
                m.weight[:, :, 1, 1, 1] = 1.0
            elif isinstance(m, torch.nn.ConvTranspose3d):
                m.weight.fill_(1.0)
                m.bias.zero_()
            elif isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.zero_()
                m.running_var.fill_(1.0 - m.eps)  # exact identity
                m.weight.fill_(1.0)
                m.bias.zero_()
        net.head.weight.fill_(1.0)
        net.head.bias.zero_()


def _expected(shape, p, levels):
    out = np.zeros(shape)
    out[p] += 1.0
    for lvl in range(1, levels + 1):
        c = 2**lvl
        sl = tuple(slice((q // c) * c, (q // c) * c + c) for q in p)
        out[sl] += 1.0
    return out


@pytest.mark.parametrize("levels", [1, 2, 3])
def test_skips_are_aligned_impulse(levels):
    net = UNet3D(1, 1, features=[1] * (levels + 1), levels=levels).eval()
    _make_transparent(net)
    size = 16
    rng = np.random.default_rng(levels)
    for _ in range(6):  # impulses at various parities inside the pooling cells
        p = tuple(int(v) for v in rng.integers(1, size - 1, 3))
        x = torch.zeros(1, 1, size, size, size)
        x[(0, 0) + p] = 1.0
        with torch.no_grad():
            y = net(x)[0, 0].numpy()
        np.testing.assert_allclose(y, _expected((size,) * 3, p, levels), atol=1e-4)
        assert np.unravel_index(np.argmax(y), y.shape) == p


def test_translation_equivariance_by_pooling_stride():
    """Random weights: shifting a compact input by 2**levels voxels shifts the output by the same amount
    (compared far from the borders, where both outputs see only zeros beyond the object)."""
    torch.manual_seed(0)
    net = UNet3D(1, 2, features=4, levels=2).eval()
    x = torch.zeros(1, 1, 48, 48, 48)
    x[0, 0, 14:22, 15:21, 16:24] = torch.rand(8, 6, 8) + 0.5
    xs = torch.roll(x, shifts=(4, 4, 4), dims=(2, 3, 4))
    with torch.no_grad():
        y = net(x)[0]
        ys = net(xs)[0]
    a = y[:, 10:30, 10:30, 10:30]
    b = ys[:, 14:34, 14:34, 14:34]
    assert torch.allclose(a, b, atol=1e-5)
    # and a shift that is not a multiple of the pooling stride is *not* exactly equivariant (the test can fail)
    x1 = torch.roll(x, shifts=(1, 1, 1), dims=(2, 3, 4))
    with torch.no_grad():
        y1 = net(x1)[0]
    assert not torch.allclose(a, y1[:, 11:31, 11:31, 11:31], atol=1e-5)


def test_output_shape_and_size_check():
    net = UNet3D(1, 3, features=4, levels=3)
    with torch.no_grad():
        y = net(torch.zeros(1, 1, 16, 24, 32))
    assert tuple(y.shape) == (1, 3, 16, 24, 32)
    with pytest.raises(ValueError, match="divisible by 8"):
        net(torch.zeros(1, 1, 16, 20, 16))
    with pytest.raises(ValueError, match="expects"):
        net(torch.zeros(1, 2, 16, 16, 16))


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        # the shipped segmenter and localizer (see MedSegAILib/weights/mpi-myocardium/CARD.md)
        ({"in_channels": 1, "out_channels": 3, "features": [12, 24, 48, 96], "levels": 3}, 788_607),
        ({"in_channels": 1, "out_channels": 2, "features": [4, 8, 16, 32], "levels": 3}, 87_954),
        # hand count, levels=1, features [2, 4], 1 -> 1 channel:
        # enc0 27*1*2+27*2*2+4*2=170, enc1 27*2*4+27*4*4+4*4=664, up 8*4*2+2=66, dec 27*4*2+27*2*2+4*2=332, head 3
        ({"in_channels": 1, "out_channels": 1, "features": [2, 4], "levels": 1}, 1_235),
    ],
)
def test_parameter_count(kwargs, expected):
    net = nets.build("unet3d", **kwargs)
    n = sum(p.numel() for p in net.parameters())
    assert n == expected
    assert unet3d_parameter_count(**kwargs) == expected


def test_instance_norm_variant_and_registry():
    assert "unet3d" in nets.available()
    net = nets.build("unet3d", in_channels=1, out_channels=2, features=2, levels=2, norm="instance")
    assert any(isinstance(m, torch.nn.InstanceNorm3d) for m in net.modules())
    assert sum(p.numel() for p in net.parameters()) == unet3d_parameter_count(1, 2, 2, 2)
    no_op = [m for m in net.modules() if isinstance(m, torch.nn.ConvTranspose3d)]
    assert all(m.output_padding == (0, 0, 0) for m in no_op)
    with pytest.raises(ValueError):
        nets.build("unet3d", features=[2, 4], levels=3)
