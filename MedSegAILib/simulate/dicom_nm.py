"""A minimal writer of single-frame planar nuclear-medicine (NM) DICOM files, for tests and sample data.

The file follows the NM Image IOD closely enough for GDCM/SimpleITK, pydicom and viewers to read it:

* one frame (``NumberOfFrames = 1``, ``FrameIncrementPointer`` -> Energy Window Vector), 16-bit unsigned pixels;
* geometry: ``PixelSpacing = [row spacing, column spacing] = [sj, si]``, and the orientation/position of the
  image both at the top level and in the Detector Information Sequence (where the NM IOD puts them);
* the tracer: Radiopharmaceutical Information Sequence (0054,0016) with Radiopharmaceutical (0018,0031), the
  radionuclide code (0054,0300), its half-life (0018,1075, s), the injected activity (0018,1074, MBq) and the
  injection date/time (0018,1078 / 0018,1072);
* timing: Actual Frame Duration (0018,1242, integer milliseconds) and Acquisition Date/Time (0008,0022/0032),
  the latter placed ``meta["acquisition_start_s"]`` seconds after the injection.

Pixel values that are whole numbers in 0..65535 (Poisson counts) are stored exactly. Anything else (floats,
negative values, > 65535) is stored with a linear Rescale Slope/Intercept, which is lossy at the 1/65535 level.

The writer reads the tracer from ``vol.meta`` using the keys of :mod:`MedSegAILib.tasks.parathyroid.acquisition`
(``tracer``, ``radionuclide``, ``half_life_s``, ``frame_duration_s``, ``acquisition_start_s``, ``injected_MBq``);
keyword arguments override them.
"""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path
from typing import Any, Optional

import numpy as np

from MedSegAILib.core.volume import Volume
from MedSegAILib.errors import InputError

NM_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.20"

#: SNOMED-RT codes of the radionuclides this project meets (DICOM CID 18), keyed by a normalised name.
_NUCLIDE_CODES = {
    "tc99m": ("C-163A8", "SRT", "^99m^Technetium"),
    "i123": ("C-114A4", "SRT", "^123^Iodine"),
}


def _nuclide_key(text: str) -> Optional[str]:
    t = "".join(ch for ch in text.lower() if ch.isalnum())
    if any(s in t for s in ("tc99m", "99mtc", "technetium", "tc99")):
        return "tc99m"
    if any(s in t for s in ("i123", "123i", "iodine123", "123iodine")):
        return "i123"
    return None


def _ds_str(value: float) -> str:
    """A DICOM decimal string (at most 16 characters)."""
    for digits in (10, 8, 6, 4):
        s = f"{value:.{digits}g}"
        if len(s) <= 16:
            return s
    return f"{value:.3e}"


def _dicom_datetime(t: _dt.datetime) -> tuple[str, str]:
    return t.strftime("%Y%m%d"), t.strftime("%H%M%S.%f")


def _pixels_uint16(arr: np.ndarray) -> tuple[np.ndarray, Optional[float], Optional[float]]:
    """(stored uint16 pixels, rescale slope, rescale intercept); slope/intercept None when stored exactly."""
    a = np.asarray(arr, dtype=np.float64)
    if not np.all(np.isfinite(a)):
        raise InputError("The image holds NaN or infinite values; it cannot be written as DICOM.")
    lo, hi = float(a.min()), float(a.max())
    if lo >= 0 and hi <= 65535 and np.all(a == np.round(a)):
        return np.round(a).astype(np.uint16), None, None
    intercept = min(lo, 0.0)
    slope = (hi - intercept) / 65535.0 if hi > intercept else 1.0
    stored = np.clip(np.round((a - intercept) / slope), 0, 65535).astype(np.uint16)
    return stored, slope, intercept


def write_planar_nm_dicom(
    vol: Volume,
    path: str | os.PathLike,
    *,
    tracer: Optional[str] = None,
    radionuclide: Optional[str] = None,
    half_life_s: Optional[float] = None,
    frame_duration_s: Optional[float] = None,
    acquisition_start_s: Optional[float] = None,
    injected_MBq: Optional[float] = None,
    injection_datetime: _dt.datetime = _dt.datetime(2024, 1, 15, 8, 0, 0),
    patient_id: str = "SIM0001",
    patient_name: str = "Simulated^Neck",
    study_uid: Optional[str] = None,
    series_uid: Optional[str] = None,
    series_description: Optional[str] = None,
    series_number: int = 1,
    write_geometry: bool = True,
) -> Path:
    """Write a planar ``(1, H, W)`` volume as a single-frame NM DICOM file; returns the path.

    Tracer and timing fields default to ``vol.meta`` (see the module docstring). ``write_geometry=False`` leaves
    out Image Position/Orientation (Patient), as many planar NM files do, to test readers that must not trust
    positions.
    """
    from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    if not vol.is_2d:
        raise InputError(f"write_planar_nm_dicom writes one planar frame; got a volume of shape {vol.shape}.")
    meta = vol.meta
    tracer = tracer if tracer is not None else meta.get("tracer")
    radionuclide = radionuclide if radionuclide is not None else meta.get("radionuclide")
    half_life_s = half_life_s if half_life_s is not None else meta.get("half_life_s")
    frame_duration_s = frame_duration_s if frame_duration_s is not None else meta.get("frame_duration_s")
    acquisition_start_s = acquisition_start_s if acquisition_start_s is not None else meta.get("acquisition_start_s")
    injected_MBq = injected_MBq if injected_MBq is not None else meta.get("injected_MBq")

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sop_uid = generate_uid()
    file_meta = FileMetaDataset()
    file_meta.MediaStorageSOPClassUID = NM_IMAGE_STORAGE
    file_meta.MediaStorageSOPInstanceUID = sop_uid
    file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=file_meta, preamble=b"\0" * 128)

    acq_time = injection_datetime + _dt.timedelta(seconds=float(acquisition_start_s or 0.0))
    acq_date_s, acq_time_s = _dicom_datetime(acq_time)
    inj_date_s, inj_time_s = _dicom_datetime(injection_datetime)

    ds.SOPClassUID = NM_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.FrameOfReferenceUID = generate_uid()
    ds.Modality = "NM"
    ds.PatientID = patient_id
    ds.PatientName = patient_name
    ds.StudyDate, ds.StudyTime = inj_date_s, inj_time_s
    ds.SeriesDate, ds.SeriesTime = acq_date_s, acq_time_s
    ds.AcquisitionDate, ds.AcquisitionTime = acq_date_s, acq_time_s
    ds.ContentDate, ds.ContentTime = acq_date_s, acq_time_s
    ds.SeriesNumber = int(series_number)
    ds.InstanceNumber = 1
    ds.SeriesDescription = series_description or str(meta.get("name") or tracer or "planar")[:64]
    ds.ImageType = ["ORIGINAL", "PRIMARY", "STATIC", "EMISSION"]
    ds.PatientPosition = "HFS"

    # --- NM multi-frame module with a single frame
    ds.NumberOfFrames = 1
    ds.FrameIncrementPointer = 0x00540010  # Energy Window Vector
    ds.EnergyWindowVector = [1]
    ds.NumberOfEnergyWindows = 1
    ds.DetectorVector = [1]
    ds.NumberOfDetectors = 1

    # --- geometry (PixelSpacing is [between rows, between columns])
    si, sj = vol.spacing[0], vol.spacing[1]
    ds.PixelSpacing = [_ds_str(sj), _ds_str(si)]
    det = Dataset()
    if write_geometry:
        iop = [_ds_str(v) for v in np.concatenate([vol.direction[:, 0], vol.direction[:, 1]])]
        ipp = [_ds_str(v) for v in vol.origin]
        ds.ImageOrientationPatient = iop
        ds.ImagePositionPatient = ipp
        det.ImageOrientationPatient = iop
        det.ImagePositionPatient = ipp
    view = Dataset()
    view.CodeValue, view.CodingSchemeDesignator, view.CodeMeaning = "G-A117", "SRT", "anterior"
    det.ViewCodeSequence = Sequence([view])
    ds.DetectorInformationSequence = Sequence([det])

    # --- tracer
    rp = Dataset()
    if tracer:
        rp.Radiopharmaceutical = str(tracer)[:64]
    rp.RadiopharmaceuticalStartTime = inj_time_s
    rp.RadiopharmaceuticalStartDateTime = inj_date_s + inj_time_s
    if injected_MBq is not None:
        rp.RadionuclideTotalDose = _ds_str(float(injected_MBq))
    if half_life_s is not None:
        rp.RadionuclideHalfLife = _ds_str(float(half_life_s))
    if radionuclide:
        key = _nuclide_key(str(radionuclide))
        if key is not None:
            code = Dataset()
            code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = _NUCLIDE_CODES[key]
            rp.RadionuclideCodeSequence = Sequence([code])
        ds.add_new(0x00180030, "LO", str(radionuclide)[:64])  # Radionuclide (retired, still widely read)
    ds.RadiopharmaceuticalInformationSequence = Sequence([rp])
    if frame_duration_s is not None:
        ds.ActualFrameDuration = int(round(float(frame_duration_s) * 1000.0))

    # --- pixels
    stored, slope, intercept = _pixels_uint16(vol.array[0])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(stored.shape[0]), int(stored.shape[1])
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 0
    if slope is not None:
        ds.RescaleSlope = _ds_str(slope)
        ds.RescaleIntercept = _ds_str(intercept)
    ds.PixelData = np.ascontiguousarray(stored).astype("<u2").tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return path


def nm_meta_for(vol: Volume) -> dict[str, Any]:
    """The tracer/timing keys of ``vol.meta`` that :func:`write_planar_nm_dicom` stores (for round-trip checks)."""
    keys = ("tracer", "radionuclide", "half_life_s", "frame_duration_s", "acquisition_start_s", "injected_MBq")
    return {k: vol.meta[k] for k in keys if k in vol.meta}
