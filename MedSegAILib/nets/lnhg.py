"""LNHG networks: the 3-D residual "nodule image" generator and its conditional WGAN critic.

Intensity scale of every input and output: ``x = (clip(HU, -1000, 500) + 1000) / 1000`` (air 0, water 1, 1.5 max).

Generator (``"lnhg_generator3d"``, input/output ``(N, 1, D, H, W)``, D, H, W multiples of 4)::

    stem   conv3(1 -> f0), norm, act                                  full resolution      -> s0
           ResBlock(f0) x blocks[0]                                                        -> e0
    down1  conv3 stride 2 (f0 -> f1), norm, act, ResBlock(f1) x blocks[1]   1/2            -> e1
    down2  conv3 stride 2 (f1 -> f2), norm, act, ResBlock(f2) x blocks[2]   1/4  (bottleneck)
    up1    convT 2x2x2 stride 2 (f2 -> f1) + e1 (ADDITIVE skip), ResBlock(f1) x blocks[1]
    up0    convT 2x2x2 stride 2 (f1 -> f0) + e0 (ADDITIVE skip), ResBlock(f0) x blocks[0]
    head   conv3(f0 -> 1) (bias)      ->   y = ReLU(head + x)            (global input residual)

``ResBlock(c)`` = ``act(norm(conv3(act(norm(conv3(h))))) + h)``. Activations: LeakyReLU(0.01) as in the seed.
Like the seed generator (Generator.py: ReLU(conv(...) + input)), the output is the **nodule image**: the input's
density where the head leaves it (inside the nodule) and exactly 0 where the head pushes ``head + x`` below 0.
Unlike the seed (no pooling, 32-256 channels at full resolution, 2.33 M parameters) the widths are small and two
stride-2 levels carry the context. Defaults (widths 8/16/32, blocks (0, 1, 2): no residual block at full
resolution, 1 at 1/2, 2 at 1/4 and 1 per decoder level) have 161,593 parameters; a full WGAN-GP step (critic step
+ generator step, batch 4 of 32 x 48 x 48) takes ~1.5 s on one CPU thread (widths 12/24/48 with a full-resolution
block: 8 s).

Normalisation (``norm``): ``"group"`` (default; ``GroupNorm(min(groups, C), C)``), ``"instance"`` or ``"batch"``.
Group norm is the default because GAN training here runs with batches of 2-4 3-D patches: batch statistics of
so few samples are noisy, and batch norm would also couple the generated samples of a batch (bad for the
critic's per-sample gradient penalty downstream). Group norm is per sample, identical in training and
inference. Its only cost is that statistics depend on the window content, so inference windows should be
close to the training patch size (``MedSegAILib.tasks.lung_nodule.segmentation`` uses the training box, 36 x 36 x 32 mm).

Critic (``"lnhg_critic3d"``, input ``(N, 2, D, H, W)`` = concat(x, nodule image), output ``(N,)``)::

    [conv4 stride 2 (c_{i-1} -> c_i), act] for c_i in features (c_{-1} = 2);  conv1(c_last -> 1)
    -> mean over all positions  (PatchGAN scores averaged: one scalar per sample)

(defaults 16/32/64: 166,065 parameters; receptive field 22 voxels; the first layer already strides, which
keeps the gradient penalty's double backward cheap on CPU).

Act = LeakyReLU(0.2); **no normalisation** (the gradient penalty is defined per sample; batch norm mixes
samples and invalidates it, see Gulrajani et al. 2017). Its size does not depend on the patch size (the seed's
critic had a 25 M-weight fully connected layer fixed to 3 x 256 x 256). The seed's critic saw only the nodule
image; this one is **conditional** on the CT (as in pix2pix): a plausible-looking blob is not enough, the critic
judges whether the nodule image fits *this* CT (boundary where the density edge is, vessels cut off, nothing
left over), which is what segmentation needs.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from MedSegAILib.nets import register


def _norm(kind: str, c: int, groups: int) -> nn.Module:
    if kind == "group":
        g = max(1, min(int(groups), c))
        while c % g:
            g -= 1
        return nn.GroupNorm(g, c)
    if kind == "instance":
        return nn.InstanceNorm3d(c, affine=True)
    if kind == "batch":
        return nn.BatchNorm3d(c)
    raise ValueError(f"lnhg_generator3d: norm must be 'group', 'instance' or 'batch'; got {kind!r}")


class _ResBlock(nn.Module):
    """``act(norm2(conv2(act(norm1(conv1 h)))) + h)``, bias-free 3x3x3 convolutions, same width."""

    def __init__(self, c: int, norm: str, groups: int, slope: float):
        super().__init__()
        self.conv1 = nn.Conv3d(c, c, 3, padding=1, bias=False)
        self.norm1 = _norm(norm, c, groups)
        self.conv2 = nn.Conv3d(c, c, 3, padding=1, bias=False)
        self.norm2 = _norm(norm, c, groups)
        self.act = nn.LeakyReLU(slope)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        y = self.norm2(self.conv2(self.act(self.norm1(self.conv1(h)))))
        return self.act(y + h)


def _stage(c_in: int, c_out: int, stride: int, n_blocks: int, norm: str, groups: int, slope: float) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv3d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
                               _norm(norm, c_out, groups), nn.LeakyReLU(slope)]
    layers += [_ResBlock(c_out, norm, groups, slope) for _ in range(int(n_blocks))]
    return nn.Sequential(*layers)


class LNHGGenerator3D(nn.Module):
    """See the module docstring. ``forward(x)`` with ``x`` ``(N, 1, D, H, W)`` in the working scale, D/H/W
    multiples of :attr:`divisor` (4); returns ``ReLU(head(features) + x)`` of the same shape."""

    divisor = 4

    def __init__(self, features: Sequence[int] = (8, 16, 32), blocks: Sequence[int] = (0, 1, 2),
                 norm: str = "group", groups: int = 4, negative_slope: float = 0.01):
        super().__init__()
        f = [int(v) for v in features]
        b = [int(v) for v in blocks]
        if len(f) != 3 or len(b) != 3:
            raise ValueError(f"lnhg_generator3d: features and blocks need 3 entries; got {f}, {b}")
        _norm(norm, 4, groups)
        self.features, self.blocks, self.norm = f, b, norm
        self.enc0 = _stage(1, f[0], 1, b[0], norm, groups, negative_slope)
        self.enc1 = _stage(f[0], f[1], 2, b[1], norm, groups, negative_slope)
        self.enc2 = _stage(f[1], f[2], 2, b[2], norm, groups, negative_slope)
        self.up1 = nn.ConvTranspose3d(f[2], f[1], 2, stride=2)
        self.dec1 = nn.Sequential(*[_ResBlock(f[1], norm, groups, negative_slope) for _ in range(max(1, b[1]))])
        self.up0 = nn.ConvTranspose3d(f[1], f[0], 2, stride=2)
        self.dec0 = nn.Sequential(*[_ResBlock(f[0], norm, groups, negative_slope) for _ in range(b[0])])
        self.head = nn.Conv3d(f[0], 1, 3, padding=1)
        for m in self.modules():
            if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d)):
                nn.init.kaiming_normal_(m.weight, a=negative_slope, nonlinearity="leaky_relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        # a small head: the net starts close to the identity (the input residual) instead of at random
        nn.init.normal_(self.head.weight, std=1e-3)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """``head(features(x))``: the pre-ReLU correction added to ``x``."""
        if x.ndim != 5 or x.shape[1] != 1:
            raise ValueError(f"lnhg_generator3d expects (N, 1, D, H, W); got {tuple(x.shape)}")
        if any(int(s) % self.divisor for s in x.shape[2:]):
            raise ValueError(f"lnhg_generator3d needs D, H, W divisible by {self.divisor}; got {tuple(x.shape[2:])}"
                             " (pad the input first)")
        e0 = self.enc0(x)
        e1 = self.enc1(e0)
        h = self.enc2(e1)
        h = self.dec1(self.up1(h) + e1)
        h = self.dec0(self.up0(h) + e0)
        return self.head(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.residual(x) + x)


class LNHGCritic3D(nn.Module):
    """Conditional PatchGAN critic, see the module docstring. ``forward(x, y)`` (or one 2-channel tensor) ->
    ``(N,)`` scores; any spatial size >= 2**(len(features)-1) works."""

    def __init__(self, features: Sequence[int] = (16, 32, 64), in_channels: int = 2, negative_slope: float = 0.2):
        super().__init__()
        f = [int(v) for v in features]
        layers: list[nn.Module] = [nn.Conv3d(in_channels, f[0], 4, stride=2, padding=1), nn.LeakyReLU(negative_slope)]
        for a, b in zip(f[:-1], f[1:]):
            layers += [nn.Conv3d(a, b, 4, stride=2, padding=1), nn.LeakyReLU(negative_slope)]
        layers.append(nn.Conv3d(f[-1], 1, 1))
        self.body = nn.Sequential(*layers)
        self.in_channels = in_channels

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = x if y is None else torch.cat([x, y], dim=1)
        if h.ndim != 5 or h.shape[1] != self.in_channels:
            raise ValueError(f"lnhg_critic3d expects (N, {self.in_channels}, D, H, W); got {tuple(h.shape)}")
        return self.body(h).mean(dim=(1, 2, 3, 4))


def gradient_penalty(critic: nn.Module, cond: torch.Tensor, real: torch.Tensor, fake: torch.Tensor,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """WGAN-GP term ``E[(||grad_yhat D(cond, yhat)||_2 - 1)^2]`` at ``yhat = eps real + (1 - eps) fake``,
    ``eps ~ U(0, 1)`` per sample (the norm is over all voxels of one sample; the condition is not interpolated)."""
    eps = torch.rand(real.shape[0], *([1] * (real.ndim - 1)), generator=generator, dtype=real.dtype)
    yhat = (eps * real.detach() + (1 - eps) * fake.detach()).requires_grad_(True)
    score = critic(cond, yhat)
    (grad,) = torch.autograd.grad(score.sum(), yhat, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1.0) ** 2).mean()


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@register("lnhg_generator3d")
def build_lnhg_generator3d(features: Sequence[int] = (8, 16, 32), blocks: Sequence[int] = (0, 1, 2),
                           norm: str = "group", groups: int = 4, negative_slope: float = 0.01) -> LNHGGenerator3D:
    """Manifest builder of the LNHG nodule-image generator (defaults: widths 8/16/32, no full-resolution residual blocks)."""
    return LNHGGenerator3D(features, blocks, norm, groups, negative_slope)


@register("lnhg_critic3d")
def build_lnhg_critic3d(features: Sequence[int] = (16, 32, 64), in_channels: int = 2,
                        negative_slope: float = 0.2) -> LNHGCritic3D:
    """Manifest builder of the conditional PatchGAN critic (training only; never shipped)."""
    return LNHGCritic3D(features, in_channels, negative_slope)
