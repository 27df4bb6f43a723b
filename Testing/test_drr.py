"""Cone-beam DRR projector: analytic line integrals, perspective, geometry invariance, label paths, radiograph."""

from __future__ import annotations

import math

import numpy as np
import pytest

from MedSegAILib.core.volume import Volume, random_rotation
from MedSegAILib.errors import InputError
from MedSegAILib.simulate.drr import (ConeBeamGeometry, hu_to_mu, pose_geometry, project, project_labels,
                                      radiograph, random_geometry, resolve_overlaps)


def _grid(center, half_extent_mm, spacing, direction=None):
    """A grid of the given spacing and direction covering a cube of half-size half_extent_mm around center."""
    direction = np.eye(3) if direction is None else np.asarray(direction)
    spacing = np.asarray(spacing, float)
    n = np.ceil(2 * half_extent_mm / spacing).astype(int) + 1
    origin = np.asarray(center) - direction @ (spacing * (n - 1) / 2.0)
    return Volume(np.zeros(n[::-1], np.float32), tuple(spacing), tuple(origin), direction)


def _points(vol):
    k, j, i = np.meshgrid(*[np.arange(s) for s in vol.shape], indexing="ij")
    ijk = np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1)
    return vol.index_to_lps(ijk).reshape(vol.shape + (3,))


def _gaussian_volume(center, sigma, spacing, direction=None):
    vol = _grid(center, 4.5 * sigma, spacing, direction)
    d2 = np.sum((_points(vol) - np.asarray(center)) ** 2, axis=-1)
    return vol.with_array(np.exp(-d2 / (2 * sigma**2)).astype(np.float32))


def _gaussian_line_integrals(geom, center, sigma):
    """Exact integral of exp(-|x-c|^2/2s^2) along each source->pixel line (the blob lies between them)."""
    pix = geom.pixel_centers_lps()
    src = np.asarray(geom.source)
    d = pix - src
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    w = np.asarray(center) - src
    t = d @ w
    dist2 = np.sum(w**2) - t**2
    return sigma * math.sqrt(2 * math.pi) * np.exp(-dist2 / (2 * sigma**2))


# ------------------------------------------------------------------------------------------------ geometry
def test_pose_geometry_conventions_and_roundtrip():
    c = np.array([10.0, -20.0, 30.0])
    g = pose_geometry(c, view=(0, 1, 0), up=(0, 0, 1), sdd_mm=1000, sod_mm=950, pixel_size_mm=(0.4, 0.6),
                      shape=(30, 40))
    assert np.allclose(g.u, (1, 0, 0)) and np.allclose(g.v, (0, 0, -1))  # AP: patient left to the right, head up
    assert np.allclose(g.normal, (0, 1, 0))
    assert g.sdd == pytest.approx(1000.0)
    assert np.linalg.norm(c - np.asarray(g.source)) == pytest.approx(950.0)
    assert g.magnification(c) == pytest.approx(1000 / 950)
    g2 = ConeBeamGeometry.from_dict(g.to_dict())
    assert np.allclose(g2.pixel_centers_lps(), g.pixel_centers_lps())
    # rotations keep an orthonormal right-handed frame and keep the isocentre on the central ray at SOD
    g3 = pose_geometry(c, in_plane_deg=30, tilt_deg=(8, -6), sdd_mm=1100, sod_mm=1050, shape=(31, 31))
    frame = np.stack([g3.u, g3.v, g3.normal], axis=1)
    assert np.allclose(frame.T @ frame, np.eye(3), atol=1e-9) and np.linalg.det(frame) == pytest.approx(1.0)
    central = g3.pixel_centers_lps()[15, 15]
    ray = (central - np.asarray(g3.source)) / np.linalg.norm(central - np.asarray(g3.source))
    assert np.allclose(np.asarray(g3.source) + 1050 * ray, c, atol=1e-6)
    assert np.dot(g3.normal, (0, 1, 0)) == pytest.approx(math.cos(math.radians(8)) * math.cos(math.radians(6)),
                                                         abs=1e-9)
    # in-plane +90 deg: the column axis turns into the old row axis
    g4 = pose_geometry(c, in_plane_deg=90)
    assert np.allclose(g4.u, (0, 0, -1), atol=1e-12)


def test_random_geometry_ranges_and_determinism():
    c = np.zeros(3)
    gs = [random_geometry(np.random.default_rng(s), c) for s in range(20)]
    for g in gs:
        assert 900 <= g.sdd <= 1200
        iso_det = g.sdd - np.dot(c - np.asarray(g.source), g.normal)
        assert 20 - 10 <= iso_det <= 60 + 10  # isocentre offset of up to 5 mm per axis
        assert math.degrees(math.acos(np.dot(g.normal, (0, 1, 0)))) <= 15.0
    a = random_geometry(np.random.default_rng(7), c)
    b = random_geometry(np.random.default_rng(7), c)
    assert a == b


def test_image_volume_geometry():
    g = pose_geometry((5, 6, 7), in_plane_deg=17, tilt_deg=(3, 4), pixel_size_mm=(0.3, 0.7), shape=(12, 20))
    img = np.arange(240, dtype=np.float32).reshape(12, 20)
    vol = g.image_volume(img)
    assert vol.shape == (1, 12, 20) and vol.spacing == pytest.approx((0.3, 0.7, 1.0))
    centers = g.pixel_centers_lps()
    for r, c in [(0, 0), (11, 19), (5, 3)]:
        assert np.allclose(vol.index_to_lps([c, r, 0])[0], centers[r, c], atol=1e-9)
        assert vol.array[0, r, c] == img[r, c]
    assert np.allclose(vol.direction[:, 2], g.normal)


# ------------------------------------------------------------------------------------------------ projector
def test_box_chord_and_parallel_limit():
    # a box of mu = 0.02/mm, faces on voxel boundaries (the trilinear integral is exact there);
    # spacing (si, sj, sk) = (0.5, 0.75, 0.8): 40 i-voxels = 20 mm (x), 40 j-voxels = 30 mm (y), 20 k-voxels = 16 mm (z)
    arr = np.zeros((40, 50, 60), np.float32)
    arr[10:30, 5:45, 10:50] = 0.02
    vol = Volume(arr, (0.5, 0.75, 0.8), (-20.0, -15.0, -10.0))
    center = vol.index_to_lps([29.5, 24.5, 19.5])[0]
    # huge SDD: parallel beam along +y; every pixel inside the 20 x 16 mm shadow integrates 30 mm
    g = pose_geometry(center, sdd_mm=1e6, sod_mm=1e6 - 100, pixel_size_mm=1.0, shape=(21, 21))
    p = project(vol, g)
    assert p[10, 10] == pytest.approx(0.02 * 30.0, rel=1e-3)
    assert np.allclose(p[3:18, 1:20], 0.6, rtol=2e-3)  # rows z = +7..-7 mm, columns x = -9..9 mm
    assert np.all(p[:2] == 0) and np.all(p[19:] == 0)  # |z| >= 9 mm: outside the shadow
    # pixels exactly on the shadow edge (x = +-10 mm, z = +-8 mm) see half the box: zero outside, voxel centres
    assert p[10, 0] == pytest.approx(0.3, rel=1e-2) and p[2, 10] == pytest.approx(0.3, rel=1e-2)
    # lateral view (along -x), with perspective: central-ray chord 20 mm
    g2 = pose_geometry(center, view=(-1, 0, 0), sdd_mm=1000, sod_mm=950, pixel_size_mm=0.5, shape=(11, 11))
    assert project(vol, g2)[5, 5] == pytest.approx(0.02 * 20.0, rel=1e-3)


def test_sphere_central_chord():
    # partial-volume sphere (4^3 supersampling), radius 12 mm, mu 0.03/mm; central chord 24 mm
    vol = _grid((1.0, 2.0, 3.0), 14.0, (0.5, 0.5, 0.5))
    pts = _points(vol)
    sub = (np.arange(4) + 0.5) / 4 - 0.5
    frac = np.zeros(vol.shape, np.float32)
    for a in sub:
        for b in sub:
            for c in sub:
                q = pts + 0.5 * np.array([a, b, c])
                frac += (np.sum((q - (1.0, 2.0, 3.0)) ** 2, axis=-1) <= 144.0)
    vol = vol.with_array(0.03 * frac / 64.0)
    g = pose_geometry((1.0, 2.0, 3.0), view=(1, 1, 1), up=(0, 0, 1), sdd_mm=900, sod_mm=850, shape=(9, 9))
    assert project(vol, g)[4, 4] == pytest.approx(0.03 * 24.0, rel=0.01)


def test_perspective_magnification_of_a_small_ball():
    sigma = 1.5
    center = (3.0, -4.0, 2.0)
    vol = _gaussian_volume(center, sigma, (0.3, 0.3, 0.3))
    g = pose_geometry(center, sdd_mm=1000, sod_mm=500, pixel_size_mm=0.25, shape=(81, 81))
    p = project(vol, g, step_mm=0.1)
    # total shadow "mass": integral of f over space, times M^2 (area magnification)
    mass = (2 * math.pi) ** 1.5 * sigma**3
    m2 = p.sum() * 0.25 * 0.25 / mass
    assert math.sqrt(m2) == pytest.approx(2.0, rel=0.01)
    # shadow width: second moment of the shadow = (M sigma)^2
    rr, cc = np.mgrid[0:81, 0:81]
    var = np.sum(p * ((cc - 40) ** 2)) / p.sum() * 0.25**2
    assert math.sqrt(var) == pytest.approx(2.0 * sigma, rel=0.02)


@pytest.mark.parametrize("case", ["anisotropic", "oblique", "flipped"])
def test_geometry_invariance_against_analytic_gaussian(case):
    """The same physical blob on different grids projects to the analytic line integral (geometry is sacred)."""
    center, sigma = (12.0, -7.0, 25.0), 5.0
    if case == "anisotropic":
        vol = _gaussian_volume(center, sigma, (0.6, 0.9, 1.2))
    elif case == "oblique":
        vol = _gaussian_volume(center, sigma, (0.8, 0.7, 1.0), random_rotation(np.random.default_rng(3)))
    else:
        vol = _gaussian_volume(center, sigma, (0.8, 0.8, 0.8), np.diag([-1.0, 1.0, -1.0])[:, [1, 0, 2]])
    g = pose_geometry(center, view=(0.3, 1.0, -0.2), in_plane_deg=25, tilt_deg=(5, -7), sdd_mm=1000,
                      sod_mm=960, pixel_size_mm=0.8, shape=(31, 37))
    g = ConeBeamGeometry(g.source, np.asarray(g.detector_center) + 3.0 * np.asarray(g.u), g.u, g.v,
                         g.pixel_size, g.shape)  # off-centre detector
    p = project(vol, g, step_mm=0.2)
    ref = _gaussian_line_integrals(g, center, sigma)
    assert np.abs(p - ref).max() < 0.01 * ref.max()
    assert np.unravel_index(np.argmax(p), p.shape) == np.unravel_index(np.argmax(ref), ref.shape)


def test_ray_clipping_source_inside_and_empty():
    vol = Volume(np.ones((10, 10, 10), np.float32), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    # rays that miss the box give exactly 0
    g = pose_geometry((100.0, 100.0, 100.0), shape=(5, 5))
    assert np.all(project(vol, g) == 0)
    # detector plane cutting the volume: only the part between source and pixel counts
    g2 = ConeBeamGeometry((4.5, -500.0, 4.5), (4.5, 4.5, 4.5), (1, 0, 0), (0, 0, -1), (1.0, 1.0), (1, 1))
    # from y = -0.5 to y = 4.5; on the half voxel -0.5..0 the trilinear value ramps 0.5 -> 1 (zero outside)
    assert project(vol, g2, step_mm=0.01)[0, 0] == pytest.approx(0.375 + 4.5, rel=1e-3)


def test_hu_to_mu():
    mu = hu_to_mu(np.array([-1000.0, -2000.0, 0.0, 1000.0]))
    assert np.allclose(mu, [0.0, 0.0, 0.0206, 0.0412])
    assert hu_to_mu(np.array([1000.0]), bone_slope=1.5)[0] == pytest.approx(0.0206 * 2.5)
    assert hu_to_mu(np.array([-500.0]), bone_slope=1.5)[0] == pytest.approx(0.0103)


# ------------------------------------------------------------------------------------------------ labels
def test_label_paths_and_overlap_rule():
    lab = np.zeros((20, 60, 20), np.uint8)  # k, j (depth along the beam), i
    lab[5:15, 10:40, 5:15] = 1  # 30 voxels deep -> 30 mm
    lab[5:15, 45:55, 8:18] = 2  # 10 mm deep, behind label 1, shifted in i
    vol = Volume(lab, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    center = vol.index_to_lps([9.5, 29.5, 9.5])[0]
    g = pose_geometry(center, sdd_mm=1e6, sod_mm=1e6 - 100, pixel_size_mm=1.0, shape=(20, 20))
    paths = project_labels(vol, g, 3, step_mm=0.25)
    assert paths.shape == (4, 20, 20) and paths.dtype == np.float32
    # columns: pixel c sits at i = c - 0.5 ... detector is centred at i = 9.5 -> pixel c at i = c - 0.5 + 0.5
    r = 10
    assert paths[1, r, 10] == pytest.approx(30.0, abs=0.3)
    assert paths[2, r, 10] == pytest.approx(10.0, abs=0.3)
    assert paths[3].max() == 0.0
    assert paths[:, r, 10].sum() == pytest.approx(60.0, abs=0.3)  # whole depth of the grid
    seg = resolve_overlaps(paths, min_path_mm=1.0)
    assert seg.dtype == np.uint8 and set(np.unique(seg)) <= {0, 1, 2}
    assert seg[r, 10] == 1  # overlap: the thicker bone wins (the public code took the front-most)
    assert seg[r, 16] == 2 and seg[r, 2] == 0 and seg[2, 10] == 0
    ign = resolve_overlaps(paths, min_path_mm=1.0, ignore=(1,))
    assert ign[r, 10] == 2 and ign[r, 6] == 0  # label 1 is background and hides nothing
    assert resolve_overlaps(paths, min_path_mm=12.0)[r, 16] == 0  # 10 mm path below the threshold
    # swap thicknesses: now label 2 wins where they overlap
    lab2 = lab.copy()
    lab2[lab == 1] = 0
    lab2[5:15, 35:40, 5:15] = 1
    assert resolve_overlaps(project_labels(Volume(lab2, vol.spacing), g, 2))[r, 10] == 2


def test_label_input_checks():
    vol = Volume(np.full((4, 4, 4), 1.5, np.float32))
    g = pose_geometry((1.5, 1.5, 1.5), shape=(3, 3))
    with pytest.raises(InputError, match="integer"):
        project_labels(vol, g, 2)
    with pytest.raises(InputError, match="0..2"):
        project_labels(Volume(np.full((4, 4, 4), 5, np.int16)), g, 2)
    with pytest.raises(InputError):
        project(Volume(np.full((4, 4, 4), np.nan, np.float32)), g)


# ------------------------------------------------------------------------------------------------ radiograph
def test_radiograph_monotone_range_reproducible():
    ramp = np.tile(np.linspace(0.0, 4.0, 64), (48, 1))
    img = radiograph(ramp, np.random.default_rng(0), noise=False, scatter_fraction=0.0, blur_mm=0.0)
    assert img.dtype == np.float32 and img.min() >= 0.0 and img.max() <= 1.0
    assert np.all(np.diff(img[24]) >= 0) and img[24, -1] > img[24, 0] + 0.9  # more mu -> brighter
    a = radiograph(ramp, np.random.default_rng(5))
    b = radiograph(ramp, np.random.default_rng(5))
    c = radiograph(ramp, np.random.default_rng(6))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert 0.0 <= a.min() and a.max() <= 1.0
    assert np.corrcoef(a.ravel(), ramp.ravel())[0, 1] > 0.95  # noisy, scattered, still monotone on average
    # extreme attenuation and zero attenuation do not overflow or produce NaN
    ext = radiograph(np.array([[0.0, 50.0], [1e3, 2.0]]), np.random.default_rng(1), pixel_size=0.5)
    assert np.all(np.isfinite(ext)) and ext.min() >= 0 and ext.max() <= 1


# ------------------------------------------------------------------------------------------------ pairs + CLI
def _tiny_case(tmp_path):
    from MedSegAILib.core.io import write_volume

    k, j, i = np.mgrid[0:36, 0:30, 0:32]
    hu = np.full((36, 30, 32), -1000.0, np.float32)
    hu[((i - 16) ** 2 + (j - 15) ** 2) < 13**2] = 40.0  # soft-tissue cylinder along z
    lab = np.zeros(hu.shape, np.uint8)
    lab[10:20, 10:20, 8:14] = 1
    lab[10:20, 10:20, 18:24] = 2
    lab[22:32, 12:18, 12:20] = 11  # a "metacarpal", background for the network
    hu[lab > 0] = 1200.0
    spacing, origin = (0.8, 0.8, 1.0), (-10.0, 5.0, 20.0)
    ct_p, lab_p = tmp_path / "ct.nii.gz", tmp_path / "lab.nrrd"
    write_volume(Volume(hu, spacing, origin), ct_p)
    write_volume(Volume(lab, spacing, origin), lab_p)
    return ct_p, lab_p


def test_drr_cli_writes_consistent_pairs(tmp_path):
    import json

    from PIL import Image

    from MedSegAILib.cli import main
    from MedSegAILib.core.io import read_volume

    ct_p, lab_p = _tiny_case(tmp_path)
    out = tmp_path / "out"
    rc = main(["drr", str(ct_p), str(lab_p), "-o", str(out), "--n", "2", "--size", "48", "--pixel-mm", "0.8",
               "--ignore-labels", "11", "--on-top-labels", "2", "--seed", "3", "-q"])
    assert rc == 0
    meta = json.loads((out / "drr.json").read_text())
    assert meta["seed"] == 3 and meta["ignore_labels"] == [11] and "longest path" in meta["overlap_rule"]
    assert meta["on_top_labels"] == [2]
    assert len(meta["projections"]) == 2
    for rec in meta["projections"]:
        img = read_volume(out / rec["image"])
        lab = read_volume(out / rec["label"])
        assert img.same_geometry(lab) and img.shape == (1, 48, 48)
        g = ConeBeamGeometry.from_dict(rec["geometry"])
        assert np.allclose(img.origin, g.pixel_centers_lps()[0, 0], atol=1e-3)
        assert 900 <= g.sdd <= 1200
        a, lv = img.array[0], lab.array[0]
        assert a.min() >= 0 and a.max() <= 1
        assert set(np.unique(lv)) <= {0, 1, 2} and {1, 2} <= set(np.unique(lv))  # 11 ignored, both bones seen
        assert a[lv > 0].mean() > a[lv == 0].mean() + 0.2  # bone is bright
        png = np.asarray(Image.open(out / rec["label_png"]))
        assert png.dtype == np.uint8 and np.array_equal(png, lv)
        dpng = np.asarray(Image.open(out / rec["image_png"]))
        assert np.abs(dpng.astype(float) / 255 - a).max() <= 0.5 / 255 + 1e-6
    # same seed -> same images
    out2 = tmp_path / "out2"
    assert main(["drr", str(ct_p), str(lab_p), "-o", str(out2), "--n", "2", "--size", "48", "--pixel-mm", "0.8",
                 "--ignore-labels", "11", "--seed", "3", "-q"]) == 0
    assert np.array_equal(read_volume(out / "drr_001.nrrd").array, read_volume(out2 / "drr_001.nrrd").array)


def test_drr_cli_refuses_bad_input(tmp_path, capsys):
    from MedSegAILib.cli import main
    from MedSegAILib.core.io import write_volume

    ct_p, lab_p = _tiny_case(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "x.txt").write_text("x")
    assert main(["drr", str(ct_p), str(lab_p), "-o", str(out), "-q"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    empty = tmp_path / "empty.nrrd"
    write_volume(Volume(np.zeros((36, 30, 32), np.uint8), (0.8, 0.8, 1.0), (-10.0, 5.0, 20.0)), empty)
    assert main(["drr", str(ct_p), str(empty), "-o", str(tmp_path / "o2"), "-q"]) == 2
    assert "empty" in capsys.readouterr().err
    flat = tmp_path / "flat.nrrd"
    write_volume(Volume(np.zeros((1, 30, 32), np.float32)), flat)
    assert main(["drr", str(flat), str(lab_p), "-o", str(tmp_path / "o3"), "-q"]) == 2
    assert "3-D" in capsys.readouterr().err
    far = tmp_path / "far.nrrd"
    write_volume(Volume(np.ones((5, 5, 5), np.uint8), (1, 1, 1), (900.0, 900.0, 900.0)), far)
    assert main(["drr", str(ct_p), str(far), "-o", str(tmp_path / "o4"), "-q"]) == 2
    assert "overlap" in capsys.readouterr().err


def test_make_drr_pairs_resamples_labels_nearest(tmp_path):
    import json

    from MedSegAILib.core.resample import resample_volume
    from MedSegAILib.simulate.drr import make_drr_pairs

    from MedSegAILib.core.io import read_volume

    ct_p, lab_p = _tiny_case(tmp_path)
    ct, lab = read_volume(ct_p), read_volume(lab_p)
    fine = resample_volume(lab, spacing=(0.4, 0.4, 0.5), interpolation="nearest")
    make_drr_pairs(ct, fine, tmp_path / "r", n=1, rng=1, size=32, pixel_mm=1.0)
    meta = json.loads((tmp_path / "r" / "drr.json").read_text())
    assert "nearest" in meta["labels_grid"]
    lv = read_volume(tmp_path / "r" / "label_000.nrrd").array
    assert set(np.unique(lv)) <= {0, 1, 2, 11} and lv.dtype == np.uint8


def test_on_top_bone_is_drawn_whole():
    """A small bone over a thicker one keeps its whole outline with ``on_top``; without it, only what sticks out."""
    from MedSegAILib.simulate.drr import resolve_overlaps

    paths = np.zeros((4, 8, 8), np.float32)
    paths[1, 2:8, 2:8] = 12.0  # thick bone 1
    paths[2, 0:5, 0:5] = 8.0  # smaller bone 2 over it
    plain = resolve_overlaps(paths)
    assert (plain == 2).sum() == 25 - 9 and (plain == 1).sum() == 36
    top = resolve_overlaps(paths, on_top=(2,))
    assert (top == 2).sum() == 25 and (top == 1).sum() == 36 - 9
    assert (resolve_overlaps(paths, on_top=(2,), ignore=(2,)) == 2).sum() == 0
