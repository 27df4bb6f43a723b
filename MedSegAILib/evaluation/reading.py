"""Reading one case of either side as a label map in the labels' values.

A case is a label-map file (with our own ``.labels.json`` legend, mapped by name), a Slicer ``.seg.nrrd`` (segments
found by name in its header, several layers handled, read with SimpleITK so no Slicer is needed) or a folder of
one-structure masks. Whatever the form, :func:`read_case_labels` returns the same thing: a :class:`Volume` whose
voxels are the labels' values, with ``meta["structure_names"]`` (value -> name found), ``meta["missing_labels"]``
(labels with no segment/mask at all, which is not the same as empty) and ``meta["read_notes"]``. The MRML bridge
(:mod:`MedSegAILib.mrml.evaluation`) builds the same kind of volume from segmentation nodes
(:func:`label_map_volume`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from MedSegAILib.core.io import VOLUME_SUFFIXES, read_volume, split_stem
from MedSegAILib.core.volume import Volume
from MedSegAILib.errors import InputError
from MedSegAILib.evaluation.names import LabelsLike, labels_of, match_structures, unmatched_message
from MedSegAILib.tasks.base import LabelInfo

#: mask/label-map files; pictures are never segmentations
_MASK_SUFFIXES = tuple(s for s in VOLUME_SUFFIXES if s not in (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm"))
SEG_SUFFIX = ".seg.nrrd"
OUTPUT_LABELS_SUFFIX = ".labels.nii.gz"  # written by MedSegAILib.outputs.write_result_files
_OUTPUT_LEGEND = ".labels.json"
GEOMETRY_TOL_MM = 1e-3


@dataclass(frozen=True)
class CaseSource:
    """Where one case of one side is: ``kind`` is ``"labelmap"``, ``"seg.nrrd"`` or ``"mask folder"``."""

    name: str
    path: Path
    kind: str
    legend: Optional[Path] = None  #: ``<stem>.labels.json`` of one of our own label maps


def is_mask_file(p: Path) -> bool:
    return p.is_file() and not p.name.startswith(".") and split_stem(p)[1].lower() in _MASK_SUFFIXES


def visible_entries(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def output_stems(folder: Path) -> dict[str, CaseSource]:
    """Our own outputs in ``folder``: ``{stem: source}``, the ``.seg.nrrd`` preferred over ``.labels.nii.gz``
    (a segmentation corrected and saved in Slicer is the ``.seg.nrrd``; the label map would be stale)."""
    out: dict[str, CaseSource] = {}
    for p in visible_entries(folder):
        low = p.name.lower()
        if low.endswith(SEG_SUFFIX) and p.is_file():
            out[p.name[: -len(SEG_SUFFIX)]] = CaseSource(p.name[: -len(SEG_SUFFIX)], p, "seg.nrrd")
    for p in visible_entries(folder):
        low = p.name.lower()
        if low.endswith(OUTPUT_LABELS_SUFFIX) and p.is_file():
            stem = p.name[: -len(OUTPUT_LABELS_SUFFIX)]
            if stem not in out:
                legend = p.with_name(stem + _OUTPUT_LEGEND)
                out[stem] = CaseSource(stem, p, "labelmap", legend if legend.is_file() else None)
    return out


def case_source(path: Union[str, os.PathLike], name: Optional[str] = None) -> CaseSource:
    """How to read one case at ``path`` (a file, a mask folder, a ``<case>/`` with ``segmentations/`` in it, or a
    folder holding one result of :func:`~MedSegAILib.outputs.write_result_files`)."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"Not found: {p}. Check the path.")
    if p.is_file():
        stem = split_stem(p)[0]
        if p.name.lower().endswith(SEG_SUFFIX):
            return CaseSource(name or stem, p, "seg.nrrd")
        legend = None
        if p.name.lower().endswith(OUTPUT_LABELS_SUFFIX):
            stem = p.name[: -len(OUTPUT_LABELS_SUFFIX)]
            cand = p.with_name(stem + _OUTPUT_LEGEND)
            legend = cand if cand.is_file() else None
        return CaseSource(name or stem, p, "labelmap", legend)
    if (p / "segmentations").is_dir():
        return CaseSource(name or p.name, p / "segmentations", "mask folder")
    outputs = output_stems(p)
    if len(outputs) == 1:
        src = next(iter(outputs.values()))
        return CaseSource(name or p.name, src.path, src.kind, src.legend)
    if len(outputs) > 1:
        raise InputError(f"{p} holds the results of several cases ({', '.join(sorted(outputs))}); point at one of "
                         "them, or give the folder as a collection of cases.")
    name = name or (p.parent.name if p.name == "segmentations" else p.name)
    return CaseSource(name, p, "mask folder")


def integer_labels(vol: Volume, where: str) -> np.ndarray:
    arr = vol.array
    if arr.dtype.kind in "biu":
        return arr
    if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.array_equal(arr, np.round(arr)):
        return arr.astype(np.int64)
    raise InputError(f"{where} is not a label map: its voxel values are not integers ({arr.dtype}). A label map "
                     "holds one integer value per structure (0 = background).")


def _present_values(arr: np.ndarray) -> set[int]:
    """Nonzero values of a label map (a histogram for small unsigned types: ``np.unique`` sorts 40 M voxels)."""
    if arr.dtype.kind in "bu" and arr.dtype.itemsize <= 2:
        return {int(v) for v in np.flatnonzero(np.bincount(arr.ravel().astype(np.intp, copy=False)))} - {0}
    return {int(v) for v in np.unique(arr)} - {0}


def dtype_for(labels: Sequence[LabelInfo]) -> Any:
    top = max(int(lab.value) for lab in labels)
    return np.uint8 if top <= 255 else (np.uint16 if top <= 65535 else np.int32)


def label_map_volume(geometry: Volume, array: np.ndarray, *, name: str, source: str, kind: str,
                     names: Mapping[int, str], missing: Sequence[int], notes: list[str]) -> Volume:
    """The label map of one case (``array`` on ``geometry``'s grid) with what :func:`evaluate_pair` needs in ``meta``:
    ``structure_names`` (label value -> name found in the source), ``missing_labels`` (labels with no structure at
    all in the source: "missing", not "empty") and ``read_notes``; plus ``name``, ``source``, ``source_kind``."""
    return Volume(array, geometry.spacing, geometry.origin, geometry.direction.copy(), {
        "name": name, "source": source, "source_kind": kind, "is_labelmap": True,
        "structure_names": {int(v): n for v, n in names.items()},
        "missing_labels": sorted(int(v) for v in missing),
        "read_notes": notes,
    })


def _finish(vol_like: Volume, out: np.ndarray, src: CaseSource, names: Mapping[int, str], missing: Sequence[int],
            notes: list[str]) -> Volume:
    return label_map_volume(vol_like, out, name=src.name, source=str(src.path), kind=src.kind, names=names,
                            missing=missing, notes=notes)


def _read_labelmap(src: CaseSource, labels: Sequence[LabelInfo]) -> Volume:
    vol = read_volume(src.path)
    arr = integer_labels(vol, str(src.path))
    notes: list[str] = []
    values = {int(lab.value) for lab in labels}
    out = np.zeros(arr.shape, dtype_for(labels))
    names: dict[int, str] = {}
    missing: list[int] = []
    if src.legend is not None:  # our own output: map its values by name (its task may number them differently)
        try:
            legend = json.loads(src.legend.read_text(encoding="utf-8"))
            found = {str(e["name"]): int(e["value"]) for e in legend.get("labels", [])}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InputError(f"The legend {src.legend} could not be read ({exc}); remove it to use the label "
                             "values as they are.") from None
        match = match_structures(found, labels, str(src.legend))
        if not match:
            raise InputError(unmatched_message(str(src.legend), list(found), labels))
        for value, n in match.items():
            out[arr == found[n]] = value
            names[value] = n
        missing = [int(lab.value) for lab in labels if int(lab.value) not in match]
    else:
        present = _present_values(arr)
        stray = sorted(present - values)
        if stray:
            notes.append(f"{src.name}: values {stray} of {src.path.name} are no label of the evaluation and were "
                         "ignored")
        keep = np.isin(arr, sorted(values))
        out[keep] = arr[keep]
        names = {v: f"value {v}" for v in values}
    return _finish(vol, out, src, names, missing, notes)


def _read_seg_nrrd(src: CaseSource, labels: Sequence[LabelInfo]) -> Volume:
    """A ``.seg.nrrd`` through SimpleITK: segments from the ``Segment<N>_Name/_LabelValue/_Layer`` header fields;
    several layers (overlapping segments) come as vector components. The file's ``space origin`` is that of its
    stored (possibly cropped) extent, so the geometry is right whatever Slicer's cropping option was."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(src.path))
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        last = str(exc).strip().splitlines()[-1]
        raise InputError(f"{src.path} could not be read as a segmentation: {last}") from None
    keys = set(image.GetMetaDataKeys())
    def get(n: int, field: str, default: str) -> str:
        k = f"Segment{n}_{field}"
        return image.GetMetaData(k).strip() if k in keys else default

    segments: list[tuple[str, int, int]] = []  # (name, layer, label value)
    n = 0
    while f"Segment{n}_Name" in keys or f"Segment{n}_ID" in keys:
        try:
            segments.append((get(n, "Name", get(n, "ID", f"Segment_{n + 1}")), int(get(n, "Layer", "0")),
                             int(get(n, "LabelValue", "1"))))
        except ValueError:
            raise InputError(f"{src.path}: the header of segment {n} is damaged (layer or label value not an "
                             "integer).") from None
        n += 1
    if not segments:
        raise InputError(f"{src.path} has no segment in its header (Segment0_Name...); is it a Slicer segmentation?")
    if image.GetDimension() != 3:
        raise InputError(f"{src.path}: a {image.GetDimension()}-D segmentation; 3-D is expected.")
    arr = sitk.GetArrayFromImage(image)
    if arr.ndim == 3:
        arr = arr[..., np.newaxis]  # one layer
    found = [s[0] for s in segments]
    match = match_structures(found, labels, str(src.path))
    if not match:
        raise InputError(unmatched_message(str(src.path), found, labels))
    out = np.zeros(arr.shape[:3], dtype_for(labels))
    notes: list[str] = []
    taken = np.zeros(arr.shape[:3], bool)
    for lab in labels:
        v = int(lab.value)
        if v not in match:
            continue
        _, layer, value = segments[found.index(match[v])]
        if layer >= arr.shape[3]:
            raise InputError(f"{src.path}: segment {match[v]!r} is on layer {layer}, the file has {arr.shape[3]}.")
        mask = arr[..., layer] == value
        overlap = int(np.count_nonzero(mask & taken))
        if overlap:
            notes.append(f"{src.name}: {overlap} voxels of {match[v]!r} overlap another evaluated segment; "
                         f"they count as {lab.name!r}")
        out[mask] = v
        taken |= mask
    geom = Volume(np.zeros((1, 1, 1), np.uint8), image.GetSpacing(), image.GetOrigin(),
                  np.asarray(image.GetDirection(), float).reshape(3, 3))
    missing = [int(lab.value) for lab in labels if int(lab.value) not in match]
    return _finish(geom, out, src, match, missing, notes)


def _read_mask_folder(src: CaseSource, labels: Sequence[LabelInfo]) -> Volume:
    """One mask per structure (nonzero = inside). Only the matched files are read (a folder of 21 organs at
    512 x 512 x 160 would otherwise cost seconds for nothing). The label map is on the grid of the first matched
    mask; a mask on another grid is resampled onto it (nearest neighbour), with a note.

    (:func:`MedSegAILib.core.io.read_mask_folder` reads every file; the same file rule is applied here.)
    """
    from MedSegAILib.core.resample import resample_volume

    folder = src.path
    if not folder.is_dir():
        raise InputError(f"Mask folder not found: {folder}.")
    files = {split_stem(p)[0]: p for p in visible_entries(folder) if is_mask_file(p)}
    if not files:
        raise InputError(f"No mask volumes (NRRD, NIfTI, MHA) found in {folder}.")
    match = match_structures(files, labels, str(folder))
    if not match:
        if len(files) == 1:  # a lone label map in a case folder (e.g. <case>/labels.nii.gz)
            only = next(iter(files.values()))
            vol = _read_labelmap(CaseSource(src.name, only, "labelmap"), labels)
            vol.meta["read_notes"].append(f"{src.name}: {only.name} read as a label map (its name is no structure)")
            return vol
        raise InputError(unmatched_message(str(folder), sorted(files), labels))
    notes: list[str] = []
    grid: Optional[Volume] = None
    out: Optional[np.ndarray] = None
    for lab in labels:
        v = int(lab.value)
        if v not in match:
            continue
        mask = read_volume(files[match[v]])
        if grid is None:
            grid = mask
            out = np.zeros(mask.shape, dtype_for(labels))
        elif not mask.same_geometry(grid, GEOMETRY_TOL_MM):
            mask = resample_volume(mask.with_array((mask.array != 0).astype(np.uint8)), reference=grid.geometry(),
                                   interpolation="nearest")
            notes.append(f"{src.name}: mask {files[match[v]].name} is on another grid than "
                         f"{files[match[next(iter(match))]].name}; resampled onto it (nearest neighbour)")
        inside = mask.array != 0
        overlap = int(np.count_nonzero(inside & (out != 0)))
        if overlap:
            notes.append(f"{src.name}: {overlap} voxels of {match[v]!r} overlap another evaluated mask; they count "
                         f"as {lab.name!r}")
        out[inside] = v
    missing = [int(lab.value) for lab in labels if int(lab.value) not in match]
    return _finish(grid, out, src, match, missing, notes)


def read_case_labels(path: Union[str, os.PathLike, CaseSource], labels: LabelsLike) -> Volume:
    """Read one case (label map, ``.seg.nrrd`` or mask folder; see :func:`case_source`) as a label map in the
    labels' values. ``meta`` carries ``structure_names`` (value -> name found), ``missing_labels`` (labels with no
    segment/mask at all: not the same as empty) and ``read_notes``."""
    labs = labels_of(labels)
    src = path if isinstance(path, CaseSource) else case_source(path)
    if src.kind == "seg.nrrd":
        return _read_seg_nrrd(src, labs)
    if src.kind == "mask folder":
        return _read_mask_folder(src, labs)
    return _read_labelmap(src, labs)
