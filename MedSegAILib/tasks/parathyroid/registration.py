"""Registration of the 123I image (moving) to the 99mTc-sestamibi image (fixed), with a quality verdict.

Geometry. Planar NM images often carry no reliable position (many files have no Image Position (Patient);
files from two acquisitions may have unrelated origins), so the physical offset between the two grids is not
trusted. Both images are registered in the 2-D frame of the sestamibi image (its i and j axes, in mm):

* the iodine image's in-plane axes are expressed in that frame. When both images lie in the same plane (their
  normals agree) this is the 2x2 matrix of dot products of the axes, so an image stored flipped left-right or
  transposed is handled, and flagged. When the planes differ (e.g. one image from a DICOM file in the anterior
  plane, the other a PNG with an identity direction) both are assumed to be displayed the same way (row 0 =
  superior, column 0 = patient's right) and the difference is flagged;
* the two fields of view are **centre-aligned** (out-of-plane offsets are ignored, in-plane offsets too);
  pixel sizes may differ.

Optimisation (SimpleITK): Mattes mutual information on Gaussian-smoothed images (MI copes with the structures
that only sestamibi shows: salivary glands, heart, adenomas). First an exhaustive translation search on a
coarse level over +-``max_shift_mm`` (default 25 mm, 5 mm steps), so that the gradient descent starts within
its capture range, then a multi-resolution (2x-shrunk, then full resolution) regular-step gradient descent of
the rigid (or translation) transform from the best grid point. Shifts are not bounded: a larger one is kept but
flagged.

Resampling. The iodine image is resampled onto the sestamibi grid *as count density*: linear interpolation of
the counts per iodine pixel, times the pixel-area ratio ``(si_tc sj_tc) / (si_i sj_i)``, so that an image
region holds the same number of counts on either grid (a rigid transform preserves areas; linear
interpolation preserves a density up to its sub-pixel smoothing). Outside the iodine field of view the result
is 0.

Quality (never silent): a SimpleITK failure raises :class:`~MedSegAILib.errors.InputError`; a doubtful result
sets ``ok = False`` and explains why in ``flags`` (large shift or rotation, shift at the search boundary, low
normalised cross-correlation of the two images over the thyroid after registration, no convergence, images of
different orientation).

Transform convention: a point ``p`` (mm, sestamibi i/j frame) shows the same anatomy as the point
``c + R(theta) (p - c) + t`` of the (centre-aligned) iodine image, ``c`` = the sestamibi image centre. So
``translation_mm = t`` is how far the anatomy lies further along +i (patient's left) and +j (inferior) in the
iodine image, and ``rotation_deg = theta`` turns +i towards +j (clockwise on screen).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
from scipy import ndimage

from MedSegAILib.core.filters import smooth_mm
from MedSegAILib.core.volume import Volume
from MedSegAILib.engine.progress import CancelToken
from MedSegAILib.errors import InputError

#: Below this (trimmed) correlation of the two images over the thyroid the registration is flagged.
MIN_THYROID_NCC = 0.93
#: Shifts (mm) and rotations (deg) beyond which a result is flagged for checking.
FLAG_SHIFT_MM = 15.0
FLAG_ROTATION_DEG = 10.0


@dataclass
class RegistrationResult:
    """What :func:`register_iodine` found. ``ok`` False means: look at the images before trusting the result."""

    iodine_on_tc: Volume  #: iodine counts on the sestamibi grid (counts per sestamibi pixel)
    translation_mm: tuple[float, float]  #: (along i, along j), see the module docstring
    rotation_deg: float
    metric_value: float  #: final Mattes mutual information (negative: lower is better); nan for mode "none"
    quality: dict[str, Any] = field(default_factory=dict)  #: thyroid_ncc, converged, iterations, stop, ...
    flags: list[str] = field(default_factory=list)
    ok: bool = True
    matrix_2d: np.ndarray = field(default_factory=lambda: np.eye(3))  #: homogeneous map tc-frame mm -> iodine-frame mm


# ---------------------------------------------------------------------------------------------- helpers
def _plane_2d(vol: Volume) -> np.ndarray:
    arr = np.asarray(vol.array)
    if arr.ndim != 3 or arr.shape[0] != 1:
        raise InputError(f"Registration needs planar (2-D) images; got an image of shape {arr.shape}.")
    img = arr[0].astype(np.float32, copy=False)
    if not np.all(np.isfinite(img)):
        raise InputError("An image to register contains NaN or infinite values; fix them (e.g. replace by 0).")
    if float(img.max()) <= float(img.min()):
        raise InputError("An image to register is constant; there is nothing to align. Check the inputs.")
    return img


def _relative_axes(tc: Volume, iodine: Volume) -> tuple[np.ndarray, list[str]]:
    """2x2 matrix whose columns are the iodine i and j axes expressed in the sestamibi (i, j) frame, and flags."""
    flags: list[str] = []
    ti, tj = tc.direction[:, 0], tc.direction[:, 1]
    ii, ij = iodine.direction[:, 0], iodine.direction[:, 1]
    n_t, n_i = np.cross(ti, tj), np.cross(ii, ij)
    if abs(float(np.dot(n_t, n_i))) < 0.99:
        flags.append("the two images have different orientations in their headers (different image planes); they "
                     "were assumed to be displayed the same way (row 0 superior, column 0 the patient's right) - "
                     "check that left and right agree")
        return np.eye(2), flags
    d2 = np.array([[ti @ ii, ti @ ij], [tj @ ii, tj @ ij]], float)
    u, _, vt = np.linalg.svd(d2)  # nearest orthogonal matrix (removes rounding of the header values)
    d2 = u @ vt
    if not np.allclose(d2, np.eye(2), atol=1e-3):
        what = []
        if d2[0, 0] < -0.5:
            what.append("flipped left-right")
        if d2[1, 1] < -0.5:
            what.append("flipped top-bottom")
        if abs(d2[0, 1]) > 0.5:
            what.append("transposed/rotated by 90 degrees")
        if not what:
            angle = math.degrees(math.atan2(d2[1, 0], d2[0, 0]))
            what.append(f"rotated by {angle:.0f} degrees")
        flags.append(f"the 123I image is stored {' and '.join(what)} relative to the sestamibi image; it was "
                     "reoriented from its header before registration - check the result")
    return d2, flags


def _sitk_2d(arr: np.ndarray, spacing: tuple[float, float], origin: np.ndarray, direction: np.ndarray) -> Any:
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ascontiguousarray(arr, dtype=np.float32))
    img.SetSpacing((float(spacing[0]), float(spacing[1])))
    img.SetOrigin((float(origin[0]), float(origin[1])))
    img.SetDirection(tuple(float(v) for v in np.asarray(direction, float).ravel()))
    return img


def _smooth(arr: np.ndarray, spacing: tuple[float, float], fwhm_mm: float) -> np.ndarray:
    return smooth_mm(arr.astype(np.float32), spacing, fwhm_mm, mode="nearest", truncate=3.0)


def thyroid_ncc(tc: np.ndarray, iodine_on_tc: np.ndarray, spacing: tuple[float, float],
                mask: Optional[np.ndarray] = None, smooth_fwhm_mm: float = 6.0, trim: float = 0.2) -> float:
    """Trimmed Pearson correlation of the two (smoothed) images over the thyroid region (mask grown by 10 mm).

    Only the thyroid is common to both tracers, so this is where a good registration must make them similar.
    Adenomas next to or over the thyroid add sestamibi counts only; to keep them from lowering the score, the
    line ``Tc ~ a + b I`` is fitted over the region and the ``trim`` share of pixels with the largest positive
    residuals is left out before correlating. On the simulator: >= 0.99 when aligned, <= 0.92 for a 5 mm
    misalignment (hence :data:`MIN_THYROID_NCC`).
    """
    from MedSegAILib.metrics import pearson
    from MedSegAILib.tasks.parathyroid.subtraction import thyroid_mask_from_iodine

    if mask is None:
        mask = thyroid_mask_from_iodine(iodine_on_tc, spacing)
    if mask.sum() < 10:
        return float("nan")
    r = max(1, int(round(10.0 / min(spacing))))
    region = ndimage.binary_dilation(mask, iterations=r)
    a = _smooth(tc, spacing, smooth_fwhm_mm)[region].astype(np.float64)
    b = _smooth(iodine_on_tc, spacing, smooth_fwhm_mm)[region].astype(np.float64)
    X = np.column_stack([b, np.ones_like(b)])
    beta = np.linalg.lstsq(X, a, rcond=None)[0]
    resid = a - X @ beta
    keep = resid <= np.percentile(resid, 100.0 * (1.0 - trim))
    return pearson(a[keep], b[keep])


# ---------------------------------------------------------------------------------------------- main
def register_iodine(
    tc: Volume,
    iodine: Volume,
    *,
    mode: str = "rigid",
    progress: Optional[Callable[[float, str], None]] = None,
    cancel: Optional[CancelToken] = None,
    max_shift_mm: float = 25.0,
    smooth_fwhm_mm: float = 6.0,
    full_resolution: bool = True,
) -> RegistrationResult:
    """Register ``iodine`` to ``tc`` (``mode`` "rigid", "translation" or "none") and resample it onto ``tc``'s grid.

    See the module docstring for the initialisation, the optimisation, the count-preserving resampling and the
    quality flags.
    """
    import SimpleITK as sitk

    if mode not in ("rigid", "translation", "none"):
        raise InputError(f"Unknown registration mode {mode!r}; use 'rigid', 'translation' or 'none'.")
    prog = progress or (lambda f, t="": None)
    fixed_arr, moving_arr = _plane_2d(tc), _plane_2d(iodine)
    sp_f = (float(tc.spacing[0]), float(tc.spacing[1]))
    sp_m = (float(iodine.spacing[0]), float(iodine.spacing[1]))
    d2, flags = _relative_axes(tc, iodine)
    quality: dict[str, Any] = {}

    # fixed frame: origin 0, identity; moving: its axes in that frame, centres coincide
    h_f, w_f = fixed_arr.shape
    h_m, w_m = moving_arr.shape
    centre_f = np.array([(w_f - 1) / 2 * sp_f[0], (h_f - 1) / 2 * sp_f[1]])
    half_m = np.array([(w_m - 1) / 2 * sp_m[0], (h_m - 1) / 2 * sp_m[1]])
    origin_m = centre_f - d2 @ half_m
    if not np.allclose(sp_f, sp_m, rtol=1e-3) or (h_f, w_f) != (h_m, w_m):
        quality["grids"] = (f"123I grid {w_m}x{h_m} x {sp_m[0]:.3g}x{sp_m[1]:.3g} mm resampled onto the sestamibi "
                            f"grid {w_f}x{h_f} x {sp_f[0]:.3g}x{sp_f[1]:.3g} mm")
    if cancel is not None:
        cancel.check()

    if mode == "rigid":
        transform = sitk.Euler2DTransform()
        transform.SetCenter(tuple(float(c) for c in centre_f))
    else:
        transform = sitk.TranslationTransform(2)
    metric_value = float("nan")

    if mode != "none":
        prog(0.05, "Registration: coarse translation search")
        fixed_s = _sitk_2d(_smooth(fixed_arr, sp_f, smooth_fwhm_mm), sp_f, np.zeros(2), np.eye(2))
        moving_s = _sitk_2d(_smooth(moving_arr, sp_m, smooth_fwhm_mm), sp_m, origin_m, d2)
        n_steps = max(1, int(math.ceil(max_shift_mm / 5.0)))
        step = max_shift_mm / n_steps
        try:
            # stage 1: exhaustive translation grid on a coarse level
            coarse = sitk.ImageRegistrationMethod()
            coarse.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
            coarse.SetMetricSamplingStrategy(coarse.NONE)
            coarse.SetInterpolator(sitk.sitkLinear)
            coarse.SetShrinkFactorsPerLevel([4])
            coarse.SetSmoothingSigmasPerLevel([0])
            if mode == "rigid":
                coarse.SetOptimizerAsExhaustive([0, n_steps, n_steps], stepLength=step)
                coarse.SetOptimizerScales([1.0, 1.0, 1.0])
            else:
                coarse.SetOptimizerAsExhaustive([n_steps, n_steps], stepLength=step)
                coarse.SetOptimizerScales([1.0, 1.0])
            coarse.SetInitialTransform(transform, inPlace=True)
            coarse.Execute(fixed_s, moving_s)
            if cancel is not None:
                cancel.check()
            prog(0.4, "Registration: mutual-information optimisation")
            # stage 2: gradient descent from the best grid point
            fine = sitk.ImageRegistrationMethod()
            fine.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
            fine.SetMetricSamplingStrategy(fine.NONE)
            fine.SetInterpolator(sitk.sitkLinear)
            fine.SetOptimizerAsRegularStepGradientDescent(
                learningRate=2.0, minStep=0.01, numberOfIterations=200, relaxationFactor=0.5,
                gradientMagnitudeTolerance=1e-8)
            fine.SetOptimizerScalesFromPhysicalShift()
            levels = [2, 1] if full_resolution else [2]
            fine.SetShrinkFactorsPerLevel(levels)
            fine.SetSmoothingSigmasPerLevel([0] * len(levels))
            fine.SetInitialTransform(transform, inPlace=True)
            iterations = {"n": 0}
            fine.AddCommand(sitk.sitkIterationEvent, lambda: iterations.__setitem__("n", iterations["n"] + 1))
            fine.Execute(fixed_s, moving_s)
            metric_value = float(fine.GetMetricValue())
            stop = fine.GetOptimizerStopConditionDescription()
        except RuntimeError as exc:
            last = str(exc).strip().splitlines()
            raise InputError(
                "The registration of the 123I image to the sestamibi image failed "
                f"({last[-1] if last else exc}). Check that both are planar neck images of the same view with "
                "overlapping fields of view, or run with registration 'none' if they are already aligned."
            ) from None
        converged = "maximum number of iterations" not in stop.lower()
        quality.update({"converged": bool(converged), "iterations": int(iterations["n"]), "stop": stop,
                        "mutual_information": metric_value})
        if not converged:
            flags.append(f"the registration did not converge ({stop.strip()})")
    if cancel is not None:
        cancel.check()

    # ---- the transform as tc-frame -> iodine-frame map
    params = transform.GetParameters()
    if mode == "rigid":
        theta, t = float(params[0]), np.array(params[1:3], float)
    elif mode == "translation":
        theta, t = 0.0, np.array(params[0:2], float)
    else:
        theta, t = 0.0, np.zeros(2)
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    matrix = np.eye(3)
    matrix[:2, :2] = rot
    matrix[:2, 2] = centre_f - rot @ centre_f + t

    # ---- count-preserving resampling of the raw iodine image
    prog(0.8, "Resampling the 123I image")
    moving_raw = _sitk_2d(moving_arr, sp_m, origin_m, d2)
    fixed_ref = _sitk_2d(np.zeros_like(fixed_arr), sp_f, np.zeros(2), np.eye(2))
    final = sitk.Euler2DTransform()
    final.SetCenter(tuple(float(c) for c in centre_f))
    final.SetAngle(theta)
    final.SetTranslation(tuple(float(v) for v in t))
    res = sitk.Resample(moving_raw, fixed_ref, final, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    area_ratio = (sp_f[0] * sp_f[1]) / (sp_m[0] * sp_m[1])
    on_tc = sitk.GetArrayFromImage(res).astype(np.float32) * np.float32(area_ratio)
    out_vol = Volume(on_tc[np.newaxis], tc.spacing, tc.origin, tc.direction.copy(),
                     {**iodine.meta, "registered_to": "sestamibi", "pixel_area_ratio": area_ratio})

    # ---- quality
    shift = float(np.hypot(*t))
    ncc = thyroid_ncc(fixed_arr, on_tc, sp_f)
    quality.update({"thyroid_ncc": ncc, "shift_mm": shift})
    ok = True
    if mode != "none":
        if not quality.get("converged", True):
            ok = False
        if shift > max_shift_mm:
            flags.append(f"the registration moved the 123I image by {shift:.0f} mm, more than the "
                         f"+-{max_shift_mm:g} mm expected between two views of the same neck - the images may be "
                         "of different views or grossly misplaced; check them")
            ok = False
        elif shift > FLAG_SHIFT_MM:
            flags.append(f"the registration moved the 123I image by {shift:.0f} mm - check it")
        if abs(math.degrees(theta)) > FLAG_ROTATION_DEG:
            flags.append(f"the registration rotated the 123I image by {math.degrees(theta):.0f} degrees - check it")
            ok = False
    if not np.isfinite(ncc):
        flags.append("no thyroid found on the registered 123I image to check the registration")
        ok = False
    elif ncc < MIN_THYROID_NCC:
        flags.append(f"low correlation of the two images over the thyroid after registration ({ncc:.2f})")
        ok = False
    if any("orientation" in f or "stored" in f for f in flags):
        ok = False
    prog(1.0, "Registration done")
    return RegistrationResult(
        iodine_on_tc=out_vol, translation_mm=(float(t[0]), float(t[1])), rotation_deg=math.degrees(theta),
        metric_value=metric_value, quality=quality, flags=flags, ok=ok, matrix_2d=matrix,
    )
