"""Fine-tuning from the scene: training cases from volume + segmentation nodes, the correction Dice, a live
training plot, and the candidate pairs of a scene.

Every function takes the scene and nodes as arguments and never uses ``slicer.app`` / ``slicer.mrmlScene``, so it
runs in the Slicer application (the modules' "Fine-tune" section) and with ``slicer-core`` alike.

**Cases** (:func:`case_from_nodes`). The inputs are copied from the volume nodes exactly as "Segment" copies them
(:meth:`MedSegAILib.mrml.logic.SegmentationLogic.prepare`: linear parent transforms hardened, colour images offered to
the task). The corrected segmentation becomes a label map on the reference input's voxel grid by
:func:`MedSegAILib.mrml.evaluation.labelmap_from_segmentation_node` (one nearest-neighbour export per segment onto the
exact grid, parent transforms of both nodes composed exactly). Segments are matched to the task's labels by name and
side (:func:`MedSegAILib.evaluation.names.match_structures`: "Parotid-Lt" is the left parotid); a segment whose name
is no label of the task is refused, naming it and the known labels, as :func:`MedSegAILib.finetune.data.read_mask`
does for files. Tasks without fixed labels (instance tasks: lung nodules, parathyroid foci) take every segment as
foreground (value 1). Empty masks are refused (:func:`MedSegAILib.finetune.data.check_labels`).

**Correction Dice** (:func:`correction_dice`): per label, ``2|O∩C| / (|O|+|C|)`` between the model's original output
O and the corrected mask C (:func:`MedSegAILib.metrics.dice`); 1.0 = nothing was changed. This is MONAI Label's
"how much the user corrected" score.

**Training plot** (:class:`TrainingPlot`): one table node (epoch, training loss, validation Dice, learning rate, time)
and one plot chart with two series, created on the first :meth:`TrainingPlot.update` and refilled in place after.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import slicer
import vtk

from MedSegAILib.core.volume import Volume
from MedSegAILib.errors import InputError
from MedSegAILib.finetune.data import GRID_TOL_MM, known_labels_text, unknown_segments
from MedSegAILib.mrml import _vtk

#: node attribute of the training plot's nodes (value: the plot name)
PLOT_ATTRIBUTE = "MedSegAI.FinetunePlot"
#: subject-hierarchy attribute (patient item) / node attribute holding the DICOM patient ID
PATIENT_ID_ATTRIBUTE = "DICOM.PatientID"
#: label name reported by :func:`correction_dice` for instance tasks (every segment is foreground)
FOREGROUND_NAME = "Foreground (all segments)"


# ============================================================================================== helpers
def _task(task: Any) -> Any:
    if isinstance(task, str):
        from MedSegAILib.tasks.registry import get_task

        return get_task(task)
    return task


def segment_names(segmentation_node: Any) -> list[str]:
    """Names of the segments of a segmentation node, in order."""
    seg = segmentation_node.GetSegmentation()
    return [seg.GetNthSegment(i).GetName() for i in range(seg.GetNumberOfSegments())]


def patient_of(volume_node: Any) -> str:
    """The DICOM patient ID of a volume: the ``DICOM.PatientID`` attribute of the nearest subject-hierarchy ancestor
    (or of the node itself) that has one; else the volume node's name (each volume its own patient)."""
    scene = volume_node.GetScene()
    sh = scene.GetFirstNodeByClass("vtkMRMLSubjectHierarchyNode") if scene is not None else None
    if sh is not None:
        item = sh.GetItemByDataNode(volume_node)
        top = sh.GetSceneItemID()
        while item and item != top:
            value = sh.GetItemAttribute(item, PATIENT_ID_ATTRIBUTE)
            if value and value.strip():
                return value.strip()
            item = sh.GetItemParent(item)
    value = volume_node.GetAttribute(PATIENT_ID_ATTRIBUTE)
    if value and value.strip():
        return value.strip()
    return volume_node.GetName() or volume_node.GetID()


def _instance_labels(names: Sequence[str]) -> list:
    from MedSegAILib.evaluation.names import make_labels

    unique = list(dict.fromkeys(names))
    return make_labels({i + 1: n for i, n in enumerate(unique)})


def _label_map(task: Any, segmentation_node: Any, reference_node: Any, what: str, ignore_unknown: bool
               ) -> tuple[Volume, list[str]]:
    """``(label map in task label values on the reference grid, notes)`` of a segmentation node."""
    from MedSegAILib.mrml.evaluation import labelmap_from_segmentation_node

    name = segmentation_node.GetName() or segmentation_node.GetID()
    names = segment_names(segmentation_node)
    notes: list[str] = []
    where = f"The {what} {name!r}"
    if task.labels:
        unknown = unknown_segments(task, names, where)
        if unknown and not ignore_unknown:
            raise InputError(
                f"{where} has segment(s) {', '.join(repr(n) for n in unknown)} that are not labels of the "
                f"{task.title} model (it knows {known_labels_text(task)}). Rename them to a label's name (in the "
                "Segment Editor) or delete them, then fine-tune again.")
        if unknown:
            notes.append(f"{name}: segment(s) {', '.join(unknown)} are no label of {task.title} and were left out")
        vol = labelmap_from_segmentation_node(segmentation_node, reference_node, task.labels)
        notes += list(vol.meta.get("read_notes", []))
        vol.meta["label_names"] = {int(lab.value): lab.name for lab in task.labels}
        vol.meta["instance_labels"] = False
        return vol, notes
    if not names:
        raise InputError(f"{where} has no segment. Draw the structures to learn (Segment Editor) and try again.")
    vol = labelmap_from_segmentation_node(segmentation_node, reference_node, _instance_labels(names))
    notes += list(vol.meta.get("read_notes", []))
    out = vol.with_array((np.asarray(vol.array) != 0).astype(np.uint8))
    out.meta["label_names"] = {1: FOREGROUND_NAME}
    out.meta["instance_labels"] = True
    return out, notes


def _kept_original(task: Any, original: Volume, reference: Volume, case_name: str
                   ) -> tuple[Optional[Volume], list[str]]:
    """A label map kept from the Segment run (the result's ``labelmap``), checked to lie on the reference grid."""
    if tuple(original.shape) != tuple(reference.shape) or not original.same_geometry(reference, GRID_TOL_MM):
        return None, [f"{case_name}: the kept model output is not on the image's grid any more (was the volume moved "
                      "or resampled?); no correction Dice for this case"]
    arr = np.asarray(original.array)
    if not task.labels:
        arr = (arr != 0).astype(np.uint8)
    out = reference.with_array(arr)
    out.meta.clear()
    out.meta.update(dict(original.meta), instance_labels=not task.labels)
    return out, []


# ============================================================================================== cases
def case_from_nodes(task: Any, volume_nodes: Mapping[str, Any], segmentation_node: Any, *,
                    original_segmentation_node: Any = None, original: Optional[Volume] = None,
                    name: Optional[str] = None) -> Any:
    """One training :class:`~MedSegAILib.finetune.data.Case` from the scene (see the module docstring).

    ``task``: a task plug-in or its id. ``volume_nodes``: ``{role: volume node}``, the task's reference role
    required (its grid is the label map's grid). ``segmentation_node``: the corrected segmentation.
    ``original_segmentation_node``: the model's original output (optional; segments of unknown names are ignored
    there, with a note), or ``original``: that output as a label map already on the reference grid (the
    ``TaskResult.labelmap`` a module keeps from its last Segment run). ``name``: the case name (default: the
    reference volume's name). The patient is :func:`patient_of` the reference volume.

    Raises :class:`InputError` for: a missing reference volume, inputs the task refuses, segments whose names are
    not labels of the task (named, with the known labels), no matching segment, an empty mask, either node under a
    warping transform.
    """
    from MedSegAILib.finetune.data import Case, check_labels
    from MedSegAILib.mrml.logic import SegmentationLogic

    task = _task(task)
    reference_node = volume_nodes.get(task.reference_role)
    if reference_node is None:
        raise InputError(f"Select the {task.input_spec(task.reference_role).title} volume of this case.")
    if segmentation_node is None or not segmentation_node.IsA("vtkMRMLSegmentationNode"):
        raise InputError("Select the corrected segmentation of this case.")
    scene = reference_node.GetScene()
    case_name = str(name or reference_node.GetName() or reference_node.GetID())
    inputs = SegmentationLogic().prepare(scene, {r: n for r, n in volume_nodes.items() if n is not None}, task.id)
    try:
        task.validate_inputs(inputs)
    except InputError as exc:
        raise InputError(f"{case_name}: {exc}") from None
    reference = inputs[task.reference_role]

    labels, notes = _label_map(task, segmentation_node, reference_node, "corrected segmentation", False)
    meta = dict(labels.meta)
    labels, grid_notes = check_labels(case_name, labels, reference)
    labels.meta.clear()  # the label map's own meta, not the image's (modality...)
    labels.meta.update(meta)
    notes += grid_notes

    kept = None
    if original_segmentation_node is not None:
        if original_segmentation_node is segmentation_node:
            notes.append(f"{case_name}: the original output is the corrected segmentation itself; no correction Dice")
        else:
            kept, more = _label_map(task, original_segmentation_node, reference_node, "original output", True)
            notes += more
    elif original is not None:
        kept, more = _kept_original(task, original, reference, case_name)
        notes += more
    return Case(name=case_name, patient=patient_of(reference_node), inputs=dict(inputs), labels=labels,
                original=kept, notes=notes)


def correction_dice(case: Any, labels: Optional[Sequence[Any]] = None) -> dict[str, float]:
    """``{label name: Dice(original output, corrected mask)}`` for the labels present in either (see the module
    docstring); empty when the case has no original output. Names come from ``labels`` (``LabelInfo``\\ s) or from
    the case's label map (``meta["label_names"]``, set by :func:`case_from_nodes`); instance tasks give one
    foreground entry (:data:`FOREGROUND_NAME`)."""
    from MedSegAILib.metrics import dice

    if case.original is None:
        return {}
    corrected = np.asarray(case.labels.array)
    original = np.asarray(case.original.array)
    if corrected.shape != original.shape:
        raise InputError(f"{case.name}: the original output and the corrected mask are on different grids.")
    if case.labels.meta.get("instance_labels"):
        return {FOREGROUND_NAME: dice(original != 0, corrected != 0)}
    if labels is not None:
        names = {int(lab.value): lab.name for lab in labels}
    else:
        names = dict(case.labels.meta.get("label_names") or {})
        if not names:
            values = sorted((set(np.unique(corrected)) | set(np.unique(original))) - {0})
            names = {int(v): f"label {int(v)}" for v in values}
    out = {}
    for value, label_name in sorted(names.items()):
        o, c = original == value, corrected == value
        if o.any() or c.any():
            out[label_name] = dice(o, c)
    return out


def correction_text(case: Any, dices: Mapping[str, float]) -> str:
    """One line: "<case>: <label> 0.912, <label> 1.000 (unchanged)" or a note that there is no original."""
    if not dices:
        return f"{case.name}: no original output, so no correction Dice"
    parts = [f"{n} {d:.3f}" + (" (unchanged)" if d >= 1.0 else "") for n, d in dices.items()]
    return f"{case.name}: " + ", ".join(parts)


# ============================================================================================== kept outputs
class KeptOutputs:
    """The model outputs of recent Segment runs, kept as label maps (``TaskResult.labelmap``) so that a result the
    user then corrects *in place* still has its original for the correction Dice. Keyed by the segmentation node's
    ID and the reference volume's ID; no scene node is created."""

    def __init__(self) -> None:
        self._kept: dict[tuple[str, str], Volume] = {}

    def remember(self, segmentation_node: Any, reference_node: Any, labelmap: Volume) -> None:
        self._kept[(segmentation_node.GetID(), reference_node.GetID())] = labelmap

    def get(self, segmentation_node: Any, reference_node: Any) -> Optional[Volume]:
        if segmentation_node is None or reference_node is None:
            return None
        return self._kept.get((segmentation_node.GetID(), reference_node.GetID()))

    def clear(self) -> None:
        self._kept.clear()

    def __len__(self) -> int:
        return len(self._kept)


# ============================================================================================== pairs in a scene
@dataclass
class ScenePair:
    """A candidate training pair: the reference volume and a segmentation on its grid (``model_output``: the
    segmentation was written by this task, i.e. it is a result the user may have corrected in place)."""

    volume: Any
    segmentation: Any
    model_output: bool = False


def _world_grid(node_ijk_to_ras: np.ndarray, node: Any) -> np.ndarray:
    return _vtk.transform_to_world(node) @ node_ijk_to_ras


def _segmentation_grid(segmentation_node: Any) -> Optional[tuple[np.ndarray, tuple[int, ...]]]:
    """``(IJK -> world 4x4, extent)`` of a segmentation's reference image geometry, or None."""
    seg = segmentation_node.GetSegmentation()
    text = seg.GetConversionParameter(slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName())
    if not text:
        return None
    image = slicer.vtkOrientedImageData()
    if not slicer.vtkSegmentationConverter.DeserializeImageGeometry(text, image, False):
        return None
    m = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(m)
    try:
        world = _world_grid(_vtk.matrix_to_array(m), segmentation_node)
    except InputError:
        return None
    return world, tuple(image.GetExtent())


def _volume_grid(volume_node: Any) -> Optional[tuple[np.ndarray, tuple[int, ...]]]:
    image = volume_node.GetImageData()
    if image is None:
        return None
    try:
        world = _world_grid(_vtk.node_ijk_to_ras(volume_node), volume_node)
    except InputError:
        return None
    return world, tuple(image.GetExtent())


def _same_grid(a: tuple[np.ndarray, tuple[int, ...]], b: tuple[np.ndarray, tuple[int, ...]]) -> bool:
    return a[1] == b[1] and np.allclose(a[0], b[0], atol=GRID_TOL_MM)


def pairs_in_scene(scene: Any, task: Any) -> list[ScenePair]:
    """Candidate (volume, segmentation) pairs for fine-tuning ``task`` in ``scene``, in scene order.

    A segmentation pairs with the volume its reference geometry was taken from (the node reference Slicer sets in
    ``SetReferenceImageGeometryParameterFromVolumeNode``), else with every scalar volume whose voxel grid (world
    geometry, parent transforms included, and extent) equals the segmentation's reference geometry. Only
    segmentations with at least one segment the task can learn are listed: a segment named as one of the task's
    labels (any segment for an instance task).
    """
    task = _task(task)
    volumes = [n for n in _vtk.all_nodes(scene)
               if n.IsA("vtkMRMLScalarVolumeNode") and not n.IsA("vtkMRMLLabelMapVolumeNode")
               and n.GetImageData() is not None]
    grids = {v.GetID(): _volume_grid(v) for v in volumes}
    out: list[ScenePair] = []
    for seg_node in (n for n in _vtk.all_nodes(scene) if n.IsA("vtkMRMLSegmentationNode")):
        names = segment_names(seg_node)
        if not names:
            continue
        if task.labels:
            try:
                learnable = len(names) > len(unknown_segments(task, names, seg_node.GetName() or ""))
            except InputError:  # ambiguous names: still a candidate, case_from_nodes explains
                learnable = True
            if not learnable:
                continue
        model_output = seg_node.GetAttribute("MedSegAI.Task") == task.id
        ref = seg_node.GetNodeReference(seg_node.GetReferenceImageGeometryReferenceRole())
        if ref is not None and ref.IsA("vtkMRMLScalarVolumeNode") and ref.GetImageData() is not None:
            out.append(ScenePair(ref, seg_node, model_output))
            continue
        grid = _segmentation_grid(seg_node)
        if grid is None:
            continue
        for volume in volumes:
            vg = grids[volume.GetID()]
            if vg is not None and _same_grid(grid, vg):
                out.append(ScenePair(volume, seg_node, model_output))
    return out


# ============================================================================================== live history
class RecordSlot:
    """Thread-safe list of the epoch records a training run reports (``put`` from the worker's ``on_epoch``); the
    GUI timer calls :meth:`take` and gets the whole list when something was added since its last call."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: list[Any] = []
        self._taken = 0

    def put(self, record: Any) -> None:
        with self._lock:
            self._records.append(record)

    def take(self) -> Optional[list[Any]]:
        with self._lock:
            if len(self._records) == self._taken:
                return None
            self._taken = len(self._records)
            return list(self._records)

    def records(self) -> list[Any]:
        with self._lock:
            return list(self._records)


def _field(record: Any, *names: str) -> Any:
    for n in names:
        if isinstance(record, Mapping):
            if n in record:
                return record[n]
        elif hasattr(record, n):
            return getattr(record, n)
    return None


def _number(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return float("nan")
    return f if math.isfinite(f) else float("nan")


class TrainingPlot:
    """A training run's history as a table node and a plot chart (training loss and validation Dice per epoch).

    ``update(history)`` takes the records so far (``train.loop.EpochRecord`` objects or their dicts: ``epoch``
    (0-based there; the table shows epochs 1, 2, ...), ``train_loss``, ``val_metric`` (None without validation),
    ``lr``, ``seconds``). The nodes are created by the
    first call (and again if the user deleted them) and refilled in place after, so a plot view showing the chart
    follows the run. Nodes: table "<name> history" (columns :data:`COLUMNS`), series "<name> training loss" and
    "<name> validation Dice" (x = epoch), chart "<name>"; all tagged ``MedSegAI.FinetunePlot = name``; in subject
    hierarchy the table and series sit under the chart.
    """

    COLUMNS = ("Epoch", "Training loss", "Validation Dice", "Learning rate", "Time [s]")
    _FIELDS = (("epoch",), ("train_loss", "loss"), ("val_metric", "val_dice"), ("lr",), ("seconds",))
    SERIES = (("training loss", "Training loss", (0.84, 0.15, 0.16)),
              ("validation Dice", "Validation Dice", (0.12, 0.47, 0.71)))

    def __init__(self, scene: Any, name: str = "Fine-tuning") -> None:
        if scene is None:
            raise ValueError("TrainingPlot needs a scene")
        self.scene = scene
        self.name = str(name)
        self.table: Any = None
        self.chart: Any = None
        self.series: list[Any] = []

    @property
    def nodes(self) -> list[Any]:
        return [n for n in (self.chart, self.table, *self.series) if n is not None]

    def _present(self) -> bool:
        return bool(self.nodes) and all(self.scene.IsNodePresent(n) for n in self.nodes)

    def _create(self) -> None:
        self.remove()
        scene = self.scene
        table = scene.AddNewNodeByClass("vtkMRMLTableNode", f"{self.name} history")
        for col in self.COLUMNS:
            arr = vtk.vtkDoubleArray()
            arr.SetName(col)
            table.GetTable().AddColumn(arr)
        table.SetColumnUnitLabel("Time [s]", "s")
        chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", self.name)
        chart.SetTitle(f"{self.name}: training loss and validation Dice")
        chart.SetXAxisTitle("Epoch")
        chart.SetYAxisTitle("Training loss / validation Dice")
        S = slicer.vtkMRMLPlotSeriesNode
        series = []
        for suffix, column, colour in self.SERIES:
            s = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"{self.name} {suffix}")
            s.SetAndObserveTableNodeID(table.GetID())
            s.SetXColumnName("Epoch")
            s.SetYColumnName(column)
            s.SetPlotType(S.PlotTypeScatter)  # x-y curve (PlotTypeLine would plot against the row index)
            s.SetLineStyle(S.LineStyleSolid)
            s.SetMarkerStyle(S.MarkerStyleCircle)
            s.SetColor(*colour)
            chart.AddAndObservePlotSeriesNodeID(s.GetID())
            series.append(s)
        self.table, self.chart, self.series = table, chart, series
        for n in self.nodes:
            n.SetAttribute(PLOT_ATTRIBUTE, self.name)
        sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
        if sh is not None:
            top = sh.GetItemByDataNode(chart) or sh.CreateItem(sh.GetSceneItemID(), chart)
            for child in (table, *series):
                item = sh.GetItemByDataNode(child)
                if item:
                    sh.SetItemParent(item, top)
                else:
                    sh.CreateItem(top, child)

    def update(self, history: Sequence[Any]) -> int:
        """Show ``history`` (all records so far); returns the number of rows. Nodes are made on the first call."""
        if not self._present():
            self._create()
        rows = [[_number(_field(r, *names)) for names in self._FIELDS] for r in history]
        for row in rows:
            row[0] += 1  # EpochRecord.epoch is 0-based; people count epochs from 1
        vtable = self.table.GetTable()
        for c, col in enumerate(self.COLUMNS):
            arr = vtable.GetColumnByName(col)
            arr.SetNumberOfTuples(len(rows))
            for r, row in enumerate(rows):
                arr.SetValue(r, row[c])
            arr.Modified()
        vtable.Modified()
        self.table.Modified()
        return len(rows)

    def values(self, column: str) -> list[float]:
        """A column of the table node as floats (NaN where a value is missing)."""
        if self.table is None:
            return []
        arr = self.table.GetTable().GetColumnByName(column)
        return [] if arr is None else [arr.GetValue(i) for i in range(arr.GetNumberOfTuples())]

    def remove(self) -> None:
        """Remove the plot's nodes from the scene (those still there)."""
        sh = self.scene.GetFirstNodeByClass("vtkMRMLSubjectHierarchyNode")
        for n in self.nodes:
            if self.scene.IsNodePresent(n):
                if sh is not None:
                    item = sh.GetItemByDataNode(n)
                    if item:
                        sh.RemoveItem(item, False, False)
                if self.scene.IsNodePresent(n):
                    self.scene.RemoveNode(n)
        self.table, self.chart, self.series = None, None, []


# ============================================================================================== texts
def _fmt(v: Optional[float]) -> str:
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.3f}"


def epoch_text(record: Any, epochs: Optional[int] = None) -> str:
    """"Epoch 3/20: training loss 0.4123, validation Dice 0.812 (41 s)" for one record (dict or EpochRecord; its
    ``epoch`` is 0-based, shown 1-based)."""
    epoch = int(_field(record, "epoch")) + 1
    loss = _number(_field(record, "train_loss", "loss"))
    val = _number(_field(record, "val_metric", "val_dice"))
    seconds = _number(_field(record, "seconds"))
    text = f"Epoch {epoch}" + (f"/{epochs}" if epochs else "") + f": training loss {loss:.4f}"
    if math.isfinite(val):
        text += f", validation Dice {val:.3f}"
    if math.isfinite(seconds):
        text += f" ({seconds:.0f} s)"
    return text


def run_summary(run: Any, spec: Any = None) -> str:
    """What a finished fine-tuning run did, for the status label: validation Dice before → after, cases, epochs,
    why it stopped, and the new model (``spec``) when one was published."""
    before, after = getattr(run, "dice_before", None), getattr(run, "dice_after", None)
    history = list(getattr(run, "history", []) or [])
    lines = []
    if before is None and after is None:
        lines.append("Validation Dice: not measured (no validation case; set a validation share and add cases).")
    else:
        change = ""
        if before is not None and after is not None:
            change = f" ({after - before:+.3f})"
        lines.append(f"Validation Dice before → after: {_fmt(before)} → {_fmt(after)}{change}")
    stopped = {"epochs": "all epochs done", "time": "time budget reached", "cancel": "stopped by you",
               "early stop": "early stop (validation Dice stopped improving)"}.get(
        str(getattr(run, "stopped_by", "")), str(getattr(run, "stopped_by", "")))
    lines.append(f"{getattr(run, 'n_train', '?')} training / {getattr(run, 'n_val', '?')} validation case(s); "
                 f"{len(history)} epoch(s); {stopped}.")
    if spec is not None:
        lines.append(f"New model: {spec.title} ({spec.key}), selected for Segment.")
    lines += [str(m) for m in (getattr(run, "messages", None) or [])]
    return "\n".join(lines)
