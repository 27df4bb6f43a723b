"""Analytic left-ventricle phantoms for the mpi-myocardium post-processing / quantification / polar-map tests.

Each phantom is defined in LPS millimetres by its base-plane centre ``base`` and its unit long axis ``axis``
(base -> apex), then sampled at the voxel centres of a grid with any spacing and direction matrix. The label map
uses 0 background, 1 myocardium, 2 cavity; the base (t = 0) is open.

* :func:`bullet` -- the "bullet" LV: a cylinder of length ``cyl_len`` capped by a hemisphere. The myocardium is
  the region between two capsules of radii ``r_in`` and ``r_in + wall``: offset surfaces, so the wall
  thickness is exactly ``wall`` everywhere, and the volumes are known in closed form.
* :func:`half_ellipsoid` -- a truncated prolate ellipsoidal shell (inner semi-axes ``a`` radial, ``c`` axial,
  outer ones + ``wall``), cut at its equator.
"""

from __future__ import annotations

import math

import numpy as np

from MedSegAILib.core.volume import Volume

LV_AXIS = np.array([0.6, -0.45, -0.65]) / np.linalg.norm([0.6, -0.45, -0.65])  # apex left, anterior, inferior


def rotation(axis, angle_deg: float) -> np.ndarray:
    """Rotation matrix (Rodrigues) about ``axis`` by ``angle_deg``."""
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    t = math.radians(angle_deg)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + math.sin(t) * k + (1 - math.cos(t)) * (k @ k)


OBLIQUE = rotation([1.0, 2.0, -0.5], 37.0)


def grid_points(center, half_extent: float, spacing, direction=np.eye(3), jitter=(0.0, 0.0, 0.0)):
    """A grid covering a cube of half side ``half_extent`` around ``center``; returns (Volume template, LPS pts)."""
    spacing = np.asarray(spacing, float)
    direction = np.asarray(direction, float)
    n = np.ceil(2 * half_extent / spacing).astype(int) + 1  # (ni, nj, nk)
    origin = np.asarray(center, float) - direction @ (spacing * (n - 1) / 2.0) + np.asarray(jitter, float)
    k, j, i = np.meshgrid(np.arange(n[2]), np.arange(n[1]), np.arange(n[0]), indexing="ij")
    ijk = np.stack([i, j, k], axis=-1).astype(float)  # [k, j, i, 3]
    pts = ijk @ (direction @ np.diag(spacing)).T + origin
    tmpl = Volume(np.zeros(k.shape, np.uint8), tuple(spacing), tuple(origin), direction)
    return tmpl, pts


def lv_coords(pts, base, axis):
    """(t along the axis from the base plane, radial distance from the axis, in-plane offset vectors)."""
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    rel = pts - np.asarray(base, float)
    t = rel @ axis
    perp = rel - t[..., None] * axis
    return t, np.linalg.norm(perp, axis=-1), perp


def bullet(spacing, *, r_in=25.0, wall=10.0, cyl_len=45.0, axis=LV_AXIS, base=(10.0, -5.0, 20.0),
           direction=np.eye(3), jitter=(0.0, 0.0, 0.0)):
    """Bullet LV (see the module docstring). Returns (labels Volume, dict of analytic values)."""
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    base = np.asarray(base, float)
    r_out = r_in + wall
    length = cyl_len + r_out
    center = base + axis * length / 2
    tmpl, pts = grid_points(center, math.hypot(length / 2, r_out) + 10.0, spacing, direction, jitter)
    t, rho, _ = lv_coords(pts, base, axis)
    cap_center = base + cyl_len * axis
    dist = np.where(t <= cyl_len, rho, np.linalg.norm(pts - cap_center, axis=-1))
    lab = np.zeros(t.shape, np.uint8)
    lab[(t >= 0) & (dist < r_out)] = 1
    lab[(t >= 0) & (dist < r_in)] = 2
    cav = math.pi * r_in**2 * cyl_len + 2 / 3 * math.pi * r_in**3
    lv = math.pi * r_out**2 * cyl_len + 2 / 3 * math.pi * r_out**3
    truth = {"cavity_ml": cav / 1000, "myo_ml": (lv - cav) / 1000, "wall_mm": wall, "length_mm": length,
             "axis": axis, "base": base}
    return tmpl.with_array(lab), truth


def half_ellipsoid(spacing, *, a=25.0, c=60.0, wall=10.0, axis=LV_AXIS, base=(10.0, -5.0, 20.0),
                   direction=np.eye(3), jitter=(0.0, 0.0, 0.0)):
    """Truncated prolate ellipsoidal shell, open at t = 0. Returns (labels Volume, dict of analytic values)."""
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    base = np.asarray(base, float)
    ao, co = a + wall, c + wall
    center = base + axis * co / 2
    tmpl, pts = grid_points(center, math.hypot(co / 2, ao) + 10.0, spacing, direction, jitter)
    t, rho, _ = lv_coords(pts, base, axis)
    inner = (rho / a) ** 2 + (t / c) ** 2 < 1
    outer = (rho / ao) ** 2 + (t / co) ** 2 < 1
    lab = np.zeros(t.shape, np.uint8)
    lab[(t >= 0) & outer] = 1
    lab[(t >= 0) & inner] = 2
    cav = 2 / 3 * math.pi * a * a * c
    lv = 2 / 3 * math.pi * ao * ao * co
    truth = {"cavity_ml": cav / 1000, "myo_ml": (lv - cav) / 1000, "length_mm": co, "axis": axis, "base": base,
             "cavity_end": c}
    return tmpl.with_array(lab), truth


def patient_frame(axis):
    """The short-axis reference directions as the patient axes define them: anterior = -y (LPS) projected onto
    the short-axis plane; septal = the in-plane direction perpendicular to it, toward the patient's right (-x)."""
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    ant = np.array([0.0, -1.0, 0.0])
    ant = ant - (ant @ axis) * axis
    ant /= np.linalg.norm(ant)
    right = np.array([-1.0, 0.0, 0.0])
    sep = right - (right @ axis) * axis - (right @ ant) * ant
    return ant, sep / np.linalg.norm(sep)


def perfusion_image(grid: Volume, truth: dict, *, a=25.0, c=60.0, wall=10.0, sigma=6.0, defect=None) -> Volume:
    """A smooth (not voxelised) perfusion image for :func:`half_ellipsoid` geometry.

    Uptake 100 on the mid-wall ellipsoid, Gaussian fall-off (``sigma`` mm, SPECT-like blur) across the wall,
    20 in the blood pool, 5 elsewhere. ``defect = (t0, t1, direction, half_angle_deg, factor)`` multiplies the
    myocardial uptake by ``factor`` between ``t0`` and ``t1`` mm from the base, within ``half_angle_deg`` of the
    in-plane ``direction``.
    """
    nk, nj, ni = grid.shape
    k, j, i = np.meshgrid(np.arange(nk), np.arange(nj), np.arange(ni), indexing="ij")
    pts = grid.index_to_lps(np.stack([i.ravel(), j.ravel(), k.ravel()], 1)).reshape(grid.shape + (3,))
    t, rho, perp = lv_coords(pts, truth["base"], truth["axis"])
    am, cm = a + wall / 2, c + wall / 2
    q = np.sqrt((rho / am) ** 2 + (np.maximum(t, 0) / cm) ** 2)
    d = (q - 1.0) * np.where(t > 0, np.hypot(am * rho / np.maximum(q * am, 1e-9), cm * np.maximum(t, 0) / np.maximum(q * cm, 1e-9)), am)
    d = np.hypot(d, np.minimum(t, 0))  # above the base plane: fall-off from the rim
    myo = np.exp(-0.5 * (d / sigma) ** 2)
    if defect is not None:
        t0, t1, direction, half_angle, factor = defect
        cosang = (perp @ np.asarray(direction, float)) / np.maximum(rho, 1e-9)
        sel = (t >= t0) & (t <= t1) & (cosang >= math.cos(math.radians(half_angle)))
        myo = np.where(sel, myo * factor, myo)
    pool = ((rho / a) ** 2 + (t / c) ** 2 < 1) & (t >= 0)
    img = 5.0 + np.maximum(100.0 * myo, np.where(pool, 15.0, 0.0))
    return grid.with_array(img.astype(np.float32))
