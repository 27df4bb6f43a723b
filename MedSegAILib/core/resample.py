"""Resampling in physical space (SimpleITK), so that spacing, origin and direction are always honoured."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from MedSegAILib.core.io import from_sitk, to_sitk
from MedSegAILib.core.volume import Geometry, Volume

_INTERP = {"nearest": "sitkNearestNeighbor", "linear": "sitkLinear", "bspline": "sitkBSpline",
           "label_gaussian": "sitkLabelGaussian"}


def grid_for_spacing(volume: Volume, spacing: Sequence[float]) -> Geometry:
    """A grid with ``spacing`` covering the same physical extent and orientation as ``volume``.

    Voxel centres are placed so that the new grid's outer faces coincide with the old grid's outer faces.
    """
    old_sp = np.asarray(volume.spacing, float)
    new_sp = np.asarray(spacing, float)
    extent = np.asarray(volume.size_ijk, float) * old_sp
    size = np.maximum(np.round(extent / new_sp).astype(int), 1)
    # first-voxel centre: old corner (origin - half old voxel) + half a new voxel, along each axis
    corner_ijk = -0.5 * np.ones(3)
    corner = volume.index_to_lps(corner_ijk)[0]
    origin = corner + volume.direction @ (0.5 * new_sp)
    shape = tuple(int(s) for s in size[::-1])
    return Geometry(shape, tuple(float(s) for s in new_sp), tuple(float(o) for o in origin), volume.direction.copy())


def resample_volume(
    volume: Volume,
    spacing: Optional[Sequence[float]] = None,
    reference: Optional[Geometry] = None,
    interpolation: str = "linear",
    default_value: float = 0.0,
    dtype: Optional[np.dtype] = None,
) -> Volume:
    """Resample ``volume`` onto a grid with ``spacing`` (same extent) or onto ``reference``.

    ``interpolation``: ``"nearest"`` for label maps, ``"linear"`` or ``"bspline"`` for images.
    """
    import SimpleITK as sitk

    if (spacing is None) == (reference is None):
        raise ValueError("give exactly one of spacing= or reference=")
    grid = grid_for_spacing(volume, spacing) if reference is None else reference
    if interpolation not in _INTERP:
        raise ValueError(f"interpolation must be one of {sorted(_INTERP)}")
    src = to_sitk(volume)
    if interpolation != "nearest" and volume.array.dtype.kind in "iub":
        src = sitk.Cast(src, sitk.sitkFloat32)
    f = sitk.ResampleImageFilter()
    f.SetSize(tuple(int(n) for n in grid.shape[::-1]))
    f.SetOutputSpacing(tuple(float(s) for s in grid.spacing))
    f.SetOutputOrigin(tuple(float(o) for o in grid.origin))
    f.SetOutputDirection(tuple(float(v) for v in np.asarray(grid.direction).ravel()))
    f.SetInterpolator(getattr(sitk, _INTERP[interpolation]))
    f.SetDefaultPixelValue(float(default_value))
    out = from_sitk(f.Execute(src), dict(volume.meta))
    if dtype is not None:
        out.array = out.array.astype(dtype, copy=False)
    return out
