"""Generic training losses and metrics (torch), reusable by every recipe.

* :class:`UncertaintyWeighting` — learned homoscedastic-uncertainty weighting of several loss terms
  (Kendall, Gal & Cipolla, CVPR 2018), bounded so it cannot degenerate.
* :func:`pearson_r` — per-image Pearson correlation of a batch (a validation metric).
* :func:`foreground_weighted_mse` — MSE that up-weights the pixels where the target is non-negligible.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class UncertaintyWeighting(nn.Module):
    """``L = sum_i 0.5 exp(-s_i) L_i + 0.5 s_i`` with learnable ``s_i = log sigma_i^2``, bounded in ``[lo, hi]``.

    Minimising over ``s_i`` alone gives ``s_i = log L_i``: each term ends up weighted by the inverse of its
    own size, so terms with very different scales (an MSE of ~1e-3 and a similarity loss of ~0.1) contribute
    comparable gradients, and the ``0.5 s_i`` term stops the weights growing without bound.

    Why bounded, and why this form: the seed method learned ``alpha / (alpha + beta)`` with unconstrained
    ``alpha, beta`` at a learning rate of 0.01; the gradient always pushes weight towards the currently smaller
    term and nothing keeps ``alpha + beta`` away from 0 or negative, so the weights diverged or flipped sign
    (rewarding a worse prediction). Here each weight ``w_i = exp(-s_i)`` is positive by construction, and
    ``s_i`` is a smooth bounded map of the free parameter ``r_i``::

        s_i = c + h tanh((r_i - c) / h),   c = (lo + hi) / 2,  h = (hi - lo) / 2

    (identity near ``c``, never leaving ``(lo, hi)``, gradient never exactly zero), so ``w_i`` stays in
    ``(exp(-hi), exp(-lo))`` even when a term is constant or zero (where the unbounded optimum is
    ``s_i -> -inf``). Defaults ``lo = -10, hi = 10`` allow weights from 4.5e-5 to 2.2e4.
    """

    def __init__(self, n_terms: int, lo: float = -10.0, hi: float = 10.0, init: float = 0.0):
        super().__init__()
        if n_terms < 1:
            raise ValueError("UncertaintyWeighting needs at least one term")
        if not lo < init < hi:
            raise ValueError(f"UncertaintyWeighting: need lo < init < hi; got {lo}, {init}, {hi}")
        self.lo, self.hi = float(lo), float(hi)
        self.raw = nn.Parameter(torch.full((n_terms,), float(init)))

    def log_variances(self) -> torch.Tensor:
        """The bounded ``s_i`` (shape ``(n_terms,)``)."""
        c, h = (self.lo + self.hi) / 2.0, (self.hi - self.lo) / 2.0
        return c + h * torch.tanh((self.raw - c) / h)

    @torch.no_grad()
    def init_from(self, terms: Sequence[float]) -> None:
        """Start at the optimum for these term values (``s_i = log L_i``, kept 5 % inside the bounds), so the
        weights begin balanced instead of spending thousands of small Adam steps walking there."""
        c, h = (self.lo + self.hi) / 2.0, (self.hi - self.lo) / 2.0
        for i, v in enumerate(terms):
            s = float(torch.log(torch.tensor(max(float(v), 1e-30))))
            s = min(max(s, self.lo + 0.05 * h), self.hi - 0.05 * h)
            self.raw[i] = c + h * float(torch.atanh(torch.tensor((s - c) / h)))

    def weights(self) -> torch.Tensor:
        """Effective weights ``0.5 exp(-s_i)`` of the terms (positive, finite)."""
        return 0.5 * torch.exp(-self.log_variances())

    def forward(self, terms: Sequence[torch.Tensor]) -> torch.Tensor:
        s = self.log_variances()
        if len(terms) != s.numel():
            raise ValueError(f"UncertaintyWeighting expects {s.numel()} terms; got {len(terms)}")
        total = s.new_zeros(())
        for i, term in enumerate(terms):
            total = total + 0.5 * torch.exp(-s[i]) * term + 0.5 * s[i]
        return total


def pearson_r(y: torch.Tensor, y_hat: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Pearson correlation per image of a batch: ``(N, ...)`` x ``(N, ...)`` -> ``(N,)``.

    ``r = sum (y - mean y)(y_hat - mean y_hat) / sqrt(sum (y - mean y)^2 sum (y_hat - mean y_hat)^2)``.
    Images whose truth ``y`` is constant (e.g. all zero: a study without adenomas) have no defined correlation
    and give NaN — callers exclude and count them (``torch.isnan``). A constant prediction of a non-constant
    truth gives 0 (a failure, not an exclusion).
    """
    if y.shape != y_hat.shape:
        raise ValueError(f"pearson_r: shapes differ {tuple(y.shape)} vs {tuple(y_hat.shape)}")
    a = y.reshape(y.shape[0], -1).double()
    b = y_hat.reshape(y_hat.shape[0], -1).double()
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    va, vb = (a * a).sum(dim=1), (b * b).sum(dim=1)
    r = (a * b).sum(dim=1) / torch.sqrt(va * vb).clamp_min(eps)
    r = torch.where(vb > eps, r, torch.zeros_like(r))
    r = torch.where(va > eps, r, torch.full_like(r, float("nan")))
    return r.to(y.dtype if y.is_floating_point() else torch.float32)


def foreground_weighted_mse(y_hat: torch.Tensor, y: torch.Tensor, fg_weight: float = 4.0,
                            rel_threshold: float = 0.05) -> torch.Tensor:
    """``mean(w (y_hat - y)^2)`` with ``w = 1 + fg_weight`` where ``y > rel_threshold * max(y)`` of that image, else 1.

    Small foci cover a few dozen of ~16 000 pixels, so a plain MSE is dominated by the (easy) background; the
    extra weight on the foreground makes missing or under-estimating a focus cost more. Images with an
    all-zero target get ``w = 1`` everywhere (a false positive is still penalised).
    """
    peak = y.detach().reshape(y.shape[0], -1).amax(dim=1).view(-1, *([1] * (y.ndim - 1)))
    fg = (y.detach() > rel_threshold * peak) & (peak > 0)
    w = 1.0 + fg_weight * fg.to(y.dtype)
    return (w * (y_hat - y) ** 2).mean()
