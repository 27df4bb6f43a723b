"""Lung-nodule measurements, heterogeneity map and picture, point parsing, and the map in a real MRML scene:
synthetic nodules with known size and density, on straight, flipped and oblique grids."""

from __future__ import annotations

import numpy as np
import pytest

from MedSegAILib.core.volume import Volume, lps_to_ras_points, random_rotation
from MedSegAILib.errors import InputError
from MedSegAILib.tasks.lung_nodule import LungNoduleConfig, nodule_label, parse_point_ras
from MedSegAILib.tasks.lung_nodule import measure


def _ct(direction=None, spacing=(0.7, 0.7, 1.25), shape=(48, 64, 64), radius=6.0, core=3.0):
    """Lung parenchyma (-850 HU) with a ball nodule of ``radius`` mm: a solid core (+20 HU) within ``core`` mm and
    ground glass (-600 HU) around it; returns (ct, mask, nodule image in relative density)."""
    direction = np.eye(3) if direction is None else direction
    vol = Volume(np.zeros(shape, np.int16), spacing, (10.0, -20.0, 30.0), direction, {"modality": "CT"})
    k, j, i = np.indices(shape)
    xyz = vol.index_to_lps(np.stack([i, j, k], -1).reshape(-1, 3).astype(float)).reshape(*shape, 3)
    centre = vol.index_to_lps(np.array([[shape[2] / 2, shape[1] / 2, shape[0] / 2]]))[0]
    r = np.linalg.norm(xyz - centre, axis=-1)
    hu = np.full(shape, -850.0)
    hu[r <= radius] = -600.0
    hu[r <= core] = 20.0
    mask = r <= radius
    ct = vol.with_array(hu.astype(np.int16))
    rho = np.where(mask, (hu + 1000.0) / 1000.0, 0.0).astype(np.float32)
    return ct, mask, rho, centre


@pytest.mark.parametrize("kind", ["straight", "flipped", "oblique"])
def test_measures_of_a_ball_are_physical(kind):
    direction = {"straight": np.eye(3), "flipped": np.diag([-1.0, 1.0, -1.0]),
                 "oblique": random_rotation(np.random.default_rng(3))}[kind]
    ct, mask, rho, centre = _ct(direction)
    m = measure.measure_nodule(mask, ct, rho, score=0.9)
    true_v = 4.0 / 3.0 * np.pi * 6.0 ** 3
    assert m.volume_mm3 == pytest.approx(true_v, rel=0.06)
    assert m.equivalent_diameter_mm == pytest.approx(12.0, rel=0.03)
    # the largest axial chord of a 12 mm ball: 12 mm (voxel-centre distance + one voxel)
    assert m.longest_axial_diameter_mm == pytest.approx(12.0, abs=1.6)
    assert np.allclose(m.centroid_lps, centre, atol=0.4)
    assert m.solid_fraction == pytest.approx((3.0 / 6.0) ** 3, abs=0.04)
    # heterogeneity: core +20 HU vs ground glass -600 HU -> 10-90 % range 620 HU (the core is >10 % of the voxels)
    assert m.heterogeneity_range_hu > 300
    assert m.score == 0.9


def test_uniform_nodule_has_no_heterogeneity():
    ct, mask, rho, _ = _ct(core=-1.0)
    m = measure.measure_nodule(mask, ct, np.where(mask, 0.4, 0).astype(np.float32), score=0.5)
    assert m.heterogeneity_range_hu == pytest.approx(0.0, abs=1e-3)
    assert m.solid_fraction == 0.0


def test_heterogeneity_map_zero_outside_and_density_inside():
    ct, mask, rho, _ = _ct()
    labels = mask.astype(np.uint8)
    hmap = measure.heterogeneity_map(ct, labels, rho + 0.5 * (~mask))  # generator output outside -> ignored
    arr = hmap.volume.array
    assert hmap.volume.same_geometry(ct)
    assert np.all(arr[~mask] == 0)
    assert np.all(arr[mask] > 0)
    assert arr[mask].max() == pytest.approx(1.02, abs=1e-3)
    assert hmap.zero_transparent and hmap.colormap == "Inferno" and hmap.window == (0.0, 1.2)


def test_picture_and_table():
    ct, mask, rho, centre = _ct()
    labels = mask.astype(np.uint8)
    names = [nodule_label(1).name]
    pic = measure.heterogeneity_picture(ct, labels, rho, names)
    assert pic is not None and pic.png[:8] == b"\x89PNG\r\n\x1a\n"
    assert measure.heterogeneity_picture(ct, labels * 0, rho, []) is None
    m = measure.measure_nodule(mask, ct, rho, score=float("nan"))
    t = measure.nodule_table(names, [m])
    ras = lps_to_ras_points(centre[None])[0]
    assert t.column("Centroid R") == [pytest.approx(ras[0], abs=0.4)]
    assert t.column("Centroid A") == [pytest.approx(ras[1], abs=0.4)]
    assert "Heterogeneity index [HU]" in t.header()


def test_labels_and_point_parsing():
    a, b = nodule_label(1), nodule_label(9)
    assert a.name == "Lung nodule 1" and b.name == "Lung nodule 9" and a.type.code == "27925004"
    assert a.region is not None and a.region.code == "39607008"
    assert np.allclose(parse_point_ras("10, -20.5, 30"), [-10.0, 20.5, 30.0])  # RAS -> LPS
    for bad in ("", "1,2", "a,b,c", "1,2,3,4", "nan,1,2"):
        with pytest.raises(InputError, match="three numbers"):
            parse_point_ras(bad)
    cfg = LungNoduleConfig.from_mapping({"fusion_threshold": 0.7, "unrelated": 1})
    assert cfg.fusion_threshold == 0.7


def test_map_node_in_a_real_scene_hides_zero():
    slicer = pytest.importorskip("slicer")
    from MedSegAILib.mrml import extras

    ct, mask, rho, _ = _ct()
    hmap = measure.heterogeneity_map(ct, mask.astype(np.uint8), rho)
    scene = slicer.vtkMRMLScene()
    node, _color = extras.write_scalar_map(scene, hmap, "map", None, [])
    disp = node.GetDisplayNode()
    assert disp.GetApplyThreshold() == 1
    assert 0 < disp.GetLowerThreshold() < 0.01
    assert disp.GetWindowLevelMin() == pytest.approx(0.0) and disp.GetWindowLevelMax() == pytest.approx(1.2)
