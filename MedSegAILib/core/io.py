"""Reading and writing volumes with their exact geometry (NIfTI, NRRD, MHA, DICOM series, NumPy, PNG/JPEG).

Everything goes through SimpleITK, which reports geometry in LPS like :class:`~MedSegAILib.core.volume.Volume`
(NIfTI's RAS qform/sform is converted by ITK on read and write). Writes are atomic: a temporary file in the
target folder is renamed over the target only when complete.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

import numpy as np

from MedSegAILib.core.volume import Volume
from MedSegAILib.errors import InputError, OutputError

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm", ".npy", ".png", ".jpg", ".jpeg",
                   ".tif", ".tiff")
_SEG_SUFFIX = ".seg.nrrd"


def split_stem(path: str | os.PathLike) -> tuple[str, str]:
    """``('/a/b/ct', '.nii.gz')`` for ``/a/b/ct.nii.gz``: handles double suffixes."""
    name = Path(path).name
    for suf in (_SEG_SUFFIX, ".nii.gz") + VOLUME_SUFFIXES:
        if name.lower().endswith(suf):
            return name[: -len(suf)], suf
    p = Path(name)
    return p.stem, p.suffix


def _sitk():
    import SimpleITK as sitk

    return sitk


def from_sitk(image: Any, meta: dict[str, Any] | None = None) -> Volume:
    """Convert a SimpleITK image to a :class:`Volume` (refuses vector and 4-D images with a clear message)."""
    sitk = _sitk()
    dim = image.GetDimension()
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"The image has {image.GetNumberOfComponentsPerPixel()} components per voxel (colour or vector data). "
            "A single-component grayscale image is required: convert it to grayscale first."
        )
    if dim == 4:
        size = image.GetSize()
        raise InputError(
            f"The image is 4-D ({size[3]} frames of {size[0]}x{size[1]}x{size[2]}). "
            "Select a single frame (e.g. with the Sequences module or by extracting one time point) first."
        )
    if dim not in (2, 3):
        raise InputError(f"The image has {dim} dimensions; 2-D or 3-D is required.")
    arr = sitk.GetArrayFromImage(image)
    if dim == 2:
        sp = tuple(image.GetSpacing()) + (1.0,)
        org = tuple(image.GetOrigin()) + (0.0,)
        d2 = np.asarray(image.GetDirection(), float).reshape(2, 2)
        direction = np.eye(3)
        direction[:2, :2] = d2
        return Volume(arr[np.newaxis], sp, org, direction, dict(meta or {}))
    direction = np.asarray(image.GetDirection(), float).reshape(3, 3)
    return Volume(arr, image.GetSpacing(), image.GetOrigin(), direction, dict(meta or {}))


def to_sitk(volume: Volume) -> Any:
    """Convert a :class:`Volume` to a 3-D SimpleITK image with identical geometry."""
    sitk = _sitk()
    arr = volume.array
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr))
    img.SetSpacing(tuple(float(s) for s in volume.spacing))
    img.SetOrigin(tuple(float(o) for o in volume.origin))
    img.SetDirection(tuple(float(v) for v in volume.direction.ravel()))
    return img


def _dicom_meta(reader: Any, index: int = 0, path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Descriptive DICOM tags of a series (from the SimpleITK ``reader``) and, when ``path`` (one file of the
    series) is given, the nuclear-medicine tracer and timing keys read with pydicom (see :func:`_nm_tracer_meta`).
    """
    meta: dict[str, Any] = {}
    tags = {"0008|0060": "modality", "0010|0020": "patient_id", "0020|000d": "study_uid", "0020|000e": "series_uid",
            "0008|103e": "series_description", "0054|1001": "units"}
    for tag, key in tags.items() if reader is not None else ():
        try:
            if reader.HasMetaDataKey(index, tag):
                meta[key] = reader.GetMetaData(index, tag).strip()
        except Exception:  # noqa: BLE001 - some readers do not expose per-slice metadata
            pass
    if path is not None:
        meta.update(_nm_tracer_meta(path))
    return meta


def _dicom_dt(date: Any, time: Any) -> Any:
    """``datetime`` from a DICOM DA + TM pair (TM may be ``HHMM``, ``HHMMSS`` or ``HHMMSS.ffffff``); None if absent."""
    import datetime as dt

    d, t = str(date or "").strip(), str(time or "").strip().replace(":", "")
    if len(d) != 8 or len(t) < 4:
        return None
    try:
        whole, _, frac = t.partition(".")
        whole = whole.ljust(6, "0")
        micro = int((frac + "000000")[:6]) if frac else 0
        return dt.datetime(int(d[:4]), int(d[4:6]), int(d[6:8]), int(whole[:2]), int(whole[2:4]), int(whole[4:6]),
                           micro)
    except ValueError:
        return None


def _nm_tracer_meta(path: str | os.PathLike) -> dict[str, Any]:
    """Tracer and timing keys of an NM (or PET) DICOM file, read with pydicom; empty when unreadable.

    SimpleITK/GDCM do not expose items of the Radiopharmaceutical Information Sequence (0054,0016), hence pydicom.
    Keys (the ones the planar tasks use): ``tracer`` (0018,0031, or the code meaning of 0054,0304),
    ``radionuclide`` (code meaning of 0054,0300, or 0018,0030), ``half_life_s`` (0018,1075),
    ``injected_MBq`` (0018,1074: MBq by the standard; values above 1e5 can only be Bq and are converted),
    ``frame_duration_s`` (0018,1242 ms / 1000), ``injection_datetime`` / ``acquisition_datetime`` (ISO text,
    from 0018,1078 or 0018,1072 + date, and 0008,002A or 0008,0022 + 0008,0032) and ``acquisition_start_s``
    (their difference), plus ``modality``, ``patient_id``, ``series_description``, ``number_of_frames``.
    """
    import datetime as dt

    try:
        import pydicom

        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - not DICOM or pydicom missing: nothing to add
        return {}
    meta: dict[str, Any] = {}

    def text(obj: Any, keyword: str) -> str:
        value = obj.get(keyword, None) if obj is not None else None
        return str(value).strip() if value not in (None, "") else ""

    def number(obj: Any, keyword: str) -> float | None:
        try:
            value = obj.get(keyword, None)
            return float(value) if value not in (None, "") else None
        except (TypeError, ValueError):
            return None

    for keyword, key in (("Modality", "modality"), ("PatientID", "patient_id"),
                         ("SeriesDescription", "series_description")):
        if text(ds, keyword):
            meta[key] = text(ds, keyword)
    if number(ds, "NumberOfFrames") is not None:
        meta["number_of_frames"] = int(number(ds, "NumberOfFrames") or 1)
    rp_seq = ds.get("RadiopharmaceuticalInformationSequence", None)
    rp = rp_seq[0] if rp_seq else None
    if rp is not None:
        tracer = text(rp, "Radiopharmaceutical")
        if not tracer and rp.get("RadiopharmaceuticalCodeSequence"):
            tracer = text(rp.RadiopharmaceuticalCodeSequence[0], "CodeMeaning")
        if tracer:
            meta["tracer"] = tracer
        nuclide = text(rp.RadionuclideCodeSequence[0], "CodeMeaning") if rp.get("RadionuclideCodeSequence") else ""
        if nuclide:
            meta["radionuclide"] = nuclide
        if number(rp, "RadionuclideHalfLife"):
            meta["half_life_s"] = number(rp, "RadionuclideHalfLife")
        dose = number(rp, "RadionuclideTotalDose")
        if dose:
            meta["injected_MBq"] = dose / 1e6 if dose > 1e5 else dose
    if "radionuclide" not in meta and text(ds, "Radionuclide"):
        meta["radionuclide"] = text(ds, "Radionuclide")
    duration_ms = number(ds, "ActualFrameDuration")
    if duration_ms:
        meta["frame_duration_s"] = duration_ms / 1000.0
    acq = None
    if text(ds, "AcquisitionDateTime"):
        adt = text(ds, "AcquisitionDateTime")
        acq = _dicom_dt(adt[:8], adt[8:].split("+")[0].split("-")[0])
    for date_kw, time_kw in (("AcquisitionDate", "AcquisitionTime"), ("SeriesDate", "SeriesTime"),
                             ("ContentDate", "ContentTime")):
        if acq is None:
            acq = _dicom_dt(text(ds, date_kw), text(ds, time_kw))
    inj = None
    if rp is not None:
        rdt = text(rp, "RadiopharmaceuticalStartDateTime")
        if rdt:
            inj = _dicom_dt(rdt[:8], rdt[8:].split("+")[0].split("-")[0])
        if inj is None and text(rp, "RadiopharmaceuticalStartTime") and acq is not None:
            inj = _dicom_dt(acq.strftime("%Y%m%d"), text(rp, "RadiopharmaceuticalStartTime"))
            if inj is not None and inj > acq:  # injected before midnight, imaged after it
                inj -= dt.timedelta(days=1)
    if acq is not None:
        meta["acquisition_datetime"] = acq.isoformat()
    if inj is not None:
        meta["injection_datetime"] = inj.isoformat()
    if acq is not None and inj is not None:
        meta["acquisition_start_s"] = (acq - inj).total_seconds()
    return meta


def _is_dicom_file(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM" or path.suffix.lower() == ".dcm"


def _read_dicom_pydicom(path: Path, meta: dict[str, Any]) -> Volume | None:
    """Fallback reader for DICOM files GDCM refuses (None if pydicom cannot read them either).

    GDCM fails on many planar NM files whose Detector Information Sequence carries no Image Position (Patient).
    Geometry: PixelSpacing (0028,0030) is [row, column] spacing; orientation and position come from the top level
    or the first Detector Information item; when absent, origin 0 and identity direction are assumed (and noted).
    """
    try:
        import pydicom

        ds = pydicom.dcmread(str(path))
        arr = np.asarray(ds.pixel_array)
    except Exception:  # noqa: BLE001
        return None
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        return None  # colour: let the caller report it
    slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
    if slope != 1.0 or intercept != 0.0:
        arr = arr.astype(np.float64) * slope + intercept
    if arr.ndim == 2:
        arr = arr[np.newaxis]
    det_seq = ds.get("DetectorInformationSequence", None)
    det = det_seq[0] if det_seq else None
    iop = ds.get("ImageOrientationPatient", None) or (det.get("ImageOrientationPatient", None) if det else None)
    ipp = ds.get("ImagePositionPatient", None) or (det.get("ImagePositionPatient", None) if det else None)
    ps = ds.get("PixelSpacing", None)
    sk = float(ds.get("SpacingBetweenSlices", 0) or ds.get("SliceThickness", 0) or 1.0)
    spacing = (float(ps[1]), float(ps[0]), abs(sk)) if ps else (1.0, 1.0, abs(sk))
    direction = np.eye(3)
    if iop is not None and len(iop) == 6:
        r, c = np.asarray(iop[:3], float), np.asarray(iop[3:], float)
        direction = np.column_stack([r, c, np.cross(r, c)])
    origin = tuple(float(v) for v in ipp) if ipp is not None and len(ipp) == 3 else (0.0, 0.0, 0.0)
    notes = []
    if not ps:
        notes.append("no PixelSpacing: 1 mm pixels assumed")
    if iop is None or ipp is None:
        notes.append("no image position/orientation: origin 0 and identity direction assumed")
    if notes:
        meta["assumed_geometry"] = "; ".join(notes) + "."
    return Volume(arr, spacing, origin, direction, meta)


def read_volume(path: str | os.PathLike, *, modality: str | None = None) -> Volume:
    """Read an image file or a DICOM series folder into a :class:`Volume`.

    ``modality`` (e.g. ``"NM"``) is recorded in ``meta["modality"]`` when the file format does not carry it
    (DICOM files do, and theirs wins).
    """
    sitk = _sitk()
    p = Path(path)
    if not p.exists():
        raise InputError(f"Input not found: {p}. Check the path.")
    meta: dict[str, Any] = {"source": str(p), "name": split_stem(p)[0] if p.is_file() else p.name}
    if modality:
        meta["modality"] = modality.upper()
    try:
        if p.is_dir():
            reader = sitk.ImageSeriesReader()
            series = reader.GetGDCMSeriesIDs(str(p))
            if not series:
                raise InputError(f"No DICOM series found in folder {p}.")
            if len(series) > 1:
                raise InputError(
                    f"The folder {p} holds {len(series)} DICOM series; point to a folder with a single series "
                    f"(series UIDs: {', '.join(series[:4])}{'...' if len(series) > 4 else ''})."
                )
            files = reader.GetGDCMSeriesFileNames(str(p), series[0])
            reader.SetFileNames(files)
            reader.MetaDataDictionaryArrayUpdateOn()
            reader.LoadPrivateTagsOn()
            image = reader.Execute()
            meta.update(_dicom_meta(reader, path=files[0]))
            meta["name"] = p.name
        elif p.suffix.lower() == ".npy":
            arr = np.load(p, allow_pickle=False)
            meta["assumed_geometry"] = "A .npy file has no geometry: 1 mm spacing, origin 0, identity direction assumed."
            return Volume(arr, meta=meta)
        else:
            if _is_dicom_file(p):
                meta.update(_dicom_meta(None, path=p))
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(p))
            reader.ReadImageInformation()
            if reader.HasMetaDataKey("0008|0060"):
                meta["modality"] = reader.GetMetaData("0008|0060").strip()
            image = reader.Execute()
    except InputError:
        raise
    except RuntimeError as exc:
        fallback = _read_dicom_pydicom(p, meta) if p.is_file() and _is_dicom_file(p) else None
        if fallback is not None:
            return fallback
        first = str(exc).strip().splitlines()
        raise InputError(f"Could not read {p}: the file is missing, corrupt or not an image "
                         f"({first[-1] if first else exc}).") from None
    return from_sitk(image, meta)


def read_mask_folder(folder: str | os.PathLike) -> dict[str, Volume]:
    """Read a folder of one-structure masks (``Parotid-Lt.nrrd``, ``Brainstem.nii.gz``, ...), keyed by file stem.

    This is how many public datasets and treatment-planning exports store contours. Files that are not volumes
    are ignored; a folder with none is an error (so a wrong path is not taken for "no structures"). Every mask is
    returned with its own geometry: whether they share a grid is the caller's question.
    """
    p = Path(folder)
    if not p.is_dir():
        raise InputError(f"Mask folder not found: {p}.")
    out: dict[str, Volume] = {}
    for f in sorted(p.iterdir()):
        stem, suf = split_stem(f)
        if f.is_file() and suf.lower() in VOLUME_SUFFIXES and suf.lower() not in (".png", ".jpg", ".jpeg"):
            out[stem] = read_volume(f)
    if not out:
        raise InputError(f"No mask volumes (NRRD, NIfTI, MHA) found in {p}.")
    return out


def _atomic_target(path: Path, suffix: str = "") -> Path:
    """A new, empty temporary file beside ``path`` for an atomic write (write it, then ``os.replace``).

    Permissions: :func:`tempfile.mkstemp` creates its file with mode 0600, which ``os.replace`` would carry over to
    the final file (other users of a shared results folder could not read it). The file is therefore created with
    ``os.open(..., O_CREAT | O_EXCL, 0o666)``, so the process umask applies exactly as for a plain ``open()``
    (0666 & ~umask), and, when ``path`` already exists, it gets that file's permission bits, as overwriting it with
    ``open(path, "w")`` would keep them. ``O_EXCL`` with a random name gives mkstemp's no-clobber guarantee.
    """
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"Cannot create the output folder {folder}: {exc.strerror}. Choose another folder.") from None
    if not os.access(folder, os.W_OK):
        raise OutputError(f"The output folder {folder} is not writable. Choose another folder or fix its permissions.")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = folder / f".medsegai-tmp-{secrets.token_hex(6)}{suffix}"
        try:
            fd = os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue
        except OSError as exc:
            raise OutputError(f"Could not create a file in {folder}: {exc.strerror or exc}.") from None
        os.close(fd)
        break
    else:  # pragma: no cover - 100 collisions of 48 random bits
        raise OutputError(f"Could not create a temporary file in {folder} (every name tried exists).")
    try:
        mode = path.stat().st_mode & 0o7777
    except OSError:  # no such file yet (the usual case): the umask already applied
        return tmp
    try:
        os.chmod(tmp, mode)
    except OSError:  # not the owner's choice to make (e.g. another user's file): keep the umask's mode
        pass
    return tmp


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    tmp = _atomic_target(path)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"Could not write {path}: {exc.strerror or exc}.") from None
    return path


def write_volume(volume: Volume, path: str | os.PathLike, *, compress: bool = True) -> Path:
    """Write a volume (format from the suffix) atomically, keeping its exact geometry."""
    sitk = _sitk()
    path = Path(path)
    _, suffix = split_stem(path)
    # SimpleITK picks the writer from the suffix: the temporary file gets the same one.
    tmp_named = _atomic_target(path, suffix)
    try:
        sitk.WriteImage(to_sitk(volume), str(tmp_named), compress)
        os.replace(tmp_named, path)
    except (RuntimeError, OSError) as exc:
        tmp_named.unlink(missing_ok=True)
        raise OutputError(f"Could not write {path}: {str(exc).strip().splitlines()[-1]}") from None
    return path
