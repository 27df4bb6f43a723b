"""A small Siamese image encoder with a *bounded* pair similarity (the NM-USNet similarity term, fixed).

The seed method's Siamese head returned the Euclidean *distance* between two 4096-d embeddings, so its loss
``1 - SN(y, y_hat)`` was largest for a perfect prediction. Here both images go through one shared encoder

    E(x) = normalize_L2( Linear( GAP( [Conv 3x3 -> norm -> ReLU -> MaxPool 2] x n_stages (x) ) ) )

Global average pooling makes the embedding nearly translation invariant (a focus in the wrong place can score
as similar; only border effects tell positions apart). ``coords=True`` appends two coordinate channels (ramps
from -1 to 1, "CoordConv") to make position part of the embedding; it is off by default because in a short
pre-training trial it learned worse than the plain encoder (pair accuracy 0.51 vs 0.70 after ~400 steps).

and the similarity is the rescaled cosine of the embeddings::

    similarity(a, b) = (1 + <E(a), E(b)>) / 2  in [0, 1],   = 1 when a == b,   symmetric in (a, b).

Scale and zero images: each input is divided by ``max(peak, floor)`` inside the network, so shapes rather than
overall scale are compared (the scale is the MSE term's job), while images whose peak is far below ``floor``
(input units; the parathyroid recipe works in Tc-normaliser units where a focus peaks at ~0.05-1) stay
near zero instead of having their faint noise blown up. A study without adenomas has an all-zero target: that
is safe, because the convolutions have biases (a zero input still gives a non-zero feature vector) and the L2
normalisation uses ``F.normalize`` with an epsilon, so no NaN can appear.

The encoder is trained as a pair scorer before the generator (binary cross-entropy on the similarity), then
frozen (see :mod:`MedSegAILib.train.parathyroid`).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from MedSegAILib.nets import register


class SiameseEncoder(nn.Module):
    """Shared encoder and bounded similarity; input ``(N, in_channels, H, W)`` (H, W >= 2**len(features))."""

    def __init__(self, in_channels: int = 1, features: Sequence[int] = (16, 32, 64, 64), embedding: int = 64,
                 floor: float = 0.01, coords: bool = False, eps: float = 1e-6):
        super().__init__()
        layers: list[nn.Module] = []
        self.coords = bool(coords)
        c = in_channels + (2 if self.coords else 0)
        for f in features:
            layers += [nn.Conv2d(c, int(f), 3, padding=1), nn.BatchNorm2d(int(f)), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            c = int(f)
        self.features = nn.Sequential(*layers)
        self.proj = nn.Linear(c, embedding)
        self.in_channels, self.floor, self.eps = in_channels, float(floor), float(eps)

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """Per-image peak normalisation (zero images stay zero; see the module docstring)."""
        peak = x.detach().flatten(1).amax(dim=1).clamp_min(max(self.floor, self.eps))
        return x / peak.view(-1, *([1] * (x.ndim - 1)))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Unit-length embeddings ``(N, embedding)``."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"siamese2d expects a (N, {self.in_channels}, H, W) tensor; got {tuple(x.shape)}")
        x = self.scale(x)
        if self.coords:
            n, _, hh, ww = x.shape
            v = torch.linspace(-1.0, 1.0, hh, dtype=x.dtype, device=x.device).view(1, 1, hh, 1).expand(n, 1, hh, ww)
            u = torch.linspace(-1.0, 1.0, ww, dtype=x.dtype, device=x.device).view(1, 1, 1, ww).expand(n, 1, hh, ww)
            x = torch.cat([x, u, v], dim=1)
        h = self.features(x).mean(dim=(2, 3))
        return F.normalize(self.proj(h), dim=1, eps=self.eps)

    def similarity(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``(1 + cos(E(a), E(b))) / 2`` per pair, shape ``(N,)``, in [0, 1]. Both go through one batch so
        batch-norm statistics (in training mode) are shared, which keeps ``similarity(a, a) == 1``."""
        n = a.shape[0]
        e = self.embed(torch.cat([a, b], dim=0))
        cos = (e[:n] * e[n:]).sum(dim=1)
        return ((1.0 + cos) / 2.0).clamp(0.0, 1.0)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.similarity(a, b)


@register("siamese2d")
def build_siamese2d(in_channels: int = 1, features: Sequence[int] = (16, 32, 64, 64), embedding: int = 64,
                    floor: float = 0.01, coords: bool = False) -> SiameseEncoder:
    return SiameseEncoder(in_channels=in_channels, features=tuple(features), embedding=embedding, floor=floor,
                          coords=coords)
