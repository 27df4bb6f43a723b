"""Evaluation metrics on label maps and images, all in physical units where distances are involved.

Every overlap metric is computed per structure on binary masks (never pooled with the background), and the empty
cases are defined explicitly: two empty masks agree perfectly (1.0); one empty mask against a non-empty one is 0.0.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice similarity coefficient of two binary masks."""
    a = np.asarray(a, bool)
    b = np.asarray(b, bool)
    if a.shape != b.shape:
        raise ValueError(f"masks differ in shape: {a.shape} vs {b.shape}")
    total = int(a.sum()) + int(b.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(a, b).sum()) / total


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union (Jaccard index) of two binary masks."""
    a = np.asarray(a, bool)
    b = np.asarray(b, bool)
    union = int(np.logical_or(a, b).sum())
    if union == 0:
        return 1.0
    return int(np.logical_and(a, b).sum()) / union


def per_label_dice(pred: np.ndarray, ref: np.ndarray, values: Sequence[int]) -> dict[int, float]:
    return {int(v): dice(pred == v, ref == v) for v in values}


def _surface(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return mask & ~ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(3, 1), border_value=0)


def surface_distances(a: np.ndarray, b: np.ndarray, spacing_kji: Sequence[float]) -> np.ndarray:
    """Distances (mm) from each surface voxel of ``a`` to the surface of ``b`` and back (both directions)."""
    from scipy import ndimage

    a = np.asarray(a, bool)
    b = np.asarray(b, bool)
    sa, sb = _surface(a), _surface(b)
    if not sa.any() or not sb.any():
        return np.array([np.inf])
    dist_to_b = ndimage.distance_transform_edt(~sb, sampling=spacing_kji)
    dist_to_a = ndimage.distance_transform_edt(~sa, sampling=spacing_kji)
    return np.concatenate([dist_to_b[sa], dist_to_a[sb]])


def hausdorff95(a: np.ndarray, b: np.ndarray, spacing_kji: Sequence[float]) -> float:
    """95th percentile of the symmetric surface distances in mm (``inf`` when a mask is empty)."""
    d = surface_distances(a, b, spacing_kji)
    return float(np.percentile(d, 95)) if np.isfinite(d).all() else float("inf")


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation of two images (flattened); NaN when either is constant."""
    x = np.asarray(x, float).ravel()
    y = np.asarray(y, float).ravel()
    xs, ys = x - x.mean(), y - y.mean()
    den = np.sqrt((xs**2).sum() * (ys**2).sum())
    return float((xs * ys).sum() / den) if den > 0 else float("nan")


def bland_altman(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Mean difference (a - b) and the 95 % limits of agreement."""
    d = np.asarray(a, float) - np.asarray(b, float)
    sd = float(d.std(ddof=1)) if len(d) > 1 else 0.0
    bias = float(d.mean())
    return {"bias": bias, "sd": sd, "lower": bias - 1.96 * sd, "upper": bias + 1.96 * sd, "n": int(len(d))}
