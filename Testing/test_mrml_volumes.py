"""Volume node <-> Volume on a real slicer-core scene: exact geometry, copies, clear rejections."""

from __future__ import annotations

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from MedSegAILib.core.volume import Volume, lps_to_ras_points  # noqa: E402
from MedSegAILib.errors import InputError  # noqa: E402
from MedSegAILib.mrml import _vtk  # noqa: E402
from MedSegAILib.core.volume import random_rotation  # noqa: E402
from MedSegAILib.mrml.testing import oblique_volume  # noqa: E402
from MedSegAILib.mrml.volumes import node_from_volume, volume_from_node  # noqa: E402


def _scene():
    return slicer.vtkMRMLScene()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    shape=st.tuples(st.integers(1, 5), st.integers(1, 6), st.integers(1, 7)),
    dtype=st.sampled_from([np.int16, np.uint8, np.float32, np.float64]),
)
def test_geometry_round_trip_on_random_oblique_volumes(seed, shape, dtype):
    rng = np.random.default_rng(seed)
    vol = Volume(
        (rng.random(shape) * 100).astype(dtype),
        tuple(rng.uniform(0.2, 5.0, 3)),
        tuple(rng.uniform(-500, 500, 3)),
        random_rotation(rng),
    )
    scene = _scene()
    node = node_from_volume(scene, vol, "v")
    # the node's IJKToRAS is the Volume's, flipped to RAS
    assert np.allclose(_vtk.node_ijk_to_ras(node), vol.ijk_to_ras(), atol=1e-9)
    back = volume_from_node(node)
    assert back.shape == vol.shape and back.array.dtype == vol.array.dtype
    assert np.array_equal(back.array, vol.array)
    assert np.allclose(back.spacing, vol.spacing, atol=1e-6)
    assert np.allclose(back.origin, vol.origin, atol=1e-6)
    assert np.allclose(back.direction, vol.direction, atol=1e-6)
    # physical point: a voxel's LPS position from the Volume == the node's IJKToRAS position, flipped
    ijk = np.array([rng.integers(0, n) for n in vol.size_ijk], dtype=float)
    ras = (_vtk.node_ijk_to_ras(node) @ np.r_[ijk, 1.0])[:3]
    assert np.allclose(back.index_to_lps(ijk)[0], lps_to_ras_points(ras[None])[0], atol=1e-6)


def test_array_is_a_copy_and_meta_is_filled():
    scene = _scene()
    vol = oblique_volume(3)
    node = node_from_volume(scene, vol, "CT chest")
    back = volume_from_node(node)
    back.array[...] = 0
    assert np.array_equal(slicer.util.arrayFromVolume(node), vol.array)  # node untouched
    assert back.meta["name"] == "CT chest" and back.meta["modality"] == "CT" and back.meta["is_labelmap"] is False
    assert back.meta["node_id"] == node.GetID()


def test_modality_from_subject_hierarchy_item():
    scene = _scene()
    node = node_from_volume(scene, Volume(np.ones((2, 3, 4)) * np.arange(4)), "pet")
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    item = sh.CreateItem(sh.GetSceneItemID(), node)
    sh.SetItemAttribute(item, "DICOM.Modality", "pt")
    sh.SetItemUID(item, "DICOM", "1.2.3")
    vol = volume_from_node(node)
    assert vol.meta["modality"] == "PT" and vol.meta["series_instance_uid"] == "1.2.3"


def test_linear_parent_transform_is_hardened_into_the_volume():
    scene = _scene()
    vol = oblique_volume(4)
    node = node_from_volume(scene, vol, "v")
    tnode = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    rng = np.random.default_rng(5)
    m = np.eye(4)
    m[:3, :3] = random_rotation(rng)
    m[:3, 3] = rng.uniform(-50, 50, 3)
    slicer.util.updateTransformMatrixFromArray(tnode, m)
    node.SetAndObserveTransformNodeID(tnode.GetID())
    before = _vtk.node_ijk_to_ras(node)
    hard = volume_from_node(node)
    assert np.allclose(hard.ijk_to_ras(), m @ vol.ijk_to_ras(), atol=1e-6)
    assert hard.meta["hardened_transform"] == tnode.GetName()
    assert np.array_equal(_vtk.node_ijk_to_ras(node), before)  # the node is not modified


def test_rejects_non_linear_transform():
    scene = _scene()
    node = node_from_volume(scene, oblique_volume(6), "warped")
    grid = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "warp")
    node.SetAndObserveTransformNodeID(grid.GetID())
    with pytest.raises(InputError, match="non-linear"):
        volume_from_node(node)


def test_rejects_vector_volume_with_a_hint():
    scene = _scene()
    node = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "screenshot")
    slicer.util.updateVolumeFromArray(node, np.zeros((1, 4, 5, 3), np.uint8))
    with pytest.raises(InputError, match="Vector to Scalar Volume"):
        volume_from_node(node)


def test_vector_volume_converted_by_a_task_converter():
    """A task that reads grey images stored as RGB (radiographs) converts a vector node; its refusal stands."""
    from MedSegAILib.tasks.carpal.radiograph import grey_from_rgb

    scene = _scene()
    node = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "wrist")
    grey = np.random.default_rng(0).integers(0, 255, (1, 6, 7)).astype(np.uint8)
    slicer.util.updateVolumeFromArray(node, np.repeat(grey[..., None], 3, axis=-1))
    node.SetSpacing(0.2, 0.3, 1.0)
    vol = volume_from_node(node, vector_to_scalar=grey_from_rgb)
    assert vol.shape == (1, 6, 7) and np.allclose(vol.array, grey)
    assert np.allclose(vol.spacing, (0.2, 0.3, 1.0)) and vol.meta.get("read_notes")
    colour = np.stack([grey, 255 - grey, np.roll(grey, 2, axis=-1)], axis=-1)
    slicer.util.updateVolumeFromArray(node, colour)
    with pytest.raises(InputError, match="colour"):
        volume_from_node(node, vector_to_scalar=grey_from_rgb)


def test_spacing_known_survives_the_scene():
    scene = _scene()
    v = Volume(np.ones((1, 4, 5), np.float32), (1.0, 1.0, 1.0), meta={"spacing_known": False})
    assert volume_from_node(node_from_volume(scene, v, "png-like")).meta["spacing_known"] is False
    v.meta["spacing_known"] = True
    assert volume_from_node(node_from_volume(scene, v, "dicom-like")).meta["spacing_known"] is True
    plain = node_from_volume(scene, Volume(np.ones((3, 4, 5), np.float32), (1.0, 1.0, 1.0)), "nifti-like")
    assert "spacing_known" not in volume_from_node(plain).meta
    # a node read by Slicer from a PNG/JPEG file has 1 mm pixels that mean nothing
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName("/data/hand.png")
    plain.SetAndObserveStorageNodeID(storage.GetID())
    assert volume_from_node(plain).meta["spacing_known"] is False


def test_rejects_multi_component_scalar_and_multivolume():
    import vtk

    scene = _scene()
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "frames")
    img = vtk.vtkImageData()
    img.SetDimensions(5, 4, 2)
    img.AllocateScalars(vtk.VTK_FLOAT, 3)
    node.SetAndObserveImageData(img)
    with pytest.raises(InputError, match="single frame"):
        volume_from_node(node)
    node.SetAttribute("MultiVolume.NumberOfFrames", "3")
    with pytest.raises(InputError, match="4-D.*single frame"):
        volume_from_node(node)
    seq = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "seq")
    with pytest.raises(InputError, match="single frame"):
        volume_from_node(seq)


def test_rejects_label_map_unless_allowed():
    scene = _scene()
    lab = node_from_volume(scene, Volume(np.eye(4, dtype=np.uint8)[None]), "seg", "vtkMRMLLabelMapVolumeNode")
    with pytest.raises(InputError, match="label map"):
        volume_from_node(lab)
    assert volume_from_node(lab, allow_labelmap=True).meta["is_labelmap"] is True


def test_rejects_empty_node_and_non_volumes():
    scene = _scene()
    with pytest.raises(InputError, match="no image data"):
        volume_from_node(scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty"))
    with pytest.raises(InputError, match="not an image volume"):
        volume_from_node(scene.AddNewNodeByClass("vtkMRMLTableNode", "t"))
    with pytest.raises(InputError, match="No input volume"):
        volume_from_node(None)


def test_node_from_volume_converts_dtypes_vtk_lacks():
    scene = _scene()
    for arr, kind in [(np.ones((2, 2, 2), bool), np.uint8), (np.arange(8, dtype=np.int64).reshape(2, 2, 2), np.int32)]:
        node = node_from_volume(scene, Volume(arr), "x")
        back = slicer.util.arrayFromVolume(node)
        assert back.dtype == kind and np.array_equal(back, arr.astype(kind))
