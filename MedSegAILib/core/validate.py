"""Input checks shared by every task: clear, actionable errors before any work is done."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from MedSegAILib.core.volume import Volume
from MedSegAILib.errors import InputError

if TYPE_CHECKING:
    from MedSegAILib.tasks.base import InputSpec

#: Modalities each expected modality accepts (DICOM modality codes).
_COMPATIBLE = {
    "NM": {"NM", "PT", "ST"},  # SPECT is NM; some vendors write PT-like or ST
    "CT": {"CT"},
    "CR": {"CR", "DX", "RG", "PX", "XA"},
    "DX": {"CR", "DX", "RG", "PX", "XA"},
}


def check_volume(vol: Volume, spec: "InputSpec") -> None:
    """Raise :class:`InputError` if ``vol`` cannot be the ``spec`` input. Never modifies ``vol``."""
    what = spec.title
    arr = vol.array
    if arr.dtype.kind not in "biuf":
        raise InputError(f"The {what} has voxel type {arr.dtype}; a scalar (integer or float) image is required.")
    if spec.dims == 3 and vol.is_2d:
        raise InputError(
            f"The {what} is a 2-D image ({arr.shape[2]}x{arr.shape[1]} pixels) but this task needs a 3-D volume. "
            "Load the reconstructed volume (all slices), not a single slice or a planar image."
        )
    if spec.dims == 3 and min(arr.shape) < 8:
        raise InputError(
            f"The {what} has only {min(arr.shape)} voxels along one axis (shape {arr.shape}); "
            "this task needs a 3-D volume with at least 8 voxels along every axis."
        )
    if spec.dims == 2 and not vol.is_2d:
        raise InputError(
            f"The {what} is a 3-D volume with {arr.shape[0]} slices but this task expects a planar 2-D image."
        )
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr)
        if bad.any():
            raise InputError(
                f"The {what} contains {int(bad.sum())} NaN or infinite voxel(s). Fix or mask them "
                "(e.g. replace with 0) before segmenting; results on such data would be undefined."
            )
    if arr.size == 0:
        raise InputError(f"The {what} is empty (no voxels).")
    lo, hi = float(arr.min()), float(arr.max())
    if lo == hi:
        raise InputError(
            f"The {what} is constant (every voxel is {lo:g}); there is nothing to segment. "
            "Check that the right image was loaded and that it was reconstructed."
        )
    modality = str(vol.meta.get("modality", "")).upper()
    allowed = _COMPATIBLE.get(spec.modality.upper(), {spec.modality.upper()})
    if modality and modality not in allowed:
        raise InputError(
            f"The {what} is a {modality} image, but this task needs {spec.modality}. Select the right volume."
        )
    if vol.meta.get("is_labelmap"):
        raise InputError(
            f"The {what} is a label map (a segmentation), not an image. Select the original image volume."
        )


def plane_array(arr: np.ndarray, what: str = "image") -> np.ndarray:
    """The (H, W) float64 view of a planar image given as (H, W) or as a Volume-style (1, H, W) array; anything else
    is refused with an :class:`InputError` naming ``what``."""
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise InputError(f"The {what} must be a planar 2-D image, (H, W) or (1, H, W); got an array of shape {a.shape}.")
    return a.astype(np.float64, copy=False)
