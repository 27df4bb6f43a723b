"""Segmentation nodes -> label maps -> metrics -> case set on a real slicer-core scene (MedSegAILib.mrml.evaluation).

Every number is known by construction: boxes of hand-counted voxels on an oblique grid (Dice 0.75 on the right gland,
8/9 on the left), the same boxes seen through parent transforms, and a Bland–Altman bias computed by hand from the
box volumes.
"""

from __future__ import annotations

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")

import vtk  # noqa: E402

from MedSegAILib.core.volume import Volume, random_rotation  # noqa: E402
from MedSegAILib.errors import InputError  # noqa: E402
from MedSegAILib.evaluation import MISSING_REF, OK  # noqa: E402
from MedSegAILib.mrml import _vtk, extras  # noqa: E402
from MedSegAILib.mrml import evaluation as mev  # noqa: E402
from MedSegAILib.mrml.evaluation import (  # noqa: E402
    SET_ATTRIBUTE,
    clear_case_set,
    evaluate_segmentation_nodes,
    labelmap_from_segmentation_node,
)
from MedSegAILib.mrml.results import write_result  # noqa: E402
from MedSegAILib.mrml.segmentations import BINARY_LABELMAP, oriented_image  # noqa: E402
from MedSegAILib.mrml.volumes import node_from_volume, volume_from_node  # noqa: E402
from MedSegAILib.tasks.base import ANATOMICAL_STRUCTURE, LEFT, RIGHT, CodedTerm, LabelInfo, TaskResult  # noqa: E402

from MedSegAILib.tasks.parotid import LEFT_PAROTID, PAROTID, RIGHT_PAROTID  # noqa: E402 - the task's own labels

LABELS = [RIGHT_PAROTID, LEFT_PAROTID]
SHAPE = (10, 12, 16)  # [k, j, i]


def _ct(seed: int = 0) -> Volume:
    rng = np.random.default_rng(seed)
    return Volume(rng.integers(-200, 300, SHAPE).astype(np.int16), (0.8, 1.1, 2.5), (-40.0, 25.0, 60.0),
                  random_rotation(rng), {"modality": "CT"})


def _boxes(right_i0: int = 2, left_di: int = 4) -> np.ndarray:
    """Right gland: 4x4x4 voxels from i = right_i0; left gland: 4 (k) x 4 (j) x left_di (i) from i = 10."""
    lab = np.zeros(SHAPE, np.uint8)
    lab[3:7, 4:8, right_i0:right_i0 + 4] = 1
    lab[3:7, 4:8, 10:10 + left_di] = 2
    return lab


# prediction: right box at i = 3..6, left box 4 voxels wide; reference: right at i = 2..5, left 5 voxels wide
PRED, REF = _boxes(3, 4), _boxes(2, 5)
DICE = {"Right parotid gland": 2 * 48 / (64 + 64), "Left parotid gland": 2 * 64 / (64 + 80)}
IOU = {"Right parotid gland": 48 / 80, "Left parotid gland": 64 / 80}


def _scene(seed: int = 0, transform: np.ndarray | None = None):
    scene = slicer.vtkMRMLScene()
    ct = node_from_volume(scene, _ct(seed), "CT")
    if transform is not None:
        tn = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "Couch shift")
        tn.SetMatrixTransformToParent(_vtk.array_to_matrix(transform))
        ct.SetAndObserveTransformNodeID(tn.GetID())
    return scene, ct


def _prediction(scene, ct, lab: np.ndarray = PRED):
    """The project's own result writer, as the Slicer module publishes a result."""
    vol = volume_from_node(ct)
    result = TaskResult(task_id="parotid", labelmap=vol.with_array(lab.copy()), labels=list(LABELS))
    return write_result(scene, result, ct, name="CT parotids").segmentation


def _add_segment(seg_node, name: str, mask: np.ndarray, ijk_to_ras: np.ndarray, crop: bool = True) -> None:
    """A user-made segment: its own layer, cropped to its box (Slicer's effective extent) when ``crop``."""
    arr = mask.astype(np.uint8)
    lo = (0, 0, 0)
    if crop and arr.any():
        idx = np.argwhere(arr)
        lo, hi = idx.min(0), idx.max(0) + 1
        arr = arr[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    img = oriented_image(arr, ijk_to_ras)
    k0, j0, i0 = (int(x) for x in lo)
    nk, nj, ni = arr.shape
    img.SetExtent(i0, i0 + ni - 1, j0, j0 + nj - 1, k0, k0 + nk - 1)  # same lattice, extent starts at the box
    seg = slicer.vtkSegment()
    seg.SetName(name)
    seg.AddRepresentation(BINARY_LABELMAP, img)
    seg_node.GetSegmentation().AddSegment(seg, name.replace(" ", "_"))


def _reference(scene, ct, lab: np.ndarray = REF, names=("Parotid-Rt", "Parotid-Lt"), transform=None):
    """Manual contours named as in the real data; ``transform`` (4x4, local -> parent) puts the segmentation under a
    linear transform with its voxels placed so that in world space they sit on the CT's voxels."""
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Reference contours")
    world = _vtk.transform_to_world(ct) @ _vtk.node_ijk_to_ras(ct)
    local = world
    if transform is not None:
        tn = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "Contour registration")
        tn.SetMatrixTransformToParent(_vtk.array_to_matrix(transform))
        node.SetAndObserveTransformNodeID(tn.GetID())
        local = np.linalg.inv(transform) @ world
    for value, name in zip((1, 2), names):
        if name:
            _add_segment(node, name, lab == value, local)
    return node


def _rigid(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    m = np.eye(4)
    m[:3, :3] = random_rotation(rng)
    m[:3, 3] = rng.uniform(-30, 30, 3)
    return m


def _state(scene, *nodes):
    """What must not change: node IDs and each input node's MTime (and its segments' MTimes)."""
    out = {"ids": sorted(n.GetID() for n in _vtk.all_nodes(scene))}
    for n in nodes:
        out[n.GetID()] = n.GetMTime()
        if n.IsA("vtkMRMLSegmentationNode"):
            seg = n.GetSegmentation()
            out[n.GetID() + " segments"] = [seg.GetNthSegment(i).GetMTime() for i in range(seg.GetNumberOfSegments())]
    return out


def _table_rows(node) -> list[list]:
    t = node.GetTable()
    return [[t.GetValue(r, c).ToString() for c in range(t.GetNumberOfColumns())] for r in range(t.GetNumberOfRows())]


# ---------------------------------------------------------------------------------------------- label maps
def test_labelmaps_on_the_oblique_reference_grid_and_known_dice():
    scene, ct = _scene()
    pred_node, ref_node = _prediction(scene, ct), _reference(scene, ct)
    before = _state(scene, ct, pred_node, ref_node)
    ct_array = slicer.util.arrayFromVolume(ct).copy()

    ref = labelmap_from_segmentation_node(ref_node, ct, LABELS)
    pred = labelmap_from_segmentation_node(pred_node, ct, LABELS)
    grid = volume_from_node(ct)
    for lm in (ref, pred):
        assert lm.same_geometry(grid, 1e-6) and lm.shape == grid.shape
    assert np.array_equal(ref.array, REF) and np.array_equal(pred.array, PRED)  # cropped extents placed exactly
    assert ref.meta["structure_names"] == {1: "Parotid-Rt", 2: "Parotid-Lt"} and ref.meta["missing_labels"] == []

    nodes = evaluate_segmentation_nodes(scene, pred_node, ref_node, ct, LABELS, "case 1", setName="test")
    assert nodes.metrics.dice == pytest.approx(DICE) and nodes.metrics.iou == pytest.approx(IOU)
    assert min(nodes.metrics.dice.values()) == pytest.approx(0.75)  # what the module's self-test does
    right = nodes.metrics.structure("Right parotid gland")
    assert right.status == OK and not nodes.metrics.resampled
    voxel_ml = float(np.prod(grid.spacing)) / 1000.0
    assert right.volume_pred_ml == pytest.approx(64 * voxel_ml) and right.volume_ref_ml == pytest.approx(64 * voxel_ml)
    left = nodes.metrics.structure("Left parotid gland")
    assert left.volume_ref_ml == pytest.approx(80 * voxel_ml)
    # HD95 of a one-voxel shift along i is one i-spacing for most surface points (the shifted faces: 2.5 mm)
    assert 0 < right.hd95_mm <= 2.5 + 1e-6

    # the case table: one row per gland, Dice and IoU in their columns
    t = nodes.caseTable.GetTable()
    assert t.GetNumberOfRows() == 2
    assert t.GetColumnByName("Dice").GetValue(0) == pytest.approx(0.75)
    assert t.GetColumnByName("IoU").GetValue(1) == pytest.approx(0.8)
    assert "Right parotid gland: Dice 0.750, IoU 0.600" in nodes.summary

    # inputs untouched
    after = _state(scene, ct, pred_node, ref_node)
    assert {k: v for k, v in after.items() if k != "ids"} == {k: v for k, v in before.items() if k != "ids"}
    assert np.array_equal(slicer.util.arrayFromVolume(ct), ct_array)


def test_left_is_never_matched_to_right():
    scene, ct = _scene(1)
    pred_node = _prediction(scene, ct)
    only_left = _reference(scene, ct, names=(None, "Parotid-Lt"))
    lm = labelmap_from_segmentation_node(only_left, ct, LABELS)
    assert lm.meta["missing_labels"] == [1] and set(np.unique(lm.array)) == {0, 2}
    nodes = evaluate_segmentation_nodes(scene, pred_node, only_left, ct, LABELS, "one side", setName="sides")
    assert nodes.metrics.structure("Right parotid gland").status == MISSING_REF
    left = pytest.approx(DICE["Left parotid gland"])
    assert nodes.metrics.dice == {"Right parotid gland": None, "Left parotid gland": left}

    # names swapped in the reference (the right box called "Left"): the overlap follows the names, not the boxes
    swapped = _reference(scene, ct, names=("Parotid_L", "Parotid_R"))
    nodes = evaluate_segmentation_nodes(scene, pred_node, swapped, ct, LABELS, "swapped", setName="sides")
    assert nodes.metrics.dice == pytest.approx({"Right parotid gland": 0.0, "Left parotid gland": 0.0})


def test_ambiguous_and_unmatched_names_are_input_errors():
    scene, ct = _scene(2)
    ids_before = sorted(n.GetID() for n in _vtk.all_nodes(scene))
    both = _reference(scene, ct)
    _add_segment(both, "Left parotid", REF == 2, _vtk.node_ijk_to_ras(ct))
    with pytest.raises(InputError, match="several structures match 'Left parotid gland'"):
        labelmap_from_segmentation_node(both, ct, LABELS)
    twice = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Twice")
    for sid in ("a", "b"):
        seg = slicer.vtkSegment()
        seg.SetName("Parotid-Lt")
        seg.AddRepresentation(BINARY_LABELMAP, oriented_image((REF == 2).astype(np.uint8), _vtk.node_ijk_to_ras(ct)))
        twice.GetSegmentation().AddSegment(seg, sid)
    with pytest.raises(InputError, match="2 segments named 'Parotid-Lt'"):
        labelmap_from_segmentation_node(twice, ct, LABELS)
    other = _reference(scene, ct, names=("Mandible", "Brainstem"))
    with pytest.raises(InputError, match="none of its structures matches"):
        evaluate_segmentation_nodes(scene, other, other, ct, LABELS, "x", setName="err")
    with pytest.raises(InputError, match="No reference segmentation"):
        evaluate_segmentation_nodes(scene, other, None, ct, LABELS, "x", setName="err")
    # nothing of the failed evaluations stays in the scene
    assert not [n for n in _vtk.all_nodes(scene) if n.GetAttribute(SET_ATTRIBUTE)]
    assert len(_vtk.all_nodes(scene)) == len(ids_before) + 3


def test_parent_transforms_on_the_volume_and_on_the_segmentation():
    scene, ct = _scene(3, transform=_rigid(10))
    pred_node = _prediction(scene, ct)  # written under the CT's transform by the result writer
    assert pred_node.GetParentTransformNode() is ct.GetParentTransformNode()
    ref_node = _reference(scene, ct, transform=_rigid(11))  # registered contours under another transform
    ref = labelmap_from_segmentation_node(ref_node, ct, LABELS)
    assert ref.same_geometry(volume_from_node(ct), 1e-6)  # world grid: the CT's transform hardened
    assert np.array_equal(ref.array, REF)
    nodes = evaluate_segmentation_nodes(scene, pred_node, ref_node, ct, LABELS, "moved", setName="tf")
    assert nodes.metrics.dice == pytest.approx(DICE)

    # a warping transform has no exact voxel grid: refused with the way out
    warp = scene.AddNewNodeByClass("vtkMRMLTransformNode", "Warp")
    tps = vtk.vtkThinPlateSplineTransform()
    src, dst = vtk.vtkPoints(), vtk.vtkPoints()
    for p in ((0, 0, 0), (100, 0, 0), (0, 100, 0), (0, 0, 100)):
        src.InsertNextPoint(p)
        dst.InsertNextPoint([c + 3.0 for c in p])
    tps.SetSourceLandmarks(src)
    tps.SetTargetLandmarks(dst)
    warp.SetAndObserveTransformToParent(tps)
    warped = _reference(scene, ct)
    warped.SetAndObserveTransformNodeID(warp.GetID())
    with pytest.raises(InputError, match="non-linear"):
        labelmap_from_segmentation_node(warped, ct, LABELS)


def test_overlap_later_label_wins_and_closed_surfaces_are_converted():
    scene, ct = _scene(4)
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Overlapping")
    right = REF == 1
    left = right.copy()
    left[:, :, 4:] = False  # the "left" segment covers the first two i-columns of the right box: 32 voxels
    _add_segment(node, "Right parotid", right, _vtk.node_ijk_to_ras(ct))
    _add_segment(node, "Left parotid", left, _vtk.node_ijk_to_ras(ct))
    lm = labelmap_from_segmentation_node(node, ct, LABELS)
    assert np.count_nonzero(lm.array == 2) == 32 and np.count_nonzero(lm.array == 1) == 32
    assert any("32 voxels of 'Left parotid' overlap" in n for n in lm.meta["read_notes"])

    # a segmentation stored as closed surfaces only (RT structure set): converted in a temporary copy
    grid = volume_from_node(ct)
    centre_lps = grid.index_to_lps([[7.5, 5.5, 4.5]])[0]
    sphere = vtk.vtkSphereSource()
    sphere.SetCenter(-centre_lps[0], -centre_lps[1], centre_lps[2])  # RAS
    sphere.SetRadius(4.0)
    sphere.SetThetaResolution(64)
    sphere.SetPhiResolution(64)
    sphere.Update()
    surf = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "RTSTRUCT")
    surf.GetSegmentation().SetSourceRepresentationName("Closed surface")
    seg = slicer.vtkSegment()
    seg.SetName("Parotid R")
    seg.AddRepresentation("Closed surface", sphere.GetOutput())
    surf.GetSegmentation().AddSegment(seg, "r")
    n_nodes, mtime = scene.GetNumberOfNodes(), surf.GetMTime()
    lm = labelmap_from_segmentation_node(surf, ct, LABELS)
    k, j, i = np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")
    pts = grid.index_to_lps(np.c_[i.ravel(), j.ravel(), k.ravel()])
    ball = (np.linalg.norm(pts - centre_lps, axis=1) <= 4.0).reshape(SHAPE)
    got = lm.array == 1
    dice = 2 * np.count_nonzero(got & ball) / (np.count_nonzero(got) + np.count_nonzero(ball))
    assert ball.sum() > 20 and dice > 0.85, (int(ball.sum()), int(got.sum()), dice)
    assert lm.meta["missing_labels"] == [2] and any("converted" in n for n in lm.meta["read_notes"])
    assert scene.GetNumberOfNodes() == n_nodes and surf.GetMTime() == mtime  # temporary copy gone, input untouched
    assert not surf.GetSegmentation().ContainsRepresentation(BINARY_LABELMAP)


# ---------------------------------------------------------------------------------------------- the case set
def test_case_set_grows_replaces_plots_and_clears():
    scene, ct = _scene(5)
    ref_node = _reference(scene, ct)
    pred1 = _prediction(scene, ct)
    voxel_ml = float(np.prod(volume_from_node(ct).spacing)) / 1000.0

    one = evaluate_segmentation_nodes(scene, pred1, ref_node, ct, LABELS, "case 1", setName="parotid")
    assert one.plotChart is None and "needs at least 2 cases" in one.summary
    assert one.setTable.GetName() == "parotid evaluation set" and one.setTable.GetAttribute(SET_ATTRIBUTE) == "parotid"
    assert one.setTable.GetTable().GetNumberOfRows() == 2

    # case 2: prediction = the reference boxes plus one i-column on the left gland (+16 voxels), right identical
    lab2 = REF.copy()
    lab2[3:7, 4:8, 15] = 2
    pred2 = _prediction(scene, ct, lab2)
    two = evaluate_segmentation_nodes(scene, pred2, ref_node, ct, LABELS, "case 2", setName="parotid")
    assert two.setTable is one.setTable and two.setTable.GetTable().GetNumberOfRows() == 4
    assert [c.case for c in two.setReport.cases] == ["case 1", "case 2"]
    assert two.plotChart is not None and two.plotChart.GetAttribute(SET_ATTRIBUTE) == "parotid"
    assert two.plotChart.GetNumberOfPlotSeriesNodes() == 8  # per gland: cases, bias, two limits
    # hand-made Bland-Altman of the volumes (prediction - reference), in voxels: right 0 and 0; left -16 and +16
    series = {two.plotChart.GetNthPlotSeriesNode(i).GetName(): two.plotChart.GetNthPlotSeriesNode(i)
              for i in range(8)}
    table = two.plotTable.GetTable()
    ys = table.GetColumnByName("Left parotid gland (y)")
    assert ys.GetNumberOfTuples() == 2 and sorted([ys.GetValue(0), ys.GetValue(1)]) == pytest.approx(
        [-16 * voxel_ml, 16 * voxel_ml])
    assert table.GetColumnByName("Left parotid gland bias (y)").GetValue(0) == pytest.approx(0.0, abs=1e-12)
    sd = np.std([-16 * voxel_ml, 16 * voxel_ml], ddof=1)
    assert table.GetColumnByName("Left parotid gland +1.96 SD (y)").GetValue(0) == pytest.approx(1.96 * sd)
    assert series["Left parotid gland"].GetTableNode() is two.plotTable
    assert "Case set 'parotid': 2 cases" in two.summary

    # re-evaluating case 1 with another prediction (the left box also +16 voxels) replaces its rows and the plot
    pred1b = _prediction(scene, ct, lab2)
    again = evaluate_segmentation_nodes(scene, pred1b, ref_node, ct, LABELS, "case 1", setName="parotid")
    rows = _table_rows(again.setTable)
    assert len(rows) == 4 and [r[0] for r in rows] == ["case 1", "case 1", "case 2", "case 2"]
    assert again.setReport.bland_altman()["Left parotid gland"]["bias"] == pytest.approx(16 * voxel_ml)
    assert again.plotTable.GetTable().GetColumnByName("Left parotid gland bias (y)").GetValue(0) == pytest.approx(
        16 * voxel_ml)
    assert not scene.IsNodePresent(two.plotChart) and not scene.IsNodePresent(two.plotTable)  # old plot replaced
    assert not scene.IsNodePresent(one.caseTable) and scene.IsNodePresent(two.caseTable)  # case 1's table replaced
    assert again.metrics.dice["Left parotid gland"] == pytest.approx(2 * 80 / (96 + 80))

    # another set and a user table are left alone by clear_case_set
    other = evaluate_segmentation_nodes(scene, pred2, ref_node, ct, LABELS, "case 9", setName="other set")
    user = scene.AddNewNodeByClass("vtkMRMLTableNode", "parotid evaluation set")  # same name, no tag
    removed = clear_case_set(scene, "parotid")
    assert removed == 1 + 1 + 1 + 8  # set table, chart, its data table, 8 series
    assert not scene.IsNodePresent(again.setTable) and not scene.IsNodePresent(again.plotChart)
    assert scene.IsNodePresent(user) and scene.IsNodePresent(other.setTable)
    assert scene.IsNodePresent(again.caseTable)  # per-case results stay
    fresh = evaluate_segmentation_nodes(scene, pred2, ref_node, ct, LABELS, "case 3", setName="parotid")
    assert fresh.setTable.GetTable().GetNumberOfRows() == 2 and fresh.plotChart is None


def test_a_failed_write_leaves_the_scene_and_the_set_as_they_were(monkeypatch):
    scene, ct = _scene(6)
    ref_node = _reference(scene, ct)
    pred = _prediction(scene, ct)
    first = evaluate_segmentation_nodes(scene, pred, ref_node, ct, LABELS, "case 1", setName="s")
    rows = _table_rows(first.setTable)
    ids = sorted(n.GetID() for n in _vtk.all_nodes(scene))

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(extras, "write_plot", broken)  # fails after the set table was refilled
    with pytest.raises(RuntimeError, match="disk on fire"):
        evaluate_segmentation_nodes(scene, pred, ref_node, ct, LABELS, "case 2", setName="s")
    assert sorted(n.GetID() for n in _vtk.all_nodes(scene)) == ids
    assert _table_rows(first.setTable) == rows and scene.IsNodePresent(first.caseTable)
    assert mev.find_set_table(scene, "s") is first.setTable


# ---------------------------------------------------------------------------------------------- real anatomy
def test_real_parotids_through_the_scene_equal_the_file_evaluation(test_data):
    """Oncologist (reference, user-named segments) vs radiographer (prediction, published by the result writer) on a
    real scan: the scene path gives exactly the numbers of the file path (same grid, same rules)."""
    from MedSegAILib.core.io import read_volume
    from MedSegAILib.evaluation import evaluate_pair, read_case_labels

    scan = "0522c0014"
    root = test_data / "headneck-oar-masks" / "validation"
    onc = read_case_labels(root / "oncologist" / scan, LABELS)
    rad = read_case_labels(root / "radiographer" / scan, LABELS)
    files = evaluate_pair(rad, onc, LABELS, case=scan)

    scene = slicer.vtkMRMLScene()
    ct = node_from_volume(scene, onc.with_array(np.zeros(onc.shape, np.int16)), "CT")
    pred = _prediction(scene, ct, rad.array)
    ref_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Oncologist")
    for name in ("Parotid-Rt", "Parotid-Lt"):
        mask = read_volume(root / "oncologist" / scan / "segmentations" / f"{name}.nrrd")
        assert mask.same_geometry(onc, 1e-6)
        _add_segment(ref_node, name, mask.array != 0, _vtk.node_ijk_to_ras(ct))
    nodes = evaluate_segmentation_nodes(scene, pred, ref_node, ct, LABELS, scan, setName="real")
    for s_node, s_file in zip(nodes.metrics.structures, files.structures):
        assert s_node.status == s_file.status == OK
        assert s_node.dice == pytest.approx(s_file.dice, abs=1e-12) and 0.75 < s_node.dice < 0.95
        assert s_node.hd95_mm == pytest.approx(s_file.hd95_mm, abs=1e-9)
        assert s_node.volume_ref_ml == pytest.approx(s_file.volume_ref_ml, abs=1e-9)
