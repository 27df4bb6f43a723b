"""The 3-D U-Net of the mpi-myocardium models: a thin compatibility layer over :mod:`MedSegAILib.nets.unet`.

:class:`UNet3D` is :class:`~MedSegAILib.nets.unet.UNet` with ``spatial_dims=3`` (same module layout, so the
state-dict keys of the shipped weights are unchanged); see that module for the architecture and the parameter
count formula (``block(a, b) = 27 a b + 27 b b + 4 b``, ``up(a, b) = 8 a b + b`` in 3-D).
"""

from __future__ import annotations

from MedSegAILib.nets import register
from MedSegAILib.nets.unet import Features, UNet, unet_parameter_count


class UNet3D(UNet):
    """3-D U-Net. Input ``(N, in_channels, D, H, W)``, output logits ``(N, out_channels, D, H, W)``; D, H and W
    must be divisible by ``2**levels``."""

    def __init__(self, in_channels: int = 1, out_channels: int = 2, features: Features = 16, levels: int = 3,
                 norm: str = "batch", act: str = "relu", negative_slope: float = 0.01):
        super().__init__(3, in_channels, out_channels, features, levels, norm, act, negative_slope, name="unet3d")


def unet3d_parameter_count(in_channels: int, out_channels: int, features: Features, levels: int) -> int:
    """The documented parameter count of :class:`UNet3D`."""
    return unet_parameter_count(3, in_channels, out_channels, features, levels)


@register("unet3d")
def build_unet3d(
    in_channels: int = 1, out_channels: int = 2, features: Features = 16, levels: int = 3, norm: str = "batch",
    act: str = "relu", negative_slope: float = 0.01,
) -> UNet3D:
    return UNet3D(in_channels=in_channels, out_channels=out_channels, features=features, levels=levels, norm=norm,
                  act=act, negative_slope=negative_slope)
