"""A plain 3-D U-Net (the seed method's family, with its skip misalignment fixed).

Architecture (``levels`` = number of 2x down-samplings)::

    block(c_in, f0) ─────────────────────────────────────────────── concat ─ block(2 f0, f0) ─ 1x1x1 conv -> logits
      └ maxpool 2 ─ block(f0, f1) ───────────────────── concat ─ block(2 f1, f1) ─ up(f1 -> f0) ┘
                      └ maxpool 2 ─ ... ─ block(f_{L-1}, f_L)  (bottleneck) ─ up(f_L -> f_{L-1}) ┘

* ``block(a, b)`` = [Conv3d 3x3x3 (no bias, zero padding 1) -> normalisation -> ReLU] x 2.
* Up-sampling is ``ConvTranspose3d(kernel 2, stride 2, output_padding 0)``: it exactly doubles the size, so
  the up-sampled features land on the skip features voxel for voxel. The seed method used
  ``output_padding=1`` and then cropped the leading voxel, which shifts every decoder level by one voxel;
  here the input size must instead be divisible by ``2**levels`` (checked, with a clear message).
* Normalisation: ``"batch"`` (BatchNorm3d, default; after training it is a fixed affine map, cheap and
  deterministic at inference, and the statistics of normalised SPECT inputs are stable) or ``"instance"``
  (InstanceNorm3d with affine parameters; no running statistics).
* The output is raw logits for ``out_channels`` classes; apply softmax (never threshold logits).

Parameter count (bias-free 3x3x3 convolutions; each norm layer has 2 parameters per channel)::

    block(a, b)        = 27 a b + 27 b b + 4 b
    up(a, b)           = 8 a b + b              (transposed convolution, with bias)
    head(f0, C)        = f0 C + C
    total              = block(in, f0) + sum_{l=1..L} block(f_{l-1}, f_l)
                         + sum_{l=1..L} [up(f_l, f_{l-1}) + block(2 f_{l-1}, f_{l-1})] + head

:func:`unet3d_parameter_count` evaluates that formula (a unit test checks it against the module).
"""

from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import nn

from MedSegAILib.nets import register

Features = Union[int, Sequence[int]]


def _feature_list(features: Features, levels: int) -> list[int]:
    if isinstance(features, int):
        return [int(features) * 2**i for i in range(levels + 1)]
    feats = [int(f) for f in features]
    if len(feats) != levels + 1:
        raise ValueError(f"unet3d: features must have levels+1 = {levels + 1} entries; got {feats}")
    return feats


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    if kind == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    raise ValueError(f"unet3d: norm must be 'batch' or 'instance'; got {kind!r}")


class ConvBlock(nn.Sequential):
    """[Conv3d 3x3x3 (no bias) -> norm -> ReLU] x 2."""

    def __init__(self, c_in: int, c_out: int, norm: str = "batch"):
        super().__init__(
            nn.Conv3d(c_in, c_out, 3, padding=1, bias=False),
            _norm(norm, c_out),
            nn.ReLU(inplace=True),
            nn.Conv3d(c_out, c_out, 3, padding=1, bias=False),
            _norm(norm, c_out),
            nn.ReLU(inplace=True),
        )


class UNet3D(nn.Module):
    """3-D U-Net; see the module docstring. Input ``(N, in_channels, D, H, W)``, output logits
    ``(N, out_channels, D, H, W)``; D, H and W must be divisible by ``2**levels``."""

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 2,
        features: Features = 16,
        levels: int = 3,
        norm: str = "batch",
    ):
        super().__init__()
        if levels < 1:
            raise ValueError("unet3d: levels must be >= 1")
        feats = _feature_list(features, levels)
        self.in_channels, self.out_channels, self.levels, self.features = in_channels, out_channels, levels, feats
        self.encoders = nn.ModuleList([ConvBlock(in_channels, feats[0], norm)])
        for lvl in range(1, levels + 1):
            self.encoders.append(ConvBlock(feats[lvl - 1], feats[lvl], norm))
        self.pool = nn.MaxPool3d(2)
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for lvl in range(levels, 0, -1):
            self.ups.append(nn.ConvTranspose3d(feats[lvl], feats[lvl - 1], kernel_size=2, stride=2, output_padding=0))
            self.decoders.append(ConvBlock(2 * feats[lvl - 1], feats[lvl - 1], norm))
        self.head = nn.Conv3d(feats[0], out_channels, kernel_size=1)

    @property
    def divisor(self) -> int:
        return 2**self.levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"unet3d expects a (N, {self.in_channels}, D, H, W) tensor; got shape {tuple(x.shape)}"
            )
        d = self.divisor
        if any(int(s) % d for s in x.shape[2:]):
            raise ValueError(
                f"unet3d with {self.levels} levels needs spatial sizes divisible by {d}; got {tuple(x.shape[2:])}. "
                f"Pad the input (e.g. to {tuple(-(-int(s) // d) * d for s in x.shape[2:])}) before calling it."
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
        return self.head(x)


def unet3d_parameter_count(in_channels: int, out_channels: int, features: Features, levels: int) -> int:
    """The documented parameter count of :class:`UNet3D` (both norm kinds have 2 parameters per channel)."""
    f = _feature_list(features, levels)

    def block(a: int, b: int) -> int:
        return 27 * a * b + 27 * b * b + 4 * b

    total = block(in_channels, f[0])
    for lvl in range(1, levels + 1):
        total += block(f[lvl - 1], f[lvl])
        total += 8 * f[lvl] * f[lvl - 1] + f[lvl - 1]  # transposed conv
        total += block(2 * f[lvl - 1], f[lvl - 1])
    total += f[0] * out_channels + out_channels
    return total


@register("unet3d")
def build_unet3d(
    in_channels: int = 1, out_channels: int = 2, features: Features = 16, levels: int = 3, norm: str = "batch"
) -> UNet3D:
    return UNet3D(in_channels=in_channels, out_channels=out_channels, features=features, levels=levels, norm=norm)
