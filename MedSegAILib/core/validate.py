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


def check_ct_hu(vol: Volume, what: str = "CT") -> None:
    """Raise :class:`InputError` unless ``vol`` looks like a CT in Hounsfield units.

    A CT of a body in HU has air (about -1000 HU, around the body and in the airways) and soft tissue (about
    0-100 HU). MR, PET/SPECT, a CT whose stored values were never rescaled (0-4095) and normalised images fail
    at least one of: 0.5th percentile at or below -500 HU, median between -1100 and +400 HU, 99.5th percentile
    at or above 0 HU. Percentiles come from a strided sample (at most ~2 million voxels), so this is cheap.
    """
    arr = np.asarray(vol.array)
    step = max(1, arr.size // 2_000_000)
    sample = arr.reshape(-1)[::step].astype(np.float32)
    p_lo, p_med, p_hi = (float(v) for v in np.percentile(sample, [0.5, 50.0, 99.5]))
    modality = str(vol.meta.get("modality", "")).upper()
    if modality and modality != "CT":
        raise InputError(f"The {what} is a {modality} image; this task needs a CT in Hounsfield units.")
    if p_lo > -500.0 or not -1100.0 <= p_med <= 400.0 or p_hi < 0.0:
        hint = (" The values look like stored CT numbers without the rescale to HU (add the DICOM rescale "
                "intercept, usually -1024)." if p_lo >= -10.0 and p_hi > 1000.0 else "")
        raise InputError(
            f"The {what} does not look like a CT in Hounsfield units (0.5 / 50 / 99.5th percentiles "
            f"{p_lo:.0f} / {p_med:.0f} / {p_hi:.0f}; a CT has air near -1000 HU and soft tissue near 0-100 HU)."
            f"{hint} MR, PET or normalised images cannot be used."
        )
