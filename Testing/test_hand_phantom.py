"""Tests of the hand/wrist CT phantom (MedSegAILib.simulate.hand_phantom).

Ground truth here is anatomy: sizes of adult carpal bones, their arrangement (pisiform palmar to the
triquetrum, distal row moving ulnarly in ulnar deviation), the physical L/R mirror between hands, joint
spaces (no two bones touching), HU ranges per tissue, and physical consistency across voxel sizes.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from MedSegAILib.errors import InputError
from MedSegAILib.simulate.hand_phantom import BONE_NAMES, CARPAL_LABELS, pa_view, simulate_hand

NEUTRAL = dict(deviation_deg=0.0, flexion_deg=0.0, pronation_deg=0.0)

# plausible adult ranges at scale 0.85-1.15 (volume mm^3, longest extent mm)
VOLUME_MM3 = {  # ~0.45x .. 2.2x the adult means (cm^3: scaphoid 2.4, lunate 2.0, triquetrum 1.6, pisiform 0.8,
    # trapezium 2.2, trapezoid 1.4, capitate 3.6, hamate 3.2), covering scale 0.85-1.15 and +-8 % per bone
    1: (1000, 5200), 2: (900, 4500), 3: (700, 3500), 4: (300, 1800), 5: (900, 4800), 6: (600, 3100),
    7: (1600, 7900), 8: (1400, 7000), 9: (6000, 40000), 10: (2000, 15000),
    11: (1200, 7000), 12: (1800, 9000), 13: (1800, 9000), 14: (1100, 7000), 15: (1100, 7000),
}
LENGTH_MM = {
    1: (14, 32), 2: (11, 24), 3: (10, 22), 4: (7, 16), 5: (11, 25), 6: (8, 20), 7: (17, 30), 8: (15, 32),
    9: (30, 90), 10: (30, 90), 11: (34, 62), 12: (51, 89), 13: (49, 85), 14: (44, 76), 15: (41, 71),
}


def _centroids(labels) -> dict[int, np.ndarray]:
    """Physical (LPS) centroid of every bone label."""
    arr = labels.array
    out = {}
    for lab, box in enumerate(ndimage.find_objects(arr), start=1):
        if box is None:
            continue
        kji = np.argwhere(arr[box] == lab).mean(0) + [s.start for s in box]
        out[lab] = labels.index_to_lps(kji[::-1])[0]
    return out


def _extent_mm(mask: np.ndarray, h: float) -> float:
    """Longest axis of the bone (2 x max distance of its voxels from their centroid along the PCA axis)."""
    pts = np.argwhere(mask).astype(float) * h
    pts -= pts.mean(0)
    _, _, vt = np.linalg.svd(pts[:: max(1, len(pts) // 4000)], full_matrices=False)
    proj = pts @ vt[0]
    return float(proj.max() - proj.min() + h)


@pytest.fixture(scope="module")
def phantom():
    return simulate_hand(7, spacing_mm=0.5, side="right", osteoporosis=0.0, **NEUTRAL)


def test_geometry_and_types(phantom):
    ct, lab = phantom.ct, phantom.labels
    assert ct.array.dtype == np.float32 and lab.array.dtype == np.uint8
    assert ct.same_geometry(lab)
    assert np.allclose(ct.direction, np.eye(3)) and np.allclose(ct.spacing, 0.5)
    # field: ~150+ mm along the forearm, 80-130 mm wide, a realistic thickness
    nk, nj, ni = ct.shape
    assert 140 <= nk * 0.5 <= 200 and 70 <= ni * 0.5 <= 140 and 40 <= nj * 0.5 <= 90
    assert set(np.unique(lab.array)) == set(range(16))
    assert phantom.info["touch_voxels_removed"] == 0


def test_bone_volumes_and_lengths(phantom):
    lab, h = phantom.labels.array, 0.5
    for k in range(1, 16):
        mask = lab == k
        vol = mask.sum() * h**3
        lo, hi = VOLUME_MM3[k]
        assert lo <= vol <= hi, (BONE_NAMES[k], vol)
        length = _extent_mm(mask, h)
        lo, hi = LENGTH_MM[k]
        assert lo <= length <= hi, (BONE_NAMES[k], length)
    # the capitate is the largest carpal bone, the pisiform the smallest
    vols = {k: int((lab == k).sum()) for k in range(1, 9)}
    assert max(vols, key=vols.get) in (7, 8) and min(vols, key=vols.get) == 4


def test_joint_spaces_no_touching(phantom):
    lab = phantom.labels.array
    # every bone, dilated by one voxel (26-neighbourhood), meets no other bone
    for k in range(1, 16):
        mask = lab == k
        sl = ndimage.find_objects(mask.astype(np.uint8))[0]
        sl = tuple(slice(max(s.start - 2, 0), s.stop + 2) for s in sl)
        grown = ndimage.binary_dilation(mask[sl], np.ones((3, 3, 3), bool))
        others = np.unique(lab[sl][grown])
        assert set(others.tolist()) <= {0, k}, (BONE_NAMES[k], others)


def test_joint_spaces_are_tight(phantom):
    """Neighbouring carpal bones articulate: the gap between them is a joint space (< 4 mm), not a void."""
    lab = phantom.labels.array
    pairs = [(1, 2), (2, 3), (3, 4), (2, 7), (7, 8), (6, 7), (5, 6), (9, 2), (9, 1)]
    for a, b in pairs:
        box = ndimage.find_objects(np.isin(lab, (a, b)).astype(np.uint8))[0]
        sub = lab[box]
        dist = ndimage.distance_transform_edt(sub != a, sampling=0.5)
        gap = float(dist[sub == b].min())
        assert 0.9 <= gap <= 4.0, (BONE_NAMES[a], BONE_NAMES[b], gap)


def test_pisiform_palmar_to_triquetrum(phantom):
    c = _centroids(phantom.labels)
    # palmar = anterior = LPS -y
    assert c[4][1] < c[3][1] - 5.0
    # and it overlaps the triquetrum in the PA (y) projection
    lab = phantom.labels.array
    fp_t, fp_p = (lab == 3).any(axis=1), (lab == 4).any(axis=1)
    assert (fp_t & fp_p).sum() > 0.3 * fp_p.sum()
    # hamate hook: the hamate reaches much further palmar than the capitate
    ys = {k: phantom.labels.index_to_lps(np.argwhere(lab == k)[:, ::-1])[:, 1].min() for k in (7, 8)}
    assert ys[8] < ys[7] - 4.0


def test_arrangement_right_hand(phantom):
    """Right hand, arm raised overhead with the palm anterior: fingers +z, radial side (thumb) +x."""
    c = _centroids(phantom.labels)
    assert c[1][0] > c[2][0] > c[3][0]  # scaphoid - lunate - triquetrum from radial to ulnar
    assert c[5][0] > c[6][0] > c[7][0] > c[8][0]  # trapezium - trapezoid - capitate - hamate
    assert c[9][0] > c[10][0]  # radius radial to the ulna
    assert c[11][0] > c[12][0] > c[13][0] > c[14][0] > c[15][0]
    assert c[2][2] < c[7][2] < c[13][2]  # lunate - capitate - MC3 along the forearm axis
    assert c[9][2] < c[2][2]


def test_left_right_mirror():
    right = simulate_hand(11, spacing_mm=1.0, side="right")
    left = simulate_hand(11, spacing_mm=1.0, side="left")
    cr, cl = _centroids(right.labels), _centroids(left.labels)
    for k in range(1, 16):
        assert cl[k][0] == pytest.approx(-cr[k][0], abs=0.8), BONE_NAMES[k]
        assert cl[k][1:] == pytest.approx(cr[k][1:], abs=0.8), BONE_NAMES[k]
    vr = np.bincount(right.labels.array.ravel(), minlength=16)
    vl = np.bincount(left.labels.array.ravel(), minlength=16)
    assert np.allclose(vl[1:], vr[1:], rtol=0.03)
    # the thumb is on the lateral side of each hand
    assert cr[11][0] > cr[15][0] and cl[11][0] < cl[15][0]
    # handedness: (radial, distal, dorsal) is a left-handed triple for a right hand, right-handed for a left
    for c, sign in ((cr, -1.0), (cl, 1.0)):
        radial, distal, dorsal = c[1] - c[3], c[13] - c[2], np.array([0.0, 1.0, 0.0])
        assert sign * np.dot(np.cross(radial, distal), dorsal) > 0


@pytest.mark.parametrize("side", ["right", "left"])
def test_ulnar_deviation_moves_distal_row_ulnarly(side):
    kw = dict(spacing_mm=1.0, side=side, flexion_deg=0.0, pronation_deg=0.0)
    rad = _centroids(simulate_hand(5, deviation_deg=-12.0, **kw).labels)
    uln = _centroids(simulate_hand(5, deviation_deg=20.0, **kw).labels)
    ulnar = -1.0 if side == "right" else 1.0  # ulnar side: -x for a right hand
    for k in (13, 14):  # metacarpal heads swing far
        assert ulnar * (uln[k][0] - rad[k][0]) > 15.0
    assert ulnar * (uln[7][0] - rad[7][0]) > 1.0  # capitate body too
    # the radius does not move
    assert np.allclose(uln[9], rad[9], atol=0.6)
    # the proximal row slides radially in ulnar deviation
    assert ulnar * (uln[2][0] - rad[2][0]) < 0.0


def test_hu_ranges(phantom):
    ct, lab = phantom.ct.array, phantom.labels.array
    assert ct[0, 0, 0] == pytest.approx(-1000.0) and ct.min() >= -1001
    bone = lab > 0
    assert 1100 <= float(np.percentile(ct[bone], 99.5)) <= 1700
    for k in (2, 7):  # carpal interior (eroded by 2.5 mm) is cancellous bone
        inner = ndimage.binary_erosion(lab == k, iterations=5)
        med = float(np.median(ct[inner]))
        assert 150 <= med <= 500, (BONE_NAMES[k], med)
    soft = (~ndimage.binary_dilation(bone, iterations=3)) & (ct > -900)
    vals = ct[soft]
    fat = ((vals > -130) & (vals < -70)).mean()
    muscle = ((vals > 30) & (vals < 70)).mean()
    assert 0.05 < fat < 0.6 and muscle > 0.3
    assert -150 <= float(np.median(vals)) <= 70


def test_osteoporosis_lowers_density():
    kw = dict(spacing_mm=1.0, side="right", **NEUTRAL)
    young = simulate_hand(3, osteoporosis=0.0, **kw)
    old = simulate_hand(3, osteoporosis=1.0, **kw)
    m_y, m_o = young.labels.array == 9, old.labels.array == 9
    assert old.ct.array[m_o].mean() < 0.8 * young.ct.array[m_y].mean()


def test_reproducible_and_random():
    a = simulate_hand(21, spacing_mm=1.0)
    b = simulate_hand(np.random.default_rng(21), spacing_mm=1.0)
    c = simulate_hand(22, spacing_mm=1.0)
    assert a.ct.same_geometry(b.ct) and np.array_equal(a.ct.array, b.ct.array)
    assert np.array_equal(a.labels.array, b.labels.array)
    differs = (not a.ct.same_geometry(c.ct)) or not np.array_equal(a.labels.array, c.labels.array)
    assert differs and a.info != c.info


def test_spacing_keeps_physical_volumes():
    kw = dict(side="left", **NEUTRAL)
    fine = simulate_hand(9, spacing_mm=0.5, **kw)
    coarse = simulate_hand(9, spacing_mm=1.0, **kw)
    vf = np.bincount(fine.labels.array.ravel(), minlength=16) * 0.125
    vc = np.bincount(coarse.labels.array.ravel(), minlength=16) * 1.0
    rel = np.abs(vc[1:] - vf[1:]) / vf[1:]
    assert rel[[0, 1, 2, 4, 5, 6, 7, 8, 9]].max() < 0.08, rel  # carpals (not the tiny pisiform) + forearm
    assert rel[3] < 0.15  # pisiform: ~300 mm^3, a 1 mm voxel shell is a large fraction of it
    assert rel[10:].max() < 0.06  # metacarpals
    # centroids agree
    cf, cc = _centroids(fine.labels), _centroids(coarse.labels)
    assert max(np.linalg.norm(cf[k] - cc[k]) for k in range(1, 16)) < 0.8


def test_pa_view(phantom):
    v = pa_view(phantom)
    for key in ("view_dir", "up", "column_dir", "row_dir"):
        assert np.linalg.norm(v[key]) == pytest.approx(1.0)
    assert np.dot(v["view_dir"], v["up"]) == pytest.approx(0.0)
    c = _centroids(phantom.labels)
    assert np.allclose(v["view_dir"], [0, -1, 0])  # dorsum -> palm
    assert np.allclose(np.cross(v["column_dir"], v["row_dir"]), v["view_dir"])  # drr.py convention
    # seen from the source, a right hand has its thumb on the image left: MC1 at smaller column coordinate
    assert np.dot(c[11] - c[15], v["column_dir"]) < 0
    # the fingers are 'up': MC3 is further along 'up' than the radius
    assert np.dot(c[13] - c[9], v["up"]) > 50
    # the isocentre lies in the carpus (within the box of the carpal bones)
    ijk = phantom.labels.lps_to_index(v["isocentre"][None])[0][::-1]
    carpus = np.argwhere(np.isin(phantom.labels.array, range(1, 9)))
    assert np.all(ijk >= carpus.min(0)) and np.all(ijk <= carpus.max(0))
    assert np.allclose(v["direction"].T @ v["direction"], np.eye(3))


def test_bad_input():
    with pytest.raises(InputError):
        simulate_hand(0, side="middle")
    with pytest.raises(InputError):
        simulate_hand(0, spacing_mm=0.0)
    with pytest.raises(InputError):
        simulate_hand(0, deviation_deg=90.0)
    with pytest.raises(InputError):
        simulate_hand("seed")  # type: ignore[arg-type]
    assert CARPAL_LABELS == tuple(range(1, 11))
