"""Generator inference around one nodule: CT box -> working grid -> LNHG generator -> back to the CT grid.

Working scale ``x = (clip(HU, -1000, 500) + 1000) / 1000``; working grid :data:`WORK_SPACING` (x, y, z =
0.75, 0.75, 1.0 mm) with the CT's own orientation (oblique directions are kept, so nothing is rotated).

:func:`segment_region` is the one code path used by the task and by ``bench/bench_lung_segmentation.py``:

1. a working-grid box of ``size_mm`` centred on ``center_lps`` (sizes rounded up to multiples of 4 voxels, the
   generator's divisor), voxels outside the CT read -1000 HU (air, as the crops were padded in training);
2. the CT is cut to that box's index range first (+2 voxels), so a whole-chest CT is never copied;
3. the generator's nodule image (float32, working scale, 0 outside the nodule) is resampled linearly onto the
   CT's own voxels inside the box's bounding index range, returned as a sub-volume ``Volume`` (its origin is the
   first voxel's LPS position, same spacing and direction as the CT).

The default box, x, y, z = 36 x 36 x 32 mm (48 x 48 x 32 working voxels), is the training patch of
``MedSegAILib.train.lung_generator`` (group-norm statistics depend on the window, so keep it close to that).

Then :func:`mask_from_nodule_image` (``img > threshold``) and :func:`component_at` (the connected component at
the nodule centre, or the nearest one within ``max_dist_mm``).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from MedSegAILib.core.volume import Geometry, Volume

WORK_SPACING = (0.75, 0.75, 1.0)
HU_MIN, HU_MAX = -1000.0, 500.0


def hu_to_work(hu: np.ndarray) -> np.ndarray:
    """``(clip(HU, -1000, 500) + 1000) / 1000`` as float32."""
    return ((np.clip(np.asarray(hu, np.float32), HU_MIN, HU_MAX) - HU_MIN) / 1000.0).astype(np.float32)


def pad_to_multiple(arr: np.ndarray, m: int, value: float) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Pad a (D, H, W) array at the high end of each axis to a multiple of ``m``; returns the padded array and
    the slices that recover the original."""
    pads = [(0, (-s) % m) for s in arr.shape]
    out = np.pad(arr, pads, constant_values=value) if any(p[1] for p in pads) else arr
    return out, tuple(slice(0, s) for s in arr.shape)


def run_generator(generator: Any, work: np.ndarray, device: str = "cpu") -> np.ndarray:
    """The generator on a (D, H, W) working-scale array (padded to its divisor with 0 = air, cropped back)."""
    import torch

    div = int(getattr(generator, "divisor", 4))
    x, sl = pad_to_multiple(np.asarray(work, np.float32), div, 0.0)
    with torch.no_grad():
        y = generator(torch.from_numpy(np.ascontiguousarray(x))[None, None].to(device))
    return y[0, 0].float().cpu().numpy()[sl]


def working_box(ct: Volume, center_lps: np.ndarray, size_mm: Sequence[float],
                spacing: Sequence[float] = WORK_SPACING, divisor: int = 4) -> Geometry:
    """A working grid with the CT's direction, ``size_mm`` (x, y, z along the CT's i, j, k axes) rounded up to a
    multiple of ``divisor`` voxels, centred on ``center_lps``."""
    sp = np.asarray(spacing, float)
    n = np.array([max(divisor, int(math.ceil(s / p / divisor)) * divisor) for s, p in zip(size_mm, sp)])
    origin = np.asarray(center_lps, float).reshape(3) - ct.direction @ (sp * (n - 1) / 2.0)
    return Geometry(tuple(int(v) for v in n[::-1]), tuple(float(s) for s in sp), tuple(float(o) for o in origin),
                    ct.direction.copy())


def _index_box(ct: Volume, grid: Geometry, margin: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer CT index range [lo, hi] (i, j, k; inclusive, clipped) covering the grid's corner voxels."""
    n = np.asarray(grid.shape[::-1], float) - 1
    corners = np.array([[a, b, c] for a in (0, n[0]) for b in (0, n[1]) for c in (0, n[2])])
    m = np.asarray(grid.direction) @ np.diag(grid.spacing)
    lps = corners @ m.T + np.asarray(grid.origin)
    ijk = ct.lps_to_index(lps)
    size = np.asarray(ct.size_ijk)
    lo = np.clip(np.floor(ijk.min(0) + 1e-6).astype(int) - margin, 0, size - 1)
    hi = np.clip(np.ceil(ijk.max(0) - 1e-6).astype(int) + margin, 0, size - 1)
    return lo, hi


def sub_volume(ct: Volume, lo: np.ndarray, hi: np.ndarray) -> Volume:
    """The CT voxels ``lo..hi`` (inclusive, i, j, k) as a Volume with the correct origin (a view, no copy)."""
    arr = ct.array[lo[2]:hi[2] + 1, lo[1]:hi[1] + 1, lo[0]:hi[0] + 1]
    return Volume(arr, ct.spacing, tuple(ct.index_to_lps(lo)[0]), ct.direction.copy(), dict(ct.meta))


def segment_region(generator: Any, ct: Volume, center_lps: np.ndarray, size_mm: Sequence[float] = (36.0, 36.0, 32.0),
                   device: str = "cpu", spacing: Sequence[float] = WORK_SPACING) -> Volume:
    """The generator's nodule image (float32, working scale, 0 outside the nodule) on the CT's own voxels inside
    the box of ``size_mm`` around ``center_lps`` (LPS mm). Returns a sub-volume with the CT's spacing/direction
    and ``meta["index_lo"]`` = its first voxel's (i, j, k) in ``ct``. See the module docstring."""
    from MedSegAILib.core.resample import resample_volume
    from MedSegAILib.errors import InputError

    grid = working_box(ct, center_lps, size_mm, spacing, int(getattr(generator, "divisor", 4)))
    lo, hi = _index_box(ct, grid, 2)
    ijk_c = ct.lps_to_index(np.asarray(center_lps, float).reshape(1, 3))[0]
    if np.any(ijk_c < -0.5 - np.asarray(size_mm) / np.asarray(ct.spacing)) or \
            np.any(ijk_c > np.asarray(ct.size_ijk) - 0.5 + np.asarray(size_mm) / np.asarray(ct.spacing)):
        raise InputError(f"The nodule centre {np.round(center_lps, 1)} (LPS mm) lies outside the CT; check the "
                         "coordinates (LPS vs RAS?).")
    src = sub_volume(ct, lo, hi)
    src = src.with_array(np.asarray(src.array, np.float32))
    hu = resample_volume(src, reference=grid, interpolation="linear", default_value=HU_MIN)
    img = run_generator(generator, hu_to_work(hu.array), device)
    work = Volume(img, grid.spacing, grid.origin, grid.direction)
    out_lo, out_hi = _index_box(ct, grid, 0)
    target = sub_volume(ct, out_lo, out_hi).geometry()
    back = resample_volume(work, reference=target, interpolation="linear", default_value=0.0, dtype=np.float32)
    back.meta = {"index_lo": tuple(int(v) for v in out_lo), "kind": "nodule_image"}
    return back


def mask_from_nodule_image(img: np.ndarray | Volume, threshold: float) -> np.ndarray:
    """``img > threshold`` (working scale; ``threshold`` chosen on validation data) as a bool array."""
    a = img.array if isinstance(img, Volume) else np.asarray(img)
    return a > float(threshold)


def component_at(mask: np.ndarray, center_kji: Sequence[float], spacing: Sequence[float] = (1.0, 1.0, 1.0),
                 max_dist_mm: float = 5.0) -> np.ndarray:
    """The 26-connected component of ``mask`` containing the voxel nearest ``center_kji`` ((k, j, i) index,
    may be fractional); if that voxel is background, the component with the voxel closest to the centre
    within ``max_dist_mm`` (``spacing`` = (si, sj, sk) mm); else an empty mask."""
    from scipy import ndimage

    mask = np.asarray(mask, bool)
    out = np.zeros_like(mask)
    if not mask.any():
        return out
    lab, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    c = np.asarray(center_kji, float)
    ci = tuple(int(np.clip(round(v), 0, s - 1)) for v, s in zip(c, mask.shape))
    if lab[ci]:
        return lab == lab[ci]
    pts = np.argwhere(lab > 0)
    d = np.sqrt((((pts - c) * np.asarray(spacing, float)[::-1]) ** 2).sum(1))
    best = int(np.argmin(d))
    if d[best] > max_dist_mm:
        return out
    return lab == lab[tuple(pts[best])]


def mask_centre_kji(mask: np.ndarray) -> np.ndarray:
    """Centroid (k, j, i) of a non-empty mask (the 'given' nodule centre of the benchmarks)."""
    return np.argwhere(np.asarray(mask) > 0).mean(0)
