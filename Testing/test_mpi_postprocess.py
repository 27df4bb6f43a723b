"""postprocess_lv (mpi-myocardium): cavity never filled, islands removed, main component kept, tiny wall pockets
filled, physical (mm / mL) thresholds with anisotropic voxels, input never modified."""

from __future__ import annotations

import numpy as np
import pytest

from _mpi_lv_phantoms import LV_AXIS, bullet, grid_points, lv_coords
from MedSegAILib.tasks.mpi_myocardium.postprocess import postprocess_lv


def _ball(vol, center_lps, radius_mm):
    """Mask of the voxels of ``vol`` whose centres lie within ``radius_mm`` of ``center_lps``."""
    nk, nj, ni = vol.shape
    k, j, i = np.meshgrid(np.arange(nk), np.arange(nj), np.arange(ni), indexing="ij")
    pts = vol.index_to_lps(np.stack([i.ravel(), j.ravel(), k.ravel()], 1)).reshape(vol.shape + (3,))
    return np.linalg.norm(pts - np.asarray(center_lps, float), axis=-1) <= radius_mm


@pytest.mark.parametrize("spacing", [(2.0, 2.0, 2.0), (6.0, 6.0, 6.0), (3.0, 3.0, 6.0)])
def test_clean_cup_is_unchanged_without_smoothing(spacing):
    lab, _ = bullet(spacing)
    out = postprocess_lv(lab.array, lab.spacing, smooth_mm=0)
    np.testing.assert_array_equal(out, lab.array)


@pytest.mark.parametrize("spacing", [(2.0, 2.0, 2.0), (4.0, 4.0, 4.0), (6.0, 6.0, 6.0), (3.0, 3.0, 6.0)])
def test_smoothing_keeps_cavity_and_nearly_all_myocardium(spacing):
    lab, _ = bullet(spacing)
    out = postprocess_lv(lab.array, lab.spacing)
    np.testing.assert_array_equal(out == 2, lab.array == 2)  # cavity voxels stay cavity, none added
    n_in, n_out = np.count_nonzero(lab.array == 1), np.count_nonzero(out == 1)
    assert abs(n_out - n_in) <= 0.02 * n_in


@pytest.mark.parametrize("voxel", [4.0, 6.0, 6.4])
def test_small_cavity_at_coarse_voxels_is_never_filled(voxel):
    # A small LV (cavity ~1.1 mL: a handful of voxels, far below the seed's 200-voxel "hole" limit).
    lab, _ = bullet((voxel,) * 3, r_in=6.0, wall=10.0, cyl_len=6.0)
    n_cav = np.count_nonzero(lab.array == 2)
    assert 0 < n_cav < 200
    out = postprocess_lv(lab.array, lab.spacing)
    np.testing.assert_array_equal(out == 2, lab.array == 2)


def test_unlabelled_cavity_of_closed_shell_is_not_filled():
    # The network forgot the cavity label and closed the base: the hollow is background enclosed by myocardium.
    # At 6 mm it is ~10 voxels, which the seed filled; 2.1 mL is far above the 0.25 mL pocket limit.
    vox = 6.0
    tmpl, pts = grid_points((0.0, 0.0, 0.0), 40.0, (vox,) * 3)
    r = np.linalg.norm(pts, axis=-1)
    lab = np.where((r >= 8.0) & (r < 20.0), 1, 0).astype(np.uint8)
    hollow = r < 8.0
    assert 1 <= np.count_nonzero(hollow) < 200
    out = postprocess_lv(lab, tmpl.spacing, smooth_mm=0)
    assert not out[hollow].any()


def test_islands_removed_and_main_component_kept():
    lab, truth = bullet((3.0, 3.0, 3.0))
    arr = lab.array.copy()
    far = truth["base"] - 60.0 * truth["axis"]  # beyond the open base, well away from the LV
    side = truth["base"] + 70.0 * np.cross(truth["axis"], [0.0, 0.0, 1.0]) / np.linalg.norm(np.cross(truth["axis"], [0, 0, 1.0]))
    island = _ball(lab, far, 8.0) & (arr == 0)  # ~2 mL of "myocardium"
    arr[island] = 1
    cav_island = _ball(lab, side, 5.0) & (arr == 0)  # a cavity blob touching no myocardium
    arr[cav_island] = 2
    out = postprocess_lv(arr, lab.spacing, smooth_mm=0)
    assert not out[island].any()
    assert not out[cav_island].any()
    np.testing.assert_array_equal(out, lab.array)


def test_large_blob_without_cavity_loses_to_the_left_ventricle():
    # A myocardium-labelled blob larger than the true myocardium (e.g. liver uptake) must not win: the main
    # component is the one lining the cavity.
    lab, truth = bullet((4.0, 4.0, 4.0), cyl_len=30.0)
    tmpl, pts = grid_points(truth["base"] + 40 * truth["axis"], 130.0, (4.0, 4.0, 4.0))
    big = np.zeros(tmpl.shape, np.uint8)
    # paste the LV into a larger grid
    off = np.rint(tmpl.lps_to_index(lab.index_to_lps([[0, 0, 0]]))[0]).astype(int)[::-1]
    sl = tuple(slice(o, o + n) for o, n in zip(off, lab.shape))
    big[sl] = lab.array
    blob_center = truth["base"] - 75.0 * truth["axis"]
    blob = _ball(tmpl, blob_center, 45.0) & (big == 0)
    assert np.count_nonzero(blob) > np.count_nonzero(big == 1)
    big[blob] = 1
    out = postprocess_lv(big, tmpl.spacing, smooth_mm=0)
    assert not out[blob].any()
    assert np.count_nonzero(out == 1) == np.count_nonzero(lab.array == 1)
    assert np.count_nonzero(out == 2) == np.count_nonzero(lab.array == 2)


def test_wall_fragments_lining_the_cavity_are_kept_small_ones_removed():
    # A transmural gap all around mid-ventricle splits the wall into a basal ring and an apical cup: both line
    # the cavity and are kept. A tiny myocardium speck inside the gap is an island (below min_component_ml).
    lab, truth = bullet((2.0, 2.0, 2.0))
    arr = lab.array.copy()
    nk, nj, ni = arr.shape
    k, j, i = np.meshgrid(np.arange(nk), np.arange(nj), np.arange(ni), indexing="ij")
    pts = lab.index_to_lps(np.stack([i.ravel(), j.ravel(), k.ravel()], 1)).reshape(arr.shape + (3,))
    t, rho, _ = lv_coords(pts, truth["base"], truth["axis"])
    gap = (t > 14.0) & (t < 22.0) & (arr == 1)
    arr[gap] = 0
    from scipy import ndimage as ndi

    assert ndi.label(arr == 1, structure=np.ones((3, 3, 3)))[1] == 2
    speck = np.zeros_like(gap)
    speck[np.unravel_index(np.argmin(np.where(gap, np.abs(rho - 30.0) + np.abs(t - 18.0), np.inf)), arr.shape)] = True
    arr[speck] = 1
    out = postprocess_lv(arr, lab.spacing, smooth_mm=0)
    np.testing.assert_array_equal(out == 1, (arr == 1) & ~speck)
    assert not out[speck].any()


def test_tiny_wall_pockets_filled_large_ones_kept():
    spacing = (2.0, 2.0, 2.0)
    lab, truth = bullet(spacing, wall=16.0)
    arr = lab.array.copy()
    perp = np.cross(truth["axis"], [0.0, 0.0, 1.0])
    perp /= np.linalg.norm(perp)
    mid_wall = 25.0 + 8.0
    small_c = truth["base"] + 20.0 * truth["axis"] + mid_wall * perp
    large_c = truth["base"] + 25.0 * truth["axis"] - mid_wall * perp
    small = _ball(lab, small_c, 2.1)  # 7 voxels of 8 mm^3 = 0.056 mL
    large = _ball(lab, large_c, 5.5)  # ~0.7 mL, above the 0.25 mL limit
    assert (arr[small] == 1).all() and (arr[large] == 1).all()
    arr[small] = 0
    arr[large] = 0
    # a one-voxel gap inside the blood pool is filled with cavity, not myocardium
    pool = np.unravel_index(np.flatnonzero(arr.ravel() == 2)[len(np.flatnonzero(arr.ravel() == 2)) // 2], arr.shape)
    arr[pool] = 0
    out = postprocess_lv(arr, spacing, smooth_mm=0)
    assert (out[small] == 1).all()
    assert (out[large] == 0).all()
    assert out[pool] == 2


def test_input_not_modified_and_new_uint8_array():
    lab, _ = bullet((4.0, 4.0, 4.0))
    arr = lab.array.copy()
    arr[0, 0, 0] = 1  # an island to remove
    arr[1, 1, 1] = 7  # unknown label: treated as background
    before = arr.copy()
    out = postprocess_lv(arr, lab.spacing)
    np.testing.assert_array_equal(arr, before)
    assert out is not arr and out.dtype == np.uint8 and out.shape == arr.shape
    assert out[0, 0, 0] == 0 and out[1, 1, 1] == 0
    assert set(np.unique(out)) <= {0, 1, 2}


def test_empty_input_gives_empty_output():
    out = postprocess_lv(np.zeros((5, 6, 7), np.uint8), (1.0, 1.0, 1.0))
    assert out.shape == (5, 6, 7) and not out.any()


def test_thresholds_are_physical_with_anisotropic_voxels():
    # Same physical objects on an anisotropic grid: an island of ~0.5 mL (below 1 mL) is removed, and a wall
    # pocket of ~0.1 mL (below 0.25 mL) is filled, whatever the voxel shape.
    spacing = (2.0, 2.0, 5.0)
    lab, truth = bullet(spacing, wall=16.0, axis=(0.0, 0.0, 1.0))
    arr = lab.array.copy()
    island = _ball(lab, truth["base"] - 22.0 * truth["axis"], 5.0) & (arr == 0)
    assert 0.3 < np.count_nonzero(island) * np.prod(spacing) / 1000 < 1.0
    arr[island] = 1
    pocket = _ball(lab, truth["base"] + 30.0 * truth["axis"] + np.array([33.0, 0.0, 0.0]), 3.0)
    assert (arr[pocket] == 1).all()
    arr[pocket] = 0
    out = postprocess_lv(arr, spacing, smooth_mm=0)
    assert not out[island].any()
    assert (out[pocket] == 1).all()


def test_smoothing_removes_a_one_voxel_spur():
    spacing = (2.0, 2.0, 2.0)
    lab, truth = bullet(spacing, axis=LV_AXIS)
    arr = lab.array.copy()
    # a one-voxel-wide spike sticking 3 voxels out of the epicardium
    perp = np.cross(truth["axis"], [0.0, 0.0, 1.0])
    perp /= np.linalg.norm(perp)
    idx = []
    for d in (36.0, 38.0, 40.0):
        p = truth["base"] + 25.0 * truth["axis"] + d * perp
        idx.append(tuple(np.rint(lab.lps_to_index(p)[0]).astype(int)[::-1]))
    spur = np.zeros(arr.shape, bool)
    for ix in idx:
        if arr[ix] == 0:
            spur[ix] = True
    assert spur.sum() >= 2
    arr[spur] = 1
    out = postprocess_lv(arr, spacing)
    assert not out[spur].any()
    np.testing.assert_array_equal(out == 2, arr == 2)
