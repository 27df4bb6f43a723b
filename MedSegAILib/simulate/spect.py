"""Myocardial-perfusion SPECT simulator with exact left-ventricle ground truth.

The left ventricle (LV) is a truncated prolate-ellipsoidal shell:

* local frame: ``e1`` (towards the right ventricle / septum), ``e2``, ``axis`` (base -> apex); origin at the
  centre of the endocardial ellipsoid;
* endocardium: ellipsoid with semi-axes ``(b1, b2, a)``; epicardium: ``(b1 + w, b2 + w, a + w_apex)``;
* open base: everything on the atrial side of the (slightly tilted) valve plane is cut away;
* labels: 1 = myocardium (inside the epicardium, outside the endocardium, apical side of the valve plane),
  2 = LV cavity (inside the endocardium, apical side of the valve plane).

The activity map adds perfusion defects (20-80 % reduction in contiguous wall regions), a smooth uptake
gradient, blood pool, a thin right-ventricular crescent, liver and gut uptake below the heart (sometimes
hotter than the myocardium), a body background and colder lungs. It is blurred with a Gaussian system
response (FWHM 10-16 mm), Poisson noise is drawn at clinical count densities, a reconstruction-like
post-filter is applied, and the result is scaled by an arbitrary global factor.

Images live on a native grid with 2-7 mm (near-)isotropic voxels, 32-128 voxels per side, from a tight crop
around the heart to the whole thorax, with a standard, permuted/flipped or random oblique direction matrix.
Label maps on any grid are computed from the analytic shape with sub-voxel supersampling (plurality of the
voxel volume), see :meth:`LVShape.fractions` / :meth:`LVShape.labels`.

Everything is driven by a :class:`numpy.random.Generator`: the same seed gives the same case.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import numpy as np
from scipy import ndimage

from MedSegAILib.core.volume import Geometry, Volume

#: Typical base-to-apex LV long-axis direction in LPS: towards the patient's left (+x), anterior (-y) and
#: inferior (-z).
TYPICAL_AXIS_LPS = np.array([0.62, -0.55, -0.45]) / np.linalg.norm([0.62, -0.55, -0.45])
#: Where the right ventricle lies relative to the LV in the typical orientation (right-anterior).
TYPICAL_RV_LPS = np.array([-0.75, -0.65, 0.1])

from MedSegAILib.core.filters import FWHM_TO_SIGMA  # noqa: E402

MYOCARDIUM, CAVITY = 1, 2


# ---------------------------------------------------------------------------------------------- helpers
def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, float)
    return v / np.linalg.norm(v)


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random proper rotation matrix (3x3)."""
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def axis_angle(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rotation matrix about ``axis`` by ``angle`` radians (Rodrigues)."""
    k = _unit(axis)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(angle) * kx + (1 - math.cos(angle)) * kx @ kx


def _perpendicular_towards(axis: np.ndarray, hint: np.ndarray) -> np.ndarray:
    v = hint - np.dot(hint, axis) * axis
    if np.linalg.norm(v) < 1e-6:
        v = np.cross(axis, [1.0, 0.0, 0.0])
        if np.linalg.norm(v) < 1e-6:
            v = np.cross(axis, [0.0, 1.0, 0.0])
    return _unit(v)


def _ellipsoid_sd(q: Sequence[np.ndarray], radii: Sequence[float]) -> np.ndarray:
    """Approximate signed distance (mm; negative inside) to an axis-aligned ellipsoid, local coordinates.

    First-order ``g / |grad g|`` with ``g = sum (q/r)^2 - 1``: exact on the surface, smooth, right sign.
    """
    g = -1.0
    grad2 = 0.0
    for qi, ri in zip(q, radii):
        g = g + (qi / ri) ** 2
        grad2 = grad2 + (qi / (ri * ri)) ** 2
    return g / (2.0 * np.sqrt(grad2) + 1e-6)


def _soft_inside(sd: np.ndarray, width: float) -> np.ndarray:
    """Partial-volume-like indicator: 1 inside, 0 outside, linear ramp over ``width`` mm."""
    return np.clip(0.5 - sd / width, 0.0, 1.0)


def grid_points(geometry: Geometry, index_box: Optional[tuple[slice, slice, slice]] = None,
                offset_ijk: Sequence[float] = (0.0, 0.0, 0.0)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LPS coordinates (x, y, z arrays shaped like the ``[k, j, i]`` sub-grid) of voxel centres + offset."""
    nk, nj, ni = geometry.shape
    box = index_box or (slice(0, nk), slice(0, nj), slice(0, ni))
    k = np.arange(box[0].start, box[0].stop, dtype=np.float64) + offset_ijk[2]
    j = np.arange(box[1].start, box[1].stop, dtype=np.float64) + offset_ijk[1]
    i = np.arange(box[2].start, box[2].stop, dtype=np.float64) + offset_ijk[0]
    m = np.asarray(geometry.direction, float) @ np.diag(geometry.spacing)
    o = np.asarray(geometry.origin, float)
    pts = []
    for r in range(3):
        pts.append(
            (o[r] + m[r, 0] * i)[None, None, :] + (m[r, 1] * j)[None, :, None] + (m[r, 2] * k)[:, None, None]
        )
    return pts[0], pts[1], pts[2]


def _bbox_index(geometry: Geometry, center: np.ndarray, radius: float) -> Optional[tuple[slice, slice, slice]]:
    """Index box (``[k, j, i]`` slices) of the grid voxels within the axis-aligned cube around a sphere."""
    corners = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], float) * radius
    pts = corners + center
    m = np.asarray(geometry.direction, float) @ np.diag(geometry.spacing)
    ijk = (pts - np.asarray(geometry.origin)) @ np.linalg.inv(m).T
    lo = np.floor(ijk.min(axis=0)).astype(int) - 1
    hi = np.ceil(ijk.max(axis=0)).astype(int) + 2
    size = np.asarray(geometry.shape[::-1])
    lo = np.clip(lo, 0, size)
    hi = np.clip(hi, 0, size)
    if np.any(hi <= lo):
        return None
    return (slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0]))


# ---------------------------------------------------------------------------------------------- LV shape
@dataclass
class LVShape:
    """The analytic left ventricle (all lengths in mm, vectors in LPS)."""

    center: np.ndarray  #: centre of the endocardial ellipsoid
    axis: np.ndarray  #: unit long axis, base -> apex
    e1: np.ndarray  #: unit short axis towards the septum / right ventricle
    a: float  #: endocardial semi-axis along the long axis (centre -> endocardial apex)
    b1: float  #: endocardial semi-axis along e1
    b2: float  #: endocardial semi-axis along e2
    wall: float  #: lateral wall thickness
    wall_apex: float  #: apical wall thickness
    base_offset: float  #: distance from the centre to the valve plane, towards the base (> 0)
    base_normal_local: np.ndarray  #: valve-plane normal in the local frame (points towards the apex)

    @property
    def e2(self) -> np.ndarray:
        return np.cross(self.axis, self.e1)

    @property
    def rotation(self) -> np.ndarray:
        """Columns e1, e2, axis: local -> LPS."""
        return np.stack([self.e1, self.e2, self.axis], axis=1)

    @property
    def bounding_radius(self) -> float:
        return float(math.sqrt((self.a + self.wall_apex) ** 2 + (max(self.b1, self.b2) + self.wall) ** 2)) + 2.0

    @property
    def endo_length(self) -> float:
        """Base-to-apex endocardial length along the long axis."""
        return self.a + self.base_offset

    def local(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        dx, dy, dz = x - self.center[0], y - self.center[1], z - self.center[2]
        r = self.rotation
        return (
            r[0, 0] * dx + r[1, 0] * dy + r[2, 0] * dz,
            r[0, 1] * dx + r[1, 1] * dy + r[2, 1] * dz,
            r[0, 2] * dx + r[1, 2] * dy + r[2, 2] * dz,
        )

    def signed_distances(self, q: tuple[np.ndarray, np.ndarray, np.ndarray]):
        """(endocardium, epicardium, valve plane) signed distances in mm; negative = inside / apical side."""
        sd_endo = _ellipsoid_sd(q, (self.b1, self.b2, self.a))
        sd_epi = _ellipsoid_sd(q, (self.b1 + self.wall, self.b2 + self.wall, self.a + self.wall_apex))
        n = self.base_normal_local
        sd_base = -(n[0] * q[0] + n[1] * q[1] + n[2] * (q[2] + self.base_offset))
        return sd_endo, sd_epi, sd_base

    def classify(self, q) -> np.ndarray:
        """Hard labels (0, 1 myocardium, 2 cavity) of points in local coordinates."""
        # inside tests need only the sign of the implicit functions (no square roots)
        g_endo = (q[0] / self.b1) ** 2 + (q[1] / self.b2) ** 2 + (q[2] / self.a) ** 2
        g_epi = ((q[0] / (self.b1 + self.wall)) ** 2 + (q[1] / (self.b2 + self.wall)) ** 2
                 + (q[2] / (self.a + self.wall_apex)) ** 2)
        n = self.base_normal_local
        apical = (n[0] * q[0] + n[1] * q[1] + n[2] * (q[2] + self.base_offset)) >= 0
        lab = np.zeros(np.shape(q[0]), np.uint8)
        lab[(g_epi <= 1.0) & apical] = MYOCARDIUM
        lab[(g_endo <= 1.0) & apical] = CAVITY
        return lab

    def fractions(self, geometry: Geometry, supersample: Optional[int] = None) -> np.ndarray:
        """Volume fractions ``(3, nk, nj, ni)`` float32 of background, myocardium and cavity per voxel.

        Each voxel is sampled on a regular ``n x n x n`` sub-grid (``n`` chosen so that sub-samples are at
        most ~1.2 mm apart, at least 2, at most 6, unless ``supersample`` is given).
        """
        frac = np.zeros((3,) + tuple(geometry.shape), np.float32)
        frac[0] = 1.0
        box = _bbox_index(geometry, self.center, self.bounding_radius)
        if box is None:
            return frac
        n = supersample or int(np.clip(math.ceil(max(geometry.spacing) / 1.2), 2, 6))
        offs = (np.arange(n) + 0.5) / n - 0.5
        sub_shape = tuple(s.stop - s.start for s in box)
        counts = np.zeros((2,) + sub_shape, np.float32)
        q0 = self.local(*grid_points(geometry, box))  # local coordinates of the voxel centres
        # a sub-voxel offset (index units) is a constant shift in the local frame
        step = self.rotation.T @ np.asarray(geometry.direction, float) @ np.diag(geometry.spacing)
        for oi in offs:
            for oj in offs:
                for ok in offs:
                    dq = step @ np.array([oi, oj, ok])
                    lab = self.classify((q0[0] + dq[0], q0[1] + dq[1], q0[2] + dq[2]))
                    counts[0] += lab == MYOCARDIUM
                    counts[1] += lab == CAVITY
        counts /= float(n**3)
        frac[(slice(1, 3),) + box] = counts
        frac[(0,) + box] = 1.0 - counts.sum(axis=0)
        return frac

    def labels(self, geometry: Geometry, supersample: Optional[int] = None) -> np.ndarray:
        """uint8 label map on ``geometry``: the class holding the largest share of each voxel's volume."""
        return np.argmax(self.fractions(geometry, supersample), axis=0).astype(np.uint8)

    def measure(self, step: float = 1.0) -> dict[str, Any]:
        """Myocardial and cavity volume (ml) and the LV (myocardium + cavity) centroid, by fine sampling."""
        rr = max(self.b1, self.b2) + self.wall
        zs = np.arange(-self.base_offset - self.wall - 2, self.a + self.wall_apex + 2, step) + step / 2
        xs = np.arange(-rr - 2, rr + 2, step) + step / 2
        q = np.meshgrid(xs, xs, zs, indexing="ij")
        lab = self.classify(q)
        dv = step**3 / 1000.0
        lv = lab > 0
        c_local = np.array([q[0][lv].mean(), q[1][lv].mean(), q[2][lv].mean()])
        return {
            "myocardium_ml": float((lab == MYOCARDIUM).sum() * dv),
            "cavity_ml": float((lab == CAVITY).sum() * dv),
            "lv_centroid_lps": (self.center + self.rotation @ c_local).tolist(),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "center_lps": self.center.tolist(),
            "axis_lps": self.axis.tolist(),
            "e1_lps": self.e1.tolist(),
            "a_mm": self.a,
            "b1_mm": self.b1,
            "b2_mm": self.b2,
            "wall_mm": self.wall,
            "wall_apex_mm": self.wall_apex,
            "base_offset_mm": self.base_offset,
            "base_normal_local": self.base_normal_local.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LVShape":
        return cls(
            center=np.asarray(d["center_lps"], float),
            axis=np.asarray(d["axis_lps"], float),
            e1=np.asarray(d["e1_lps"], float),
            a=float(d["a_mm"]),
            b1=float(d["b1_mm"]),
            b2=float(d["b2_mm"]),
            wall=float(d["wall_mm"]),
            wall_apex=float(d["wall_apex_mm"]),
            base_offset=float(d["base_offset_mm"]),
            base_normal_local=np.asarray(d["base_normal_local"], float),
        )


def random_lv(rng: np.random.Generator, center: np.ndarray, orientation: str = "random") -> LVShape:
    """A random LV. ``orientation``: "typical" (anatomical +- ~15 deg), "random" (uniform) or "mixed"
    (80 % typical, 20 % random)."""
    if orientation == "mixed":
        orientation = "random" if rng.random() < 0.2 else "typical"
    if orientation == "typical":
        tilt = np.clip(rng.normal(0.0, math.radians(15.0)), -math.radians(35), math.radians(35))
        axis = axis_angle(rng.normal(size=3), tilt) @ TYPICAL_AXIS_LPS
        e1 = _perpendicular_towards(axis, TYPICAL_RV_LPS)
        e1 = axis_angle(axis, rng.uniform(-math.radians(25), math.radians(25))) @ e1
    elif orientation == "random":
        rot = random_rotation(rng)
        axis, e1 = rot[:, 2], rot[:, 0]
    else:
        raise ValueError(f"orientation must be 'typical', 'random' or 'mixed'; got {orientation!r}")
    length = rng.uniform(60.0, 95.0)  # endocardial base-to-apex length
    f = rng.uniform(0.1, 0.5)  # valve plane position: fraction of a on the base side of the centre
    a = length / (1.0 + f)
    b = rng.uniform(17.0, min(30.0, 0.8 * a))
    ecc = rng.uniform(0.9, 1.1)
    wall = rng.uniform(7.0, 14.0)
    tilt = rng.uniform(0.0, math.radians(15.0))
    phi = rng.uniform(0, 2 * math.pi)
    n_local = np.array([math.sin(tilt) * math.cos(phi), math.sin(tilt) * math.sin(phi), math.cos(tilt)])
    return LVShape(
        center=np.asarray(center, float),
        axis=_unit(axis),
        e1=_unit(e1 - np.dot(e1, axis) * axis),
        a=float(a),
        b1=float(b * ecc),
        b2=float(b / ecc),
        wall=float(wall),
        wall_apex=float(wall * rng.uniform(0.7, 1.0)),
        base_offset=float(f * a),
        base_normal_local=n_local,
    )


# ---------------------------------------------------------------------------------------------- the case
@dataclass
class _Scene:
    lv: LVShape
    thorax_center: np.ndarray
    body_radii: tuple[float, float]
    lungs: list[tuple[np.ndarray, np.ndarray]]
    lung_level: float
    body_level: float
    blood_level: float
    rv_center: np.ndarray
    rv_radii: np.ndarray
    rv_thickness: float
    rv_level: float
    liver_center: np.ndarray
    liver_radii: np.ndarray
    liver_level: float
    gut: list[tuple[np.ndarray, np.ndarray, float]]
    defects: list[dict[str, float]]
    gradient: np.ndarray  #: smooth uptake modulation (local frame, per mm)


def _random_scene(rng: np.random.Generator, lv: LVShape) -> _Scene:
    c = lv.center
    thorax = c + np.array([-45.0, 35.0, 0.0]) + rng.uniform(-15, 15, 3)
    body = (rng.uniform(140, 190), rng.uniform(95, 130))
    lungs = []
    for side in (-1, 1):
        lc = thorax + np.array([side * rng.uniform(85, 105), rng.uniform(-5, 15), rng.uniform(10, 40)])
        lr = np.array([rng.uniform(50, 65), rng.uniform(60, 80), rng.uniform(100, 130)])
        lungs.append((lc, lr))
    rb = max(lv.b1, lv.b2)
    rv_center = c + lv.e1 * (lv.b1 + lv.wall + rng.uniform(0, 12)) - lv.axis * rng.uniform(0, 0.3 * lv.a)
    rv_radii = np.array([rng.uniform(22, 34), rb + lv.wall + rng.uniform(8, 18), lv.a * rng.uniform(0.7, 0.95)])
    gap = rng.uniform(30, 75)  # LV centre -> top of the liver dome
    liver_radii = np.array([rng.uniform(90, 125), rng.uniform(70, 95), rng.uniform(55, 80)])
    liver_center = c + np.array([rng.uniform(-80, -20), rng.uniform(0, 35), -(gap + liver_radii[2])])
    liver_level = float(rng.choice([rng.uniform(0.25, 0.8), rng.uniform(0.8, 1.7)], p=[0.6, 0.4]))
    gut = []
    for _ in range(int(rng.integers(0, 4))):
        gc = c + np.array([rng.uniform(-20, 90), rng.uniform(-50, 40), -rng.uniform(45, 115)])
        gr = rng.uniform(10, 30, 3)
        gut.append((gc, gr, float(rng.uniform(0.2, 2.0))))
    defects = []
    nd = int(rng.choice([0, 1, 2], p=[0.45, 0.4, 0.15]))
    z_lo, z_hi = -lv.base_offset, lv.a + lv.wall_apex
    for _ in range(nd):
        defects.append(
            {
                "theta": float(rng.uniform(-math.pi, math.pi)),
                "half_width_rad": float(rng.uniform(math.radians(20), math.radians(70))),
                "z_center": float(rng.uniform(z_lo + 0.2 * (z_hi - z_lo), z_hi)),
                "half_length_mm": float(rng.uniform(12, 45)),
                "severity": float(rng.uniform(0.2, 0.8)),
            }
        )
    gradient = rng.normal(0, 0.08, 3) / max(lv.a, 1.0)
    return _Scene(
        lv=lv, thorax_center=thorax, body_radii=body, lungs=lungs, lung_level=float(rng.uniform(0.015, 0.05)),
        body_level=float(rng.uniform(0.05, 0.15)), blood_level=float(rng.uniform(0.06, 0.2)),
        rv_center=rv_center, rv_radii=rv_radii, rv_thickness=float(rng.uniform(3, 6)),
        rv_level=float(rng.uniform(0.2, 0.6)), liver_center=liver_center, liver_radii=liver_radii,
        liver_level=liver_level, gut=gut, defects=defects, gradient=gradient,
    )


def _activity(scene: _Scene, geometry: Geometry) -> np.ndarray:
    """Activity per voxel (myocardium nominal = 1) on ``geometry``, partial-volume-smoothed edges."""
    h = float(np.mean(geometry.spacing))
    x, y, z = grid_points(geometry)
    tc = scene.thorax_center
    # body: elliptic cylinder along z
    body = _soft_inside(_ellipsoid_sd((x - tc[0], y - tc[1]), scene.body_radii), h)
    lv = scene.lv
    # exclusion zone around the heart (lungs, liver and gut never overlap the LV)
    heart_sd = np.full(x.shape, 1e3, np.float64)
    box = _bbox_index(geometry, lv.center, lv.bounding_radius + 15.0)
    act = np.zeros(x.shape, np.float64)
    occ = np.zeros(x.shape, np.float64)
    lung = np.zeros(x.shape, np.float64)
    for lc, lr in scene.lungs:
        lung = np.maximum(lung, _soft_inside(_ellipsoid_sd((x - lc[0], y - lc[1], z - lc[2]), lr), h))
    organs = np.zeros(x.shape, np.float64)
    lvc = scene.liver_center
    organs += scene.liver_level * _soft_inside(_ellipsoid_sd((x - lvc[0], y - lvc[1], z - lvc[2]),
                                                             scene.liver_radii), h)
    for gc, gr, lvl in scene.gut:
        organs = np.maximum(organs, lvl * _soft_inside(_ellipsoid_sd((x - gc[0], y - gc[1], z - gc[2]), gr), h))
    if box is not None:
        xs, ys, zs = x[box], y[box], z[box]
        q = lv.local(xs, ys, zs)
        sd_endo, sd_epi, sd_base = lv.signed_distances(q)
        heart_sd[box] = sd_epi
        apical = _soft_inside(sd_base, h)
        epi = _soft_inside(sd_epi, h)
        endo = _soft_inside(sd_endo, h)
        myo = apical * epi * (1.0 - endo)
        cav = apical * endo
        # uptake: smooth gradient and defects
        uptake = 1.0 + scene.gradient[0] * q[0] + scene.gradient[1] * q[1] + scene.gradient[2] * q[2]
        if scene.defects:
            theta = np.arctan2(q[1], q[0])
            for d in scene.defects:
                dt = np.angle(np.exp(1j * (theta - d["theta"])))
                w = np.exp(-((dt / d["half_width_rad"]) ** 4) - (((q[2] - d["z_center"]) / d["half_length_mm"]) ** 4))
                uptake = uptake * (1.0 - d["severity"] * w)
        # right ventricle: thin shell outside the LV epicardium
        rq = lv.rotation.T @ (scene.rv_center - lv.center)
        rvq = (q[0] - rq[0], q[1] - rq[1], q[2] - rq[2])
        sd_rv = _ellipsoid_sd(rvq, scene.rv_radii)
        rv_wall = _soft_inside(sd_rv, h) * (1 - _soft_inside(sd_rv + scene.rv_thickness, h))
        rv_blood = _soft_inside(sd_rv + scene.rv_thickness, h)
        outside_lv = 1.0 - _soft_inside(sd_epi, h) * apical
        outside_lv_full = 1.0 - epi  # the septum belongs to the LV whatever the valve plane
        rv_act = outside_lv_full * (scene.rv_level * rv_wall + scene.blood_level * rv_blood)
        # blood in the atrium / outflow beyond the valve plane
        atrium = (1.0 - apical) * _soft_inside(sd_epi - 5.0, h) * scene.blood_level
        act[box] = myo * uptake + cav * scene.blood_level + np.maximum(rv_act, atrium) * outside_lv
        occ[box] = np.maximum(epi, _soft_inside(sd_rv, h) * outside_lv_full)
    heart_free = np.clip(heart_sd / 12.0, 0.0, 1.0)  # 0 inside the heart, 1 beyond 12 mm of the epicardium
    bg = scene.body_level + (scene.lung_level - scene.body_level) * lung * heart_free
    act = act + body * bg * (1.0 - occ) + organs * heart_free * body
    return act


def _native_geometry(rng: np.random.Generator, lv: LVShape, thorax_center: np.ndarray,
                     spacing: Optional[float], fov: str, oblique: Optional[bool],
                     shape: Optional[int]) -> Geometry:
    s = float(spacing) if spacing is not None else float(rng.uniform(2.0, 7.0))
    sp = np.array([s, s, s])
    if rng.random() < 0.3:
        sp[2] = s * rng.uniform(0.9, 1.1)
    if fov == "random":
        fov = "tight" if rng.random() < 0.3 else "thorax"
    lv_centroid = np.asarray(lv.measure(step=2.5)["lv_centroid_lps"])
    if fov == "tight":
        side = rng.uniform(130, 200)
        center = lv_centroid + rng.uniform(-12, 12, 3)
    elif fov == "thorax":
        side = rng.uniform(250, 450)
        t = rng.uniform(0.0, 1.0)
        center = lv_centroid * (1 - t) + thorax_center * t + rng.uniform(-20, 20, 3)
    else:
        raise ValueError(f"fov must be 'tight', 'thorax' or 'random'; got {fov!r}")
    if shape is not None:
        n = np.array([int(shape)] * 3)
    else:
        n = np.clip(np.round(side / sp), 32, 128).astype(int)
    # direction
    if oblique is None:
        u = rng.random()
        kind = "identity" if u < 0.65 else ("permuted" if u < 0.8 else "oblique")
    else:
        kind = "oblique" if oblique else "identity"
    if kind == "identity":
        direction = np.eye(3)
    elif kind == "permuted":
        perm = rng.permutation(3)
        direction = np.eye(3)[:, perm] * rng.choice([-1.0, 1.0], 3)
    else:
        direction = random_rotation(rng)
        if rng.random() < 0.5:  # moderate obliquity (e.g. a reoriented acquisition)
            direction = axis_angle(rng.normal(size=3), rng.uniform(math.radians(10), math.radians(40)))
    # keep the whole LV inside the field of view with a margin
    r = lv.bounding_radius + 5.0
    half = n * sp / 2.0
    d_local = direction.T @ (lv_centroid - center)
    limit = np.maximum(half - r, 0.0)
    d_local = np.clip(d_local, -limit, limit)
    center = lv_centroid - direction @ d_local
    origin = center - direction @ ((n - 1) / 2.0 * sp)
    return Geometry((int(n[2]), int(n[1]), int(n[0])), tuple(sp), tuple(origin), direction)


def simulate_spect(
    seed: Union[int, np.random.Generator, None] = None,
    *,
    spacing: Optional[float] = None,
    fov: str = "random",
    oblique: Optional[bool] = None,
    orientation: str = "mixed",
    shape: Optional[int] = None,
    defects: Optional[bool] = None,
    acquisition: Optional[dict[str, float]] = None,
) -> tuple[Volume, Volume, dict[str, Any]]:
    """Simulate one myocardial-perfusion SPECT study.

    Parameters
    ----------
    seed: an int (one simulated patient) or a ``numpy.random.Generator``.
    spacing: voxel size in mm (default: uniform in [2, 7]).
    fov: ``"tight"`` (130-200 mm around the heart), ``"thorax"`` (250-450 mm) or ``"random"`` (30/70 %).
    oblique: force a random oblique direction matrix (True) or the identity (False); default random
        (65 % identity, 15 % permuted/flipped axes, 20 % oblique).
    orientation: LV orientation, ``"typical"``, ``"random"`` or ``"mixed"`` (80/20).
    shape: force a cubic grid of ``shape`` voxels per side.
    defects: force perfusion defects on (True) / off (False).
    acquisition: override the drawn acquisition — ``system_fwhm_mm`` (default U(10, 16)), ``filter_fwhm_mm``
        (U(4, 9)), ``counts_per_ml`` (log-uniform 300-3000) — to simulate another camera or count level (a shifted
        domain for fine-tuning); the values are drawn anyway, so the rest of the case is the same.

    Returns
    -------
    ``(image, labels, params)``: image Volume (float32, meta modality NM), label Volume (uint8: 0 background,
    1 LV myocardium, 2 LV cavity) on the same grid, and a JSON-serialisable dict of the true parameters.
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    lv_center = rng.uniform(-30, 30, 3)
    lv = random_lv(rng, lv_center, orientation)
    scene = _random_scene(rng, lv)
    if defects is True and not scene.defects:
        # deterministic (no draw from rng), so the rest of the case is the same as with defects=None
        scene.defects.append({"theta": 0.5, "half_width_rad": 0.9, "z_center": lv.a * 0.3,
                              "half_length_mm": 35.0, "severity": 0.6})
    elif defects is False:
        scene.defects.clear()
    geom = _native_geometry(rng, lv, scene.thorax_center, spacing, fov, oblique, shape)

    system_fwhm = float(rng.uniform(10.0, 16.0))
    filter_fwhm = float(rng.uniform(4.0, 9.0))
    counts_per_ml = float(np.exp(rng.uniform(np.log(300.0), np.log(3000.0))))
    scale = float(10 ** rng.uniform(-1.0, 3.0))
    if acquisition:
        unknown = set(acquisition) - {"system_fwhm_mm", "filter_fwhm_mm", "counts_per_ml"}
        if unknown:
            raise ValueError(f"unknown acquisition setting(s) {sorted(unknown)}")
        system_fwhm = float(acquisition.get("system_fwhm_mm", system_fwhm))
        filter_fwhm = float(acquisition.get("filter_fwhm_mm", filter_fwhm))
        counts_per_ml = float(acquisition.get("counts_per_ml", counts_per_ml))

    # simulation grid: native grid, sub-divided m times per axis when the voxels are coarse, plus a margin
    sp = np.asarray(geom.spacing)
    m = 2 if sp.max() > 6.0 else 1
    sim_sp = sp / m
    margin = int(math.ceil(2.0 * system_fwhm * FWHM_TO_SIGMA / sim_sp.min()))
    n_native = np.asarray(geom.shape[::-1])
    n_sim = n_native * m + 2 * margin
    sim_origin = (np.asarray(geom.origin) + geom.direction @ ((-0.5 + 0.5 / m) * sp)
                  - geom.direction @ (margin * sim_sp))
    sim_geom = Geometry(tuple(int(v) for v in n_sim[::-1]), tuple(sim_sp), tuple(sim_origin), geom.direction)
    act = _activity(scene, sim_geom).astype(np.float32)

    sig = system_fwhm * FWHM_TO_SIGMA / sim_sp[::-1]
    blurred = ndimage.gaussian_filter(act, sig, mode="constant", truncate=3.0)
    voxel_ml = float(np.prod(sim_sp)) / 1000.0
    lam = np.clip(blurred, 0, None).astype(np.float64) * counts_per_ml * voxel_ml
    noisy = rng.poisson(lam).astype(np.float32) / np.float32(counts_per_ml * voxel_ml)
    recon = ndimage.gaussian_filter(noisy, filter_fwhm * FWHM_TO_SIGMA / sim_sp[::-1], mode="constant",
                                    truncate=3.0)
    recon = recon[margin:-margin or None, margin:-margin or None, margin:-margin or None] if margin else recon
    if m > 1:
        nk, nj, ni = geom.shape
        recon = recon.reshape(nk, m, nj, m, ni, m).mean(axis=(1, 3, 5))
    image = np.clip(recon, 0, None).astype(np.float32) * np.float32(scale)

    labels = lv.labels(geom)
    meas = lv.measure(step=1.0)
    params: dict[str, Any] = {
        "lv": lv.to_dict(),
        "lv_centroid_lps": meas["lv_centroid_lps"],
        "myocardium_ml": meas["myocardium_ml"],
        "cavity_ml": meas["cavity_ml"],
        "endo_length_mm": lv.endo_length,
        "wall_mm": lv.wall,
        "spacing": list(geom.spacing),
        "shape": list(geom.shape),
        "oblique": bool(Volume(np.zeros((1, 1, 1)), direction=geom.direction).is_oblique),
        "system_fwhm_mm": system_fwhm,
        "filter_fwhm_mm": filter_fwhm,
        "counts_per_ml": counts_per_ml,
        "scale": scale,
        "liver_level": scene.liver_level,
        "rv_level": scene.rv_level,
        "defects": scene.defects,
        "gut_levels": [g[2] for g in scene.gut],
    }
    img_vol = Volume(image, geom.spacing, geom.origin, geom.direction.copy(), {"modality": "NM", "simulated": True})
    lab_vol = Volume(labels, geom.spacing, geom.origin, geom.direction.copy(), {"is_labelmap": True})
    return img_vol, lab_vol, params
