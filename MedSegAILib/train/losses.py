"""Generic training losses and metrics (torch), reusable by every recipe.

* :class:`UncertaintyWeighting` — learned homoscedastic-uncertainty weighting of several loss terms
  (Kendall, Gal & Cipolla, CVPR 2018), bounded so it cannot degenerate.
* :func:`pearson_r` — per-image Pearson correlation of a batch (a validation metric).
* :func:`foreground_weighted_mse` — MSE that up-weights the pixels where the target is non-negligible.
* :func:`soft_dice_loss` — 1 - mean soft Dice of chosen classes on softmax probabilities (the one soft-Dice
  implementation of the library: the carpal, mpi-myocardium and parotid recipes all call it).
* :func:`focal_loss` — multi-class focal loss (Lin et al., ICCV 2017) with per-class weights.
* :class:`HybridDiceFocalLoss` — ``w_d * soft Dice loss + w_f * focal loss`` (the parotid recipe's loss).
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence, Union

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


# ---------------------------------------------------------------------------------------------- segmentation losses
_EMPTY = ("exclude", "include")


def _class_targets(logits: torch.Tensor, target: torch.Tensor, classes: Sequence[int], name: str) -> torch.Tensor:
    """``(N, K, *S)`` float targets of the chosen classes: one-hot of an integer label map ``(N, *S)``, or the
    chosen channels of a per-class target ``(N, C, *S)`` (one-hot or soft, e.g. partial-volume fractions)."""
    n_cls = int(logits.shape[1])
    if any(not 0 <= c < n_cls for c in classes):
        raise ValueError(f"{name}: classes {list(classes)} out of range for {n_cls} output channels")
    if target.shape == logits.shape and target.is_floating_point():
        return target[:, list(classes)].to(logits.dtype)
    if target.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(f"{name}: target must be a label map {tuple(logits.shape[:1] + logits.shape[2:])} or "
                         f"per-class {tuple(logits.shape)}; got {tuple(target.shape)}")
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= n_cls):
        raise ValueError(f"{name}: labels must lie in [0, {n_cls - 1}]; got [{int(target.min())}, "
                         f"{int(target.max())}]")
    return torch.stack([(target == c) for c in classes], dim=1).to(logits.dtype)


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, classes: Iterable[int] = (1, 2), eps: float = 1e-5,
                   batch_dice: bool = True, empty: str = "exclude") -> torch.Tensor:
    """``1 - mean_c D_c`` over ``classes``, with the soft Dice of class c on softmax probabilities ``p``::

        D_c = (2 sum p_c y_c + eps) / (sum p_c + sum y_c + eps)

    ``logits``: ``(N, C, *S)``; ``target``: integer labels ``(N, *S)`` (one-hot internally) or per-class float
    targets ``(N, C, *S)`` (one-hot or soft). ``batch_dice=True`` sums over the batch and the voxels (one D_c
    per class: small structures in one sample do not get the weight of large ones in another, and a class absent
    from one patch but present in another still gets a useful value); ``False`` gives one D_c per sample and
    class and the mean runs over those (sample, class) pairs. Background is normally left out of ``classes``: it
    would dominate the mean and is near 1 for any sane prediction.

    Empty classes (``sum y_c = 0`` in the summation group, e.g. a patch that misses one parotid):

    * ``empty="exclude"`` (default): those terms are left out of the mean, so the loss is 1 - the mean Dice of the
      structures actually present; if none is present the result is an exact 0 that is still attached to the
      graph (zero gradient; false positives there are the job of a voxel-wise term such as :func:`focal_loss`).
      Why: with ``y_c = 0`` the term is ``eps / (sum p_c + eps)`` -- about 0 for any realistic prediction (the
      sum of ~10^6 small probabilities is far above ``eps = 1e-5``), a constant ~1 added to the loss with a
      gradient of only ``eps / (sum p_c + eps)^2`` per voxel. It carries no learning signal, but it halves the
      weight of the present gland's term and makes the reported loss meaningless. Nothing is divided by zero
      either way (``eps > 0`` is required), so no NaN can arise.
    * ``empty="include"``: keep every term (the carpal and mpi-myocardium recipes, with ``eps = 1``, where an
      absent class's term rewards predicting little of it).
    """
    classes = [int(c) for c in classes]
    if not classes:
        raise ValueError("soft_dice_loss: classes must not be empty")
    if not eps > 0:
        raise ValueError(f"soft_dice_loss: eps must be > 0 (it keeps empty classes finite); got {eps}")
    if empty not in _EMPTY:
        raise ValueError(f"soft_dice_loss: empty must be one of {list(_EMPTY)}; got {empty!r}")
    y = _class_targets(logits, target, classes, "soft_dice_loss")
    p = torch.softmax(logits, dim=1)[:, classes]
    dims = (0,) + tuple(range(2, p.ndim)) if batch_dice else tuple(range(2, p.ndim))
    inter = (p * y).sum(dims)
    y_sum = y.sum(dims)
    dice = (2 * inter + eps) / (p.sum(dims) + y_sum + eps)
    if empty == "include":
        return 1 - dice.mean()
    present = y_sum > 0
    if not bool(present.any()):
        return logits.sum() * 0.0
    return 1 - dice[present].mean()


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 1.0,
               alpha: Optional[Union[Sequence[float], torch.Tensor]] = (0.3, 0.35, 0.35)) -> torch.Tensor:
    """Multi-class focal loss, the mean over all voxels (and the batch) of ``-alpha_y (1 - p_y)^gamma log p_y``.

    ``logits``: ``(N, C, *S)``; ``target``: integer labels ``(N, *S)``; ``p_y`` the softmax probability of the true
    class. The factor ``(1 - p_y)^gamma`` shrinks the loss of voxels that are already right (the vast, easy
    background), ``alpha`` (length C, or ``None`` for all ones) weights the classes. ``gamma = 0`` with unit
    ``alpha`` is exactly the cross-entropy. Numerically: ``log p_y`` comes from ``log_softmax`` (no log of an
    underflowed probability) and ``1 - p_y = -expm1(log p_y)`` (no cancellation when ``p_y`` is near 1); the base is
    clamped at 1e-12 before the power so that ``gamma < 1`` cannot produce an infinite gradient at ``p_y = 1``.
    """
    if gamma < 0:
        raise ValueError(f"focal_loss: gamma must be >= 0; got {gamma}")
    n_cls = int(logits.shape[1])
    if target.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(f"focal_loss: target must be a label map {tuple(logits.shape[:1] + logits.shape[2:])}; "
                         f"got {tuple(target.shape)}")
    target = target.long()
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= n_cls):
        raise ValueError(f"focal_loss: labels must lie in [0, {n_cls - 1}]; got [{int(target.min())}, "
                         f"{int(target.max())}]")
    logp = torch.log_softmax(logits, dim=1).gather(1, target.unsqueeze(1)).squeeze(1)
    loss = -logp
    if gamma > 0:
        loss = loss * (-torch.expm1(logp)).clamp_min(1e-12) ** gamma
    if alpha is not None:
        a = torch.as_tensor(alpha, dtype=logits.dtype, device=logits.device)
        if a.shape != (n_cls,):
            raise ValueError(f"focal_loss: alpha needs one weight per class ({n_cls}); got {tuple(a.shape)}")
        loss = loss * a[target]
    return loss.mean()


class HybridDiceFocalLoss(nn.Module):
    """``L = dice_weight * soft_dice_loss + focal_weight * focal_loss`` (the parotid method: 0.7 / 0.3, Dice over
    the two glands only, focal with ``gamma = 1``, ``alpha = (0.3, 0.35, 0.35)``).

    The Dice term optimises the overlap of the small organs directly, independent of how much background the
    patch holds; the focal term is voxel-wise, so it gives every voxel a gradient (including patches without a
    gland, where the Dice term is 0 by the ``empty="exclude"`` rule of :func:`soft_dice_loss`) and its
    ``(1 - p)^gamma`` factor keeps the easy background from dominating. ``forward`` returns the total;
    :meth:`parts` returns ``{"dice", "focal", "total"}`` tensors and ``last`` holds the floats of the latest call
    (for logging).
    """

    def __init__(self, dice_weight: float = 0.7, focal_weight: float = 0.3, classes: Sequence[int] = (1, 2),
                 gamma: float = 1.0, alpha: Optional[Sequence[float]] = (0.3, 0.35, 0.35), eps: float = 1e-5,
                 batch_dice: bool = True, empty: str = "exclude"):
        super().__init__()
        if dice_weight < 0 or focal_weight < 0 or dice_weight + focal_weight <= 0:
            raise ValueError(f"HybridDiceFocalLoss: weights must be >= 0, not both 0; got {dice_weight}, "
                             f"{focal_weight}")
        if gamma < 0:
            raise ValueError(f"HybridDiceFocalLoss: gamma must be >= 0; got {gamma}")
        if empty not in _EMPTY:
            raise ValueError(f"HybridDiceFocalLoss: empty must be one of {list(_EMPTY)}; got {empty!r}")
        self.dice_weight, self.focal_weight = float(dice_weight), float(focal_weight)
        self.classes, self.gamma, self.eps = tuple(int(c) for c in classes), float(gamma), float(eps)
        self.batch_dice, self.empty = bool(batch_dice), empty
        self.alpha: Optional[torch.Tensor]
        self.register_buffer("alpha", None if alpha is None else torch.tensor([float(a) for a in alpha]),
                             persistent=False)
        self.last: dict[str, float] = {}

    def parts(self, logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        dice = soft_dice_loss(logits, target, self.classes, self.eps, self.batch_dice, self.empty)
        focal = focal_loss(logits, target, self.gamma, None if self.alpha is None else self.alpha.to(logits.dtype))
        total = self.dice_weight * dice + self.focal_weight * focal
        self.last = {"dice": float(dice.detach()), "focal": float(focal.detach()), "total": float(total.detach())}
        return {"dice": dice, "focal": focal, "total": total}

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.parts(logits, target)["total"]
