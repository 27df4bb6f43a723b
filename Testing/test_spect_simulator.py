"""The myocardial-perfusion SPECT simulator: exact geometry, plausible labels, determinism, defects, speed."""

from __future__ import annotations


import numpy as np
import pytest
from scipy import ndimage

from MedSegAILib.core.volume import Geometry, Volume
from MedSegAILib.simulate.spect import CAVITY, MYOCARDIUM, LVShape, simulate_spect


def _centroid_lps(lab: Volume, mask: np.ndarray) -> np.ndarray:
    kji = np.argwhere(mask).astype(float)
    return lab.index_to_lps(kji[:, ::-1]).mean(axis=0)


@pytest.fixture(scope="module")
def oblique_case():
    return simulate_spect(11, spacing=3.0, oblique=True, fov="tight")


def test_outputs_types_and_same_grid(oblique_case):
    img, lab, params = oblique_case
    assert img.array.dtype == np.float32 and lab.array.dtype == np.uint8
    assert img.meta["modality"] == "NM"
    assert img.same_geometry(lab)
    assert set(np.unique(lab.array)) <= {0, 1, 2}
    assert img.is_oblique and params["oblique"]
    d = img.direction
    np.testing.assert_allclose(d.T @ d, np.eye(3), atol=1e-9)
    assert np.all(np.isfinite(img.array)) and img.array.min() >= 0


@pytest.mark.parametrize("oblique", [False, True])
def test_geometry_exact_label_centroid(oblique):
    """The label map sits where the analytic LV is in LPS, whatever the direction matrix."""
    img, lab, params = simulate_spect(3, spacing=2.5, oblique=oblique, fov="tight")
    lv_mask = lab.array > 0
    c = _centroid_lps(lab, lv_mask)
    # sub-voxel agreement with the analytic centroid (plurality labels at 2.5 mm)
    assert np.linalg.norm(c - np.asarray(params["lv_centroid_lps"])) < 1.0
    # and the image agrees: the myocardium is the hot wall around a colder cavity
    a = img.array / params["scale"]
    assert a[lab.array == MYOCARDIUM].mean() > 1.4 * a[lab.array == CAVITY].mean()


def test_labels_plausible_volumes_and_wall():
    for seed, sp in [(1, 2.0), (2, 4.0), (4, 6.5)]:
        img, lab, p = simulate_spect(seed, spacing=sp)
        lv = p["lv"]
        assert 7.0 <= p["wall_mm"] <= 14.0
        assert 60.0 <= p["endo_length_mm"] <= 95.0
        assert 50.0 <= p["myocardium_ml"] <= 330.0, p["myocardium_ml"]
        assert 20.0 <= p["cavity_ml"] <= 330.0, p["cavity_ml"]
        vml = img.voxel_volume_mm3 / 1000.0
        myo_ml = (lab.array == MYOCARDIUM).sum() * vml
        cav_ml = (lab.array == CAVITY).sum() * vml
        tol = 0.06 if sp <= 3 else 0.2  # plurality labels: errors shrink with the voxel size
        assert abs(myo_ml - p["myocardium_ml"]) < tol * p["myocardium_ml"], (sp, myo_ml, p["myocardium_ml"])
        assert abs(cav_ml - p["cavity_ml"]) < tol * p["cavity_ml"] + 2.0
        # the lateral wall at the equator has the nominal thickness (a fine ray through the analytic shape)
        shape = LVShape.from_dict(lv)
        r = np.arange(0.0, 80.0, 0.05)
        q = (np.zeros_like(r), r, np.zeros_like(r))  # along e2, in the equatorial plane
        wall = (shape.classify(q) == MYOCARDIUM).sum() * 0.05
        assert abs(wall - p["wall_mm"]) < 0.2


def test_labels_supersampled_not_point_sampled():
    """At coarse voxels, the label map is the voxel-volume plurality, not the class at the voxel centre."""
    _, lab, p = simulate_spect(7, spacing=6.0)
    shape = LVShape.from_dict(p["lv"])
    geom = lab.geometry()
    fine = np.argmax(shape.fractions(geom, supersample=8), axis=0)  # 0.75 mm sub-samples
    assert (fine != lab.array).sum() <= 1e-4 * lab.array.size + 2  # only ties at the sub-sample level
    frac = shape.fractions(geom)
    partial = (frac[1] > 0.05) & (frac[1] < 0.95)  # boundary voxels get partial-volume fractions
    assert partial.sum() > 100
    np.testing.assert_allclose(frac.sum(axis=0), 1.0, atol=1e-5)


def test_cavity_enclosed_except_at_base():
    for seed in (5, 6):
        img, lab, p = simulate_spect(seed, spacing=2.0, fov="tight")
        cav = lab.array == CAVITY
        bg = lab.array == 0
        touching = cav & ndimage.binary_dilation(bg, ndimage.generate_binary_structure(3, 1))
        assert touching.any()  # the base is open
        shape = LVShape.from_dict(p["lv"])
        kji = np.argwhere(touching)
        pts = lab.index_to_lps(kji[:, ::-1].astype(float))
        q = shape.local(pts[:, 0], pts[:, 1], pts[:, 2])
        _, _, sd_base = shape.signed_distances(q)
        # every cavity voxel facing the background lies at the valve plane (within a voxel diagonal)
        assert np.abs(sd_base).max() < np.sqrt(3) * 2.0
        # and the cavity is never in contact with the background far from the base
        assert (np.abs(sd_base) < 2.0).mean() > 0.5


def test_deterministic_per_seed():
    a = simulate_spect(21, spacing=5.0)
    b = simulate_spect(21, spacing=5.0)
    c = simulate_spect(22, spacing=5.0)
    np.testing.assert_array_equal(a[0].array, b[0].array)
    np.testing.assert_array_equal(a[1].array, b[1].array)
    assert a[2] == b[2]
    assert a[0].same_geometry(b[0])
    assert not (a[0].shape == c[0].shape and np.array_equal(a[0].array, c[0].array))
    rng1, rng2 = np.random.default_rng(5), np.random.default_rng(5)
    np.testing.assert_array_equal(simulate_spect(rng1, spacing=6.0)[0].array,
                                  simulate_spect(rng2, spacing=6.0)[0].array)


def test_defects_reduce_myocardial_counts():
    ratios = []
    for seed in (31, 32, 33):
        img0, lab0, p0 = simulate_spect(seed, spacing=4.0, fov="tight", defects=False)
        img1, lab1, p1 = simulate_spect(seed, spacing=4.0, fov="tight", defects=True)
        assert img0.same_geometry(img1) and np.array_equal(lab0.array, lab1.array)
        assert p1["defects"] and not p0["defects"]
        m = lab0.array == MYOCARDIUM
        ratios.append((img1.array[m].sum() / p1["scale"]) / (img0.array[m].sum() / p0["scale"]))
    assert max(ratios) < 0.97, ratios


def test_parameter_ranges_over_many_cases():
    spacings, fovs, obl, liver_hotter = [], [], 0, 0
    for seed in range(100, 112):
        rng = np.random.default_rng(seed)
        img, lab, p = simulate_spect(rng, fov="tight" if seed % 3 == 0 else "random")
        spacings.append(min(img.spacing))
        fovs.append(max(np.asarray(img.size_ijk) * np.asarray(img.spacing)))
        obl += int(p["oblique"])
        liver_hotter += int(p["liver_level"] > 1.0)
        assert 32 <= min(img.shape) and max(img.shape) <= 128
        assert (lab.array > 0).sum() > 0
    assert min(spacings) >= 1.8 and max(spacings) <= 7.0
    assert min(fovs) < 260 and max(fovs) > 300
    assert liver_hotter >= 1
