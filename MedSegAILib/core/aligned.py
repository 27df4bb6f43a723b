"""Resampling between two grids with the same direction matrix, as separable per-axis linear operators.

Anti-aliased (area-averaging) where the destination is coarser, linear interpolation where it is finer, with the
share of each destination voxel inside the source field of view. Exact, deterministic and fast for the aligned
case (a box cut from a volume, a coarser or finer copy of the same plane), where a general SimpleITK resampler
would alias or blur. Used by the tasks' pre-processing (myocardial SPECT boxes, planar scintigraphy grids).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from MedSegAILib.core.volume import Geometry


def axis_operator(n_src: int, s_src: float, n_dst: int, s_dst: float, offset: float) -> tuple[np.ndarray, np.ndarray]:
    """1-D resampling operator between two aligned grids along one axis.

    Source voxel ``i`` is centred at ``i * s_src``; destination voxel ``j`` at ``offset + j * s_dst``. Returns
    ``(A, inside)``: ``A[j, i]`` weights (float64, ``n_dst x n_src``) such that ``A @ f`` is the mean of the
    linear interpolant of ``f`` over destination voxel ``j`` (point value when the destination is finer),
    and ``inside[j]`` the share of that voxel lying inside the source field of view (the source is taken to
    extend half a voxel beyond its first and last centres; outside it contributes nothing).
    """
    m = 1 if s_dst <= s_src else int(math.ceil(2.0 * s_dst / s_src))
    sub = (np.arange(m) + 0.5) / m - 0.5  # sub-sample offsets in destination voxels
    pos = (offset + (np.arange(n_dst)[:, None] + sub[None, :]) * s_dst) / s_src  # source index units
    valid = (pos >= -0.5) & (pos <= n_src - 0.5)
    p = np.clip(pos, 0.0, n_src - 1.0)
    lo = np.floor(p).astype(int)
    hi = np.minimum(lo + 1, n_src - 1)
    w_hi = p - lo
    a = np.zeros((n_dst, n_src))
    rows = np.repeat(np.arange(n_dst), m)
    vw = valid.astype(float) / m
    np.add.at(a, (rows, lo.ravel()), ((1.0 - w_hi) * vw).ravel())
    np.add.at(a, (rows, hi.ravel()), (w_hi * vw).ravel())
    return a, vw.sum(axis=1)


def _check_aligned(src: Geometry, dst: Geometry) -> None:
    if not np.allclose(np.asarray(src.direction), np.asarray(dst.direction), atol=1e-6):
        raise ValueError("resample_aligned needs grids with the same direction matrix")


def aligned_operators(src: Geometry, dst: Geometry) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per-axis operators ``[(A_k, in_k), (A_j, in_j), (A_i, in_i)]`` from ``src`` to ``dst``."""
    _check_aligned(src, dst)
    d = np.asarray(src.direction, float)
    off = d.T @ (np.asarray(dst.origin, float) - np.asarray(src.origin, float))  # (i, j, k) in mm
    ops = []
    for ax in (2, 1, 0):  # array axes k, j, i
        ops.append(axis_operator(src.shape[2 - ax], src.spacing[ax], dst.shape[2 - ax], dst.spacing[ax], off[ax]))
    return ops


def resample_aligned(array: np.ndarray, src: Geometry, dst: Geometry, outside: float | Sequence[float] = 0.0) -> np.ndarray:
    """Resample ``array`` (``[k, j, i]`` or ``(C, k, j, i)``) from grid ``src`` onto grid ``dst`` (same direction).

    Anti-aliased (area-averaging) where ``dst`` is coarser, linear where finer. Voxels (or parts of voxels)
    outside the source field of view take ``outside`` (one value, or one per channel). Returns float32.
    """
    arr = np.asarray(array, dtype=np.float32)
    squeeze = arr.ndim == 3
    if squeeze:
        arr = arr[None]
    ops = aligned_operators(src, dst)
    out = arr
    for ax, (a, _) in enumerate(ops):
        out = np.moveaxis(np.tensordot(a.astype(np.float32), out, axes=([1], [ax + 1])), 0, ax + 1)
    inside = ops[0][1][:, None, None] * ops[1][1][None, :, None] * ops[2][1][None, None, :]
    outside_v = np.broadcast_to(np.asarray(outside, np.float32).reshape(-1), (out.shape[0],))
    if np.any(outside_v != 0):
        out = out + (1.0 - inside.astype(np.float32))[None] * outside_v[:, None, None, None]
    out = np.ascontiguousarray(out, dtype=np.float32)
    return out[0] if squeeze else out


def inside_fraction(src: Geometry, dst: Geometry) -> np.ndarray:
    """Share of each ``dst`` voxel that lies inside the ``src`` field of view (``[k, j, i]``)."""
    ops = aligned_operators(src, dst)
    return (ops[0][1][:, None, None] * ops[1][1][None, :, None] * ops[2][1][None, None, :]).astype(np.float32)
