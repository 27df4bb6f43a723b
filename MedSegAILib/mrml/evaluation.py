"""Evaluating segmentation nodes of a scene: label maps from segments, per-case metrics, and a case set.

Same rules as the file evaluation (:mod:`MedSegAILib.evaluation`): segments are matched to the labels by name and side
(:func:`~MedSegAILib.evaluation.match_structures`: "Parotid-Lt" is the left parotid, never the right one), a label
with no segment is *missing* (no metric), one whose segment has no voxel is *empty*, and the numbers come from
:func:`~MedSegAILib.evaluation.evaluate_pair` (Dice ``2|P∩R| / (|P|+|R|)``, IoU ``|P∩R| / |P∪R|``, HD95, volumes).

**Label maps** (:func:`labelmap_from_segmentation_node`). Every matched segment is exported onto the reference
volume's own voxel grid by Slicer's segmentation export
(``vtkMRMLSegmentationNode.GenerateMergedLabelmapForAllSegments`` with the reference grid as the merged geometry:
nearest-neighbour resampling of the segment's binary labelmap, which handles oblique grids, cropped segment extents
and shared labelmap layers). Parent transforms (linear; a warping
transform is refused, as everywhere in the bridge) are handled by giving that export the reference grid expressed in
the segmentation's own frame, ``(segmentation -> world)^-1 · (volume -> world) · IJKToRAS``, composed exactly here,
so there is one resampling whatever the transforms. The returned :class:`~MedSegAILib.core.volume.Volume` has the
reference volume's world geometry (its linear parent transform hardened, as
:func:`~MedSegAILib.mrml.volumes.volume_from_node` does), so a prediction and a reference exported on the same
volume are compared voxel by voxel, without resampling. One segment is exported at a time, so overlaps are counted:
where two matched segments overlap, the later label (the labels' order) wins, with a note. A segmentation stored as
closed surfaces only (e.g. from RT structure sets) is converted to a binary labelmap directly on the reference grid in
a copy outside the scene (Slicer's closed-surface-to-labelmap rule); the input node is not changed.

**Case set** (:func:`evaluate_segmentation_nodes`). Each evaluated case is added to a table node that stands for the
set (``MedSegAI.EvaluationSet`` = set name, ``MedSegAI.EvaluationRole`` = ``set table``): one row per case and
structure, the columns of :meth:`EvaluationReport.tables` "Metrics per case". The table *is* the set's storage (it is
saved with the scene), so the set survives a scene save/reload; re-evaluating a case name replaces its rows. From the
set rows the Bland–Altman analysis of the volumes (:meth:`EvaluationReport.bland_altman`: difference = prediction −
reference, bias = mean difference, limits = bias ± 1.96 SD) is drawn as a plot chart once the set has two cases.

Each case also gets a case table (role ``case table``, ``MedSegAI.EvaluationCase`` = case name) next to the reference
volume; evaluating the same case of the same set again replaces it. :func:`clear_case_set` removes the set table and
the plot nodes, not the case tables.

Scene writes are all-or-nothing (``_SceneTransaction`` of :mod:`MedSegAILib.mrml.results`): on an error every node
made by the call is removed and the set table gets its previous content back. The input nodes are never modified.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import slicer
import vtk

from MedSegAILib.core.volume import Volume
from MedSegAILib.errors import InputError
from MedSegAILib.evaluation import (
    OK,
    CaseMetrics,
    EvaluationReport,
    StructureMetrics,
    evaluate_pair,
    label_map_volume,
    labels_of,
    match_structures,
)
from MedSegAILib.evaluation.compare import EMPTY_BOTH, EMPTY_PRED, EMPTY_REF, MISSING_BOTH, MISSING_PRED, MISSING_REF
from MedSegAILib.evaluation.names import LabelsLike, unmatched_message
from MedSegAILib.evaluation.reading import dtype_for
from MedSegAILib.mrml import _vtk, extras
from MedSegAILib.mrml.results import _place_in_subject_hierarchy, _SceneTransaction
from MedSegAILib.mrml.segmentations import BINARY_LABELMAP, GEOMETRY_PARAMETER, image_array, segment_ids
from MedSegAILib.mrml.volumes import grid_from_ijk_to_ras
from MedSegAILib.tasks.base import LabelInfo, Table

#: node attribute: the case set a node belongs to (its value is the set name)
SET_ATTRIBUTE = "MedSegAI.EvaluationSet"
#: node attribute: what the node is in the set (:data:`ROLE_SET_TABLE`, :data:`ROLE_PLOT`, :data:`ROLE_CASE_TABLE`)
ROLE_ATTRIBUTE = "MedSegAI.EvaluationRole"
#: node attribute of a case table: the case name
CASE_ATTRIBUTE = "MedSegAI.EvaluationCase"
ROLE_SET_TABLE = "set table"
ROLE_PLOT = "plot"  # the chart, its data table and its series
ROLE_CASE_TABLE = "case table"

CLOSED_SURFACE = slicer.vtkSegmentationConverter.GetClosedSurfaceRepresentationName()
_ALL_STATUSES = (OK, EMPTY_PRED, EMPTY_REF, EMPTY_BOTH, MISSING_PRED, MISSING_REF, MISSING_BOTH)


# ============================================================================================== label maps
def _check_node(node: Any, cls: str, what: str) -> str:
    if node is None:
        raise InputError(f"No {what} was selected. Select one and run again.")
    name = node.GetName() or node.GetID() or what
    if not node.IsA(cls):
        raise InputError(f"{name!r} is a {node.GetClassName()}, not a {what}. Select a {what}.")
    return name


def _reference_grid(reference_volume_node: Any) -> tuple[Volume, tuple[int, int, int]]:
    """``(world geometry as a one-voxel Volume, array shape [k, j, i])`` of the reference volume. The voxels are not
    copied (a CT is 40 M of them; only the grid is needed)."""
    name = _check_node(reference_volume_node, "vtkMRMLVolumeNode", "reference volume")
    image = reference_volume_node.GetImageData()
    if image is None or image.GetNumberOfPoints() == 0:
        raise InputError(f"The reference volume {name!r} has no image data (nothing was loaded into it).")
    ext = image.GetExtent()
    shape = (ext[5] - ext[4] + 1, ext[3] - ext[2] + 1, ext[1] - ext[0] + 1)
    local = _vtk.node_ijk_to_ras(reference_volume_node) @ _vtk.translation((ext[0], ext[2], ext[4]))
    world = _vtk.transform_to_world(reference_volume_node, "reference volume") @ local
    spacing, origin, direction = grid_from_ijk_to_ras(world, name)
    return Volume(np.zeros((1, 1, 1), np.uint8), spacing, origin, direction), shape


def _grid_in_segmentation_frame(segmentation_node: Any, reference_volume_node: Any) -> Any:
    """The reference volume's voxel grid (its extent) expressed in the segmentation node's own coordinates, as a
    geometry-only ``vtkOrientedImageData``: ``IJK -> RAS = (segmentation -> world)^-1 · (volume -> world) · IJKToRAS``.

    The matrix is composed here, exactly, for any pair of linear transforms. (Slicer's
    ``GenerateMergedLabelmapInReferenceGeometry``, behind "Export to label map", goes through the general transform
    between the nodes instead; when *both* nodes are under rigid transforms, slicer-core 5.12 returned a 64-voxel box
    as 61 voxels, displaced by a voxel. Either node alone under a transform was exact there too.)
    """
    seg_to_world = _vtk.transform_to_world(segmentation_node, "segmentation")  # warping: InputError
    vol_to_world = _vtk.transform_to_world(reference_volume_node, "reference volume")
    ijk_to_seg = np.linalg.inv(seg_to_world) @ vol_to_world @ _vtk.node_ijk_to_ras(reference_volume_node)
    grid = slicer.vtkOrientedImageData()
    grid.SetExtent(reference_volume_node.GetImageData().GetExtent())
    grid.SetImageToWorldMatrix(_vtk.array_to_matrix(ijk_to_seg))
    return grid


def _ensure_closed_surface_rule() -> None:
    """Register Slicer's closed-surface -> binary-labelmap conversion rule when the converter factory lacks it.

    The Slicer application registers it at start-up; a bare ``slicer-core`` process has no rule at all. A
    segmentation copies the factory's rules when it is created, so this must run before the temporary copy is made.
    """
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    have = {(r.GetSourceRepresentationName(), r.GetTargetRepresentationName()) for r in factory.GetConverterRules()}
    if (CLOSED_SURFACE, BINARY_LABELMAP) not in have:
        factory.RegisterConverterRule(slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule())


def _labelmap_copy(segmentation_node: Any, grid: Any, name: str) -> Any:
    """A segmentation node outside any scene holding a copy of the segments with a binary labelmap made directly on
    ``grid`` (the reference grid in the segmentation's frame), so the conversion is the only resampling."""
    segmentation = segmentation_node.GetSegmentation()
    source = segmentation.GetSourceRepresentationName()
    _ensure_closed_surface_rule()
    tmp = slicer.vtkMRMLSegmentationNode()
    tmp.GetSegmentation().DeepCopy(segmentation)
    tmp.GetSegmentation().SetConversionParameter(GEOMETRY_PARAMETER,
                                                 slicer.vtkSegmentationConverter.SerializeImageGeometry(grid))
    if not tmp.GetSegmentation().CreateRepresentation(BINARY_LABELMAP, True):
        raise InputError(
            f"The segmentation {name!r} is stored as {source!r} and could not be converted to a binary labelmap. "
            "In the Segmentations module, create its 'Binary labelmap' representation (Representations section), "
            "then evaluate again.")
    return tmp


def _mask_on_grid(image: Any, grid: Any, shape: tuple[int, int, int], what: str) -> np.ndarray:
    """The nonzero voxels of an exported ``vtkOrientedImageData`` as a boolean ``[k, j, i]`` array of the reference
    grid. The export is on ``grid`` by construction; the checks guard against a Slicer version that would crop it to
    the segment (it is then placed by its extent) or change its geometry."""
    ext = image.GetExtent()
    if image.GetPointData().GetScalars() is None or ext[1] < ext[0] or ext[3] < ext[2] or ext[5] < ext[4]:
        raise InputError(f"Slicer could not export {what} onto the reference grid (see the application log).")
    got, want = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(got)
    grid.GetImageToWorldMatrix(want)
    if not np.allclose(_vtk.matrix_to_array(got), _vtk.matrix_to_array(want), atol=1e-6):
        raise InputError(f"{what}: the exported label map is not on the reference volume's grid.")
    ref_ext = grid.GetExtent()
    arr = image_array(image) != 0
    lo = (ext[4] - ref_ext[4], ext[2] - ref_ext[2], ext[0] - ref_ext[0])  # [k, j, i] offset in the reference array
    src = tuple(slice(max(0, -a), max(0, min(n, s - a))) for a, n, s in zip(lo, arr.shape, shape))
    dst = tuple(slice(max(0, a), max(0, min(s, a + n))) for a, n, s in zip(lo, arr.shape, shape))
    out = np.zeros(shape, bool)
    out[dst] = arr[src]
    return out


def labelmap_from_segmentation_node(segmentation_node: Any, reference_volume_node: Any, labels: LabelsLike) -> Volume:
    """The segments of ``segmentation_node`` that match ``labels`` as one label map on ``reference_volume_node``'s
    voxel grid (see the module docstring for how).

    Returns a :class:`Volume` with the reference volume's world geometry, voxels = the labels' ``value``\\ s (0
    elsewhere), and ``meta``: ``structure_names`` (label value -> segment name), ``segment_ids`` (label value ->
    segment ID), ``missing_labels`` (labels no segment matches), ``read_notes`` (overlaps, conversions), ``name``,
    ``source``, ``source_kind`` = ``"segmentation node"``, ``node_id``.

    Raises :class:`InputError` for: no node / not a segmentation / not a volume, a reference volume without voxels,
    no segment matching any label, two segments matching one label (e.g. "Parotid-Lt" and "Left parotid"), two
    segments of the same name, either node under a non-linear (warping) transform, or segments that cannot be
    converted to a binary labelmap.
    """
    labs = labels_of(labels)
    name = _check_node(segmentation_node, "vtkMRMLSegmentationNode", "segmentation")
    geometry, shape = _reference_grid(reference_volume_node)
    grid = _grid_in_segmentation_frame(segmentation_node, reference_volume_node)

    where = f"The segmentation {name!r}"
    segmentation = segmentation_node.GetSegmentation()
    ids_by_name: dict[str, list[str]] = {}
    for sid in segment_ids(segmentation):
        ids_by_name.setdefault(segmentation.GetSegment(sid).GetName(), []).append(sid)
    match = match_structures(list(ids_by_name), labs, where)
    if not match:
        raise InputError(unmatched_message(where, list(ids_by_name), labs))
    for found in match.values():
        if len(ids_by_name[found]) > 1:
            raise InputError(f"{where} has {len(ids_by_name[found])} segments named {found!r} "
                             f"({', '.join(ids_by_name[found])}); rename or remove the extra ones and run again.")
    chosen = {v: ids_by_name[n][0] for v, n in match.items()}

    notes: list[str] = []
    source = segmentation_node
    if any(segmentation.GetSegment(sid).GetRepresentation(BINARY_LABELMAP) is None for sid in chosen.values()):
        source = _labelmap_copy(segmentation_node, grid, name)
        notes.append(f"{name}: segments converted from {segmentation.GetSourceRepresentationName()!r} to a binary "
                     f"labelmap on the grid of {reference_volume_node.GetName()!r}")
    out = np.zeros(shape, dtype_for(labs))
    for lab in labs:  # labels' order: a later label wins where segments overlap
        v = int(lab.value)
        if v not in chosen:
            continue
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(chosen[v])
        image = slicer.vtkOrientedImageData()
        source.GenerateMergedLabelmapForAllSegments(image, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY, grid, ids)
        mask = _mask_on_grid(image, grid, shape, f"segment {match[v]!r} of {name!r}")
        overlap = int(np.count_nonzero(mask & (out != 0)))
        if overlap:
            notes.append(f"{name}: {overlap} voxels of {match[v]!r} overlap another evaluated segment; they count as "
                         f"{lab.name!r}")
        out[mask] = v
    missing = [int(lab.value) for lab in labs if int(lab.value) not in match]
    vol = label_map_volume(geometry, out, name=name, source=f"segmentation node {name!r} ({segmentation_node.GetID()})",
                           kind="segmentation node", names=match, missing=missing, notes=notes)
    vol.meta["segment_ids"] = dict(chosen)
    vol.meta["node_id"] = segmentation_node.GetID()
    return vol


# ============================================================================================== the case set
@dataclass
class EvaluationNodes:
    """What :func:`evaluate_segmentation_nodes` computed and wrote.

    ``metrics.dice`` (and ``.iou``, ``.hd95_mm``) is ``{label name: value}`` for this case, None where undefined
    (:attr:`CaseMetrics.dice`); ``metrics.structures`` has everything (status, volumes).
    """

    metrics: CaseMetrics  #: this case
    caseTable: Any  #: vtkMRMLTableNode: this case, one row per structure
    setTable: Any  #: vtkMRMLTableNode: every case of the set, one row per case and structure
    plotChart: Optional[Any]  #: vtkMRMLPlotChartNode: Bland–Altman of the volumes; None below 2 cases
    summary: str  #: a few lines for the GUI: per structure Dice / IoU / HD95, and the set size
    setReport: EvaluationReport  #: the set as a report (summary statistics, Bland–Altman numbers, files)
    plotTable: Optional[Any] = None  #: the chart's data table
    plotSeries: list[Any] = field(default_factory=list)
    created: list[Any] = field(default_factory=list)  #: every node this call added to the scene


def _tagged(scene: Any, set_name: str, roles: Sequence[str], case: Optional[str] = None) -> list[Any]:
    out = []
    for node in _vtk.all_nodes(scene):
        if node.GetAttribute(SET_ATTRIBUTE) == set_name and node.GetAttribute(ROLE_ATTRIBUTE) in roles:
            if case is None or node.GetAttribute(CASE_ATTRIBUTE) == case:
                out.append(node)
    return out


def find_set_table(scene: Any, setName: str) -> Optional[Any]:
    """The table node of the case set ``setName`` (found by its attributes), or None."""
    nodes = [n for n in _tagged(scene, setName, (ROLE_SET_TABLE,)) if n.IsA("vtkMRMLTableNode")]
    return nodes[0] if nodes else None


def _template(labels: Sequence[LabelInfo]) -> Table:
    return EvaluationReport(list(labels), []).tables()[0]


def _column_values(node: Any, header: str, where: str) -> list[Any]:
    """A column of a table node as Python values: numbers from numeric arrays (exact), text otherwise (a table read
    back from a .tsv without its schema holds text; numbers are parsed then)."""
    col = node.GetTable().GetColumnByName(header)
    if col is None:
        raise InputError(f"{where} has no column {header!r} (was it edited?). Clear the case set (or delete the "
                         "table) and evaluate the cases again.")
    n = node.GetTable().GetNumberOfRows()
    if col.IsA("vtkDataArray"):
        return [float(col.GetTuple1(r)) for r in range(n)]
    return [str(col.GetValue(r)) for r in range(n)]


def _number(v: Any, where: str) -> Optional[float]:
    if isinstance(v, str):
        v = v.strip()
        if v == "":
            return None
        try:
            v = float(v)
        except ValueError:
            raise InputError(f"{where}: {v!r} is not a number. Clear the case set and evaluate again.") from None
    return None if math.isnan(v) else float(v)


def read_case_set(node: Any, labels: LabelsLike) -> list[CaseMetrics]:
    """The cases stored in a set table node (see :func:`evaluate_segmentation_nodes`), in table order.

    Raises :class:`InputError` when the table does not hold the columns, statuses or structures of ``labels`` (a set
    made for other structures, or an edited table)."""
    labs = labels_of(labels)
    where = f"The case-set table {node.GetName()!r}"
    template = _template(labs)
    cols = {c.name: _column_values(node, h, where) for c, h in zip(template.columns, template.header())
            if c.name in ("Case", "Structure", "Status", "Dice", "IoU", "HD95", "Volume prediction",
                          "Volume reference", "Resampled")}
    value_of = {lab.name: int(lab.value) for lab in labs}
    rows: dict[str, dict[str, StructureMetrics]] = {}
    resampled: dict[str, bool] = {}
    for r in range(node.GetTable().GetNumberOfRows()):
        case, structure, status = (str(cols[k][r]) for k in ("Case", "Structure", "Status"))
        if structure not in value_of:
            raise InputError(f"{where} holds the structure {structure!r}, which is not among the structures evaluated "
                             f"now ({', '.join(value_of)}). Clear the case set (or use another set name).")
        if status not in _ALL_STATUSES:
            raise InputError(f"{where}: unknown status {status!r} (row {r + 1}). Clear the case set and evaluate "
                             "again.")
        nums = [_number(cols[k][r], where) for k in ("Dice", "IoU", "HD95", "Volume prediction", "Volume reference")]
        rows.setdefault(case, {})[structure] = StructureMetrics(value_of[structure], structure, status, *nums)
        resampled[case] = resampled.get(case, False) or str(cols["Resampled"][r]) == "yes"
    cases = []
    for case, by_name in rows.items():
        absent = [lab.name for lab in labs if lab.name not in by_name]
        if absent:
            raise InputError(f"{where}: the case {case!r} has no row for {', '.join(absent)} (a set made for other "
                             "structures?). Clear the case set (or use another set name).")
        cases.append(CaseMetrics(case, [by_name[lab.name] for lab in labs], resampled[case]))
    return cases


def _fill(node: Any, table: Table, tx: _SceneTransaction) -> None:
    """Refill an existing table node in place (same node ID, so open views follow), undoable."""
    saved = vtk.vtkTable()
    saved.DeepCopy(node.GetTable())

    def restore() -> None:
        node.GetTable().DeepCopy(saved)
        node.Modified()

    tx.undo.append(restore)
    node.RemoveAllColumns()
    extras.fill_table_node(node, table)
    if table.description:
        node.SetDescription(table.description)


def _tag(node: Any, set_name: str, role: str, case: Optional[str] = None) -> None:
    node.SetAttribute(SET_ATTRIBUTE, set_name)
    node.SetAttribute(ROLE_ATTRIBUTE, role)
    if case is not None:
        node.SetAttribute(CASE_ATTRIBUTE, case)


def _place_at_scene_level(scene: Any, node: Any, children: Sequence[Any] = ()) -> None:
    """Subject hierarchy: ``node`` at the top (a set spans patients), ``children`` under it."""
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    if sh is None:
        return

    def place(n: Any, parent: int) -> int:
        item = sh.GetItemByDataNode(n)
        if item:
            sh.SetItemParent(item, parent)
            return item
        return sh.CreateItem(parent, n)

    top = place(node, sh.GetSceneItemID())
    for child in children:
        place(child, top)


def _remove(scene: Any, nodes: Sequence[Any]) -> None:
    sh = scene.GetFirstNodeByClass("vtkMRMLSubjectHierarchyNode")
    for node in nodes:
        if sh is not None:
            item = sh.GetItemByDataNode(node)
            if item:
                sh.RemoveItem(item, False, False)
        if scene.IsNodePresent(node):
            scene.RemoveNode(node)


def _metric_text(s: StructureMetrics) -> str:
    parts = []
    if s.dice is not None:
        parts.append(f"Dice {s.dice:.3f}")
    if s.iou is not None:
        parts.append(f"IoU {s.iou:.3f}")
    if s.hd95_mm is not None:
        parts.append(f"HD95 {s.hd95_mm:.1f} mm" if math.isfinite(s.hd95_mm) else "HD95 ∞")
    text = ", ".join(parts) if parts else "no metric"
    return text if s.status == OK else f"{text} ({s.status})"


def _summary(metrics: CaseMetrics, report: EvaluationReport, set_name: str, plotted: bool) -> str:
    lines = [f"{metrics.case}:"]
    lines += [f"  {s.name}: {_metric_text(s)}" for s in metrics.structures]
    n = len(report.cases)
    head = f"Case set {set_name!r}: {n} case{'s' if n != 1 else ''}"
    if plotted:
        biases = [f"{name} {r['bias']:+.2f} mL" + (f" (n = {r['n']})" if r["n"] != n else "")
                  for name, r in report.bland_altman().items() if r]
        lines.append(f"{head}; volume bias (prediction − reference): {', '.join(biases)} (Bland–Altman plot).")
    elif n < 2:
        lines.append(f"{head}; the Bland–Altman plot of the volumes needs at least 2 cases.")
    else:
        lines.append(f"{head}; no structure has volumes on both sides, so there is no Bland–Altman plot.")
    return "\n".join(lines)


def evaluate_segmentation_nodes(
    scene: Any,
    segmentation_node: Any,
    reference_segmentation_node: Any,
    reference_volume_node: Any,
    labels: LabelsLike,
    case_name: str,
    setName: str = "parotid",
) -> EvaluationNodes:
    """Evaluate ``segmentation_node`` (prediction) against ``reference_segmentation_node`` on
    ``reference_volume_node``'s grid, and add the case to the case set ``setName`` (see the module docstring).

    Writes: a case table "<case> evaluation" next to the reference volume (replacing that of an earlier evaluation of
    the same case in the same set), the set table "<setName> evaluation set" (created, or updated in place: the rows
    of ``case_name`` are replaced) and, from 2 cases on, the Bland–Altman chart "<setName> evaluation set
    Bland-Altman" with its data table and series (replacing the previous chart). Atomic: on any error nothing this
    call made stays in the scene and the set table is as before. The input nodes are not modified.
    """
    if scene is None:
        raise ValueError("evaluate_segmentation_nodes needs a scene")
    case = str(case_name or "").strip()
    set_name = str(setName or "").strip()
    if not case:
        raise InputError("The case has no name; give it one (e.g. the volume's name) and evaluate again.")
    if not set_name:
        raise InputError("The case set has no name.")
    labs = labels_of(labels)
    for node in (segmentation_node, reference_segmentation_node, reference_volume_node):
        if node is not None and node.GetScene() is not scene:
            raise ValueError(f"evaluate_segmentation_nodes: {node.GetName()!r} is not in the given scene")
    if reference_segmentation_node is None:
        raise InputError("No reference segmentation was selected. Select the reference contours of this image.")

    # -- numbers first: nothing touches the scene before they exist
    pred = labelmap_from_segmentation_node(segmentation_node, reference_volume_node, labs)
    ref = labelmap_from_segmentation_node(reference_segmentation_node, reference_volume_node, labs)
    metrics = evaluate_pair(pred, ref, labs, case=case)
    old_set = find_set_table(scene, set_name)
    cases = read_case_set(old_set, labs) if old_set is not None else []
    names = [c.case for c in cases]
    if case in names:
        cases[names.index(case)] = metrics  # re-evaluated: its rows are replaced where they were
    else:
        cases.append(metrics)
    report = EvaluationReport(labs, cases)
    case_table = EvaluationReport(labs, [metrics]).tables()[0]
    set_table = report.tables()[0]
    plot = None
    if len(cases) >= 2 and any(report.volume_pairs(lab)[0] for lab in labs):
        plot = report.bland_altman_plot()

    # -- scene
    old_case_tables = _tagged(scene, set_name, (ROLE_CASE_TABLE,), case)
    old_plot = _tagged(scene, set_name, (ROLE_PLOT,))
    tx = _SceneTransaction(scene)
    batch = scene.BatchProcessState
    scene.StartState(batch)
    try:
        case_node = extras.write_table(scene, case_table, f"{case} evaluation")
        _tag(case_node, set_name, ROLE_CASE_TABLE, case)
        _place_in_subject_hierarchy(scene, reference_volume_node, [case_node], {})
        if old_set is None:
            set_node = extras.write_table(scene, set_table, f"{set_name} evaluation set")
            _tag(set_node, set_name, ROLE_SET_TABLE)
            _place_at_scene_level(scene, set_node)
        else:
            set_node = old_set
            _fill(set_node, set_table, tx)
        chart = plot_table = None
        series: list[Any] = []
        if plot is not None:
            chart, plot_table, series = extras.write_plot(scene, plot, f"{set_name} evaluation set Bland-Altman")
            for n in (chart, plot_table, *series):
                _tag(n, set_name, ROLE_PLOT)
            _place_at_scene_level(scene, chart, [plot_table, *series])
        created = tx.new_nodes()
        _remove(scene, [*old_case_tables, *old_plot])  # last: what it replaces goes only once all else worked
    except BaseException:
        tx.rollback()
        raise
    finally:
        scene.EndState(batch)
    return EvaluationNodes(metrics, case_node, set_node, chart, _summary(metrics, report, set_name, chart is not None),
                           report, plot_table, series, created)


def clear_case_set(scene: Any, setName: str) -> int:
    """Start the case set ``setName`` afresh: remove its set table and Bland–Altman nodes (chart, data table,
    series): only nodes tagged ``MedSegAI.EvaluationSet = setName`` with one of those roles. Case tables stay (they
    are the per-case results). Returns the number of nodes removed."""
    nodes = _tagged(scene, str(setName), (ROLE_SET_TABLE, ROLE_PLOT))
    batch = scene.BatchProcessState
    scene.StartState(batch)
    try:
        _remove(scene, nodes)
    finally:
        scene.EndState(batch)
    return len(nodes)
