"""Reading and checking hand/wrist radiographs: one 2-D grey image, bone bright, with an honest pixel size.

:func:`read_radiograph` accepts PNG/JPEG/TIFF (8/16 bit, grey, or RGB/RGBA holding a grey picture), DICOM
CR/DX/DR files (for presentation or for processing) and the 2-D images ``read_volume`` reads (NRRD, MHA...).
It returns a ``(1, H, W)`` float32 :class:`~MedSegAILib.core.volume.Volume` and a list of notes: every
assumption or correction, in words a user can act on.

Conventions it establishes (the rest of the carpal task relies on them):

* **Bright = attenuating.** DICOM MONOCHROME1 (white = low attenuation) is inverted (GDCM already does it on
  read; that is verified against the raw pixels so it is never done twice), as is a Presentation LUT Shape
  ``INVERSE``. Files without such metadata are checked by :func:`detect_inverted`.
* **Pixel spacing.** ``PixelSpacing`` (0028,0030) when present: it is calibrated in the patient plane.
  Otherwise ``ImagerPixelSpacing`` (0018,1164), the detector pitch: a hand on the cassette sits 5-10 % of
  the source-detector distance above it, so its image is magnified by about that much, and areas are
  overestimated by about 10-20 %; divided by Estimated Radiographic Magnification Factor (0018,1114) when
  the file has one. PNG/JPEG/TIFF carry no physical spacing (a dpi is a print size): spacing 1, and
  ``meta["spacing_known"] = False`` so areas are reported in pixels. ``meta["spacing_known"]`` and
  ``meta["spacing_source"]`` are set in every case.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import numpy as np
from scipy import ndimage

from MedSegAILib.core.io import _is_dicom_file, read_volume
from MedSegAILib.core.volume import Volume
from MedSegAILib.errors import InputError

#: Smallest accepted side, in pixels (the network grid is 256; below 64 there is no carpal anatomy to see).
MIN_SIDE = 64
#: Colour tolerance of :func:`grey_from_rgb`: a pixel is "coloured" when its channels spread by more than
#: this fraction of the image range; a grey picture may have at most ``COLOUR_PIXEL_FRACTION`` of those
#: (JPEG chroma noise on a few edge pixels).
COLOUR_TOLERANCE = 0.04
COLOUR_PIXEL_FRACTION = 1e-4
#: the carpal task inverts on the image statistics alone only above this confidence of :func:`detect_inverted`
#: (below it, the network decides: see :meth:`MedSegAILib.tasks.carpal.CarpalTask.run`).
INVERT_CONFIDENCE = 0.25
#: Formats whose header carries a physical pixel spacing (the others: spacing unknown).
_SPACED_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd", ".nii", ".nii.gz")
_PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


# ---------------------------------------------------------------------------------------------- colour
def grey_from_rgb(arr: np.ndarray) -> tuple[np.ndarray, Optional[str]]:
    """(..., C) pixels -> (...) grey and a note, or :class:`InputError` for a colour picture.

    C = 1: the channel. C = 2 (grey + alpha) or C = 3/4 (RGB[A]): the colour channels are compared pixel by
    pixel; when (nearly) all pixels have equal channels (spread <= 4 % of the range on all but 1 in 10,000
    pixels) the picture is a grey radiograph stored in colour and its grey value is the channel mean.
    Otherwise it is a photograph or a screenshot with coloured overlays, which no radiograph model can read.
    Alpha is ignored (noted when it is not fully opaque). The Slicer bridge uses this for vector volumes.
    """
    a = np.asarray(arr)
    if a.ndim < 2:
        raise InputError(f"Expected pixels with a trailing channel axis; got an array of shape {a.shape}.")
    c = a.shape[-1]
    if c == 1:
        return a[..., 0], None
    if c not in (2, 3, 4):
        raise InputError(f"The image has {c} channels per pixel; a grey radiograph (1 channel, or RGB) is needed.")
    colour = a[..., :3] if c >= 3 else a[..., :1]
    alpha = a[..., -1] if c in (2, 4) else None
    x = colour.astype(np.float64)
    notes = []
    if alpha is not None and float(alpha.min()) != float(alpha.max()):
        notes.append("its transparency (alpha) channel was ignored")
    if x.shape[-1] == 1:
        grey = x[..., 0]
    else:
        spread = x.max(axis=-1) - x.min(axis=-1)
        rng = float(x.max() - x.min())
        coloured = spread > COLOUR_TOLERANCE * rng if rng > 0 else np.zeros(spread.shape, bool)
        frac = float(coloured.mean())
        if frac > COLOUR_PIXEL_FRACTION:
            raise InputError(
                f"The image looks like a colour photograph or a screenshot with coloured overlays, not a radiograph: "
                f"{100 * frac:.2f} % of its pixels are coloured (red, green and blue differ by up to "
                f"{float(spread.max()):.0f} of a range of {rng:.0f}). Load the original radiograph instead "
                "(the DICOM file from the PACS, or a greyscale PNG/JPEG export without annotations)."
            )
        grey = x.mean(axis=-1)
        notes.insert(0, "the image was stored in colour (RGB) with equal channels - a grey radiograph - and was "
                        "converted to grey")
    note = ("; ".join(notes)[0].upper() + "; ".join(notes)[1:] + ".") if notes else None
    return grey, note


# ---------------------------------------------------------------------------------------------- reading
def _dicom_header(path: Path) -> Any:
    try:
        import pydicom

        return pydicom.dcmread(str(path), stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - not readable by pydicom: geometry from SimpleITK only
        return None


def _floats(value: Any) -> Optional[list[float]]:
    try:
        vals = [float(v) for v in value]
    except (TypeError, ValueError):
        return None
    return vals if len(vals) == 2 and all(np.isfinite(vals)) and min(vals) > 0 else None


def _dicom_spacing(ds: Any, notes: list[str], meta: dict[str, Any]) -> tuple[float, float]:
    """(column, row) mm per pixel from the DICOM header (see the module docstring for the choice)."""
    ps = _floats(ds.get("PixelSpacing")) if ds is not None else None
    ips = _floats(ds.get("ImagerPixelSpacing")) if ds is not None else None
    nsps = _floats(ds.get("NominalScannedPixelSpacing")) if ds is not None else None
    if ps:
        meta.update(spacing_known=True, spacing_source="PixelSpacing")
        return ps[1], ps[0]
    if ips:
        try:
            mag = float(ds.get("EstimatedRadiographicMagnificationFactor") or 0)
        except (TypeError, ValueError):
            mag = 0.0
        if mag >= 1.0:
            meta.update(spacing_known=True, spacing_source="ImagerPixelSpacing/EstimatedRadiographicMagnificationFactor")
            notes.append(f"Pixel size from the detector pitch (Imager Pixel Spacing {ips[1]:g} x {ips[0]:g} mm) "
                         f"divided by the file's estimated magnification {mag:g}.")
            return ips[1] / mag, ips[0] / mag
        meta.update(spacing_known=True, spacing_source="ImagerPixelSpacing")
        notes.append(f"Pixel size {ips[1]:g} x {ips[0]:g} mm is the detector pitch (Imager Pixel Spacing): the hand "
                     "lies above the detector and is magnified by about 5-10 %, so areas may be overestimated by "
                     "about 10-20 %.")
        return ips[1], ips[0]
    if nsps:
        meta.update(spacing_known=True, spacing_source="NominalScannedPixelSpacing")
        notes.append(f"Pixel size {nsps[1]:g} x {nsps[0]:g} mm is the scanning pitch of a digitised film.")
        return nsps[1], nsps[0]
    meta.update(spacing_known=False, spacing_source="none")
    notes.append("The DICOM file has no pixel spacing: areas will be reported in pixels.")
    return 1.0, 1.0


def _read_components(path: Path) -> tuple[int, int]:
    """(components per pixel, dimension) from the file header, (1, 0) if SimpleITK cannot tell."""
    import SimpleITK as sitk

    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        return int(reader.GetNumberOfComponents()), int(reader.GetDimension())
    except RuntimeError:
        return 1, 0


def _read_picture_pil(path: Path) -> np.ndarray:
    """(H, W) or (H, W, C) pixels of a picture file SimpleITK cannot read (grey + alpha PNG, palette...)."""
    try:
        from PIL import Image

        with Image.open(path) as im:
            frames = int(getattr(im, "n_frames", 1) or 1)
            if frames > 1:
                _refuse_3d(frames, path)
            if im.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
                im = im.convert("RGBA" if "A" in im.mode or "transparency" in im.info else "RGB")
            elif im.mode == "1":
                im = im.convert("L")
            return np.asarray(im)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - PIL missing or unreadable file
        raise InputError(f"Could not read {path}: the file is missing, corrupt or not an image ({exc}).") from None


def _read_colour(path: Path, notes: list[str]) -> Volume:
    """A multi-component picture as grey (:func:`grey_from_rgb`), or :class:`InputError`."""
    import SimpleITK as sitk

    try:
        arr = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    except RuntimeError:
        arr = _read_picture_pil(path)
    if arr.ndim == 4 and arr.shape[0] > 1:
        _refuse_3d(arr.shape[0], path)
    arr = arr[..., np.newaxis] if arr.ndim == 2 else arr
    grey, note = grey_from_rgb(arr)
    if note:
        notes.append(note)
    grey = grey.reshape(grey.shape[-2:])
    photometric = "RGB" if arr.shape[-1] >= 3 else "MONOCHROME2"
    return Volume(grey[np.newaxis], meta={"source": str(path), "name": path.name, "photometric": photometric})


def _refuse_3d(n: int, path: Any) -> None:
    raise InputError(
        f"A radiograph is one 2-D image; {path} is a 3-D volume of {n} slices (or frames). Pick the single "
        "PA view (one slice or frame, e.g. with Slicer's Crop Volume or by exporting that frame), or use a task "
        "made for CT if this is a CT scan."
    )


def _raw_correlation(path: Path, arr: np.ndarray) -> Optional[float]:
    """Correlation of the stored (raw) pixels read by pydicom with ``arr``; None when pydicom cannot decode."""
    try:
        import pydicom

        raw = np.asarray(pydicom.dcmread(str(path)).pixel_array, np.float64).reshape(arr.shape)
    except Exception:  # noqa: BLE001 - compressed transfer syntax without a decoder, etc.
        return None
    a, b = raw.ravel() - raw.mean(), arr.ravel().astype(np.float64) - float(arr.mean())
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else None


def invert_intensity(img: np.ndarray) -> np.ndarray:
    """max + min - img: swaps dark and bright and keeps the value range."""
    x = np.asarray(img, np.float32)
    return (float(x.max()) + float(x.min()) - x).astype(np.float32)


def read_radiograph(path: str | os.PathLike) -> tuple[Volume, list[str]]:
    """Read a radiograph into a ``(1, H, W)`` float32 Volume (bone bright) and the notes for the user.

    ``meta`` keys set here: ``spacing_known``, ``spacing_source``, ``photometric`` (DICOM
    PhotometricInterpretation, or ``"MONOCHROME2"`` for grey picture files, ``"RGB"`` for converted colour),
    ``modality`` when known, ``presentation_intent`` for DX.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"Input not found: {p}. Check the path.")
    notes: list[str] = []
    is_dicom = p.is_dir() or _is_dicom_file(p)
    components, _ = _read_components(p) if p.is_file() else (1, 0)
    if components > 1:
        vol = _read_colour(p, notes)
    else:
        try:
            vol = read_volume(p)
        except InputError:
            if not p.name.lower().endswith(_PICTURE_SUFFIXES):
                raise
            vol = _read_colour(p, notes)  # SimpleITK cannot read it (e.g. grey + alpha PNG): PIL
        if vol.array.shape[0] > 1:
            _refuse_3d(vol.array.shape[0], p)
    meta = dict(vol.meta)
    photometric = str(meta.pop("photometric", "MONOCHROME2"))
    arr = vol.array.astype(np.float32)
    spacing = (1.0, 1.0)
    if is_dicom:
        first = p if p.is_file() else next((f for f in sorted(p.iterdir()) if f.is_file() and _is_dicom_file(f)), p)
        ds = _dicom_header(first) if first.is_file() else None
        spacing = _dicom_spacing(ds, notes, meta)
        if ds is not None:
            photometric = str(ds.get("PhotometricInterpretation", photometric) or photometric).strip().upper()
            intent = str(ds.get("PresentationIntentType", "") or "").strip().upper()
            if intent:
                meta["presentation_intent"] = intent
            if intent == "FOR PROCESSING":
                notes.append("This is a 'for processing' image (raw detector data); the 'for presentation' version "
                             "of the same exposure usually gives better results.")
            flip = photometric == "MONOCHROME1"
            if flip and first.is_file():
                corr = _raw_correlation(first, arr)
                # GDCM already inverted MONOCHROME1 on read when the result anti-correlates with the raw pixels.
                flip = corr is not None and corr > 0
            if str(ds.get("PresentationLUTShape", "") or "").strip().upper() == "INVERSE":
                flip = not flip
                notes.append("The file asks for an inverted display (Presentation LUT Shape INVERSE); the "
                             "intensities were inverted so that bone is bright.")
            if flip:
                arr = invert_intensity(arr)
            if photometric == "MONOCHROME1":
                notes.append("The image is stored as MONOCHROME1 (white = low attenuation); the intensities were "
                             "inverted so that bone is bright.")
    elif p.name.lower().endswith(_SPACED_SUFFIXES):
        spacing = (vol.spacing[0], vol.spacing[1])
        meta.update(spacing_known=True, spacing_source="header")
    else:
        meta.update(spacing_known=False, spacing_source="none")
        notes.append(f"{p.suffix.upper().lstrip('.') or 'This'} files carry no physical pixel size: areas will be "
                     "reported in pixels. Use the DICOM file to get areas in mm^2.")
    meta["photometric"] = photometric
    out = Volume(arr, (spacing[0], spacing[1], vol.spacing[2]), vol.origin, vol.direction.copy(), meta)
    notes.extend(check_radiograph(out))
    return out, notes


# ---------------------------------------------------------------------------------------------- checks
def check_radiograph(vol: Volume) -> list[str]:
    """Refuse what cannot be a radiograph (:class:`InputError`); return notes about what is unusual."""
    arr = np.asarray(vol.array)
    if arr.ndim == 3 and arr.shape[0] > 1:
        _refuse_3d(arr.shape[0], "the image")
    img = arr.reshape(arr.shape[-2:])
    if img.dtype.kind not in "biuf":
        raise InputError(f"The image has pixel type {img.dtype}; a grey (integer or float) image is required.")
    bad = int((~np.isfinite(img)).sum()) if img.dtype.kind == "f" else 0
    if bad:
        raise InputError(f"The image contains {bad} NaN or infinite pixel(s); fix or replace them before segmenting.")
    h, w = img.shape
    if min(h, w) < MIN_SIDE:
        raise InputError(f"The image is only {w} x {h} pixels; a hand/wrist radiograph of at least {MIN_SIDE} pixels "
                         "on each side is needed (ideally the full-resolution original).")
    lo, hi = float(img.min()), float(img.max())
    if lo == hi:
        raise InputError(f"The image is constant (every pixel is {lo:g}); there is nothing to segment. Check that "
                         "the right file was loaded.")
    notes = []
    if max(h, w) < 256:
        notes.append(f"The image is small ({w} x {h} pixels, below the network's 256 grid): it is up-sampled and "
                     "the bone outlines will be coarse.")
    sat = float((img == hi).mean())
    if sat > 0.25:
        notes.append(f"{100 * sat:.0f} % of the pixels are at the maximum value (saturated or a large bright "
                     "border); check the exposure or the collimation.")
    return notes


# ---------------------------------------------------------------------------------------------- polarity
def _robust01(img: np.ndarray) -> np.ndarray:
    """1st-99th percentile window to [0, 1] on a copy shrunk to at most 256 pixels on the long side."""
    x = np.asarray(img, np.float64).reshape(np.shape(img)[-2:])
    step = max(1, int(np.ceil(max(x.shape) / 256)))
    if step > 1:  # block mean: anti-aliased and cheap
        h, w = (x.shape[0] // step) * step, (x.shape[1] // step) * step
        x = x[:h, :w].reshape(h // step, step, w // step, step).mean(axis=(1, 3))
    lo, hi = np.percentile(x, (1, 99))
    if not hi > lo:
        lo, hi = float(x.min()), float(x.max())
    return np.clip((x - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(x)


def _frame_width(x: np.ndarray, limit: float = 0.4) -> int:
    """Lines (rows from the top of ``x``) of a uniform band separated by a clear step from what is inside.

    A line is uniform when its 10-90 percentile spread is < 0.12 (of the [0, 1] window); the band is the run of
    uniform lines whose median stays within 0.1 of the first; it is a collimation frame (returned width) only
    when the next lines' median differs from the band by > 0.25. Otherwise 0 (air reaching the edge is kept).
    """
    n = int(limit * x.shape[0])
    q10, q50, q90 = np.percentile(x[: n + 3], (10, 50, 90), axis=1)
    uniform = (q90 - q10) < 0.12
    k = 0
    while k < n and uniform[k] and abs(q50[k] - q50[0]) < 0.1:
        k += 1
    if k < 2 or k >= n:
        return 0
    return k if abs(float(np.median(q50[k: k + 3])) - float(q50[0])) > 0.25 else 0


def _peel_frames(x: np.ndarray) -> np.ndarray:
    """``x`` without its collimation bands (axis-aligned, on any side)."""
    for _ in range(2):  # a second pass catches bands revealed by peeling the perpendicular ones
        top = _frame_width(x)
        bottom = _frame_width(x[::-1])
        left = _frame_width(x.T)
        right = _frame_width(x.T[::-1])
        if not (top or bottom or left or right):
            break
        x = x[top: x.shape[0] - bottom, left: x.shape[1] - right]
    return x


def detect_inverted(img2d: np.ndarray) -> tuple[bool, float]:
    """(inverted, confidence in [0, 1]) for an image without polarity metadata.

    Two cues, each in [-1, 1] (positive = normal polarity), on the image windowed to its 1-99 percentiles,
    after removing axis-aligned collimation bands (uniform border bands with a clear step inwards, bright or
    black) and ignoring pixels at the exact extremes (electronic shutters, burnt-in labels, saturation):

    * ``ring``: where the border ring of the exposed field lies in the field's intensity distribution. Around a
      hand the edge of the field is mostly directly exposed background, the darkest region of a normal
      radiograph: ring = 1 - 2 * (fraction of field pixels darker than the ring median).
    * ``texture``: bones are the brightest structures and textured (trabeculae, cortices); the background is
      smooth. texture = (s_bright - s_dark) / (s_bright + s_dark) with s the median 5x5 local standard
      deviation of the brightest and the darkest 15 % of the field.

    score = 0.6 ring + 0.4 texture; inverted when score < 0, confidence |score| (clipped to 1).
    """
    x = _peel_frames(_robust01(img2d))
    h, w = x.shape
    if min(h, w) < 16:
        return False, 0.0
    keep = (x > 0.0) & (x < 1.0)
    if keep.mean() < 0.2:  # almost everything at an extreme: nothing to judge on
        keep = np.ones_like(keep)
    b = max(2, int(round(0.05 * min(h, w))))
    ring = np.zeros_like(keep)
    ring[:b], ring[-b:], ring[:, :b], ring[:, -b:] = True, True, True, True
    field = x[keep]
    ring_vals = x[ring & keep]
    ring_cue = 0.0
    if ring_vals.size:
        ring_cue = 1.0 - 2.0 * float((field < np.median(ring_vals)).mean())
    mean = ndimage.uniform_filter(x, 5)
    local_sd = np.sqrt(np.maximum(ndimage.uniform_filter(x * x, 5) - mean * mean, 0.0))
    lo, hi = np.percentile(field, (15, 85))
    s_dark = float(np.median(local_sd[keep & (x <= lo)])) if (keep & (x <= lo)).any() else 0.0
    s_bright = float(np.median(local_sd[keep & (x >= hi)])) if (keep & (x >= hi)).any() else 0.0
    tex_cue = (s_bright - s_dark) / (s_bright + s_dark) if s_bright + s_dark > 1e-9 else 0.0
    score = 0.6 * ring_cue + 0.4 * tex_cue
    return bool(score < 0), float(min(1.0, abs(score)))
