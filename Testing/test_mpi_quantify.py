"""quantify_lv / lv_axes (mpi-myocardium) on analytic shells: volumes, mass, wall thickness at several voxel
sizes, long axis, and invariance to the grid's direction matrix."""

from __future__ import annotations

import math

import numpy as np
import pytest

from _mpi_lv_phantoms import OBLIQUE, bullet, half_ellipsoid, rotation
from MedSegAILib.core.volume import Volume
from MedSegAILib.errors import InputError
from MedSegAILib.tasks.base import Table
from MedSegAILib.tasks.mpi_myocardium.quantify import lv_axes, quantify_lv, wall_thickness_samples


def _values(table: Table) -> dict[str, float]:
    return dict(zip(table.column("Measurement"), table.column("Value")))


#: relative volume tolerance by voxel size (voxelisation error of a smooth shape grows with the voxel)
VOL_TOL = {2.0: 0.03, 4.0: 0.05, 6.0: 0.08}


def test_table_layout():
    lab, _ = bullet((4.0, 4.0, 4.0))
    tab = quantify_lv(lab)
    assert tab.name == "Left ventricle measurements"
    assert [c.name for c in tab.columns] == ["Measurement", "Value", "Unit", "Note"]
    assert tab.column("Measurement")[:6] == [
        "Myocardial volume", "Myocardial mass", "LV cavity volume", "Mean wall thickness", "Wall thickness SD",
        "LV long-axis length",
    ]
    assert tab.column("Unit")[:6] == ["mL", "g", "mL", "mm", "mm", "mm"]
    assert "Myocardial volume" in tab.to_csv()


@pytest.mark.parametrize("voxel", [2.0, 4.0, 6.0])
@pytest.mark.parametrize("shape", ["bullet", "half_ellipsoid"])
def test_volumes_match_analytic_values(voxel, shape):
    make = bullet if shape == "bullet" else half_ellipsoid
    lab, truth = make((voxel,) * 3, direction=OBLIQUE, jitter=(0.37 * voxel, -0.21 * voxel, 0.11 * voxel))
    v = _values(quantify_lv(lab))
    tol = VOL_TOL[voxel]
    assert v["Myocardial volume"] == pytest.approx(truth["myo_ml"], rel=tol)
    assert v["LV cavity volume"] == pytest.approx(truth["cavity_ml"], rel=tol)
    assert v["LV long-axis length"] == pytest.approx(truth["length_mm"], abs=0.5 * voxel)


def test_mass_is_density_times_volume():
    lab, _ = bullet((4.0, 4.0, 4.0))
    v = _values(quantify_lv(lab, density_g_per_ml=1.10))
    assert v["Myocardial mass"] == pytest.approx(1.10 * v["Myocardial volume"], rel=1e-12)
    v = _values(quantify_lv(lab))  # default 1.05 g/mL
    assert v["Myocardial mass"] == pytest.approx(1.05 * v["Myocardial volume"], rel=1e-12)
    # the count itself: exact voxel count x voxel volume
    assert v["Myocardial volume"] == pytest.approx(np.count_nonzero(lab.array == 1) * 64.0 / 1000.0)


@pytest.mark.parametrize("voxel", [2.0, 4.0, 6.0])
@pytest.mark.parametrize("oblique", [False, True])
def test_wall_thickness_of_a_10_mm_shell(voxel, oblique):
    """A bullet shell (exactly 10 mm everywhere): mean within 0.75 mm at 2, 4 and 6 mm voxels.

    (Twice the distance transform on the medial surface would be biased by up to a voxel here.)"""
    lab, _ = bullet((voxel,) * 3, wall=10.0, direction=OBLIQUE if oblique else np.eye(3),
                    jitter=(0.3 * voxel, 0.1 * voxel, -0.2 * voxel))
    v = _values(quantify_lv(lab))
    assert v["Mean wall thickness"] == pytest.approx(10.0, abs=0.75)
    assert v["Wall thickness SD"] < 0.2 * voxel + 0.3  # a uniform wall: only voxelisation noise


@pytest.mark.parametrize("wall", [7.0, 14.0])
def test_wall_thickness_follows_the_true_thickness(wall):
    lab, _ = bullet((3.0, 3.0, 3.0), wall=wall, direction=OBLIQUE)
    assert float(np.mean(wall_thickness_samples(lab))) == pytest.approx(wall, abs=0.75)


@pytest.mark.parametrize("spacing", [(3.0, 3.0, 6.0), (6.0, 4.0, 2.5)])
def test_wall_thickness_with_anisotropic_voxels(spacing):
    lab, _ = bullet(spacing, wall=10.0, jitter=(0.5, 0.7, 0.3))
    assert float(np.mean(wall_thickness_samples(lab))) == pytest.approx(10.0, abs=1.0)


def test_same_numbers_for_any_direction_matrix():
    """The same voxel array with a rotated geometry (direction and origin): identical numbers, rotated axes."""
    lab, _ = half_ellipsoid((4.0, 4.0, 4.0))
    rot = rotation([0.3, -1.0, 0.8], 71.0)
    moved = Volume(lab.array, lab.spacing, tuple(rot @ np.asarray(lab.origin)), rot @ lab.direction)
    assert moved.is_oblique
    a, b = _values(quantify_lv(lab)), _values(quantify_lv(moved))
    for k in a:
        assert b[k] == pytest.approx(a[k], rel=1e-9, abs=1e-9), k
    ax_a, ax_b = lv_axes(lab), lv_axes(moved)
    np.testing.assert_allclose(ax_b.long_axis, rot @ ax_a.long_axis, atol=1e-9)
    np.testing.assert_allclose(ax_b.centre_lps, rot @ ax_a.centre_lps, atol=1e-6)
    assert ax_b.length_mm == pytest.approx(ax_a.length_mm)


def test_same_physical_heart_on_an_oblique_grid():
    """The same physical LV sampled on axis-aligned and oblique grids: numbers agree within voxelisation error."""
    a = _values(quantify_lv(half_ellipsoid((4.0, 4.0, 4.0))[0]))
    b = _values(quantify_lv(half_ellipsoid((4.0, 4.0, 4.0), direction=OBLIQUE, jitter=(1.3, -0.7, 2.1))[0]))
    for k in ("Myocardial volume", "LV cavity volume"):
        assert b[k] == pytest.approx(a[k], rel=0.03)
    assert b["Mean wall thickness"] == pytest.approx(a["Mean wall thickness"], abs=0.5)
    assert b["LV long-axis length"] == pytest.approx(a["LV long-axis length"], abs=2.0)


@pytest.mark.parametrize(
    "make,kw",
    [(bullet, {}), (half_ellipsoid, {}), (half_ellipsoid, {"a": 30.0, "c": 35.0}), (half_ellipsoid, {"a": 20.0, "c": 45.0})],
    ids=["bullet", "ellipsoid", "short-wide", "narrow"],
)
@pytest.mark.parametrize("direction", ["identity", "oblique"])
def test_lv_axes(make, kw, direction):
    """Long axis within 5 degrees, base -> apex, frame orthonormal, septal toward the patient's right."""
    lab, truth = make((4.0, 4.0, 4.0), direction=OBLIQUE if direction == "oblique" else np.eye(3), **kw)
    ax = lv_axes(lab)
    assert math.degrees(math.acos(min(1.0, float(ax.long_axis @ truth["axis"])))) < 5.0
    frame = np.stack([ax.long_axis, ax.anterior, ax.septal])
    np.testing.assert_allclose(frame @ frame.T, np.eye(3), atol=1e-9)
    assert ax.anterior @ np.array([0.0, -1.0, 0.0]) > 0  # anterior = -y projected
    assert ax.septal @ np.array([-1.0, 0.0, 0.0]) > 0  # toward the patient's right
    # the base point lies on the base plane, the apex at the epicardial apex
    assert float((ax.base_lps - truth["base"]) @ truth["axis"]) == pytest.approx(0.0, abs=3.0)
    assert ax.length_mm == pytest.approx(truth["length_mm"], abs=3.0)


def test_lv_axes_apex_toward_the_closed_end_even_when_pointing_right():
    # Apex toward the patient's right (dextrocardia-like): the sign comes from the anatomy of the label map,
    # not from the "apex to the left" prior.
    axis = np.array([-0.7, -0.3, -0.6])
    lab, truth = bullet((4.0, 4.0, 4.0), axis=axis)
    ax = lv_axes(lab)
    assert ax.long_axis @ truth["axis"] > 0.99
    assert not ax.notes


def test_image_row_and_empty_or_cavityless_labels():
    lab, _ = bullet((4.0, 4.0, 4.0))
    img = lab.with_array(np.where(lab.array == 1, 80.0, 3.0).astype(np.float32))
    v = _values(quantify_lv(lab, img))
    assert v["Mean myocardial intensity"] == pytest.approx(80.0)

    no_cav = lab.with_array(np.where(lab.array == 2, 0, lab.array).astype(np.uint8))
    v = _values(quantify_lv(no_cav))
    assert math.isnan(v["Mean wall thickness"]) and v["LV cavity volume"] == 0.0
    assert v["Myocardial volume"] > 0

    empty = lab.with_array(np.zeros(lab.shape, np.uint8))
    v = _values(quantify_lv(empty))
    assert v["Myocardial volume"] == 0.0 and math.isnan(v["LV long-axis length"])
    with pytest.raises(InputError):
        lv_axes(empty)
