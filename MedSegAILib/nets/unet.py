"""One U-Net for 2-D and 3-D images (real skip connections, exactly doubling up-sampling).

Architecture (``levels`` = number of 2x down-samplings, ``D`` = ``spatial_dims``)::

    block(c_in, f0) ─────────────────────────────────────────────── concat ─ block(2 f0, f0) ─ 1x1 conv -> output
      └ maxpool 2 ─ block(f0, f1) ───────────────────── concat ─ block(2 f1, f1) ─ up(f1 -> f0) ┘
                      └ maxpool 2 ─ ... ─ block(f_{L-1}, f_L)  (bottleneck) ─ up(f_L -> f_{L-1}) ┘

* ``block(a, b)`` = [ConvD 3^D (no bias, zero padding 1) -> normalisation -> activation] x 2.
* Up-sampling is ``ConvTransposeD(kernel 2, stride 2, output_padding 0)``: it exactly doubles the size, so the
  up-sampled features land on the skip features pixel for pixel (the seed MPI method used ``output_padding=1``
  plus a crop, which shifts every decoder level by one voxel; the seed NM-USNet "U-Net" had no skips at all).
  The input size must therefore be divisible by ``2**levels`` (checked, with a clear message).
* Normalisation: ``"batch"`` (BatchNormD; after training a fixed affine map, deterministic at inference) or
  ``"instance"`` (InstanceNormD with affine parameters, no running statistics).
* Activation: ``"relu"`` or ``"leaky_relu"`` (slope ``negative_slope``); neither has parameters, so the
  state-dict keys do not depend on it.
* Output: the ``out_channels``-channel map of the 1x1 head, raw (``out_act="none"``: logits for segmentation)
  or through a parameter-free non-negative map for regression of counts (``"softplus"`` or ``"relu"``).

Parameter count (bias-free 3^D convolutions, ``K = 3**D`` taps; each norm layer has 2 parameters per channel;
transposed convolutions have ``T = 2**D`` taps and a bias)::

    block(a, b)        = K a b + K b b + 4 b
    up(a, b)           = T a b + b
    head(f0, C)        = f0 C + C
    total              = block(in, f0) + sum_{l=1..L} block(f_{l-1}, f_l)
                         + sum_{l=1..L} [up(f_l, f_{l-1}) + block(2 f_{l-1}, f_{l-1})] + head

:func:`unet_parameter_count` evaluates that formula (a unit test checks it against the module). The module
layout (``encoders``, ``pool``, ``ups``, ``decoders``, ``head``) and hence the state-dict keys are those of the
original ``UNet3D``, so weights trained with it load unchanged (:mod:`MedSegAILib.nets.unet3d` is a thin alias).
"""

from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import nn

from MedSegAILib.nets import register

Features = Union[int, Sequence[int]]

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_CONVT = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_POOL = {2: nn.MaxPool2d, 3: nn.MaxPool3d}
_BN = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_IN = {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}
_OUT_ACTS = {"none": lambda t: t, "softplus": torch.nn.functional.softplus, "relu": torch.relu}


def feature_list(features: Features, levels: int, name: str = "unet") -> list[int]:
    """``levels + 1`` channel counts: an int ``f`` means ``[f, 2f, 4f, ...]``; a sequence is taken as is."""
    if isinstance(features, int):
        return [int(features) * 2**i for i in range(levels + 1)]
    feats = [int(f) for f in features]
    if len(feats) != levels + 1:
        raise ValueError(f"{name}: features must have levels+1 = {levels + 1} entries; got {feats}")
    return feats


def _check_dims(spatial_dims: int) -> int:
    if spatial_dims not in (2, 3):
        raise ValueError(f"unet: spatial_dims must be 2 or 3; got {spatial_dims!r}")
    return int(spatial_dims)


def make_norm(kind: str, channels: int, spatial_dims: int = 3, name: str = "unet") -> nn.Module:
    if kind == "batch":
        return _BN[spatial_dims](channels)
    if kind == "instance":
        return _IN[spatial_dims](channels, affine=True)
    raise ValueError(f"{name}: norm must be 'batch' or 'instance'; got {kind!r}")


def make_act(kind: str, negative_slope: float = 0.01, name: str = "unet") -> nn.Module:
    if kind == "relu":
        return nn.ReLU(inplace=True)
    if kind == "leaky_relu":
        return nn.LeakyReLU(float(negative_slope), inplace=True)
    raise ValueError(f"{name}: act must be 'relu' or 'leaky_relu'; got {kind!r}")


class ConvBlock(nn.Sequential):
    """[Conv 3^D (no bias) -> norm -> activation] x 2 (indices 0..5 in the state dict)."""

    def __init__(self, c_in: int, c_out: int, norm: str = "batch", spatial_dims: int = 3, act: str = "relu",
                 negative_slope: float = 0.01):
        conv = _CONV[_check_dims(spatial_dims)]
        super().__init__(
            conv(c_in, c_out, 3, padding=1, bias=False),
            make_norm(norm, c_out, spatial_dims),
            make_act(act, negative_slope),
            conv(c_out, c_out, 3, padding=1, bias=False),
            make_norm(norm, c_out, spatial_dims),
            make_act(act, negative_slope),
        )


class UNet(nn.Module):
    """2-D or 3-D U-Net; see the module docstring. Input ``(N, in_channels, *S)`` with ``len(S) == spatial_dims``,
    output ``(N, out_channels, *S)``; every size in ``S`` must be divisible by ``2**levels``."""

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 2,
        features: Features = 16,
        levels: int = 3,
        norm: str = "batch",
        act: str = "relu",
        negative_slope: float = 0.01,
        name: str = "",
        out_act: str = "none",
    ):
        super().__init__()
        dims = _check_dims(spatial_dims)
        self.name = name or f"unet{dims}d"
        if levels < 1:
            raise ValueError(f"{self.name}: levels must be >= 1")
        feats = feature_list(features, levels, self.name)
        make_norm(norm, 1, dims, self.name)  # validate the names early, with the network's name in the message
        make_act(act, negative_slope, self.name)
        if out_act not in _OUT_ACTS:
            raise ValueError(f"{self.name}: out_act must be one of {sorted(_OUT_ACTS)}; got {out_act!r}")
        self.spatial_dims, self.out_act = dims, out_act
        self.in_channels, self.out_channels, self.levels, self.features = in_channels, out_channels, levels, feats
        blk = dict(norm=norm, spatial_dims=dims, act=act, negative_slope=negative_slope)
        self.encoders = nn.ModuleList([ConvBlock(in_channels, feats[0], **blk)])
        for lvl in range(1, levels + 1):
            self.encoders.append(ConvBlock(feats[lvl - 1], feats[lvl], **blk))
        self.pool = _POOL[dims](2)
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for lvl in range(levels, 0, -1):
            self.ups.append(_CONVT[dims](feats[lvl], feats[lvl - 1], kernel_size=2, stride=2, output_padding=0))
            self.decoders.append(ConvBlock(2 * feats[lvl - 1], feats[lvl - 1], **blk))
        self.head = _CONV[dims](feats[0], out_channels, kernel_size=1)

    @property
    def divisor(self) -> int:
        """Every spatial size must be a multiple of this (``2**levels``)."""
        return 2**self.levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = self.spatial_dims
        axes = "D, H, W" if dims == 3 else "H, W"
        if x.ndim != dims + 2 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{self.name} expects a (N, {self.in_channels}, {axes}) tensor; got shape {tuple(x.shape)}"
            )
        d = self.divisor
        if any(int(s) % d for s in x.shape[2:]):
            raise ValueError(
                f"{self.name} with {self.levels} levels needs spatial sizes divisible by {d}; got "
                f"{tuple(x.shape[2:])}. Pad the input (e.g. to {tuple(-(-int(s) // d) * d for s in x.shape[2:])}) "
                "before calling it."
            )
        skips = []
        for enc in self.encoders[:-1]:
            x = enc(x)
            skips.append(x)
            x = self.pool(x)
        x = self.encoders[-1](x)
        for up, dec, skip in zip(self.ups, self.decoders, reversed(skips)):
            x = up(x)
            x = dec(torch.cat([skip, x], dim=1))
        return _OUT_ACTS[self.out_act](self.head(x))


def unet_parameter_count(spatial_dims: int, in_channels: int, out_channels: int, features: Features,
                         levels: int) -> int:
    """The documented parameter count of :class:`UNet` (both norm kinds have 2 parameters per channel)."""
    dims = _check_dims(spatial_dims)
    f = feature_list(features, levels)
    k, t = 3**dims, 2**dims

    def block(a: int, b: int) -> int:
        return k * a * b + k * b * b + 4 * b

    total = block(in_channels, f[0])
    for lvl in range(1, levels + 1):
        total += block(f[lvl - 1], f[lvl])
        total += t * f[lvl] * f[lvl - 1] + f[lvl - 1]  # transposed conv
        total += block(2 * f[lvl - 1], f[lvl - 1])
    total += f[0] * out_channels + out_channels
    return total


@register("unet2d")
def build_unet2d(
    in_channels: int = 1, out_channels: int = 2, features: Features = 16, levels: int = 3, norm: str = "batch",
    act: str = "relu", negative_slope: float = 0.01, out_act: str = "none",
) -> UNet:
    """Manifest builder of the 2-D U-Net (e.g. the parathyroid generator with ``out_act="softplus"``; the carpal
    task: 5 levels, leaky ReLU)."""
    return UNet(2, in_channels, out_channels, features, levels, norm, act, negative_slope, name="unet2d",
                out_act=out_act)
