"""``.seg.nrrd`` files written and read by Slicer's own ``vtkMRMLSegmentationStorageNode``.

Writing goes through a private scene, so the file opens in Slicer with segment names, colours,
terminology and the ``MedSegAI.*`` segment tags, and the user's scene is never touched. The file holds
the **full reference grid** (not cropped to the segments: ``CropToMinimumExtent`` off), so its
``space origin``/``space directions``/``sizes`` are exactly the reference volume's, oblique included, and
``Segmentation_ReferenceImageExtentOffset`` is ``0 0 0``. A write goes to a temporary file in the same
folder which is then renamed over the target (``os.replace``): there is never a half-written file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, NamedTuple, Union

import numpy as np
import slicer

from MedSegAILib.core.volume import Geometry, Volume
from MedSegAILib.errors import InputError, OutputError
from MedSegAILib.mrml import _vtk
from MedSegAILib.mrml.segmentations import (
    BINARY_LABELMAP,
    TERMINOLOGY_TAG,
    build_segments,
    image_array,
    image_ijk_to_ras,
    reference_geometry_string,
    segment_ids,
    unique_segment_id,
)
from MedSegAILib.mrml.volumes import volume_from_ijk_to_ras
from MedSegAILib.tasks.base import TaskResult

GEOMETRY_PARAMETER = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()


class SegmentRecord(NamedTuple):
    """One segment of a ``.seg.nrrd`` file: ``(value, name, color, terminology)``."""

    value: int  #: its value in the returned label map
    name: str
    color: tuple[float, float, float]
    terminology: str  #: Slicer terminology entry string ("" when the segment has none)


# ---------------------------------------------------------------------------------------------- geometry
def _reference_ijk_to_ras(reference: Any) -> tuple[np.ndarray, tuple[int, int, int]]:
    """``(4x4 IJKToRAS, shape [k, j, i])`` of a Volume, a Geometry or a volume node (its own grid)."""
    if isinstance(reference, Volume):
        return reference.ijk_to_ras(), reference.shape
    if isinstance(reference, Geometry):
        return Volume(np.zeros((1, 1, 1)), reference.spacing, reference.origin, reference.direction).ijk_to_ras(), tuple(
            reference.shape
        )
    if hasattr(reference, "GetIJKToRASMatrix") and reference.GetImageData() is not None:
        ext = reference.GetImageData().GetExtent()
        m = _vtk.node_ijk_to_ras(reference) @ _vtk.translation((ext[0], ext[2], ext[4]))
        return m, (ext[5] - ext[4] + 1, ext[3] - ext[2] + 1, ext[1] - ext[0] + 1)
    raise TypeError(f"reference_geometry must be a Volume, a Geometry or a volume node; got {type(reference)!r}")


def _serialized_geometry(ijk_to_ras: np.ndarray, shape: tuple[int, int, int]) -> str:
    nk, nj, ni = shape
    return slicer.vtkSegmentationConverter.SerializeImageGeometry(
        _vtk.array_to_matrix(ijk_to_ras), [0, ni - 1, 0, nj - 1, 0, nk - 1]
    )


# ---------------------------------------------------------------------------------------------- write
def _fill_from_result(seg_node: Any, result: TaskResult, reference_geometry: Any) -> tuple[np.ndarray, tuple]:
    lab = result.labelmap
    if reference_geometry is not None:
        ref = reference_geometry
        if not isinstance(ref, (Volume, Geometry)):
            from MedSegAILib.mrml.volumes import volume_from_node

            ref = volume_from_node(ref, allow_labelmap=True).geometry()
        ref_vol = ref if isinstance(ref, Volume) else ref.empty(np.uint8)
        if tuple(ref_vol.shape) != tuple(lab.shape) or not ref_vol.same_geometry(lab, 1e-3):
            raise OutputError(
                "The result's label map is not on the given reference grid (shape, position, spacing or "
                "orientation differ); nothing was written."
            )
    ijk_to_ras = lab.ijk_to_ras()
    pairs, _empty, _stray = build_segments(result.labels, lab.array, ijk_to_ras, result.task_id)
    seg = seg_node.GetSegmentation()
    for label, segment in pairs:
        seg.AddSegment(segment, unique_segment_id(seg, label.name))
    return ijk_to_ras, lab.shape


def _fill_from_node(seg_node: Any, source: Any, reference_geometry: Any) -> tuple[np.ndarray, tuple]:
    src = source.GetSegmentation()
    if src.GetNumberOfSegments() and src.GetSourceRepresentationName() != BINARY_LABELMAP:
        raise OutputError(
            f"The segmentation {source.GetName()!r} is stored as {src.GetSourceRepresentationName()!r}; "
            "only binary-labelmap segmentations can be written as .seg.nrrd here."
        )
    seg = seg_node.GetSegmentation()
    for sid in segment_ids(src):
        s = src.GetSegment(sid)
        copy = slicer.vtkSegment()
        copy.DeepCopyMetadata(s)  # name, colour, tags, label value
        rep = s.GetRepresentation(BINARY_LABELMAP)
        if rep is not None:
            copy.AddRepresentation(BINARY_LABELMAP, rep)  # shared object: keeps shared layers, no voxel copy
        seg.AddSegment(copy, sid)
    if reference_geometry is not None:
        return _reference_ijk_to_ras(reference_geometry)
    text = reference_geometry_string(src)
    if not text:
        text = src.DetermineCommonLabelmapGeometry(slicer.vtkSegmentation.EXTENT_UNION_OF_SEGMENTS, None)
    if not text:
        raise OutputError(f"The segmentation {source.GetName()!r} has no geometry (no segment and no reference volume).")
    img = slicer.vtkOrientedImageData()
    slicer.vtkSegmentationConverter.DeserializeImageGeometry(text, img, False)
    ext = img.GetExtent()
    return image_ijk_to_ras(img), (ext[5] - ext[4] + 1, ext[3] - ext[2] + 1, ext[1] - ext[0] + 1)


def write_seg_nrrd(
    result_or_segmentation_node: Union[TaskResult, Any],
    path: Union[str, os.PathLike],
    reference_geometry: Any = None,
    *,
    compress: bool = True,
) -> Path:
    """Write a TaskResult or a ``vtkMRMLSegmentationNode`` to ``path`` (``.seg.nrrd``); returns the path.

    ``reference_geometry`` (a :class:`Volume`, :class:`Geometry` or volume node) is the grid of the file.
    For a TaskResult it defaults to the label map's grid and, when given, must be that grid (checked); for
    a segmentation node it defaults to the node's reference image geometry (else the union of its
    segments). Raises :class:`OutputError` when the folder is missing or not writable or the write fails;
    an existing file at ``path`` is replaced only by a complete new one.
    """
    path = Path(path)
    if not path.name.lower().endswith(".seg.nrrd"):
        raise OutputError(f"A segmentation file name must end with .seg.nrrd; got {path.name!r}.")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError(f"Cannot write {path}: the folder {folder} does not exist.")

    scene = slicer.vtkMRMLScene()
    seg_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", path.name[: -len(".seg.nrrd")])
    seg_node.GetSegmentation().SetSourceRepresentationName(BINARY_LABELMAP)
    if isinstance(result_or_segmentation_node, TaskResult):
        ijk_to_ras, shape = _fill_from_result(seg_node, result_or_segmentation_node, reference_geometry)
    elif hasattr(result_or_segmentation_node, "IsA") and result_or_segmentation_node.IsA("vtkMRMLSegmentationNode"):
        ijk_to_ras, shape = _fill_from_node(seg_node, result_or_segmentation_node, reference_geometry)
    else:
        raise TypeError(f"write_seg_nrrd: expected a TaskResult or a vtkMRMLSegmentationNode, got {type(result_or_segmentation_node)!r}")
    seg_node.GetSegmentation().SetConversionParameter(GEOMETRY_PARAMETER, _serialized_geometry(ijk_to_ras, shape))

    empty = seg_node.GetSegmentation().GetNumberOfSegments() == 0
    if empty and not isinstance(result_or_segmentation_node, TaskResult):
        raise OutputError(f"The segmentation {result_or_segmentation_node.GetName()!r} has no segments; there is "
                          "nothing to write.")
    storage = slicer.vtkMRMLSegmentationStorageNode()
    scene.AddNode(storage)
    storage.SetCropToMinimumExtent(False)
    storage.SetUseCompression(bool(compress))
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp.seg.nrrd", dir=folder)
    except OSError as e:
        raise OutputError(f"Cannot write {path}: the folder {folder} is not writable ({e.strerror or e}).") from e
    os.close(fd)
    try:
        storage.SetFileName(tmp)
        if empty:  # a result with nothing found (e.g. no nodule): Slicer's writer refuses a segment-less node
            _write_segmentless(result_or_segmentation_node.labelmap, tmp,
                               seg_node.GetSegmentation().GetConversionParameter(GEOMETRY_PARAMETER), compress)
        elif not storage.WriteData(seg_node):
            raise OutputError(f"Writing {path} failed (Slicer's segmentation writer reported an error; disk full?).")
        try:
            os.replace(tmp, path)
        except OSError as e:
            raise OutputError(f"Cannot write {path}: {e.strerror or e}.") from e
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _write_segmentless(labelmap: Volume, path: str, geometry: str, compress: bool) -> None:
    """A ``.seg.nrrd`` without segments, in the layout Slicer's segmentation storage node reads: an all-zero
    label volume on the result's grid with the segmentation header fields and the reference image geometry (Slicer's
    own writer refuses a segmentation without segments)."""
    import SimpleITK as sitk

    from MedSegAILib.core.io import to_sitk

    img = to_sitk(labelmap.with_array(np.zeros(labelmap.shape, np.uint8)))
    img.SetMetaData("Segmentation_MasterRepresentation", BINARY_LABELMAP)
    img.SetMetaData("Segmentation_ContainedRepresentationNames", BINARY_LABELMAP + "|")
    img.SetMetaData("Segmentation_ReferenceImageExtentOffset", "0 0 0")
    img.SetMetaData("Segmentation_ConversionParameters",
                    f"{GEOMETRY_PARAMETER}|{geometry}|Image geometry of the segmentation's label maps")
    try:
        sitk.WriteImage(img, path, useCompression=bool(compress))
    except RuntimeError as e:
        raise OutputError(f"Writing {path} failed: {e}") from None


# ---------------------------------------------------------------------------------------------- read
def read_seg_nrrd(path: Union[str, os.PathLike]) -> tuple[Volume, list[SegmentRecord]]:
    """Read a ``.seg.nrrd`` with Slicer's reader: ``(label map Volume, segment records)``.

    The label map is on the file's reference image geometry (else the union of its segments) and holds
    each segment's label value (``Segment<N>_LabelValue``). Overlapping segments stored in several layers
    are merged in segment order (later segments win); if two layers use the same value, the later
    segment gets a new value (``max + 1``), reported in its record.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"Segmentation file not found: {path}")
    scene = slicer.vtkMRMLScene()
    seg_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = slicer.vtkMRMLSegmentationStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    if not storage.ReadData(seg_node):
        raise InputError(f"{path} could not be read as a Slicer segmentation (.seg.nrrd).")
    seg = seg_node.GetSegmentation()
    text = reference_geometry_string(seg) or seg.DetermineCommonLabelmapGeometry(
        slicer.vtkSegmentation.EXTENT_UNION_OF_SEGMENTS, None
    )
    ref = slicer.vtkOrientedImageData()
    if not text or not slicer.vtkSegmentationConverter.DeserializeImageGeometry(text, ref, False):
        raise InputError(f"{path} has no image geometry.")
    ext = ref.GetExtent()
    shape = (ext[5] - ext[4] + 1, ext[3] - ext[2] + 1, ext[1] - ext[0] + 1)
    out = np.zeros(shape, dtype=np.int32)
    records: list[SegmentRecord] = []
    layers: dict[str, np.ndarray] = {}  # layer address -> resampled array on the reference grid
    used: dict[int, str] = {}  # value -> layer that uses it
    for sid in segment_ids(seg):
        s = seg.GetSegment(sid)
        rep = s.GetRepresentation(BINARY_LABELMAP)
        value = int(s.GetLabelValue())
        if rep is not None:
            key = rep.GetAddressAsString("vtkOrientedImageData")  # identifies a (shared) layer
            if key not in layers:
                resampled = slicer.vtkOrientedImageData()
                ok = slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
                    rep, ref, resampled, False, True
                )
                layers[key] = image_array(resampled) if ok and resampled.GetPointData().GetScalars() else np.zeros(shape, np.uint8)
            mask = layers[key] == value
            new_value = value
            if value in used and used[value] != key:
                new_value = max([*used, int(out.max())]) + 1
            used[new_value] = key
            out[mask] = new_value
            value = new_value
        terminology = s.GetTerminology() if s.HasTag(TERMINOLOGY_TAG) else ""
        records.append(SegmentRecord(value, s.GetName(), tuple(float(c) for c in s.GetColor()), terminology))
    top = int(out.max()) if out.size else 0
    dtype = np.uint8 if top <= 255 else (np.uint16 if top <= 65535 else np.int32)
    volume = volume_from_ijk_to_ras(out.astype(dtype), image_ijk_to_ras(ref), {"name": path.name, "is_labelmap": True})
    return volume, records
