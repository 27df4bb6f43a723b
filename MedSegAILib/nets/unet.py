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
* Normalisation: ``"batch"`` (BatchNormD; after training a fixed affine map, deterministic at inference),
  ``"instance"`` (InstanceNormD with affine parameters, no running statistics) or ``"layer"`` (below).
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

Variants (options of the same class; the defaults ``block="plain"``, ``attention="none"`` build exactly the
network above, same modules, same state-dict keys, same random initialisation order):

* ``norm="layer"``: ``GroupNorm(1, C)`` -- "layer normalisation" of a convolutional feature map: mean and
  variance over all of (C, D, H, W) of *one* sample, then a per-channel affine map (2 parameters per channel).
  It has no running statistics, works at batch size 1 and gives a sample the same output whatever else is in
  the batch, in training and in evaluation mode alike (batch norm does neither).
* ``block="residual"`` (:class:`ResidualBlock`): ``act(norm(conv3(act(norm(conv3(x))))) + s(x))`` with
  ``s = identity`` when the channel count is unchanged, else a 1^D convolution (no bias) + norm projection.
  Extra parameters over the plain block: ``a b + 2 b`` when ``a != b``, else 0.
* ``attention="cbam"`` (:class:`CBAM`, Woo et al., ECCV 2018): every encoder block (the bottleneck included)
  and every decoder block is followed by channel attention then spatial attention, so the skip connections
  carry the attended features and each decoder level re-weights its fused features before up-sampling. Channel
  attention: ``x * sigmoid(MLP(avgpool x) + MLP(maxpool x))`` with one MLP ``C -> h -> C`` (ReLU, biases),
  ``h = max(min_hidden, C // reduction)``; spatial attention: ``x * sigmoid(conv_k([mean_c x, max_c x]))``
  (one ``k^D`` convolution 2 -> 1 channel with bias, zero padding ``k // 2``). Parameters per CBAM::

      cbam(C) = 2 C h + h + C + 2 k^D + 1

  A module with attention stores each block as ``encoders.i.block.*`` and its CBAM as ``encoders.i.cbam.*``
  (likewise ``decoders.i``).

The parotid builders (3-D, 1 -> 3 channels, widths 8-128, 4 levels, leaky ReLU 0.01; input (N, 1, 64, 128, 128))::

    resunet3d    block="residual", norm="layer"                      1,435,027 parameters
    cbam_unet3d  block="plain", attention="cbam" (r 8, h >= 4, k 7),  1,426,170 parameters
                 norm="instance"

CPU speed (bench/bench_parotid_nets.py): train in ``torch.channels_last_3d`` (``net.to(memory_format=...)`` and
the same for the input; 1.5-2x faster oneDNN convolutions, same numbers, same state dict). PyTorch sends a 3-D
convolution whose ``N * C_in * D * H <= 20480`` to its slow im2col path at batch size 1 (a heuristic tuned for
2-D), which hits the channel-doubling convolutions of the deeper levels; a batch of 2 avoids it.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Optional, Sequence, Union

import torch
from torch import nn

from MedSegAILib.nets import register

Features = Union[int, Sequence[int]]

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_CONVT = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_POOL = {2: nn.MaxPool2d, 3: nn.MaxPool3d}
_BN = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_IN = {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}
_BLOCKS = ("plain", "residual")
_ATTENTIONS = ("none", "cbam")
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
    """``"batch"`` (running statistics), ``"instance"`` (per sample and channel, affine) or ``"layer"``
    (``GroupNorm(1, C)``: per sample over all channels and voxels, per-channel affine). 2 parameters per channel."""
    if kind == "batch":
        return _BN[spatial_dims](channels)
    if kind == "instance":
        return _IN[spatial_dims](channels, affine=True)
    if kind == "layer":
        return nn.GroupNorm(1, channels)
    raise ValueError(f"{name}: norm must be 'batch', 'instance' or 'layer'; got {kind!r}")


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


class ResidualBlock(nn.Module):
    """``act(norm2(conv2(act(norm1(conv1(x))))) + proj(x))``; ``proj`` is ``None`` (identity) when ``c_in == c_out``,
    else ``Sequential(conv 1^D (no bias), norm)`` so the sum is defined. The final activation comes after the sum
    (the "original" ResNet form): the block can represent the identity map by driving its second norm's scale to
    zero, which keeps a deep net trainable from the start."""

    def __init__(self, c_in: int, c_out: int, norm: str = "layer", spatial_dims: int = 3, act: str = "relu",
                 negative_slope: float = 0.01):
        super().__init__()
        conv = _CONV[_check_dims(spatial_dims)]
        self.conv1 = conv(c_in, c_out, 3, padding=1, bias=False)
        self.norm1 = make_norm(norm, c_out, spatial_dims)
        self.act1 = make_act(act, negative_slope)
        self.conv2 = conv(c_out, c_out, 3, padding=1, bias=False)
        self.norm2 = make_norm(norm, c_out, spatial_dims)
        self.proj: Optional[nn.Sequential] = None
        if c_in != c_out:
            self.proj = nn.Sequential(conv(c_in, c_out, 1, bias=False), make_norm(norm, c_out, spatial_dims))
        self.act2 = make_act(act, negative_slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.proj is None else self.proj(x)
        y = self.norm2(self.conv2(self.act1(self.norm1(self.conv1(x)))))
        return self.act2(y + shortcut)


class ChannelAttention(nn.Module):
    """CBAM channel attention: ``x * sigmoid(MLP(mean_S x) + MLP(max_S x))``, one MLP ``C -> h -> C`` (ReLU) shared
    by both pooled descriptors; ``h = max(min_hidden, C // reduction)`` so narrow layers keep a usable bottleneck."""

    def __init__(self, channels: int, reduction: int = 8, min_hidden: int = 4):
        super().__init__()
        if reduction < 1 or min_hidden < 1:
            raise ValueError(f"cbam: reduction and min_hidden must be >= 1; got {reduction}, {min_hidden}")
        hidden = max(int(min_hidden), int(channels) // int(reduction))
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels))

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """The per-sample, per-channel weights in (0, 1), shape ``(N, C, 1, ..., 1)``."""
        flat = x.flatten(2)
        logit = self.mlp(flat.mean(dim=2)) + self.mlp(flat.amax(dim=2))
        return torch.sigmoid(logit).view(*x.shape[:2], *([1] * (x.ndim - 2)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weights(x)


class SpatialAttention(nn.Module):
    """CBAM spatial attention: ``x * sigmoid(conv_k([mean_C x, max_C x]))`` (one 2 -> 1 channel ``k^D`` convolution
    with bias, zero padding ``k // 2``, so every size works). ``k`` must be odd to keep the map centred."""

    def __init__(self, kernel_size: int = 7, spatial_dims: int = 3):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"cbam: the spatial kernel size must be odd and >= 1; got {kernel_size}")
        self.conv = _CONV[_check_dims(spatial_dims)](2, 1, kernel_size, padding=kernel_size // 2, bias=True)

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """The per-voxel weights in (0, 1), shape ``(N, 1, *S)``."""
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv(pooled))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weights(x)


class CBAM(nn.Sequential):
    """Convolutional Block Attention Module: channel attention, then spatial attention (the order of the CBAM
    paper, which found it better than the reverse or parallel). Keys ``channel.mlp.{0,2}.*``, ``spatial.conv.*``."""

    def __init__(self, channels: int, reduction: int = 8, min_hidden: int = 4, kernel_size: int = 7,
                 spatial_dims: int = 3):
        super().__init__(OrderedDict(channel=ChannelAttention(channels, reduction, min_hidden),
                                     spatial=SpatialAttention(kernel_size, spatial_dims)))


def cbam_parameter_count(channels: int, reduction: int = 8, min_hidden: int = 4, kernel_size: int = 7,
                         spatial_dims: int = 3) -> int:
    """``2 C h + h + C + 2 k^D + 1`` with ``h = max(min_hidden, C // reduction)``."""
    h = max(int(min_hidden), int(channels) // int(reduction))
    return 2 * channels * h + h + channels + 2 * kernel_size**spatial_dims + 1


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
        block: str = "plain",
        attention: str = "none",
        cbam_reduction: int = 8,
        cbam_min_hidden: int = 4,
        cbam_kernel: int = 7,
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
        if block not in _BLOCKS:
            raise ValueError(f"{self.name}: block must be one of {list(_BLOCKS)}; got {block!r}")
        if attention not in _ATTENTIONS:
            raise ValueError(f"{self.name}: attention must be one of {list(_ATTENTIONS)}; got {attention!r}")
        self.spatial_dims, self.out_act, self.block, self.attention = dims, out_act, block, attention
        self.in_channels, self.out_channels, self.levels, self.features = in_channels, out_channels, levels, feats
        blk = dict(norm=norm, spatial_dims=dims, act=act, negative_slope=negative_slope)
        cbam = dict(reduction=cbam_reduction, min_hidden=cbam_min_hidden, kernel_size=cbam_kernel, spatial_dims=dims)
        if attention == "cbam":
            CBAM(4, **cbam)  # validate the CBAM settings before building anything

        def make_block(c_in: int, c_out: int) -> nn.Module:
            body = (ConvBlock if block == "plain" else ResidualBlock)(c_in, c_out, **blk)
            if attention == "none":
                return body
            return nn.Sequential(OrderedDict(block=body, cbam=CBAM(c_out, **cbam)))

        self.encoders = nn.ModuleList([make_block(in_channels, feats[0])])
        for lvl in range(1, levels + 1):
            self.encoders.append(make_block(feats[lvl - 1], feats[lvl]))
        self.pool = _POOL[dims](2)
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for lvl in range(levels, 0, -1):
            self.ups.append(_CONVT[dims](feats[lvl], feats[lvl - 1], kernel_size=2, stride=2, output_padding=0))
            self.decoders.append(make_block(2 * feats[lvl - 1], feats[lvl - 1]))
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
                         levels: int, block: str = "plain", attention: str = "none", cbam_reduction: int = 8,
                         cbam_min_hidden: int = 4, cbam_kernel: int = 7) -> int:
    """The documented parameter count of :class:`UNet` (every norm kind has 2 parameters per channel)."""
    dims = _check_dims(spatial_dims)
    f = feature_list(features, levels)
    k, t = 3**dims, 2**dims

    def block_count(a: int, b: int) -> int:
        n = k * a * b + k * b * b + 4 * b
        if block == "residual" and a != b:
            n += a * b + 2 * b  # 1^D projection conv + its norm
        if attention == "cbam":
            n += cbam_parameter_count(b, cbam_reduction, cbam_min_hidden, cbam_kernel, dims)
        return n

    total = block_count(in_channels, f[0])
    for lvl in range(1, levels + 1):
        total += block_count(f[lvl - 1], f[lvl])
        total += t * f[lvl] * f[lvl - 1] + f[lvl - 1]  # transposed conv
        total += block_count(2 * f[lvl - 1], f[lvl - 1])
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


#: default widths of the parotid networks (input patch (N, 1, 64, 128, 128) at 1 mm, 4 poolings -> 4 x 8 x 8
#: bottleneck); sized for CPU training, see :func:`build_resunet3d`
PAROTID_FEATURES = (8, 16, 32, 64, 128)


@register("resunet3d")
def build_resunet3d(
    in_channels: int = 1, out_channels: int = 3, features: Features = PAROTID_FEATURES, levels: int = 4,
    norm: str = "layer", act: str = "leaky_relu", negative_slope: float = 0.01,
) -> UNet:
    """Residual 3-D U-Net with layer normalisation (parotid model A): :class:`ResidualBlock` everywhere,
    ``GroupNorm(1, C)``, max-pool down, transposed-conv up, 1x1x1 head (3 logits: background, right, left parotid).

    Defaults: widths 8-128, 4 levels (bottleneck 4 x 8 x 8 for a 64 x 128 x 128 patch), 1,435,027 parameters;
    the smallest of the two sizes measured by ``bench/bench_parotid_nets.py`` (a training step on 2 CPU cores takes
    seconds, not the 1-2 s hoped for; see the module docstring for the faster settings)."""
    return UNet(3, in_channels, out_channels, features, levels,
                norm, act, negative_slope, name="resunet3d", block="residual")


@register("cbam_unet3d")
def build_cbam_unet3d(
    in_channels: int = 1, out_channels: int = 3, features: Features = PAROTID_FEATURES, levels: int = 4,
    norm: str = "instance", act: str = "leaky_relu", negative_slope: float = 0.01, cbam_reduction: int = 8,
    cbam_min_hidden: int = 4, cbam_kernel: int = 7,
) -> UNet:
    """3-D U-Net with CBAM attention (parotid model B): plain double-conv blocks, each encoder block (bottleneck
    included) and each decoder block followed by :class:`CBAM`; instance norm (per sample, like layer norm
    independent of the batch, and the usual choice for batch-1 3-D training; the paper does not say).

    Same widths and depth as :func:`build_resunet3d` (1,426,170 parameters), so the two models differ by block,
    attention and norm only. The 7^3 spatial-attention convolution at full resolution is the single most expensive
    layer on CPU (2 -> 1 channels defeat oneDNN's vectorisation); ``cbam_kernel=5`` or ``3`` is cheaper."""
    return UNet(3, in_channels, out_channels, features, levels,
                norm, act, negative_slope, name="cbam_unet3d", attention="cbam", cbam_reduction=cbam_reduction,
                cbam_min_hidden=cbam_min_hidden, cbam_kernel=cbam_kernel)
