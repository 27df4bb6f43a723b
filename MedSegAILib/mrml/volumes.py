"""Volume node <-> :class:`~MedSegAILib.core.volume.Volume` with exact geometry.

Geometry: a volume node's voxel grid is its ``IJKToRAS`` matrix (oblique allowed) followed by its parent
transforms. :func:`volume_from_node` **hardens** a linear parent transform into the returned ``Volume``
(the ``Volume`` then describes where the voxels are in world coordinates, which is what the user sees);
the node itself is never modified. Non-linear (warping) transforms are refused: no exact voxel grid exists.
Results are written back onto the reference node's own grid and under its parent transform
(see :mod:`MedSegAILib.mrml.results`), so they follow the image if the user edits the transform later.

The LPS<->RAS flip is the one of :mod:`MedSegAILib.core.volume`; it is not re-derived here.
"""

from __future__ import annotations

import os

from typing import Any, Callable, Optional

import numpy as np
import slicer

from MedSegAILib.core.volume import Volume, lps_to_ras_matrix
from MedSegAILib.errors import InputError
from MedSegAILib.mrml import _vtk

#: Node attribute / subject-hierarchy item attribute that holds the DICOM modality.
MODALITY_ATTRIBUTE = "DICOM.Modality"
#: node attribute ("1"/"0") saying whether the pixel spacing of a planar image is real (MedSegAI nodes)
SPACING_KNOWN_ATTRIBUTE = "MedSegAI.SpacingKnown"


def _ras_to_lps_matrix(m: np.ndarray) -> np.ndarray:
    # The LPS<->RAS flip is its own inverse, so core's helper converts in both directions.
    return lps_to_ras_matrix(m)


def _is_multivolume(node: Any) -> bool:
    return node.IsA("vtkMRMLMultiVolumeNode") or bool(node.GetAttribute("MultiVolume.NumberOfFrames"))


def _subject_hierarchy(scene: Any) -> Any:
    """The scene's subject hierarchy node if it already exists (never creates one)."""
    return scene.GetFirstNodeByClass("vtkMRMLSubjectHierarchyNode") if scene is not None else None


def _dicom_meta(node: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    modality = node.GetAttribute(MODALITY_ATTRIBUTE)
    sh = _subject_hierarchy(node.GetScene())
    if sh is not None:
        item = sh.GetItemByDataNode(node)
        if item:
            if not modality:
                modality = sh.GetItemAttribute(item, MODALITY_ATTRIBUTE)
            uid = sh.GetItemUID(item, "DICOM")
            if uid:
                meta["series_instance_uid"] = uid
            study = sh.GetItemParent(item)
            if study and study != sh.GetSceneItemID():
                study_uid = sh.GetItemUID(study, "DICOM")
                if study_uid:
                    meta["study_instance_uid"] = study_uid
    if modality:
        meta["modality"] = modality.strip().upper()
    # tracer and timing keys (planar NM tasks) when the node was read from a DICOM file (drag-and-drop / Add Data);
    # nodes loaded through the DICOM database keep no file name here and simply get none
    storage = node.GetStorageNode() if hasattr(node, "GetStorageNode") else None
    file_name = storage.GetFileName() if storage is not None else None
    if file_name and str(file_name).lower().endswith((".dcm", ".ima")) and os.path.isfile(file_name):
        from MedSegAILib.core.io import _nm_tracer_meta

        for key, value in _nm_tracer_meta(file_name).items():
            meta.setdefault(key, value)
    return meta


#: raster formats that carry no pixel spacing: Slicer gives their images 1 mm pixels
_SPACINGLESS_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

VectorToScalar = Callable[[np.ndarray], "tuple[np.ndarray, Optional[str]]"]


def _spacing_meta(node: Any, spacing: Any) -> dict[str, Any]:
    """``spacing_known``: False for an image read from a raster file (PNG, JPEG...) with Slicer's default 1 mm
    pixels (the file has no spacing); True when the node says it came through MedSegAI with a known spacing;
    absent otherwise (DICOM, NIfTI, NRRD carry their spacing)."""
    flag = node.GetAttribute(SPACING_KNOWN_ATTRIBUTE)
    if flag in ("0", "1"):
        return {"spacing_known": flag == "1"}
    storage = node.GetStorageNode() if hasattr(node, "GetStorageNode") else None
    file_name = storage.GetFileName() if storage is not None else None
    if file_name and str(file_name).lower().endswith(_SPACINGLESS_SUFFIXES) and np.allclose(spacing[:2], 1.0):
        return {"spacing_known": False}
    return {}


def volume_from_node(node: Any, *, allow_labelmap: bool = False,
                     vector_to_scalar: Optional[VectorToScalar] = None) -> Volume:
    """A :class:`Volume` holding a **copy** of ``node``'s voxels with its exact physical geometry.

    ``node`` is a scalar volume node (``vtkMRMLScalarVolumeNode``). A linear parent transform is hardened
    into the returned geometry (the node is not modified). ``meta`` gets ``name``, ``node_id``,
    ``modality`` (from the node's or its subject-hierarchy item's ``DICOM.Modality`` attribute, when known),
    ``series_instance_uid``/``study_instance_uid`` when loaded from DICOM, ``units`` when the node has
    voxel-value units, ``is_labelmap`` (True for label map nodes) and ``hardened_transform`` (the parent
    transform's name) when one was applied.

    Raises :class:`InputError` for: no node, a node that is not a volume, a sequence/multi-volume (4-D),
    a vector (RGB) volume, a label map node (unless ``allow_labelmap``), a node without image data, or a
    node under a non-linear transform.
    """
    if node is None:
        raise InputError("No input volume was selected. Select an image volume.")
    name = node.GetName() or node.GetID() or "volume"
    if node.IsA("vtkMRMLSequenceNode") or _is_multivolume(node):
        raise InputError(
            f"{name!r} is a 4-D image (time series / multi-volume). Select a single frame: in the "
            "Sequences module, browse to the frame and use its proxy volume (or clone it), then run again."
        )
    if not node.IsA("vtkMRMLVolumeNode"):
        raise InputError(f"{name!r} is a {node.GetClassName()}, not an image volume. Select an image volume.")
    image = node.GetImageData()
    if image is None or image.GetNumberOfPoints() == 0 or image.GetPointData().GetScalars() is None:
        raise InputError(f"The volume {name!r} has no image data (nothing was loaded into it).")
    components = image.GetNumberOfScalarComponents()
    read_notes: list[str] = []
    grey: Optional[np.ndarray] = None
    if node.IsA("vtkMRMLVectorVolumeNode") and vector_to_scalar is not None and components in (3, 4):
        # a task that accepts grey images stored as colour (radiographs saved as RGB JPEG) converts them; it
        # raises InputError for a real colour image
        grey, note = vector_to_scalar(np.asarray(slicer.util.arrayFromVolume(node)))
        if note:
            read_notes.append(note)
    elif node.IsA("vtkMRMLVectorVolumeNode") or node.IsA("vtkMRMLDiffusionTensorVolumeNode"):
        raise InputError(
            f"{name!r} is a vector (colour/RGB or multi-component) volume with {components} components per "
            "voxel. Convert it to grayscale with the Vector to Scalar Volume module, then select the result."
        )
    elif components != 1:
        raise InputError(
            f"{name!r} has {components} values per voxel (multi-frame or multi-component). "
            "Select a single frame, or convert it with the Vector to Scalar Volume module."
        )
    is_labelmap = bool(node.IsA("vtkMRMLLabelMapVolumeNode"))
    if is_labelmap and not allow_labelmap:
        raise InputError(
            f"{name!r} is a label map (a segmentation), not an image. Select the original image volume."
        )

    to_world = _vtk.transform_to_world(node)
    extent = image.GetExtent()
    # voxel (0, 0, 0) of the array is IJK = the extent start (0 for every normally loaded volume)
    ijk_to_ras = to_world @ _vtk.node_ijk_to_ras(node) @ _vtk.translation((extent[0], extent[2], extent[4]))
    spacing, origin, direction = grid_from_ijk_to_ras(ijk_to_ras, name)

    array = grey if grey is not None else np.array(slicer.util.arrayFromVolume(node), copy=True)
    meta: dict[str, Any] = {"name": name, "node_id": node.GetID(), "is_labelmap": is_labelmap}
    meta.update(_dicom_meta(node))
    meta.update(_spacing_meta(node, spacing))
    if read_notes:
        meta["read_notes"] = read_notes
    units = node.GetVoxelValueUnits() if hasattr(node, "GetVoxelValueUnits") else None
    if units is not None and units.GetCodeValue():
        meta["units"] = units.GetCodeMeaning() or units.GetCodeValue()
    parent = node.GetParentTransformNode()
    if parent is not None:
        meta["hardened_transform"] = parent.GetName()
    try:
        return Volume(array, spacing, origin, direction, meta)
    except InputError as e:
        if parent is not None:
            raise InputError(
                f"The volume {name!r} under transform {parent.GetName()!r}: {e} "
                "(the transform scales or shears the image; harden it to resample the volume first)."
            ) from None
        raise


def grid_from_ijk_to_ras(ijk_to_ras: np.ndarray, name: str = "volume") -> tuple:
    """``(spacing, origin, direction)`` in the :class:`Volume` convention (LPS) from a 4x4 IJKToRAS."""
    ijk_to_lps = _ras_to_lps_matrix(np.asarray(ijk_to_ras, dtype=float))
    axes = ijk_to_lps[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    if not np.all(np.isfinite(ijk_to_lps)) or np.any(spacing <= 0):
        raise InputError(f"The volume {name!r} has a degenerate geometry (zero or invalid voxel spacing).")
    return tuple(spacing), tuple(ijk_to_lps[:3, 3]), axes / spacing


def volume_from_ijk_to_ras(array: np.ndarray, ijk_to_ras: np.ndarray, meta: Optional[dict] = None) -> Volume:
    """A :class:`Volume` from a ``[k, j, i]`` array and the 4x4 IJKToRAS of its voxel (0, 0, 0)."""
    spacing, origin, direction = grid_from_ijk_to_ras(ijk_to_ras)
    return Volume(array, spacing, origin, direction, dict(meta or {}))


def _vtk_compatible(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.bool_:
        return array.astype(np.uint8)
    if array.dtype == np.float16:
        return array.astype(np.float32)
    if array.dtype in (np.int64, np.uint64):
        if array.size == 0 or (array.min() >= np.iinfo(np.int32).min and array.max() <= np.iinfo(np.int32).max):
            return array.astype(np.int32)
        return array.astype(np.float64)
    return array


def set_node_voxels(node: Any, volume: Volume, ijk_to_ras: Optional[np.ndarray] = None) -> None:
    """Fill ``node`` with ``volume``'s voxels (deep copy) and geometry (``ijk_to_ras`` overrides it)."""
    slicer.util.updateVolumeFromArray(node, _vtk_compatible(np.asarray(volume.array)))
    _vtk.set_node_ijk_to_ras(node, volume.ijk_to_ras() if ijk_to_ras is None else ijk_to_ras)


def node_from_volume(scene: Any, volume: Volume, name: str, node_class: str = "vtkMRMLScalarVolumeNode") -> Any:
    """Add a new volume node of ``node_class`` to ``scene`` holding a copy of ``volume`` (exact geometry).

    The node gets default display nodes and, when ``volume.meta`` has a ``modality``, the node attribute
    ``DICOM.Modality``. On failure nothing is left in the scene.
    """
    if not (node_class.startswith("vtkMRML") and node_class.endswith("VolumeNode")):
        raise ValueError(f"node_from_volume: {node_class!r} is not a volume node class")
    before = {n.GetID() for n in _vtk.all_nodes(scene)}
    node = scene.AddNewNodeByClass(node_class, name)
    if node is None:
        raise ValueError(f"node_from_volume: the scene cannot create a {node_class!r}")
    try:
        set_node_voxels(node, volume)
        modality = volume.meta.get("modality")
        if modality:
            node.SetAttribute(MODALITY_ATTRIBUTE, str(modality))
        if "spacing_known" in volume.meta:
            node.SetAttribute(SPACING_KNOWN_ATTRIBUTE, "1" if volume.meta["spacing_known"] else "0")
        node.CreateDefaultDisplayNodes()
    except BaseException:
        for n in _vtk.all_nodes(scene)[::-1]:
            if n.GetID() not in before:
                scene.RemoveNode(n)
        raise
    return node
