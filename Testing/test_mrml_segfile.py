""".seg.nrrd written with Slicer's storage node and read back: names, colours, terminology, labels and the
exact (oblique) reference geometry survive; writes are atomic."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
nrrd = pytest.importorskip("nrrd")

from MedSegAILib.core.volume import Volume  # noqa: E402
from MedSegAILib.errors import OutputError  # noqa: E402
from MedSegAILib.mrml import segfile  # noqa: E402
from MedSegAILib.mrml.results import write_result  # noqa: E402
from MedSegAILib.mrml.segfile import read_seg_nrrd, write_seg_nrrd  # noqa: E402
from MedSegAILib.mrml.terminology import terminology_string  # noqa: E402
from MedSegAILib.mrml.testing import DEMO_LABELS, demo_result, oblique_volume  # noqa: E402
from MedSegAILib.mrml.volumes import node_from_volume, volume_from_node  # noqa: E402


def _check_records(records, labels=DEMO_LABELS):
    assert [r.name for r in records] == [lab.name for lab in labels]
    for rec, lab in zip(records, labels):
        assert rec.value == lab.value
        assert np.allclose(rec.color, lab.color, atol=1e-6)
        assert rec.terminology == terminology_string(lab)


def test_result_round_trip_on_oblique_volume(tmp_path):
    vol = oblique_volume(20, shape=(5, 6, 7))
    assert vol.is_oblique
    result = demo_result(vol, present=(1, 2, 3), extras=False)
    path = write_seg_nrrd(result, tmp_path / "case.seg.nrrd")
    assert sorted(os.listdir(tmp_path)) == ["case.seg.nrrd"]  # no temporary file left

    # the file itself is on the full reference grid (LPS, as Slicer writes it)
    data, header = nrrd.read(str(path))
    assert header["space"] == "left-posterior-superior"
    assert tuple(header["sizes"][-3:]) == vol.size_ijk
    assert np.allclose(header["space origin"], vol.origin, atol=1e-6)
    assert np.allclose(np.asarray(header["space directions"])[-3:], (vol.direction * vol.spacing).T, atol=1e-6)
    assert header["Segmentation_ReferenceImageExtentOffset"].split() == ["0", "0", "0"]

    labelmap, records = read_seg_nrrd(path)
    assert labelmap.same_geometry(vol, atol=1e-6)
    assert np.array_equal(labelmap.array, result.labelmap.array)
    _check_records(records)


def test_segmentation_node_round_trip_keeps_empty_segments(tmp_path):
    scene = slicer.vtkMRMLScene()
    node = node_from_volume(scene, oblique_volume(21), "CT")
    vol = volume_from_node(node)
    out = write_result(scene, demo_result(vol, extras=False), node)  # "Tumor" is empty
    path = write_seg_nrrd(out.segmentation, tmp_path / "from-node.seg.nrrd")
    labelmap, records = read_seg_nrrd(path)
    _check_records(records)
    assert labelmap.same_geometry(vol, atol=1e-6)
    assert np.array_equal(labelmap.array, demo_result(vol, extras=False).labelmap.array)

    # and Slicer's reader gets the MedSegAI tags back
    scene2 = slicer.vtkMRMLScene()
    seg_node = scene2.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = slicer.vtkMRMLSegmentationStorageNode()
    scene2.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.ReadData(seg_node)
    import vtk

    ref = vtk.reference("")
    assert seg_node.GetSegmentation().GetNthSegment(0).GetTag("MedSegAI.Task", ref) and ref.get() == "demo"


def test_reference_geometry_must_match_the_result(tmp_path):
    vol = oblique_volume(22)
    result = demo_result(vol, extras=False)
    write_seg_nrrd(result, tmp_path / "ok.seg.nrrd", vol.geometry())
    with pytest.raises(OutputError, match="not on the given reference grid"):
        write_seg_nrrd(result, tmp_path / "bad.seg.nrrd", oblique_volume(23))
    assert not (tmp_path / "bad.seg.nrrd").exists()


def _unwritable_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):  # root ignores permissions: use a read-only file system instead
        folder.chmod(0o755)
        folder = Path("/sys")
        if os.access(folder, os.W_OK) and not os.path.isdir("/sys/kernel"):
            pytest.skip("no unwritable folder available")
    return folder


def test_unwritable_folder_gives_output_error_and_no_file(tmp_path):
    folder = _unwritable_folder(tmp_path)
    result = demo_result(oblique_volume(24), extras=False)
    before = set(os.listdir(folder))
    with pytest.raises(OutputError, match="not writable"):
        write_seg_nrrd(result, folder / "x.seg.nrrd")
    assert set(os.listdir(folder)) == before
    with pytest.raises(OutputError, match="does not exist"):
        write_seg_nrrd(result, tmp_path / "missing" / "x.seg.nrrd")
    with pytest.raises(OutputError, match=r"\.seg\.nrrd"):
        write_seg_nrrd(result, tmp_path / "x.nrrd")


def test_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    vol = oblique_volume(25)
    target = tmp_path / "keep.seg.nrrd"
    write_seg_nrrd(demo_result(vol, extras=False), target)
    original = target.read_bytes()

    class FailingStorage(slicer.vtkMRMLSegmentationStorageNode):
        def WriteData(self, node):
            # write part of a file, then report failure, as a full disk would
            Path(self.GetFileName()).write_bytes(b"NRRD0004\npartial")
            return 0

    monkeypatch.setattr(segfile.slicer, "vtkMRMLSegmentationStorageNode", FailingStorage)
    with pytest.raises(OutputError, match="failed"):
        write_seg_nrrd(demo_result(vol, extras=False, present=(1,)), target)
    assert target.read_bytes() == original
    assert sorted(os.listdir(tmp_path)) == ["keep.seg.nrrd"]


def test_read_rejects_missing_or_bad_files(tmp_path):
    from MedSegAILib.errors import InputError

    with pytest.raises(InputError, match="not found"):
        read_seg_nrrd(tmp_path / "nope.seg.nrrd")
    bad = tmp_path / "bad.seg.nrrd"
    bad.write_bytes(b"this is not nrrd")
    with pytest.raises(InputError):
        read_seg_nrrd(bad)


def test_read_plain_labelmap_nrrd_without_segment_metadata(tmp_path):
    # a label map written by another tool (no Segment* fields) still reads, with its geometry
    vol = Volume(np.zeros((3, 4, 5), np.uint8), (1.0, 2.0, 3.0), (4.0, 5.0, 6.0))
    arr = vol.array.copy()
    arr[1, 2, 3] = 1
    header = {
        "space": "left-posterior-superior",
        "space directions": np.diag(vol.spacing),
        "space origin": np.array(vol.origin),
    }
    path = tmp_path / "plain.seg.nrrd"
    nrrd.write(str(path), arr.transpose(2, 1, 0), header)
    labelmap, records = read_seg_nrrd(path)
    assert len(records) == 1 and records[0].value == 1
    assert labelmap.same_geometry(vol, atol=1e-6), labelmap
    assert np.array_equal(labelmap.array, arr)


def test_segmentation_node_with_volume_node_as_reference_geometry(tmp_path):
    # the batch script's call: the file holds the input volume's full grid
    scene = slicer.vtkMRMLScene()
    node = node_from_volume(scene, oblique_volume(26, shape=(4, 5, 6)), "CT")
    vol = volume_from_node(node)
    out = write_result(scene, demo_result(vol, extras=False, present=(2,)), node)
    path = write_seg_nrrd(out.segmentation, tmp_path / "batch.seg.nrrd", reference_geometry=node)
    labelmap, records = read_seg_nrrd(path)
    assert labelmap.same_geometry(vol, atol=1e-6)
    assert np.array_equal(labelmap.array, demo_result(vol, extras=False, present=(2,)).labelmap.array)
    assert [r.name for r in records] == [lab.name for lab in DEMO_LABELS]


def test_result_without_segments_is_written_and_reads_back(tmp_path):
    """Nothing found (e.g. no lung nodule) is a result: its .seg.nrrd has no segments but keeps the grid."""
    from MedSegAILib.core.volume import Volume
    from MedSegAILib.mrml.segfile import read_seg_nrrd, write_seg_nrrd
    from MedSegAILib.tasks.base import TaskResult

    direction = np.diag([-1.0, 1.0, 1.0])
    lab = Volume(np.zeros((6, 7, 8), np.uint8), (0.7, 0.8, 2.5), (10.0, -5.0, 3.0), direction, {"is_labelmap": True})
    res = TaskResult(task_id="lung-nodule", labelmap=lab, labels=[])
    path = write_seg_nrrd(res, tmp_path / "empty.seg.nrrd")
    back, records = read_seg_nrrd(path)
    assert records == []
    assert not back.array.any()
    assert back.same_geometry(lab, 1e-4) and back.shape == lab.shape
