"""Fine-tuning from the scene (MedSegAILib.mrml.finetune) on a real slicer-core scene.

Every number is known by construction: boxes of hand-counted voxels on oblique and flipped grids, seen through
parent transforms; the correction Dice of two shifted boxes (48 of 64 voxels shared: 0.75; a 4-wide box in a 5-wide
one: 2*64/144 = 8/9); the training plot's cells are the records given.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")

from MedSegAILib.core.volume import Volume, random_rotation  # noqa: E402
from MedSegAILib.errors import InputError  # noqa: E402
from MedSegAILib.mrml import _vtk  # noqa: E402
from MedSegAILib.mrml import finetune as mft  # noqa: E402
from MedSegAILib.mrml.results import write_result  # noqa: E402
from MedSegAILib.mrml.segmentations import BINARY_LABELMAP, oriented_image  # noqa: E402
from MedSegAILib.mrml.volumes import node_from_volume, volume_from_node  # noqa: E402
from MedSegAILib.tasks.base import InputSpec, TaskResult  # noqa: E402
from MedSegAILib.tasks.parotid import LEFT_PAROTID, RIGHT_PAROTID  # noqa: E402 - the task's own labels

pytest.importorskip("MedSegAILib.finetune.data")

SHAPE = (10, 12, 16)  # [k, j, i]
LABELS = (RIGHT_PAROTID, LEFT_PAROTID)


class _Task:
    """The parotid task's labels and input, without its CT-size checks (the test volumes are tiny)."""

    id = "parotid"
    title = "Parotid Segmentation"
    labels = LABELS
    reference_role = "image"
    inputs = (InputSpec("image", "Head-and-neck CT", "CT", 3),)
    validated: list = []

    def input_spec(self, role):
        return next(s for s in self.inputs if s.role == role)

    def validate_inputs(self, inputs):
        self.validated.append(sorted(inputs))


class _InstanceTask(_Task):
    id = "lung-nodule"
    title = "Lung Nodules"
    labels = ()


def _boxes(right_i0: int = 2, left_di: int = 4) -> np.ndarray:
    lab = np.zeros(SHAPE, np.uint8)
    lab[3:7, 4:8, right_i0:right_i0 + 4] = 1
    lab[3:7, 4:8, 10:10 + left_di] = 2
    return lab


ORIGINAL, CORRECTED = _boxes(3, 4), _boxes(2, 5)


def _ct(seed: int, flip: bool = False) -> Volume:
    rng = np.random.default_rng(seed)
    direction = random_rotation(rng)
    if flip:
        direction = direction @ np.diag([1.0, -1.0, 1.0])  # left-handed voxel axes (det -1)
    return Volume(rng.integers(-200, 300, SHAPE).astype(np.int16), (0.8, 1.1, 2.5), (-40.0, 25.0, 60.0), direction,
                  {"modality": "CT"})


def _rigid(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    m = np.eye(4)
    m[:3, :3] = random_rotation(rng)
    m[:3, 3] = rng.uniform(-30, 30, 3)
    return m


def _transform(scene, node, matrix, name):
    tn = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", name)
    tn.SetMatrixTransformToParent(_vtk.array_to_matrix(matrix))
    node.SetAndObserveTransformNodeID(tn.GetID())


def _scene(seed: int = 0, flip: bool = False, transform=None):
    scene = slicer.vtkMRMLScene()
    ct = node_from_volume(scene, _ct(seed, flip), "CT 7")
    if transform is not None:
        _transform(scene, ct, transform, "Couch shift")
    return scene, ct


def _segmentation(scene, ct, lab, names=("Parotid-Rt", "Parotid-Lt"), transform=None, name="Corrected",
                  reference=False):
    """A user-made segmentation (one layer per segment, cropped to the segment's box), optionally under its own
    linear transform with the voxels placed so that in world space they sit on the CT's voxels."""
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    world = _vtk.transform_to_world(ct) @ _vtk.node_ijk_to_ras(ct)
    local = world
    if transform is not None:
        _transform(scene, node, transform, f"{name} registration")
        local = np.linalg.inv(transform) @ world
    if reference:
        node.SetReferenceImageGeometryParameterFromVolumeNode(ct)
    for value, seg_name in enumerate(names, start=1):
        mask = (lab == value).astype(np.uint8)
        idx = np.argwhere(mask)
        lo, hi = idx.min(0), idx.max(0) + 1
        img = oriented_image(mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]], local)
        n = hi - lo
        img.SetExtent(int(lo[2]), int(lo[2] + n[2] - 1), int(lo[1]), int(lo[1] + n[1] - 1), int(lo[0]),
                      int(lo[0] + n[0] - 1))
        seg = slicer.vtkSegment()
        seg.SetName(seg_name)
        seg.AddRepresentation(BINARY_LABELMAP, img)
        node.GetSegmentation().AddSegment(seg, f"s{value}")
    return node


def _result(scene, ct, lab, task_id="parotid", labels=LABELS):
    """The module's own result writer, as Segment publishes a result (same grid, same transform)."""
    vol = volume_from_node(ct)
    result = TaskResult(task_id=task_id, labelmap=vol.with_array(lab.copy()), labels=list(labels))
    return write_result(scene, result, ct, name="CT 7 parotids").segmentation, result


# ---------------------------------------------------------------------------------------------- cases
@pytest.mark.parametrize("flip", [False, True])
def test_case_from_nodes_labels_and_exact_geometry_through_transforms(flip):
    scene, ct = _scene(1, flip, transform=_rigid(10))
    corrected = _segmentation(scene, ct, CORRECTED, transform=_rigid(11))
    original, _ = _result(scene, ct, ORIGINAL)
    case = mft.case_from_nodes(_Task(), {"image": ct}, corrected, original_segmentation_node=original)

    image = volume_from_node(ct)  # world geometry: the CT's transform hardened
    assert np.linalg.det(image.direction) == pytest.approx(-1.0 if flip else 1.0)
    assert case.name == "CT 7" and case.patient == "CT 7"
    assert set(case.inputs) == {"image"} and np.array_equal(case.inputs["image"].array, image.array)
    assert case.inputs["image"].same_geometry(image, 1e-9)
    for lm in (case.labels, case.original):
        assert lm.same_geometry(image, 1e-6) and lm.shape == image.shape
    assert np.array_equal(case.labels.array, CORRECTED) and np.array_equal(case.original.array, ORIGINAL)
    assert case.labels.meta["label_names"] == {1: "Right parotid gland", 2: "Left parotid gland"}
    assert "modality" not in case.labels.meta

    d = mft.correction_dice(case)
    assert d == pytest.approx({"Right parotid gland": 0.75, "Left parotid gland": 8 / 9})
    assert mft.correction_text(case, d) == "CT 7: Right parotid gland 0.750, Left parotid gland 0.889"


def test_kept_model_output_and_patient_from_subject_hierarchy():
    scene, ct = _scene(2)
    result_node, result = _result(scene, ct, ORIGINAL)
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    patient = sh.CreateSubjectItem(sh.GetSceneItemID(), "Anonymous")
    sh.SetItemAttribute(patient, "DICOM.PatientID", "LIDC-0042")
    study = sh.CreateStudyItem(patient, "Study")
    item = sh.GetItemByDataNode(ct)
    if item:
        sh.SetItemParent(item, study)
    else:  # a bare slicer-core scene makes no subject-hierarchy items by itself
        sh.CreateItem(study, ct)
    assert mft.patient_of(ct) == "LIDC-0042"

    # the user corrects the result in place: the kept label map is the original
    kept = mft.KeptOutputs()
    kept.remember(result_node, ct, result.labelmap)
    corrected = _segmentation(scene, ct, CORRECTED)
    case = mft.case_from_nodes(_Task(), {"image": ct}, corrected, original=kept.get(corrected, ct), name="c")
    assert case.original is None and kept.get(result_node, ct) is result.labelmap
    case = mft.case_from_nodes(_Task(), {"image": ct}, corrected, original=kept.get(result_node, ct), name="c")
    assert case.patient == "LIDC-0042" and case.name == "c"
    assert mft.correction_dice(case) == pytest.approx({"Right parotid gland": 0.75, "Left parotid gland": 8 / 9})

    # an unchanged result: Dice 1 for both glands; a kept output on another grid is dropped with a note
    same = mft.case_from_nodes(_Task(), {"image": ct}, result_node, original=result.labelmap)
    assert mft.correction_dice(same) == {"Right parotid gland": 1.0, "Left parotid gland": 1.0}
    moved = result.labelmap.copy()
    moved.origin = tuple(np.asarray(moved.origin) + 5.0)
    case = mft.case_from_nodes(_Task(), {"image": ct}, corrected, original=moved)
    assert case.original is None and any("not on the image's grid" in n for n in case.notes)
    assert mft.correction_dice(case) == {}


def test_instance_task_takes_every_segment_as_foreground():
    scene, ct = _scene(3)
    lab = CORRECTED.copy()
    corrected = _segmentation(scene, ct, lab, names=("Lung nodule 1", "my extra nodule"))
    original = _segmentation(scene, ct, ORIGINAL, names=("Lung nodule 1", "Lung nodule 2"), name="Output")
    case = mft.case_from_nodes(_InstanceTask(), {"image": ct}, corrected, original_segmentation_node=original)
    assert case.labels.array.dtype == np.uint8 and np.array_equal(case.labels.array, (lab > 0).astype(np.uint8))
    # foreground: original 128 voxels, corrected 144, shared 48 + 64 = 112 -> 224 / 272
    assert mft.correction_dice(case) == pytest.approx({mft.FOREGROUND_NAME: 224 / 272})


def test_unknown_segments_empty_masks_and_missing_nodes_are_refused():
    scene, ct = _scene(4)
    bad = _segmentation(scene, ct, CORRECTED, names=("Parotid-Rt", "Tumour"))
    with pytest.raises(InputError) as err:
        mft.case_from_nodes(_Task(), {"image": ct}, bad)
    text = str(err.value)
    assert "'Tumour'" in text and "1 = Right parotid gland, 2 = Left parotid gland" in text
    assert "Parotid-Rt'" not in text  # a known name is not listed as unknown
    # unknown names in the *original* output are left out with a note, not refused
    case = mft.case_from_nodes(_Task(), {"image": ct}, _segmentation(scene, ct, CORRECTED),
                               original_segmentation_node=bad)
    assert any("Tumour" in n for n in case.notes) and set(np.unique(case.original.array)) == {0, 1}

    empty = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Empty")
    seg = slicer.vtkSegment()
    seg.SetName("Parotid-Lt")
    seg.AddRepresentation(BINARY_LABELMAP, oriented_image(np.zeros(SHAPE, np.uint8), _vtk.node_ijk_to_ras(ct)))
    empty.GetSegmentation().AddSegment(seg, "e")
    with pytest.raises(InputError, match="the mask is empty"):
        mft.case_from_nodes(_Task(), {"image": ct}, empty)
    with pytest.raises(InputError, match="'Mandible', 'Lip' that are not labels"):
        mft.case_from_nodes(_Task(), {"image": ct}, _segmentation(scene, ct, CORRECTED, names=("Mandible", "Lip")))
    blank = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Blank")
    with pytest.raises(InputError, match="none of its structures matches"):
        mft.case_from_nodes(_Task(), {"image": ct}, blank)
    with pytest.raises(InputError, match="has no segment"):
        mft.case_from_nodes(_InstanceTask(), {"image": ct}, blank)
    with pytest.raises(InputError, match="Select the Head-and-neck CT"):
        mft.case_from_nodes(_Task(), {}, bad)
    with pytest.raises(InputError, match="corrected segmentation"):
        mft.case_from_nodes(_Task(), {"image": ct}, None)


# ---------------------------------------------------------------------------------------------- pairs
def test_pairs_in_scene():
    scene, ct = _scene(5, transform=_rigid(3))
    other = node_from_volume(scene, _ct(6), "Other CT")  # another grid
    result_node, _ = _result(scene, ct, ORIGINAL)  # node reference to the CT
    by_grid = _segmentation(scene, ct, CORRECTED, name="By grid", transform=_rigid(4))
    by_grid.GetSegmentation().SetConversionParameter(  # a reference geometry string, but no node reference
        slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName(),
        _geometry_string(np.linalg.inv(_rigid(4)) @ _vtk.transform_to_world(ct) @ _vtk.node_ijk_to_ras(ct)))
    _segmentation(scene, ct, CORRECTED, names=("Mandible", "Lip"), name="Not learnable", reference=True)
    _segmentation(scene, ct, CORRECTED, name="No geometry")
    pairs = mft.pairs_in_scene(scene, _Task())
    got = [(p.volume.GetName(), p.segmentation.GetName(), p.model_output) for p in pairs]
    assert got == [("CT 7", "CT 7 parotids", True), ("CT 7", "By grid", False)]
    assert other.GetID() not in {p.volume.GetID() for p in pairs}
    # an instance task learns from any segment
    assert {p.segmentation.GetName() for p in mft.pairs_in_scene(scene, _InstanceTask())} == {
        "CT 7 parotids", "By grid", "Not learnable"}


def _geometry_string(ijk_to_ras: np.ndarray) -> str:
    img = slicer.vtkOrientedImageData()
    img.SetExtent(0, SHAPE[2] - 1, 0, SHAPE[1] - 1, 0, SHAPE[0] - 1)
    img.SetImageToWorldMatrix(_vtk.array_to_matrix(ijk_to_ras))
    return slicer.vtkSegmentationConverter.SerializeImageGeometry(img)


# ---------------------------------------------------------------------------------------------- plot
@dataclass
class _Record:  # the fields of MedSegAILib.train.loop.EpochRecord (epoch 0-based)
    epoch: int
    train_loss: float
    val_metric: float | None
    lr: float
    seconds: float
    steps: int = 1


def test_training_plot_creates_nodes_once_and_updates_values():
    scene = slicer.vtkMRMLScene()
    plot = mft.TrainingPlot(scene, "Parotid fine-tuning")
    history = [_Record(0, 1.25, None, 1e-3, 4.0), _Record(1, 0.75, 0.5, 1e-3, 8.5)]
    assert plot.update(history[:1]) == 1
    ids = [n.GetID() for n in plot.nodes]
    n_nodes = scene.GetNumberOfNodes()
    assert scene.GetNodesByClass("vtkMRMLPlotChartNode").GetNumberOfItems() == 1
    assert scene.GetNodesByClass("vtkMRMLPlotSeriesNode").GetNumberOfItems() == 2
    assert plot.update(history) == 2
    history.append({"epoch": 2, "train_loss": 0.5, "val_metric": 0.8, "lr": 5e-4, "seconds": 12.0})
    assert plot.update(history) == 3
    assert [n.GetID() for n in plot.nodes] == ids and scene.GetNumberOfNodes() == n_nodes
    assert plot.values("Epoch") == [1, 2, 3] and plot.values("Training loss") == [1.25, 0.75, 0.5]
    dice = plot.values("Validation Dice")
    assert np.isnan(dice[0]) and dice[1:] == [0.5, 0.8]
    assert plot.values("Learning rate") == [1e-3, 1e-3, 5e-4] and plot.values("Time [s]") == [4.0, 8.5, 12.0]
    assert plot.chart.GetXAxisTitle() == "Epoch" and "validation Dice" in plot.chart.GetTitle()
    series = [plot.chart.GetNthPlotSeriesNode(i) for i in range(plot.chart.GetNumberOfPlotSeriesNodes())]
    assert [(s.GetXColumnName(), s.GetYColumnName()) for s in series] == [
        ("Epoch", "Training loss"), ("Epoch", "Validation Dice")]
    assert all(s.GetTableNode() is plot.table for s in series)
    assert all(n.GetAttribute(mft.PLOT_ATTRIBUTE) == "Parotid fine-tuning" for n in plot.nodes)

    # the user deleted the chart: the next update makes a fresh set (and leaves no stray node)
    scene.RemoveNode(plot.chart)
    assert plot.update(history) == 3
    assert scene.GetNodesByClass("vtkMRMLPlotChartNode").GetNumberOfItems() == 1
    assert scene.GetNodesByClass("vtkMRMLTableNode").GetNumberOfItems() == 1
    plot.remove()
    assert scene.GetNodesByClass("vtkMRMLPlotSeriesNode").GetNumberOfItems() == 0 and plot.nodes == []


def test_record_slot_hands_records_across_threads():
    slot = mft.RecordSlot()
    assert slot.take() is None
    worker = threading.Thread(target=lambda: [slot.put(_Record(e, 1.0 / e, None, 1e-3, e)) for e in range(1, 51)])
    worker.start()
    worker.join(5)
    got = slot.take()
    assert [r.epoch for r in got] == list(range(1, 51)) and slot.take() is None
    slot.put(_Record(51, 0.1, 0.9, 1e-3, 51))
    assert len(slot.take()) == 51


def test_run_summary_text():
    @dataclass
    class _Run:
        dice_before: float | None = 0.612
        dice_after: float | None = 0.701
        history: tuple = (_Record(0, 1.0, 0.6, 1e-3, 1.0), _Record(1, 0.8, 0.7, 1e-3, 2.0))
        n_train: int = 8
        n_val: int = 2
        stopped_by: str = "time"
        messages: tuple = ("Batch 2 on the CPU.",)

    @dataclass
    class _Spec:
        title: str = "Parotid (fine-tuned)"
        key: str = "parotid-resunet3d-ft@1.0.1"

    text = mft.run_summary(_Run(), _Spec())
    assert "Validation Dice before → after: 0.612 → 0.701 (+0.089)" in text
    assert "8 training / 2 validation case(s); 2 epoch(s); time budget reached." in text
    assert "parotid-resunet3d-ft@1.0.1" in text and text.endswith("Batch 2 on the CPU.")
    assert "not measured" in mft.run_summary(_Run(dice_before=None, dice_after=None))
    assert mft.epoch_text(_Record(2, 0.41234, 0.8123, 1e-3, 41.2), 20) == (
        "Epoch 3/20: training loss 0.4123, validation Dice 0.812 (41 s)")
    assert mft.epoch_text({"epoch": 0, "train_loss": 1.5, "val_metric": None, "seconds": 2}) == (
        "Epoch 1: training loss 1.5000 (2 s)")


# ---------------------------------------------------------------------------------------------- end to end
def test_scene_cases_fine_tune_a_tiny_model_with_the_live_plot_and_publish(tiny_mpi_model, one_torch_thread):
    """The Fine-tune section's path without Qt: two simulated SPECT studies and their label maps as nodes ->
    case_from_nodes -> engine.finetune (a tiny segmenter, a few steps) with on_epoch -> RecordSlot -> TrainingPlot
    -> the run's summary; the starting model's files are unchanged. (Publishing the run is test_finetune.py's.)"""
    import hashlib

    from MedSegAILib.finetune.engine import FinetuneOptions, finetune
    from MedSegAILib.simulate.spect import simulate_spect
    from MedSegAILib.tasks.registry import get_task

    d = tiny_mpi_model / "tiny-mpi"
    digest = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in d.iterdir()}

    task = get_task("mpi-myocardium")
    scene = slicer.vtkMRMLScene()
    cases = []
    for i in range(2):
        img, lab, _ = simulate_spect(920_000 + i, spacing=6.0, shape=40, fov="tight", oblique=False)
        node = node_from_volume(scene, img, f"SPECT {i}")
        result = TaskResult(task_id=task.id, labelmap=volume_from_node(node).with_array(lab.array.copy()),
                            labels=list(task.labels))
        seg = write_result(scene, result, node).segmentation
        case = mft.case_from_nodes(task, {"image": node}, seg, original=result.labelmap)
        assert np.array_equal(case.labels.array, lab.array)
        assert mft.correction_dice(case) == {"Left ventricle myocardium": 1.0, "Left ventricle cavity": 1.0}
        cases.append(case)
    assert [c.patient for c in cases] == ["SPECT 0", "SPECT 1"]

    slot = mft.RecordSlot()
    options = FinetuneOptions(epochs=1, val_share=0.5, steps_per_epoch=1, batch=1, device="cpu", patience=None,
                              keep_if_worse=True)
    run = finetune(task.id, cases, model="tiny-mpi", options=options, on_epoch=slot.put)
    records = slot.take()
    assert [r.epoch for r in records] == [r.epoch for r in run.history] and len(records) == 1
    plot = mft.TrainingPlot(scene, "Myocardium fine-tuning")
    assert plot.update(records) == 1
    assert plot.values("Training loss") == pytest.approx([r.train_loss for r in run.history])
    assert plot.values("Validation Dice") == pytest.approx([r.val_metric for r in run.history])
    assert run.n_train == 1 and run.n_val == 1 and run.dice_before is not None
    assert run.state is not None and run.base.key == "tiny-mpi@1.0.0"
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in d.iterdir()} == digest
    summary = mft.run_summary(run)
    assert f"{run.dice_before:.3f} → {run.dice_after:.3f}" in summary and "1 training / 1 validation" in summary

