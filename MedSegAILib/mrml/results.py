"""Writing a :class:`~MedSegAILib.tasks.base.TaskResult` into a scene, atomically.

What :func:`write_result` creates (all as siblings of the reference volume in subject hierarchy, i.e. in
its study, and under the reference volume's parent transform so they stay aligned with it):

* a **new** ``vtkMRMLSegmentationNode`` "<input name> <task title>" with one segment per label (name,
  colour, terminology tag, ``MedSegAI.*`` tags), all in one shared labelmap layer on the reference
  volume's exact voxel grid (``SetReferenceImageGeometryParameterFromVolumeNode(reference)``), and the
  provenance attributes ``MedSegAI.ModelId``, ``.ModelVersion``, ``.Device``, ``.Date``, ``.Parameters``
  (JSON), ``.Task``, ``.LibraryVersion``, ``.Provenance`` (all of ``result.provenance`` as JSON) and
  ``.Messages`` (JSON list). If the caller passes ``output_segmentation_node``, that node is used instead:
  only the segments this task writes are replaced (see
  :func:`MedSegAILib.mrml.segmentations.find_replaceable_segment`), the user's other segments are kept;
* one scalar volume node per ``ScalarMap`` with a colour table (Slicer's own when present) and window;
* one ``vtkMRMLTableNode`` per ``Table``;
* one ``vtkMRMLMarkupsFiducialNode`` per ``PointList``;
* per ``Plot``: a ``vtkMRMLPlotChartNode``, its ``vtkMRMLPlotSeriesNode``\\ s and a data table.

``Picture``\\ s are not scene data (PNG renderings); front ends show them from ``result.pictures``.

Atomic: if anything fails, every node created so far (display, colour and subject-hierarchy nodes
included) is removed, a passed output segmentation gets its replaced segments back, and the exception
propagates. The user's existing nodes are never modified (except the explicitly passed output).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import slicer

from MedSegAILib.errors import OutputError
from MedSegAILib.mrml import _vtk, extras
from MedSegAILib.mrml.segmentations import (
    BINARY_LABELMAP,
    SegmentSnapshot,
    build_segments,
    find_replaceable_segment,
    reference_geometry_string,
    segment_ids,
    unique_segment_id,
)
from MedSegAILib.mrml.volumes import grid_from_ijk_to_ras
from MedSegAILib.tasks.base import TaskResult

log = logging.getLogger(__name__)


#: Provenance attribute -> keys looked up in ``TaskResult.provenance`` (first found wins).
PROVENANCE_KEYS: dict[str, tuple[str, ...]] = {
    "MedSegAI.ModelId": ("model_id", "model"),
    "MedSegAI.ModelVersion": ("model_version", "version"),
    "MedSegAI.Device": ("device",),
    "MedSegAI.Date": ("date", "datetime", "timestamp"),
    "MedSegAI.Parameters": ("parameters", "params"),
    "MedSegAI.LibraryVersion": ("library_version", "medsegai_version"),
}

#: Tolerance (mm) between the result's grid and the reference volume's grid.
GEOMETRY_TOLERANCE_MM = 1e-3


@dataclass
class ResultNodes:
    """Every node :func:`write_result` created (``created``), and the main ones by kind."""

    segmentation: Any  #: the (new or passed) vtkMRMLSegmentationNode
    segment_ids: dict[int, str] = field(default_factory=dict)  #: label value -> segment ID
    empty_labels: list[str] = field(default_factory=list)  #: labels absent from the label map
    maps: list[Any] = field(default_factory=list)  #: scalar volume nodes
    color_tables: list[Any] = field(default_factory=list)  #: colour nodes used by the maps (maybe Slicer's)
    tables: list[Any] = field(default_factory=list)
    points: list[Any] = field(default_factory=list)  #: markups fiducial nodes
    plots: list[Any] = field(default_factory=list)  #: plot chart nodes
    plot_series: list[Any] = field(default_factory=list)
    plot_tables: list[Any] = field(default_factory=list)
    created: list[Any] = field(default_factory=list)  #: every node added to the scene, display nodes included
    messages: list[str] = field(default_factory=list)  #: result.messages + notes from writing


def task_title(task_id: str) -> str:
    try:
        from MedSegAILib.tasks.registry import get_task

        return str(get_task(task_id).title)
    except Exception:  # unknown task or registry not importable: the id is a fine title
        return task_id


def provenance_attributes(result: TaskResult, messages: Optional[list[str]] = None) -> dict[str, str]:
    prov = dict(result.provenance or {})
    out: dict[str, str] = {}
    for attr, keys in PROVENANCE_KEYS.items():
        value = next((prov[k] for k in keys if k in prov and prov[k] is not None), None)
        if attr == "MedSegAI.Parameters":
            out[attr] = json.dumps(value if value is not None else {}, sort_keys=True, default=str)
        elif value is not None:
            out[attr] = value if isinstance(value, str) else json.dumps(value, default=str)
    if "MedSegAI.Date" not in out:
        out["MedSegAI.Date"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    if "MedSegAI.LibraryVersion" not in out:
        import MedSegAILib

        out["MedSegAI.LibraryVersion"] = MedSegAILib.__version__
    out["MedSegAI.Task"] = result.task_id
    out["MedSegAI.Provenance"] = json.dumps(prov, sort_keys=True, default=str)
    out["MedSegAI.Messages"] = json.dumps(list(result.messages if messages is None else messages))
    return out


class _SceneTransaction:
    """Remembers the scene's nodes; ``rollback`` removes every node added since and runs undo steps."""

    def __init__(self, scene: Any):
        self.scene = scene
        self.before = {n.GetID() for n in _vtk.all_nodes(scene)}
        self.undo: list[Callable[[], None]] = []

    def new_nodes(self) -> list[Any]:
        return [n for n in _vtk.all_nodes(self.scene) if n.GetID() not in self.before]

    def rollback(self) -> None:
        for step in reversed(self.undo):
            try:
                step()
            except Exception:  # keep rolling back; the original error is what the user must see
                log.exception("MedSegAI: an undo step failed while rolling back a failed write")
        new = self.new_nodes()
        sh = self.scene.GetFirstNodeByClass("vtkMRMLSubjectHierarchyNode")
        if sh is not None and sh.GetID() in self.before:
            for node in new:
                item = sh.GetItemByDataNode(node)
                if item:
                    sh.RemoveItem(item, False, False)
        for node in reversed(new):
            if self.scene.IsNodePresent(node):
                self.scene.RemoveNode(node)


def _check_grid(result: TaskResult, reference_node: Any) -> np.ndarray:
    """The reference node's local IJKToRAS for array index (0,0,0); checks the result is on its grid."""
    image = reference_node.GetImageData()
    if image is None:
        raise OutputError(f"The reference volume {reference_node.GetName()!r} has no image data any more.")
    ext = image.GetExtent()
    local = _vtk.node_ijk_to_ras(reference_node) @ _vtk.translation((ext[0], ext[2], ext[4]))
    shape = (ext[5] - ext[4] + 1, ext[3] - ext[2] + 1, ext[1] - ext[0] + 1)
    lab = result.labelmap
    if tuple(lab.shape) != shape:
        raise OutputError(
            f"The result's label map has {lab.shape[::-1]} voxels (i, j, k) but the reference volume "
            f"{reference_node.GetName()!r} has {shape[::-1]}: it is not on the reference grid, or another "
            "volume was selected as reference. Nothing was written."
        )
    world = _vtk.transform_to_world(reference_node, "reference volume") @ local
    spacing, origin, direction = grid_from_ijk_to_ras(world)
    ok = (
        np.allclose(spacing, lab.spacing, atol=GEOMETRY_TOLERANCE_MM)
        and np.allclose(origin, lab.origin, atol=GEOMETRY_TOLERANCE_MM)
        and np.allclose(direction, lab.direction, atol=1e-5)
    )
    if not ok:
        raise OutputError(
            f"The result is not on the grid of {reference_node.GetName()!r} (its position, spacing or "
            "orientation differs; was the volume or its transform changed while the task ran?). "
            "Run the task again. Nothing was written."
        )
    return local


def _place_in_subject_hierarchy(scene: Any, reference_node: Any, nodes: list[Any], children: dict) -> None:
    """Put ``nodes`` next to the reference volume (same parent item); ``children[node]`` under ``node``."""
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    if sh is None:
        raise OutputError("The scene has no subject hierarchy and none can be created.")
    ref_item = sh.GetItemByDataNode(reference_node)
    parent = sh.GetItemParent(ref_item) if ref_item else 0
    if not parent:
        parent = sh.GetSceneItemID()

    def place(node: Any, under: int) -> int:
        item = sh.GetItemByDataNode(node)
        if item:
            sh.SetItemParent(item, under)
        else:
            item = sh.CreateItem(under, node)
        if not item:
            raise OutputError(f"Could not add {node.GetName()!r} to the subject hierarchy.")
        return item

    for node in nodes:
        item = place(node, parent)
        for child in children.get(node.GetID(), []):
            place(child, item)


def _result_name(result: TaskResult, reference_node: Any, name: Optional[str]) -> str:
    if name:
        return name
    title = (result.provenance or {}).get("task_title") or task_title(result.task_id)
    return f"{reference_node.GetName() or 'Volume'} {title}".strip()


def write_result(
    scene: Any,
    result: TaskResult,
    reference_node: Any,
    output_segmentation_node: Any = None,
    *,
    name: Optional[str] = None,
    empty_segments: bool = True,
) -> ResultNodes:
    """Write ``result`` into ``scene`` next to ``reference_node`` (see the module docstring).

    ``result.labelmap`` must be on ``reference_node``'s voxel grid (world geometry, parent transform
    included, within 1e-3 mm), else :class:`OutputError`. ``name`` overrides the base name
    "<input name> <task title>" used for every new node. ``empty_segments``: create segments for labels
    absent from the label map (default; listed in ``ResultNodes.empty_labels``).
    """
    if scene is None or reference_node is None:
        raise ValueError("write_result needs a scene and the reference volume node")
    if reference_node.GetScene() is not scene:
        raise ValueError("write_result: the reference volume node is not in the given scene")
    if output_segmentation_node is not None:
        if not output_segmentation_node.IsA("vtkMRMLSegmentationNode"):
            raise OutputError(f"{output_segmentation_node.GetName()!r} is not a segmentation; choose a segmentation.")
        if output_segmentation_node.GetScene() is not scene:
            raise ValueError("write_result: the output segmentation node is not in the given scene")
    local = _check_grid(result, reference_node)
    base = _result_name(result, reference_node, name)
    messages = list(result.messages)
    parent_transform = reference_node.GetParentTransformNode()
    to_world = _vtk.transform_to_world(reference_node, "reference volume")
    world_to_local = np.linalg.inv(to_world)

    # Segments are built before anything touches the scene (pure VTK objects).
    if output_segmentation_node is not None:
        out_to_world = _vtk.transform_to_world(output_segmentation_node, "output segmentation")
        seg_ijk_to_ras = np.linalg.inv(out_to_world) @ to_world @ local
    else:
        seg_ijk_to_ras = local
    pairs, empty, stray = build_segments(
        result.labels, result.labelmap.array, seg_ijk_to_ras, result.task_id, empty_segments=empty_segments
    )
    if stray:
        messages.append(f"Label value(s) {stray} in the result have no label description and were left out.")
    if empty:
        messages.append(f"Not found in this image (empty segment{'s' if len(empty) > 1 else ''}): {', '.join(empty)}.")
    attributes = provenance_attributes(result, messages)

    tx = _SceneTransaction(scene)
    out = ResultNodes(segmentation=output_segmentation_node, empty_labels=empty, messages=messages)
    batch = scene.BatchProcessState
    scene.StartState(batch)
    try:
        top_level: list[Any] = []
        sh_children: dict[str, list[Any]] = {}

        def under_reference_transform(node: Any) -> None:
            if parent_transform is not None:
                node.SetAndObserveTransformNodeID(parent_transform.GetID())

        # -- new segmentation node (filled below, after the extras)
        if output_segmentation_node is None:
            seg_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", base)
            seg_node.CreateDefaultDisplayNodes()
            seg_node.SetReferenceImageGeometryParameterFromVolumeNode(reference_node)
            seg_node.GetSegmentation().SetSourceRepresentationName(BINARY_LABELMAP)
            under_reference_transform(seg_node)
            out.segmentation = seg_node
            top_level.append(seg_node)

        # -- extras
        for smap in result.maps:
            vol = smap.volume
            same_grid = vol.shape == result.labelmap.shape and vol.same_geometry(result.labelmap, GEOMETRY_TOLERANCE_MM)
            node, color = extras.write_scalar_map(
                scene, smap, f"{base} {smap.name}", local if same_grid else world_to_local @ vol.ijk_to_ras(), messages
            )
            under_reference_transform(node)
            out.maps.append(node)
            out.color_tables.append(color)
            top_level.append(node)
        for table in result.tables:
            node = extras.write_table(scene, table, f"{base} {table.name}")
            out.tables.append(node)
            top_level.append(node)
        for plist in result.points:
            node = extras.write_points(scene, plist, f"{base} {plist.name}", world_to_local)
            under_reference_transform(node)
            out.points.append(node)
            top_level.append(node)
        for plot in result.plots:
            chart, ptable, series = extras.write_plot(scene, plot, f"{base} {plot.name}")
            out.plots.append(chart)
            out.plot_tables.append(ptable)
            out.plot_series.extend(series)
            top_level.append(chart)
            sh_children[chart.GetID()] = [ptable, *series]

        attributes = provenance_attributes(result, messages)  # now with the writers' notes too
        for node in top_level:
            if node is not out.segmentation or output_segmentation_node is None:
                for key, value in attributes.items():
                    node.SetAttribute(key, value)
        _place_in_subject_hierarchy(scene, reference_node, top_level, sh_children)

        # -- segments: last, so that a passed output segmentation is modified only when all else worked
        seg = out.segmentation.GetSegmentation()
        if output_segmentation_node is not None:
            source = seg.GetSourceRepresentationName()
            if seg.GetNumberOfSegments() and source != BINARY_LABELMAP:
                raise OutputError(
                    f"The segmentation {output_segmentation_node.GetName()!r} is stored as {source!r}, not as a "
                    "binary labelmap; choose another output segmentation or create a new one."
                )
            was_blank = seg.GetNumberOfSegments() == 0 and not reference_geometry_string(seg)
            old_attrs = {k: output_segmentation_node.GetAttribute(k) for k in attributes}
            tx.undo.append(lambda: [output_segmentation_node.SetAttribute(k, v) if v is not None
                                    else output_segmentation_node.RemoveAttribute(k) for k, v in old_attrs.items()])
        added: list[str] = []
        snapshots: list[SegmentSnapshot] = []

        def undo_segments() -> None:
            for sid in added:  # first remove what this write added, then put the replaced ones back
                if seg.GetSegment(sid) is not None:
                    seg.RemoveSegment(sid)
            for snap in sorted(snapshots, key=lambda s: s.index):
                snap.restore(seg)

        tx.undo.append(undo_segments)
        for label, segment in pairs:
            old_id = find_replaceable_segment(seg, label, result.task_id) if output_segmentation_node is not None else None
            if old_id is not None:
                snap = SegmentSnapshot.take(seg, old_id)
                ids = segment_ids(seg)
                after = ids[snap.index + 1] if snap.index + 1 < len(ids) else ""
                seg.RemoveSegment(old_id)
                snapshots.append(snap)
                new_id = old_id
            else:
                new_id, after = unique_segment_id(seg, label.name), ""
            if not seg.AddSegment(segment, new_id, after):
                raise OutputError(f"Could not add the segment {label.name!r} to {out.segmentation.GetName()!r}.")
            added.append(new_id)
            out.segment_ids[int(label.value)] = new_id
        if output_segmentation_node is not None:
            if was_blank and output_segmentation_node.GetParentTransformNode() is parent_transform:
                # a blank segmentation without a grid: give it the reference grid, as a new one gets
                output_segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(reference_node)
            for key, value in attributes.items():
                output_segmentation_node.SetAttribute(key, value)
        out.created = tx.new_nodes()
    except BaseException:
        tx.rollback()
        raise
    finally:
        scene.EndState(batch)
    return out
