"""TaskResult -> scene on a real slicer-core scene: nodes, names, colours, terminology, provenance,
geometry, subject hierarchy, the user's segments preserved, and all-or-nothing writes."""

from __future__ import annotations

import json

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")

from MedSegAILib.core.volume import lps_to_ras_points  # noqa: E402
from MedSegAILib.engine.progress import CancelToken  # noqa: E402
from MedSegAILib.errors import Cancelled, OutputError  # noqa: E402
from MedSegAILib.mrml import _vtk, extras, results  # noqa: E402
from MedSegAILib.mrml.logic import SegmentationLogic  # noqa: E402
from MedSegAILib.mrml.results import write_result  # noqa: E402
from MedSegAILib.mrml.segmentations import (  # noqa: E402
    BINARY_LABELMAP,
    image_array,
    image_ijk_to_ras,
    segment_ids,
)
from MedSegAILib.mrml.terminology import terminology_string  # noqa: E402
from MedSegAILib.mrml.testing import DEMO_LABELS, demo_labelmap, demo_result, oblique_volume  # noqa: E402
from MedSegAILib.mrml.volumes import node_from_volume, volume_from_node  # noqa: E402
from MedSegAILib.tasks.base import Column, Table  # noqa: E402


def _setup(seed=0, study=True):
    scene = slicer.vtkMRMLScene()
    node = node_from_volume(scene, oblique_volume(seed), "CT")
    study_item = None
    if study:
        sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
        patient = sh.CreateSubjectItem(sh.GetSceneItemID(), "Patient 1")
        study_item = sh.CreateStudyItem(patient, "Study 1")
        sh.CreateItem(study_item, node)
    return scene, node, study_item


def _ids(scene):
    return sorted(n.GetID() for n in _vtk.all_nodes(scene))


def _mtimes(scene):
    return {n.GetID(): n.GetMTime() for n in _vtk.all_nodes(scene)}


def _segment_mask(seg_node, segment_id):
    seg = seg_node.GetSegmentation().GetSegment(segment_id)
    img = seg.GetRepresentation(BINARY_LABELMAP)
    return image_array(img) == seg.GetLabelValue(), image_ijk_to_ras(img)


def test_write_result_creates_expected_nodes():
    scene, node, study = _setup()
    vol = volume_from_node(node)
    result = demo_result(vol)
    out = write_result(scene, result, node)

    seg_node = out.segmentation
    assert seg_node.IsA("vtkMRMLSegmentationNode") and seg_node.GetName() == "CT demo"
    seg = seg_node.GetSegmentation()
    assert seg.GetNumberOfSegments() == 3 and seg.GetNumberOfLayers() == 1  # one shared labelmap
    assert out.empty_labels == ["Tumor"] and any("Tumor" in m for m in out.messages)
    for label in DEMO_LABELS:
        segment = seg.GetSegment(out.segment_ids[label.value])
        assert segment.GetName() == label.name
        assert np.allclose(segment.GetColor(), label.color)
        assert segment.GetLabelValue() == label.value
        assert _vtk.get_tag(segment, segment.GetTerminologyEntryTagName()) == terminology_string(label)
        assert _vtk.get_tag(segment, "MedSegAI.Task") == "demo"
        mask, ijk_to_ras = _segment_mask(seg_node, out.segment_ids[label.value])
        assert np.array_equal(mask, result.labelmap.array == label.value)  # label 3: empty
        assert np.allclose(ijk_to_ras, vol.ijk_to_ras(), atol=1e-9)  # exact reference grid, oblique

    # reference geometry for the segment editor / DICOM SEG export
    geom = seg.GetConversionParameter("Reference image geometry")
    ref_img = slicer.vtkOrientedImageData()
    slicer.vtkSegmentationConverter.DeserializeImageGeometry(geom, ref_img, False)
    assert np.allclose(image_ijk_to_ras(ref_img), vol.ijk_to_ras(), atol=1e-6)
    assert ref_img.GetDimensions() == vol.size_ijk

    # provenance
    attrs = {k: seg_node.GetAttribute(k) for k in seg_node.GetAttributeNames()}
    assert attrs["MedSegAI.ModelId"] == "demo-unet" and attrs["MedSegAI.ModelVersion"] == "1.2.0"
    assert attrs["MedSegAI.Device"] == "cpu" and attrs["MedSegAI.Date"] == "2026-01-02T03:04:05+00:00"
    assert json.loads(attrs["MedSegAI.Parameters"]) == {"threshold": 0.5}
    assert attrs["MedSegAI.Task"] == "demo" and attrs["MedSegAI.LibraryVersion"]
    assert json.loads(attrs["MedSegAI.Provenance"])["model_id"] == "demo-unet"

    # subject hierarchy: every output next to the input, in its study
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    for n in [seg_node, *out.maps, *out.tables, *out.points, *out.plots]:
        assert sh.GetItemParent(sh.GetItemByDataNode(n)) == study, n.GetName()
    for n in [*out.plot_series, *out.plot_tables]:
        assert sh.GetItemParent(sh.GetItemByDataNode(n)) == sh.GetItemByDataNode(out.plots[0])

    # every created node is listed
    assert {n.GetID() for n in out.created} >= {seg_node.GetID(), *(n.GetID() for n in out.maps)}
    assert seg_node.GetDisplayNode() is not None


def test_extras_scalar_map_table_points_plot():
    scene, node, _ = _setup(1)
    vol = volume_from_node(node)
    out = write_result(scene, demo_result(vol), node)

    (smap,) = out.maps
    assert np.allclose(_vtk.node_ijk_to_ras(smap), vol.ijk_to_ras(), atol=1e-9)
    display = smap.GetDisplayNode()
    assert display.GetColorNode() is out.color_tables[0]
    assert out.color_tables[0].GetNumberOfColors() == 256
    assert (display.GetWindowLevelMin(), display.GetWindowLevelMax()) == pytest.approx((0.0, 1.0))

    (table,) = out.tables
    t = table.GetTable()
    assert [t.GetColumn(i).GetName() for i in range(t.GetNumberOfColumns())] == ["Structure", "Volume [mL]", "Voxels"]
    assert t.GetColumn(1).IsA("vtkDoubleArray") and np.isnan(t.GetColumn(1).GetValue(1))
    assert t.GetColumn(2).IsA("vtkIntArray") and t.GetColumn(0).IsA("vtkStringArray")
    assert table.GetColumnUnitLabel("Volume [mL]") == "mL"

    (points,) = out.points
    assert points.GetNumberOfControlPoints() == 2 and points.GetNthControlPointLabel(1) == "B"
    expected = lps_to_ras_points(vol.index_to_lps([[1, 2, 3]]))[0]
    assert np.allclose(points.GetNthControlPointPosition(1), expected, atol=1e-9)
    assert np.allclose(points.GetNthControlPointPositionWorld(1), expected, atol=1e-9)
    assert points.GetNthControlPointDescription(0) == "first"

    (chart,) = out.plots
    assert chart.GetNumberOfPlotSeriesNodes() == 2 and chart.GetXAxisTitle() == "time [s]"
    series = out.plot_series[0]
    assert series.GetPlotType() == slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter
    assert series.GetTableNode() is out.plot_tables[0]


def test_uses_slicer_colour_node_when_present():
    scene, node, _ = _setup(2)
    inferno = slicer.vtkMRMLColorTableNode()
    inferno.SetTypeToGrey()
    inferno.SetName("Inferno")
    inferno.SetSingletonTag("FileInferno.txt")  # how Slicer's colour logic gets its node IDs
    scene.AddNode(inferno)
    assert inferno.GetID() == "vtkMRMLColorTableNodeFileInferno.txt"
    out = write_result(scene, demo_result(volume_from_node(node)), node)
    assert out.color_tables[0] is inferno
    assert out.maps[0].GetDisplayNode().GetColorNodeID() == "vtkMRMLColorTableNodeFileInferno.txt"
    # a second result reuses MedSegAI's own table or Slicer's, never adds a duplicate
    n_colour = scene.GetNumberOfNodesByClass("vtkMRMLColorTableNode")
    write_result(scene, demo_result(volume_from_node(node)), node)
    assert scene.GetNumberOfNodesByClass("vtkMRMLColorTableNode") == n_colour


def test_colormap_fallback_without_matplotlib_matches_matplotlib(monkeypatch):
    import builtins

    with_mpl, known = extras.colormap_rgb("inferno")
    assert known
    real_import = builtins.__import__

    def no_mpl(name, *a, **k):
        if name == "matplotlib":
            raise ImportError(name)
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_mpl)
    without, known = extras.colormap_rgb("Inferno")
    assert known and np.abs(without - with_mpl).max() < 0.06
    _, known = extras.colormap_rgb("no-such-map")
    assert not known


def test_works_without_subject_hierarchy_study():
    scene, node, _ = _setup(3, study=False)
    out = write_result(scene, demo_result(volume_from_node(node), extras=False), node)
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    assert sh.GetItemParent(sh.GetItemByDataNode(out.segmentation)) == sh.GetSceneItemID()


def test_reference_under_linear_transform():
    scene, node, _ = _setup(4)
    tnode = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    m = np.eye(4)
    m[:3, 3] = (10.0, -5.0, 2.0)
    m[:3, :3] = np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1.0]])
    slicer.util.updateTransformMatrixFromArray(tnode, m)
    node.SetAndObserveTransformNodeID(tnode.GetID())
    vol = volume_from_node(node)  # hardened (world) geometry
    out = write_result(scene, demo_result(vol), node)
    # outputs live in the reference's frame, under the same transform
    assert out.segmentation.GetParentTransformNode() is tnode
    _, ijk_to_ras = _segment_mask(out.segmentation, out.segment_ids[1])
    assert np.allclose(ijk_to_ras, _vtk.node_ijk_to_ras(node), atol=1e-9)
    assert out.maps[0].GetParentTransformNode() is tnode
    world = out.points[0].GetNthControlPointPositionWorld(1)
    assert np.allclose(world, lps_to_ras_points(vol.index_to_lps([[1, 2, 3]]))[0], atol=1e-6)


def test_user_segmentation_keeps_other_segments_and_rerun_replaces_ours():
    scene, node, _ = _setup(5)
    vol = volume_from_node(node)
    user = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "My work")
    user.SetReferenceImageGeometryParameterFromVolumeNode(node)
    from MedSegAILib.mrml.segmentations import oriented_image

    mine = np.zeros(vol.shape, np.uint8)
    mine[0, 0, :] = 1
    for name in ("Lesion A", "Liver"):  # "Liver" without MedSegAI tags: replaced by name
        s = slicer.vtkSegment()
        s.SetName(name)
        s.SetColor(0.1, 0.2, 0.3)
        s.AddRepresentation(BINARY_LABELMAP, oriented_image(mine, vol.ijk_to_ras()))
        user.GetSegmentation().AddSegment(s, name.replace(" ", "_"))
    before_nodes = _ids(scene)

    out = write_result(scene, demo_result(vol, extras=False), node, user)
    assert out.segmentation is user
    ids = segment_ids(user.GetSegmentation())
    assert ids[0] == "Lesion_A" and ids[1] == "Liver"  # kept, and "Liver" replaced in place
    assert np.array_equal(_segment_mask(user, "Lesion_A")[0], mine == 1)
    assert np.array_equal(_segment_mask(user, "Liver")[0], demo_labelmap(vol.shape) == 1)
    assert user.GetSegmentation().GetNumberOfSegments() == 4
    assert user.GetAttribute("MedSegAI.Task") == "demo"
    assert _ids(scene) == before_nodes or set(_ids(scene)) - set(before_nodes) <= {
        n.GetID() for n in out.created
    }

    # a re-run with a different result replaces only this task's segments
    out2 = write_result(scene, demo_result(vol, extras=False, present=(1,)), node, user)
    assert user.GetSegmentation().GetNumberOfSegments() == 4
    assert out2.segment_ids == out.segment_ids
    assert not _segment_mask(user, out2.segment_ids[2])[0].any()
    assert np.array_equal(_segment_mask(user, "Lesion_A")[0], mine == 1)


def test_failure_half_way_leaves_scene_unchanged(monkeypatch):
    scene, node, _ = _setup(6)
    vol = volume_from_node(node)
    before = _ids(scene)
    result = demo_result(vol)
    result.tables.append(Table("bad", [Column("a"), Column("b")], []))
    result.tables[-1].rows.append([1])  # inconsistent row, added after validation
    with pytest.raises(ValueError, match="row 0 has 1 cells"):
        write_result(scene, result, node)
    assert _ids(scene) == before

    def broken_plot(*a, **k):
        raise RuntimeError("plot writer crashed")

    monkeypatch.setattr(extras, "write_plot", broken_plot)
    with pytest.raises(RuntimeError, match="plot writer crashed"):
        write_result(scene, demo_result(vol), node)
    assert _ids(scene) == before


def test_failure_in_a_fresh_scene_removes_the_subject_hierarchy_node_too(monkeypatch):
    scene = slicer.vtkMRMLScene()
    node = node_from_volume(scene, oblique_volume(7), "CT")
    before = _ids(scene)

    def broken(*a, **k):
        raise OutputError("subject hierarchy failed")

    monkeypatch.setattr(results, "_place_in_subject_hierarchy", broken)
    with pytest.raises(OutputError):
        write_result(scene, demo_result(volume_from_node(node)), node)
    assert _ids(scene) == before


def test_failure_restores_user_segments(monkeypatch):
    scene, node, _ = _setup(8)
    vol = volume_from_node(node)
    user = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "mine")
    first = write_result(scene, demo_result(vol, extras=False), node, user)
    seg = user.GetSegmentation()
    ids_before = segment_ids(seg)
    masks_before = {sid: _segment_mask(user, sid)[0] for sid in ids_before}
    attrs_before = {k: user.GetAttribute(k) for k in user.GetAttributeNames()}
    nodes_before = _ids(scene)

    calls = {"n": 0}
    real_add = slicer.vtkSegmentation.AddSegment

    class FailingSegmentation:
        """Wraps the user's vtkSegmentation; fails on the 2nd AddSegment of the write."""

        def __init__(self, inner):
            self._inner = inner

        def AddSegment(self, *a):
            calls["n"] += 1
            if calls["n"] == 2:
                raise RuntimeError("disk on fire")
            return real_add(self._inner, *a)

        def __getattr__(self, name):
            return getattr(self._inner, name)

    class NodeProxy:
        def __init__(self, inner):
            self._inner = inner

        def GetSegmentation(self):
            return FailingSegmentation(self._inner.GetSegmentation())

        def __getattr__(self, name):
            return getattr(self._inner, name)

    # wrap the passed output node so that the 2nd segment insertion fails
    with pytest.raises(RuntimeError, match="disk on fire"):
        results.write_result(scene, demo_result(vol, extras=False, present=(1, 2, 3)), node, NodeProxy(user))
    assert segment_ids(seg) == ids_before
    for sid in ids_before:
        assert np.array_equal(_segment_mask(user, sid)[0], masks_before[sid])
    assert {k: user.GetAttribute(k) for k in user.GetAttributeNames()} == attrs_before
    assert _ids(scene) == nodes_before
    assert first.segment_ids


def test_result_not_on_reference_grid_is_refused():
    scene, node, _ = _setup(9)
    other = oblique_volume(10)
    before = _ids(scene)
    with pytest.raises(OutputError, match="not on the reference grid|not on the grid"):
        write_result(scene, demo_result(other), node)
    vol = volume_from_node(node)
    moved = vol.copy()
    moved.origin = tuple(np.add(vol.origin, 1.0))
    with pytest.raises(OutputError, match="not on the grid"):
        write_result(scene, demo_result(moved), node)
    assert _ids(scene) == before


def test_existing_nodes_are_not_modified():
    scene, node, _ = _setup(11)
    before = _mtimes(scene)
    write_result(scene, demo_result(volume_from_node(node)), node)
    after = _mtimes(scene)
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    changed = [i for i, t in before.items() if after[i] != t and i != sh.GetID()]
    assert changed == []


def test_logic_prepare_compute_publish_and_cancel():
    scene, node, _ = _setup(12)
    seen = {}

    def fake_segment(task_id, inputs, model_id=None, device="auto", params=None, progress=None, cancel=None):
        seen.update(task=task_id, inputs=inputs, device=device)
        return demo_result(inputs["image"], task_id=task_id)

    logic = SegmentationLogic(fake_segment)
    out = logic.run(scene, "demo", {"image": node}, device="cpu")
    assert seen["task"] == "demo" and seen["device"] == "cpu"
    assert seen["inputs"]["image"].meta["name"] == "CT"
    assert out.segmentation.GetSegmentation().GetNumberOfSegments() == 3

    token = CancelToken()

    def cancelling(*a, cancel=None, **k):
        cancel.cancel()
        return fake_segment(*a, cancel=cancel, **k)

    before = _ids(scene)
    with pytest.raises(Cancelled):
        SegmentationLogic(cancelling).run(scene, "demo", {"image": node}, cancel=token)
    assert _ids(scene) == before
