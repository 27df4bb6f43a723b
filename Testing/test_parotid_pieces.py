"""Parotid task pieces that need no network: patient-aligned grids, left/right from geometry, probabilities back to
any input grid, localisation, midline and component rules, and the input checks."""

from __future__ import annotations

import numpy as np
import pytest

from MedSegAILib.core.validate import check_ct_hu
from MedSegAILib.core.volume import Geometry, Volume
from MedSegAILib.errors import InputError
from MedSegAILib.tasks.parotid import preprocess as pp
from MedSegAILib.tasks.parotid.postprocess import clean_glands, estimate_midline
from MedSegAILib.tasks.registry import get_task


def rot(deg_z: float, deg_x: float = 0.0) -> np.ndarray:
    a, b = np.deg2rad(deg_z), np.deg2rad(deg_x)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


def physical_volume(direction: np.ndarray, shape=(40, 60, 70), spacing=(2.0, 2.0, 3.0)) -> Volume:
    """A 'CT' whose HU is a known function of the LPS position: x (patient left) + 1000 * (x > 0) marks the
    left half, so any resampling can be checked against physics."""
    centre = np.array([5.0, -20.0, 40.0])
    n = np.asarray(shape[::-1], float)
    origin = centre - direction @ ((n - 1) / 2.0 * np.asarray(spacing))
    v = Volume(np.zeros(shape, np.float32), spacing, origin, direction)
    k, j, i = np.indices(shape)
    pts = v.index_to_lps(np.stack([i.ravel(), j.ravel(), k.ravel()], 1).astype(float))
    hu = np.where(pts[:, 0] > centre[0], 200.0, -200.0) + 0.0 * pts[:, 1]
    return v.with_array(hu.reshape(shape).astype(np.float32))


@pytest.mark.parametrize("direction", [np.eye(3), np.diag([-1.0, 1.0, 1.0]), np.diag([-1.0, -1.0, 1.0]),
                                       rot(25.0, 15.0), np.array([[0, 1, 0], [1, 0, 0], [0, 0, -1.0]])])
def test_canonical_grid_puts_the_patients_left_at_high_i(direction):
    vol = physical_volume(direction)
    lo, hi = pp.box_of(vol)
    g = pp.canonical_grid(lo, hi, 2.0)
    assert np.allclose(g.direction, np.eye(3))
    arr = pp.to_grid(vol, g, antialias=False, default=np.nan)
    inside = np.isfinite(arr)
    k, j, i = np.indices(arr.shape)
    x = g.origin[0] + i * g.spacing[0]
    centre_x = 5.0
    # away from the boundary plane, the value is set by the physical side only
    left, right = inside & (x > centre_x + 4), inside & (x < centre_x - 4)
    assert left.sum() > 100 and right.sum() > 100
    assert np.all(arr[left] > 150) and np.all(arr[right] < -150)


def test_box_of_oblique_volume_contains_every_voxel_centre():
    vol = physical_volume(rot(30.0, 20.0))
    lo, hi = pp.box_of(vol)
    k, j, i = np.indices(vol.shape)
    pts = vol.index_to_lps(np.stack([i.ravel(), j.ravel(), k.ravel()], 1).astype(float))
    assert np.all(pts >= lo - 1e-6) and np.all(pts <= hi + 1e-6)


@pytest.mark.parametrize("direction", [np.eye(3), np.diag([-1.0, 1.0, 1.0]), rot(20.0, 10.0)])
def test_probabilities_back_to_any_input_grid_keep_the_sides(direction):
    """Probabilities made on the canonical grid from physics (right gland x < c, left x > c) come back on a
    flipped or oblique input grid on the physically right voxels."""
    vol = physical_volume(direction)
    lo, hi = pp.box_of(vol)
    g = pp.canonical_grid(lo, hi, 1.5)
    x = g.origin[0] + np.arange(g.shape[2]) * g.spacing[0]
    p_left = np.broadcast_to((x > 5.0).astype(np.float32), g.shape)
    probs = np.stack([np.zeros(g.shape, np.float32), 1.0 - p_left, p_left])
    back = pp.probabilities_to_input(probs, g, vol.geometry())
    labels = np.argmax(back, 0)
    truth = np.where(vol.array > 0, pp.LEFT, pp.RIGHT)
    agree = (labels == truth).mean()
    assert agree > 0.97, agree


def test_probabilities_outside_the_source_box_are_background():
    vol = physical_volume(np.eye(3))
    lo, hi = pp.box_of(vol)
    small = pp.canonical_grid(lo + 30, lo + 50, 1.0)
    probs = np.zeros((3,) + small.shape, np.float32)
    probs[2] = 1.0
    back = pp.probabilities_to_input(probs, small, vol.geometry())
    lab = np.argmax(back, 0)
    assert (lab == 2).any() and (lab == 0).any()
    assert (lab == 2).mean() < 0.1
    far = Geometry(small.shape, small.spacing, tuple(np.asarray(small.origin) + 1000.0), np.eye(3))
    assert np.all(np.argmax(pp.probabilities_to_input(probs, far, vol.geometry()), 0) == 0)


def test_localise_takes_the_largest_component_per_side_and_rejects_specks():
    g = Geometry((30, 40, 40), (4.0, 4.0, 4.0), (0.0, 0.0, 0.0), np.eye(3))
    probs = np.zeros((3,) + g.shape, np.float32)
    probs[0] = 1.0
    probs[:, 10:15, 10:18, 5:10] = np.array([0.05, 0.9, 0.05])[:, None, None, None]  # right: 5x8x5 = 12.8 mL
    probs[:, 10:15, 10:18, 28:33] = np.array([0.05, 0.05, 0.9])[:, None, None, None]  # left
    probs[:, 25, 30, 30] = np.array([0.0, 0.0, 1.0])  # a 0.064 mL speck on the left
    loc = pp.localise(probs, g, pp.ParotidConfig())
    assert set(loc.glands) == {pp.RIGHT, pp.LEFT}
    assert loc.glands[pp.RIGHT].centre_lps[0] < loc.glands[pp.LEFT].centre_lps[0]
    assert loc.glands[pp.LEFT].volume_ml == pytest.approx(200 * 0.064)
    assert np.allclose(loc.glands[pp.LEFT].centre_lps, [30 * 4.0, 13 * 4.0 + 2.0, 12 * 4.0], atol=1e-6)
    lo, hi = loc.box(10.0)
    assert lo[0] == pytest.approx(5 * 4.0 - 2.0 - 10.0) and hi[0] == pytest.approx(32 * 4.0 + 2.0 + 10.0)
    probs[1:, 10:15] = 0.0
    probs[0, 10:15] = 1.0
    assert not pp.localise(probs, g, pp.ParotidConfig()).glands  # only the speck: nothing


def _ct_with_glands(direction=np.eye(3)) -> tuple[Volume, np.ndarray]:
    shape = (30, 80, 100)
    vol = Volume(np.full(shape, -1000, np.int16), (1.5, 1.5, 2.0), (-75.0, -60.0, 0.0), direction)
    vol.array[:, 10:70, 10:90] = 40  # body
    lab = np.zeros(shape, np.uint8)
    lab[8:20, 30:50, 15:35] = pp.RIGHT  # right gland, low i = patient's right (identity direction)
    lab[8:20, 30:50, 65:85] = pp.LEFT
    return vol, lab


def test_clean_glands_removes_voxels_across_the_midline_and_fragments_and_fills_holes():
    vol, lab = _ct_with_glands()
    truth = lab.copy()
    noisy = lab.copy()
    noisy[10:12, 35:38, 70:73] = pp.RIGHT  # a 'right' blob inside the left gland's side
    noisy[25:27, 60:62, 20:22] = pp.RIGHT  # a detached fragment on the right side
    noisy[12:14, 38:41, 22:25] = 0  # a hole inside the right gland
    out, report = clean_glands(noisy, vol)
    assert report["midline"]["method"].startswith("bisector")
    # the 'right' blob lies on the patient's left: it is relabelled left (the side comes from the geometry)
    assert report["relabelled_by_side_ml"][pp.LEFT] == pytest.approx(18 * vol.voxel_volume_mm3 / 1000)
    assert report["relabelled_by_side_ml"][pp.RIGHT] == 0.0
    assert report["removed_fragments_ml"][pp.RIGHT] == pytest.approx(8 * vol.voxel_volume_mm3 / 1000)
    assert np.array_equal(out == pp.RIGHT, truth == pp.RIGHT)
    assert np.array_equal(out == pp.LEFT, truth == pp.LEFT)


def test_sides_come_from_the_geometry_even_when_the_network_swaps_them():
    vol, lab = _ct_with_glands()
    swapped = np.where(lab == pp.RIGHT, pp.LEFT, np.where(lab == pp.LEFT, pp.RIGHT, 0)).astype(np.uint8)
    out, report = clean_glands(swapped, vol)
    assert np.array_equal(out, lab)
    assert report["relabelled_by_side_ml"][pp.RIGHT] > 0 and report["relabelled_by_side_ml"][pp.LEFT] > 0


def test_localise_sides_by_position_when_both_channels_say_right():
    g = Geometry((30, 40, 40), (4.0, 4.0, 4.0), (-80.0, 0.0, 0.0), np.eye(3))
    probs = np.zeros((3,) + g.shape, np.float32)
    probs[0] = 1.0
    for sl in (np.s_[10:15, 10:18, 5:10], np.s_[10:15, 10:18, 28:33]):
        probs[(slice(None),) + sl] = np.array([0.05, 0.9, 0.05])[:, None, None, None]
    loc = pp.localise(probs, g, pp.ParotidConfig())
    assert loc.glands[pp.LEFT].centre_lps[0] > loc.glands[pp.RIGHT].centre_lps[0] + 50
    one = probs.copy()
    one[:, 10:15, 10:18, 5:10] = np.array([1.0, 0.0, 0.0])[:, None, None, None]
    image = np.zeros(g.shape, np.float32)
    image[:, 5:35, 3:37] = 0.5  # the body, centred at i = 19.5
    loc1 = pp.localise(one, g, pp.ParotidConfig(), image)
    assert set(loc1.glands) == {pp.LEFT}  # the one region (i = 30) is left of the body centre


def test_midline_from_the_body_when_one_gland_is_found():
    vol, lab = _ct_with_glands()
    lab[lab == pp.LEFT] = 0
    mid = estimate_midline(lab, vol)
    assert mid is not None and mid.method.startswith("sagittal")
    body_centre_x = vol.index_to_lps(np.array([[49.5, 0.0, 0.0]]))[0, 0]
    assert mid.point_lps[0] == pytest.approx(body_centre_x, abs=0.01)


def test_midline_follows_a_turned_head():
    vol, lab = _ct_with_glands()
    lab[:] = 0
    lab[8:20, 20:35, 15:35] = pp.RIGHT  # right gland more anterior: the head is turned
    lab[8:20, 45:60, 65:85] = pp.LEFT
    mid = estimate_midline(lab, vol)
    assert mid.normal_lps[1] > 0.2 and mid.normal_lps[0] > 0.5 and mid.normal_lps[2] == 0.0


def test_ct_check_refuses_mr_raw_and_normalised_images():
    rng = np.random.default_rng(0)
    ct = Volume(np.where(rng.random((20, 30, 30)) < 0.3, -1000, 40).astype(np.int16))
    check_ct_hu(ct)
    with pytest.raises(InputError, match="Hounsfield"):
        check_ct_hu(Volume(rng.uniform(0, 800, (20, 30, 30)).astype(np.float32)))  # MR-like
    with pytest.raises(InputError, match="rescale"):
        check_ct_hu(ct.with_array((ct.array + 1024).astype(np.int16) * 2))  # stored values
    with pytest.raises(InputError, match="Hounsfield"):
        check_ct_hu(ct.with_array((ct.array + 1000) / 1040.0))  # normalised to [0, 1]
    with pytest.raises(InputError, match="MR image"):
        check_ct_hu(Volume(ct.array.copy(), meta={"modality": "MR"}))


def test_task_refuses_2d_small_and_coarse_volumes():
    task = get_task("parotid")
    rng = np.random.default_rng(1)
    with pytest.raises(InputError, match="2-D"):
        task.validate_inputs({"image": Volume(np.where(rng.random((1, 200, 200)) < 0.3, -1000, 40).astype(np.int16))})
    small = Volume(np.where(rng.random((20, 200, 200)) < 0.3, -1000, 40).astype(np.int16), (1.0, 1.0, 2.5))
    with pytest.raises(InputError, match="covers only 200 x 200 x 50 mm"):
        task.validate_inputs({"image": small})
    coarse = Volume(np.where(rng.random((20, 40, 40)) < 0.3, -1000, 40).astype(np.int16), (5.0, 5.0, 8.0))
    with pytest.raises(InputError, match="8.0 mm voxels"):
        task.validate_inputs({"image": coarse})
    ok = Volume(np.where(rng.random((30, 140, 140)) < 0.3, -1000, 40).astype(np.int16), (1.0, 1.0, 2.5))
    task.validate_inputs({"image": ok})
