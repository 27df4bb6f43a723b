"""polar_map (mpi-myocardium): AHA 17-segment relative perfusion on a synthetic LV with defects in known
territories, invariance to the grid geometry, the PNG, and NaN for segments without myocardium."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image

from _mpi_lv_phantoms import OBLIQUE, half_ellipsoid, lv_coords, patient_frame, perfusion_image
from MedSegAILib.core.volume import Volume
from MedSegAILib.errors import InputError
from MedSegAILib.tasks.mpi_myocardium.polar_map import AHA_SEGMENT_NAMES, assign_segments, polar_map

C = 60.0  # inner axial semi-axis of the phantom = distance base plane -> apical end of the cavity


def _rel(table) -> np.ndarray:
    return np.array(table.column("Relative perfusion"), float)


def _phantom(spacing=(4.0, 4.0, 4.0), direction=np.eye(3), defect=None, jitter=(0.0, 0.0, 0.0)):
    lab, truth = half_ellipsoid(spacing, c=C, direction=direction, jitter=jitter)
    img = perfusion_image(lab, truth, c=C, defect=defect(truth) if defect else None)
    return img, lab, truth


def _mid_anterior(truth):
    ant, _ = patient_frame(truth["axis"])
    return (C / 3, 2 * C / 3, ant, 30.0, 0.4)


def test_names_and_table_layout():
    assert AHA_SEGMENT_NAMES[1] == "basal anterior" and AHA_SEGMENT_NAMES[6] == "basal anterolateral"
    assert AHA_SEGMENT_NAMES[9] == "mid inferoseptal" and AHA_SEGMENT_NAMES[14] == "apical septal"
    assert AHA_SEGMENT_NAMES[17] == "apex" and len(AHA_SEGMENT_NAMES) == 17
    img, lab, _ = _phantom()
    table, pic = polar_map(img, lab)
    assert [c.name for c in table.columns][:4] == ["Segment", "Name", "Relative perfusion", "Uptake"]
    assert table.columns[2].unit == "%"
    assert table.column("Segment") == list(range(1, 18))
    assert table.column("Name") == [AHA_SEGMENT_NAMES[i] for i in range(1, 18)]
    rel = _rel(table)
    assert np.nanmax(rel) == pytest.approx(100.0)
    assert all(n > 0 for n in table.column("Samples"))
    assert pic.name == "Polar map"


def test_segment_assignment_geometry():
    # (t, a, s): anterior = +a = display top, septal = +s = display left
    pts = np.array([
        [5.0, 10.0, 0.0],   # basal, anterior
        [5.0, 5.0, 8.7],    # basal, 30 deg from anterior toward septum -> anteroseptal
        [5.0, -5.0, 8.7],   # basal inferoseptal
        [30.0, -10.0, 0.0],  # mid inferior
        [30.0, -5.0, -8.7],  # mid inferolateral
        [30.0, 5.0, -8.7],  # mid anterolateral
        [50.0, 0.0, 10.0],  # apical septal
        [50.0, 0.0, -10.0],  # apical lateral
        [61.0, 1.0, 1.0],   # beyond the cavity: apex
    ])
    assert assign_segments(pts, 60.0).tolist() == [1, 2, 3, 10, 11, 12, 14, 16, 17]


@pytest.mark.parametrize("direction", ["identity", "oblique"])
def test_mid_anterior_defect(direction):
    d = OBLIQUE if direction == "oblique" else np.eye(3)
    img, lab, _ = _phantom(direction=d, defect=_mid_anterior)
    rel = _rel(polar_map(img, lab)[0])
    assert int(np.argmin(rel)) + 1 == 7  # mid anterior
    assert rel[6] < 65.0
    neighbours = {1, 7, 8, 12, 13}
    for seg in range(1, 18):
        if seg not in neighbours:
            assert rel[seg - 1] > 85.0, (seg, rel)


@pytest.mark.parametrize(
    "territory,expected",
    [
        ("septal-mid", {"mid anteroseptal", "mid inferoseptal"}),
        ("inferior-basal", {"basal inferior"}),
        ("lateral-apical", {"apical lateral"}),
    ],
)
def test_defects_land_in_the_named_territory(territory, expected):
    """Defects placed by *patient* directions (septum toward the patient's right, inferior = opposite of the
    projected anterior) show up in the AHA segments of that name."""

    def defect(truth):
        ant, sep = patient_frame(truth["axis"])
        return {
            "septal-mid": (C / 3, 2 * C / 3, sep, 60.0, 0.3),
            "inferior-basal": (0.0, C / 3, -ant, 30.0, 0.3),
            "lateral-apical": (2 * C / 3, C, -sep, 45.0, 0.3),
        }[territory]

    img, lab, _ = _phantom(direction=OBLIQUE, defect=defect)
    table = polar_map(img, lab)[0]
    rel = _rel(table)
    worst = {table.column("Name")[i] for i in np.argsort(rel)[: len(expected)]}
    assert worst == expected
    assert max(rel[[table.column("Name").index(n) for n in expected]]) < 70.0


def test_result_is_invariant_to_the_grid_geometry():
    """Same physical heart on an axis-aligned grid and on an oblique, shifted, anisotropic one."""
    img_a, lab_a, _ = _phantom(defect=_mid_anterior)
    img_b, lab_b, _ = _phantom(spacing=(3.5, 4.0, 5.0), direction=OBLIQUE, defect=_mid_anterior, jitter=(1.1, -0.6, 1.7))
    assert lab_b.is_oblique
    ra, rb = _rel(polar_map(img_a, lab_a)[0]), _rel(polar_map(img_b, lab_b)[0])
    assert np.max(np.abs(ra - rb)) < 8.0, np.round(ra - rb, 1)


def test_array_axis_order_does_not_matter():
    """The same physical image stored with its array axes permuted (and the direction columns with them)."""
    img, lab, _ = _phantom(defect=_mid_anterior)
    # permute the array axes (k, j, i) -> (i, j, k) and the direction columns accordingly: same physical image
    perm_lab = Volume(np.ascontiguousarray(np.transpose(lab.array, (2, 1, 0))), lab.spacing[::-1], lab.origin,
                      lab.direction[:, ::-1])
    perm_img = perm_lab.with_array(np.ascontiguousarray(np.transpose(img.array, (2, 1, 0))))
    np.testing.assert_allclose(_rel(polar_map(perm_img, perm_lab)[0]), _rel(polar_map(img, lab)[0]), atol=1e-6)


def test_png_decodes_with_the_expected_size(tmp_path):
    img, lab, _ = _phantom(defect=_mid_anterior)
    pic = polar_map(img, lab)[1]
    assert pic.png[:8] == b"\x89PNG\r\n\x1a\n"
    im = Image.open(io.BytesIO(pic.png))
    assert im.size == (640, 560)
    arr = np.asarray(im.convert("RGB"))
    assert arr.std() > 20  # not blank


def test_missing_segments_are_nan_never_zero():
    img, lab, truth = _phantom()
    arr = lab.array.copy()
    nk, nj, ni = arr.shape
    k, j, i = np.meshgrid(np.arange(nk), np.arange(nj), np.arange(ni), indexing="ij")
    pts = lab.index_to_lps(np.stack([i.ravel(), j.ravel(), k.ravel()], 1)).reshape(arr.shape + (3,))
    t, rho, perp = lv_coords(pts, truth["base"], truth["axis"])
    ant, sep = patient_frame(truth["axis"])
    # basal inferolateral (segment 5): display angles 300-360, i.e. between inferior and lateral; remove a
    # little more (290-370 deg, to 4 mm into the mid ring) so that no estimate of the frame finds any of it
    phi = np.degrees(np.arctan2(perp @ ant, -(perp @ sep))) % 360.0
    hole = (arr == 1) & (t < C / 3 + 4.0) & ((phi > 290.0) | (phi < 10.0))
    arr[hole] = 0
    table, pic = polar_map(img, lab.with_array(arr))
    rel = _rel(table)
    assert math.isnan(rel[4]), rel
    assert table.column("Samples")[4] == 0 and table.column("Voxels")[4] == 0
    assert np.all(np.isfinite(np.delete(rel, 4)))
    assert "5" in pic.description and "NaN" in table.description
    assert Image.open(io.BytesIO(pic.png)).size == (640, 560)


def test_mean_sampling_and_image_on_another_grid():
    img, lab, truth = _phantom(defect=_mid_anterior)
    rel_mean = _rel(polar_map(img, lab, sampling="mean")[0])
    assert int(np.argmin(rel_mean)) + 1 == 7
    # the image on a finer, different grid than the labels: sampled by interpolation
    fine = half_ellipsoid((2.5, 2.5, 2.5), c=C, direction=OBLIQUE)[0]
    img_fine = perfusion_image(fine, truth, c=C, defect=_mid_anterior(truth))
    rel = _rel(polar_map(img_fine, lab)[0])
    assert int(np.argmin(rel)) + 1 == 7 and rel[6] < 65.0


def test_no_myocardium_is_an_input_error():
    img, lab, _ = _phantom()
    with pytest.raises(InputError):
        polar_map(img, lab.with_array(np.where(lab.array == 1, 0, lab.array).astype(np.uint8)))
