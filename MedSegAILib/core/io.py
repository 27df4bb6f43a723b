"""Reading and writing volumes with their exact geometry (NIfTI, NRRD, MHA, DICOM series, NumPy, PNG/JPEG).

Everything goes through SimpleITK, which reports geometry in LPS like :class:`~MedSegAILib.core.volume.Volume`
(NIfTI's RAS qform/sform is converted by ITK on read and write). Writes are atomic: a temporary file in the
target folder is renamed over the target only when complete.
"""

from __future__ import annotations

import os
import tempfile
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


def _dicom_meta(reader: Any, index: int = 0) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    tags = {"0008|0060": "modality", "0010|0020": "patient_id", "0020|000d": "study_uid", "0020|000e": "series_uid",
            "0008|103e": "series_description", "0054|1001": "units"}
    for tag, key in tags.items():
        try:
            if reader.HasMetaDataKey(index, tag):
                meta[key] = reader.GetMetaData(index, tag).strip()
        except Exception:  # noqa: BLE001 - some readers do not expose per-slice metadata
            pass
    return meta


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
            meta.update(_dicom_meta(reader))
            meta["name"] = p.name
        elif p.suffix.lower() == ".npy":
            arr = np.load(p, allow_pickle=False)
            meta["assumed_geometry"] = "A .npy file has no geometry: 1 mm spacing, origin 0, identity direction assumed."
            return Volume(arr, meta=meta)
        else:
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(p))
            reader.ReadImageInformation()
            if reader.HasMetaDataKey("0008|0060"):
                meta["modality"] = reader.GetMetaData("0008|0060").strip()
            image = reader.Execute()
    except InputError:
        raise
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise InputError(f"Could not read {p}: the file is missing, corrupt or not an image "
                         f"({first[-1] if first else exc}).") from None
    return from_sitk(image, meta)


def _atomic_target(path: Path, suffix: str = "") -> Path:
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"Cannot create the output folder {folder}: {exc.strerror}. Choose another folder.") from None
    if not os.access(folder, os.W_OK):
        raise OutputError(f"The output folder {folder} is not writable. Choose another folder or fix its permissions.")
    fd, tmp = tempfile.mkstemp(prefix=".medsegai-tmp-", suffix=suffix, dir=folder)
    os.close(fd)
    return Path(tmp)


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
