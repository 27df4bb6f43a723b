"""Randomised hand-and-wrist CT phantom (HU volume + bone label volume) for carpal DRR training data.

No real hand CT is available to the project, so the carpal task (issue 6) trains on digitally
reconstructed radiographs of this phantom. :func:`simulate_hand` draws one adult hand/wrist: the eight
carpal bones, distal radius and ulna and metacarpals 1-5 in their true arrangement, with per-phantom and
per-bone randomisation, a cortical shell and a textured cancellous interior, and a soft-tissue body
(muscle/tendon, subcutaneous fat, skin) in air.

Frames
------
*Design frame* ``(r, a, d)`` (mm, one fixed right-hand design): ``+r`` radial (towards the thumb),
``+a`` distal along the forearm axis (towards the fingers), ``+d`` dorsal. Its origin is the centre of the
capitate head (the midcarpal rotation centre) in the neutral pose.

*Physical frame* (LPS, the project's frame): the arm is raised overhead (abducted 180 deg from the
anatomical position, a pure rotation about the A/P axis), so the forearm axis is LPS ``+z`` (fingers
superior) and the palm still faces anterior: dorsal is ``+y`` (posterior) and a PA radiograph is a
projection along LPS ``-y`` (source behind the dorsum, detector at the palm). That rotation turns the
thumb medially: the radial side is LPS ``+x`` for a right hand and ``-x`` for a left hand (the design
triple radial/distal/dorsal is left-handed for a right hand, hence ``det G_right = -1``). The left hand is
the *physical* mirror image (x -> -x) of a right hand drawn with the same random numbers::

    p_LPS = S * G_side @ R_pron(psi) @ (x_design - c_forearm) + S * G_side @ c_forearm,
    G_right = [[1, 0, 0], [0, 0, 1], [0, 1, 0]]   (columns: r, a, d; rows: x, y, z),
    G_left  = diag(-1, 1, 1) @ G_right.

``S`` is the overall scale and ``R_pron`` a rotation about the forearm axis through the forearm centre
``c_forearm`` (positive ``psi`` = pronation: the radial side moves palmarly). LPS ``(0, 0, 0)`` is thus
the neutral capitate-head centre. The volumes are axis aligned (identity direction), ``i`` = ``+x``,
``j`` = ``+y``, ``k`` = ``+z``.

Geometry of one bone
--------------------
Each bone is a smooth union of primitives, minus "cutters":

* bent, tapered, waisted superellipsoid (carpal bodies, bases, heads, styloids): in its own axes
  ``(x, y, z)`` with half lengths ``(A, B, C)``, ``xn = x / A``, bend ``y -> y - beta B xn^2``, cross
  scale ``s(xn) = (1 + tau xn)(1 - omega (1 - xn^2))``, and
  ``F = ((|y / Bs|^p + |z / Cs|^p)^(q/p) + |xn|^q)^(1/q)``;
* tube (shafts): a segment with elliptical cross-section whose radii vary linearly along it and a
  dorsal bow ``b * 4t(1 - t)``; ``F`` is the elliptical radius of the offset from the closest axis point.

Both give the *radial distance* ``rho (1 - 1/F)`` (``rho``: distance from the centre / axis), an
approximation of the signed distance that is exact on the surface and overestimates the true distance by
``1/cos`` of the angle between ray and normal (< 15 % for the aspect ratios used). Primitives combine by
the polynomial smooth minimum ``smin(a, b; k) = min(a, b) - k h^2 / 4`` with ``h = max(k - |a - b|, 0) / k``.
Concave articular surfaces are cut by neighbours dilated by the joint gap ``g``:
``d <- max(d, g - d_cutter)`` (lunate and scaphoid around the capitate head, the radial fossae around
the neutral scaphoid and lunate, the sigmoid notch around the ulnar head).

Distances are evaluated only inside each bone's bounding box, on a ~1 mm grid, and interpolated linearly
onto the voxel grid (a signed distance is smooth on the voxel scale: the error is ~ ``hc^2 / (8 R)`` < 0.03
mm for curvature radii ``R`` >= 4 mm); the skin distance likewise on a 2 mm grid. This keeps a 0.5 mm
phantom (~10 M voxels) at ~1-2 s on one core.

Joint spaces and non-overlap
----------------------------
All bones are written with the two smallest signed distances per voxel, ``s1 <= s2``. A voxel belongs to
bone ``b`` only if ``s_b < 0`` and ``s_b < s_other - g_min`` (``s_other``: smallest distance of any other
bone). Because ``s_b - s_other`` changes by at most 2 mm per mm, the set where it is within ``+-g_min`` is
at least ``g_min`` wide: touching or overlapping bones after the random jitter are separated at their
bisector by a joint space of at least ``g_min = max(1.2 mm, 1.8 voxels)``, and the carved surface gets
the distance ``max(s_b, (s_b - s_other + g_min) / 2)`` so its cortex is as thick as elsewhere. A final
discrete pass removes any voxel whose 26-neighbourhood touches another bone (reported in
``info['touch_voxels_removed']``, normally 0).

Density
-------
Bone HU = interior + (cortex - interior) * w, ``w`` a 0.4 mm ramp at depth = cortical thickness.
Cortex 900-1600 HU, 0.6-1.5 mm (carpals), thicker in the shafts (1.5-2.5 mm); cancellous 150-450 HU with a
smoothed-noise trabecular texture (+-18 %); medullary cavity of the shafts 0-80 HU. An osteoporosis-like
factor ``o`` in [0, 1] thins the cortex (x(1 - 0.4 o)) and lowers the HU (cortex x(1 - 0.25 o),
cancellous x(1 - 0.45 o)). Bone and body surfaces are partial-volume blended over one voxel
(``frac = clip(0.5 - s / h, 0, 1)``) so DRRs are not stair-stepped; the labels are the ``s < 0`` sets.
Soft tissue: muscle/tendon 40-60 HU, subcutaneous fat -100 +- 20 HU (2-6 mm), skin 10-50 HU (1-1.6 mm),
air -1000; the outline is an elliptic section per level (wrist ~57-64 mm wide and ~37-42 mm thick, palm
~82-90 mm wide and ~26-31 mm thick) bent smoothly across the wrist with the hand, plus thenar/hypothenar
eminences and the thumb.

Simplified: no phalanges (the field ends just past the metacarpal heads), no tendons, vessels, nerves or
cartilage (joint spaces are soft tissue), no growth plates (adult only), the trabecular texture is smoothed
noise rather than a plate/rod network, the intercarpal joint surfaces where bones were carved apart are
flat (bisector) rather than the true facet shapes, and the radial fossae follow the neutral carpal pose.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from scipy import ndimage

from MedSegAILib.core.volume import Volume
from MedSegAILib.errors import InputError

__all__ = [
    "BONE_NAMES",
    "CARPAL_LABELS",
    "HandPhantom",
    "simulate_hand",
    "pa_view",
]

#: Label id -> bone name, as used everywhere in the carpal task.
BONE_NAMES: dict[int, str] = {
    1: "scaphoid",
    2: "lunate",
    3: "triquetrum",
    4: "pisiform",
    5: "trapezium",
    6: "trapezoid",
    7: "capitate",
    8: "hamate",
    9: "radius",
    10: "ulna",
    11: "metacarpal 1",
    12: "metacarpal 2",
    13: "metacarpal 3",
    14: "metacarpal 4",
    15: "metacarpal 5",
}
#: The ten targets of the carpal network (metacarpals are background for it).
CARPAL_LABELS: tuple[int, ...] = tuple(range(1, 11))

_PROXIMAL_ROW = (1, 2, 3, 4)
_DISTAL_ROW = (5, 6, 7, 8)
_METACARPALS = (11, 12, 13, 14, 15)
_FOREARM_CENTRE = np.array([-5.0, 0.0, 0.0])  # design (r, a, d): axis of pronation/supination


@dataclass
class HandPhantom:
    """One simulated hand: CT in HU (air -1000), bone labels (``BONE_NAMES``) on the same grid, and the draw."""

    ct: Volume
    labels: Volume
    info: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------- helpers
def _unit(v: Sequence[float]) -> np.ndarray:
    v = np.asarray(v, dtype=float)
    return v / np.linalg.norm(v)


def _frame(u: Sequence[float], hint: Sequence[float] = (0.0, 0.0, 1.0)) -> np.ndarray:
    """3x3 rotation whose first column is ``u``, the third as close to ``hint`` as possible (right-handed)."""
    u = _unit(u)
    w = np.asarray(hint, float) - np.dot(hint, u) * u
    if np.linalg.norm(w) < 1e-6:
        w = np.array([1.0, 0.0, 0.0]) - u[0] * u
    w = _unit(w)
    v = np.cross(w, u)
    return np.stack([u, v, w], axis=1)


def _rot(axis: int, deg: float) -> np.ndarray:
    """Rotation about design axis 0 (r), 1 (a) or 2 (d). Positive about d moves +a towards -r (ulnar);
    positive about r moves +a towards -d (flexion); positive about a moves +r towards -d (pronation)."""
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    if axis == 2:  # (r, a) plane
        m = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
    elif axis == 0:  # (a, d) plane
        m = [[1, 0, 0], [0, c, s], [0, -s, c]]
    else:  # (r, d) plane
        m = [[c, 0, s], [0, 1, 0], [-s, 0, c]]
    return np.asarray(m, float)


def _affine(linear: np.ndarray, centre: np.ndarray, shift: np.ndarray | None = None) -> np.ndarray:
    """4x4 map x -> linear (x - centre) + centre + shift."""
    m = np.eye(4)
    m[:3, :3] = linear
    m[:3, 3] = centre - linear @ centre + (0 if shift is None else shift)
    return m


def _smin(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Polynomial smooth minimum (blends two distance fields over a fillet of size ~k mm)."""
    if k <= 0:
        return np.minimum(a, b)
    k = float(k)
    h = np.maximum(k - np.abs(a - b), 0.0) * (1.0 / k)
    return np.minimum(a, b) - (0.25 * k) * h * h


# ----------------------------------------------------------------------------------------------- primitives
@dataclass
class _SE:
    """Bent, tapered, waisted superellipsoid in design coordinates (see the module docstring)."""

    c: np.ndarray
    R: np.ndarray  # columns: own x (long), y, z axes in design coordinates
    h: tuple[float, float, float]
    p: float = 2.0
    q: float = 2.0
    bend: float = 0.0
    taper: float = 0.0
    waist: float = 0.0

    def dist(self, X: Sequence[np.ndarray]) -> np.ndarray:
        # python floats keep float32 arrays float32 (numpy float64 scalars would promote them)
        c = [float(v) for v in self.c]
        R = [[float(v) for v in row] for row in self.R]
        dx, dy, dz = X[0] - c[0], X[1] - c[1], X[2] - c[2]
        x = R[0][0] * dx + R[1][0] * dy + R[2][0] * dz
        y = R[0][1] * dx + R[1][1] * dy + R[2][1] * dz
        z = R[0][2] * dx + R[1][2] * dy + R[2][2] * dz
        A, B, C = (float(v) for v in self.h)
        xn = x / A
        if self.bend or self.taper or self.waist:
            xc = np.clip(xn, -1.0, 1.0)
            if self.bend:
                y = y - float(self.bend * B) * xc * xc
            s = np.ones_like(xc)
            if self.taper:
                s = s * (1.0 + float(self.taper) * xc)
            if self.waist:
                s = s * (1.0 - float(self.waist) * (1.0 - xc * xc))
            s = np.maximum(s, 0.25)
            yn, zn = y / (B * s), z / (C * s)
        else:
            yn, zn = y / B, z / C
        p, q = float(self.p), float(self.q)
        if p == 2.0 and q == 2.0:
            F = np.sqrt(xn * xn + yn * yn + zn * zn)
        elif p == q:
            F = (np.abs(xn) ** p + np.abs(yn) ** p + np.abs(zn) ** p) ** (1.0 / p)
        else:
            cross = np.abs(yn) ** p + np.abs(zn) ** p
            F = (cross ** (q / p) + np.abs(xn) ** q) ** (1.0 / q)
        rho = np.sqrt(x * x + y * y + z * z)
        return rho * (1.0 - 1.0 / np.maximum(F, 1e-3))

    def corners(self) -> np.ndarray:
        grow = (1.0 + abs(self.taper)) * 1.05
        A, B, C = self.h
        half = np.array([A * 1.05, B * grow + abs(self.bend) * B, C * grow])
        signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], float)
        return self.c + (signs * half) @ self.R.T


@dataclass
class _Tube:
    """Segment p0 -> p1 with elliptical cross-section (radii r0 at p0, r1 at p1 along the two normals)."""

    p0: np.ndarray
    p1: np.ndarray
    r0: tuple[float, float]
    r1: tuple[float, float]
    hint: tuple[float, float, float] = (0.0, 0.0, 1.0)  # second cross axis as close as possible to this (dorsal)
    bow: float = 0.0  # dorsal bowing of the mid-shaft (mm)

    def dist(self, X: Sequence[np.ndarray]) -> np.ndarray:
        axis = self.p1 - self.p0
        L = float(np.linalg.norm(axis))
        R = [[float(v) for v in row] for row in _frame(axis, self.hint)]
        p0 = [float(v) for v in self.p0]
        dx, dy, dz = X[0] - p0[0], X[1] - p0[1], X[2] - p0[2]
        x = R[0][0] * dx + R[1][0] * dy + R[2][0] * dz
        y = R[0][1] * dx + R[1][1] * dy + R[2][1] * dz
        z = R[0][2] * dx + R[1][2] * dy + R[2][2] * dz
        t = np.clip(x * (1.0 / L), 0.0, 1.0)
        ex = x - t * L
        if self.bow:
            z = z - float(self.bow * 4.0) * t * (1.0 - t)
        r0, r1 = [float(v) for v in self.r0], [float(v) for v in self.r1]
        ry = r0[0] + (r1[0] - r0[0]) * t
        rz = r0[1] + (r1[1] - r0[1]) * t
        F = np.sqrt((ex / ry) ** 2 + (y / ry) ** 2 + (z / rz) ** 2)
        rho = np.sqrt(ex * ex + y * y + z * z)
        return rho * (1.0 - 1.0 / np.maximum(F, 1e-3))

    def corners(self) -> np.ndarray:
        rmax = max(*self.r0, *self.r1) + abs(self.bow)
        pts = []
        for p in (self.p0, self.p1):
            for s in np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], float):
                pts.append(p + s * rmax)
        return np.asarray(pts)


@dataclass
class _Bone:
    label: int
    prims: list[Any]
    k: float = 2.0  # smooth-union fillet (mm)
    frame: str = "fixed"  # key of the motion applied to this bone
    shaft: tuple[np.ndarray, np.ndarray] | None = None  # long-bone axis (base, head) for the medullary cavity
    epi: float = 0.18  # fraction of the axis at each end that is epiphysis (cancellous)
    t_shaft: float = 2.0  # diaphyseal cortex (mm, before the osteoporosis factor)

    def dist(self, X: Sequence[np.ndarray]) -> np.ndarray:
        d = self.prims[0].dist(X)
        for prim in self.prims[1:]:
            d = _smin(d, prim.dist(X), self.k)
        return d

    def corners(self) -> np.ndarray:
        return np.concatenate([p.corners() for p in self.prims])


# ----------------------------------------------------------------------------------------------- anatomy
def _design(rng: np.random.Generator, ulnar_variance: float) -> dict[int, _Bone]:
    """The neutral right-hand design (r radial, a distal, d dorsal; mm; capitate head centre at 0), jittered.

    Sizes follow adult averages (lengths: scaphoid ~26, lunate ~18 dorso-palmar, capitate ~24, hamate ~20
    plus hook, triquetrum ~15, pisiform ~10, trapezium ~18, trapezoid ~12, MC1 ~46, MC2 ~69, MC3 ~66,
    MC4 ~60, MC5 ~56). ``rng`` adds the per-primitive shape jitter (+-5 % per half axis, small angles).
    """

    def j(h: Sequence[float]) -> tuple[float, float, float]:
        return tuple(float(x) * (1.0 + rng.uniform(-0.05, 0.05)) for x in h)  # type: ignore[return-value]

    def tilt(u: Sequence[float], deg: float = 4.0) -> np.ndarray:
        return _unit(np.asarray(u, float) + np.radians(deg) * rng.normal(size=3))

    A = np.array
    R_ard = _frame((0, 1, 0), (0, 0, 1))  # own x along a, z along d
    bones: dict[int, _Bone] = {}
    uv = np.array([0.0, ulnar_variance, 0.0])

    # --- proximal row
    scaph_u = tilt((0.58, 0.70, -0.32))
    bones[1] = _Bone(1, [_SE(A([15.6, -7.6, -1.5]), _frame(scaph_u, (0.0, -0.3, 1.0)), j((14.2, 6.6, 7.4)),
                             p=2.3, q=2.0, bend=-0.25, taper=0.05, waist=0.12)], frame="scaphoid")
    bones[2] = _Bone(2, [_SE(A([0.8, -12.3, 0.8]), _frame(tilt((0, 0, 1)), (0, 1, 0)), j((9.0, 7.6, 7.0)),
                             p=2.6, q=2.3, taper=-0.08)], frame="proximal")
    triq_u = tilt((-0.8, 0.6, 0.0))
    bones[3] = _Bone(3, [_SE(A([-15.0, -9.3, 1.8]), _frame(triq_u, (0, 0, 1)), j((7.8, 5.4, 6.2)),
                             p=2.3, q=2.2, taper=-0.3)], frame="proximal")
    bones[4] = _Bone(4, [_SE(A([-17.5, -7.8, -11.2]), _frame(tilt((0.1, 1, 0)), (0, 0, 1)), j((6.0, 5.2, 5.0)),
                             p=2.0, q=2.0)], frame="proximal")
    # --- distal row
    bones[5] = _Bone(5, [_SE(A([24.5, 9.8, -5.8]), _frame(tilt((0.35, 0.9, -0.25)), (0, 0, 1)), j((9.0, 6.6, 6.6)),
                             p=2.6, q=2.4, taper=0.1)], frame="distal")
    bones[6] = _Bone(6, [_SE(A([13.8, 9.8, 2.0]), _frame(tilt((0, 1, 0)), (0, 0, 1)), j((6.4, 5.6, 7.6)),
                             p=2.8, q=2.6, taper=0.1)], frame="distal")
    bones[7] = _Bone(7, [_SE(A([0.0, 6.4, 0.5]), _frame(tilt((0, 1, 0), 2.0), (0, 0, 1)), j((12.2, 7.0, 9.0)),
                             p=2.6, q=2.2, taper=0.1, waist=0.05)], frame="distal")
    ham_u = tilt((-0.25, 1.0, 0.0))
    bones[8] = _Bone(8, [_SE(A([-14.8, 7.0, 0.5]), _frame(ham_u, (0, 0, 1)), j((10.0, 7.2, 8.4)),
                             p=2.5, q=2.3, taper=0.28),
                         _Tube(A([-17.0, 9.5, -4.0]), A([-16.0, 11.0, -15.5]), (2.9, 2.6), (2.3, 2.1),
                               hint=(0, 1, 0))], k=2.5, frame="distal")
    # --- metacarpals: base block + shaft + head, long axis from base to head
    mc = {  # label: (base centre, base half (a, r, d), head centre, head half (a, r, d), shaft r0, r1)
        12: (A([14.3, 23.0, 1.5]), (5.5, 6.0, 7.5), A([21.0, 80.0, -1.0]), (6.0, 6.0, 7.6), (4.0, 3.7), (3.4, 3.3)),
        13: (A([0.3, 25.0, 1.2]), (5.0, 6.3, 7.8), A([2.6, 79.0, -1.0]), (6.3, 6.3, 7.8), (4.2, 3.9), (3.6, 3.4)),
        14: (A([-12.2, 22.6, 1.0]), (4.6, 4.8, 6.8), A([-15.4, 70.5, -1.0]), (5.8, 5.6, 7.2), (3.3, 3.1), (3.0, 2.9)),
        15: (A([-21.8, 21.5, 0.2]), (4.6, 4.9, 6.5), A([-30.5, 65.5, -2.0]), (5.8, 5.5, 6.9), (3.4, 3.2), (3.2, 3.0)),
    }
    for lab, (bc, bh, hc, hh, r0, r1) in mc.items():
        hc = hc + rng.normal(0, 1.0, 3) * np.array([1.0, 1.5, 0.5])
        ax = _unit(hc - bc)
        Rb = _frame(ax, (0, 0, 1))
        bones[lab] = _Bone(lab, [
            _SE(bc, Rb, j(bh), p=2.6, q=2.2),
            _Tube(bc + 2.0 * ax, hc - 2.0 * ax, j(r0)[:2], j(r1)[:2], bow=1.2),
            _SE(hc, Rb, j(hh), p=2.0, q=2.0),
        ], k=3.0, frame="distal", shaft=(bc, hc), epi=0.16, t_shaft=1.8)
    # thumb metacarpal: off the trapezium's distal facet, abducted radially and palmarly
    m1 = tilt((0.45, 0.85, -0.30), 5.0)
    b1 = A([24.5, 9.8, -5.8]) + 8.6 * _unit((0.35, 0.9, -0.25)) + 6.6 * m1
    h1 = b1 + 35.0 * m1
    R1 = _frame(m1, (0, 0, 1))
    bones[11] = _Bone(11, [
        _SE(b1, R1, j((5.0, 6.6, 7.2)), p=2.4, q=2.2),
        _Tube(b1 + 2.0 * m1, h1 - 2.0 * m1, j((4.2, 4.0))[:2], j((3.6, 3.4))[:2], bow=0.8),
        _SE(h1, R1, j((5.6, 6.4, 6.8)), p=2.0, q=2.0),
    ], k=3.0, frame="distal", shaft=(b1, h1), epi=0.16, t_shaft=1.8)
    # --- forearm: radius (metaphysis block, shaft, styloid) and ulna (head, shaft, styloid)
    bones[9] = _Bone(9, [
        _SE(A([3.2, -31.0, 0.0]), _frame(tilt((-0.25, 1.0, -0.15), 2.0), (0, 0, 1)), j((14.0, 17.0, 11.0)),
            p=3.0, q=2.6, taper=0.3),
        _Tube(A([0.5, -33.0, 0.5]), A([-1.0, -140.0, 0.5]), j((9.0, 6.8))[:2], j((7.0, 5.8))[:2], hint=(0, 0, 1)),
        _SE(A([17.2, -20.5, -1.0]), R_ard, j((6.8, 3.6, 4.8)), p=2.2, q=2.0, taper=-0.45),
    ], k=5.0, frame="fixed", shaft=(A([2.0, -12.0, 0.0]), A([-1.0, -140.0, 0.5])), epi=0.22, t_shaft=2.4)
    bones[10] = _Bone(10, [
        _SE(A([-21.6, -26.8, 1.0]) + uv, R_ard, j((7.2, 8.0, 8.0)), p=2.2, q=2.2),
        _Tube(A([-21.4, -30.0, 1.5]) + uv, A([-19.5, -140.0, 1.5]), j((6.0, 6.0))[:2], j((5.2, 5.0))[:2]),
        _SE(A([-26.8, -19.0, 3.0]) + uv, R_ard, j((5.0, 2.3, 2.4)), p=2.0, q=2.0, taper=-0.5),
    ], k=3.0, frame="fixed", shaft=(A([-21.6, -14.0, 1.0]) + uv, A([-19.5, -140.0, 1.5])), epi=0.2, t_shaft=2.2)
    return bones


def _motions(dev: float, flex: float, bones: dict[int, _Bone]) -> dict[str, np.ndarray]:
    """Design-frame 4x4 motions for radial/ulnar deviation and flexion/extension.

    Deviation is split 30 % radiocarpal / 70 % midcarpal: the proximal row turns by 0.3 dev about the lunate
    centre and slides radially by 0.07 mm per degree of ulnar deviation (and ulnarly in radial deviation);
    the distal row and the metacarpals then turn by the rest about the (moved) capitate head. Flexion is
    split 40 / 60 the same way. The scaphoid additionally flexes in radial deviation (0.6 deg/deg) and
    extends in ulnar deviation (0.25 deg/deg), which foreshortens it in the PA view as in real wrists.
    """
    lunate_c = bones[2].prims[0].c
    rot_p = _rot(2, 0.3 * dev) @ _rot(0, 0.4 * flex)
    prox = _affine(rot_p, lunate_c, np.array([0.07 * dev, 0.0, 0.0]))
    head = (prox @ np.array([0.0, 0.0, 0.0, 1.0]))[:3]
    rot_d = _rot(2, 0.7 * dev) @ _rot(0, 0.6 * flex)
    dist = _affine(rot_d, head) @ prox
    sc = bones[1].prims[0].c
    s_flex = 0.6 * max(-dev, 0.0) - 0.25 * max(dev, 0.0)
    scaph = prox @ _affine(_rot(0, s_flex), sc)
    return {"fixed": np.eye(4), "proximal": prox, "distal": dist, "scaphoid": scaph}


# ----------------------------------------------------------------------------------------------- soft tissue
def _body_dist(Xf: Sequence[np.ndarray], Xh: Sequence[np.ndarray], p: dict[str, Any]) -> np.ndarray:
    """Approximate signed distance (design mm) to the skin.

    One elliptic cross-section per level along the limb (half width ``W(a)``, half depth ``D(a)``, centre
    ``(rc(a), dc(a))``, piecewise linear in ``a``), evaluated in coordinates that blend smoothly from the
    forearm frame ``Xf`` to the moving hand frame ``Xh`` across the wrist
    (``X = Xf + w (Xh - Xf)``, ``w = smoothstep((a_f + 30) / 28)``), so deviation and flexion bend the outline
    without steps; then the thenar and hypothenar eminences and the thumb are smoothly united to it.
    """
    w = np.clip((Xf[1] + 30.0) * (1.0 / 28.0), 0.0, 1.0)
    w = w * w * (3.0 - 2.0 * w)
    r, a, d = (f + w * (g - f) for f, g in zip(Xf, Xh))
    wf, df, wh, dh, rcf = (float(p[k]) for k in ("wf", "df", "wh", "dh", "rc"))
    knots = [-250.0, -22.0, -6.0, 22.0, 48.0, 250.0]
    W = np.interp(a, knots, [wf + 0.07 * 228.0, wf, wf, wh - 5.0, wh, wh]).astype(np.float32)
    D = np.interp(a, knots, [df + 0.05 * 228.0, df, df - 1.0, dh + 1.5, dh, dh]).astype(np.float32)
    rc = np.interp(a, knots, [rcf, rcf, rcf, -3.0, -5.0, -5.5]).astype(np.float32)
    dc = np.interp(a, knots, [0.5, 0.5, 0.0, -2.0, -3.0, -3.0]).astype(np.float32)
    u, v = r - rc, d - dc
    F = np.sqrt((u / W) ** 2 + (v / D) ** 2)
    s = np.sqrt(u * u + v * v) * (1.0 - 1.0 / np.maximum(F, 1e-3))
    for prim in p["extra"]:
        s = _smin(s, prim.dist(Xh), 8.0)
    return s - float(p["extra_thick"])


def _soft_params(rng: np.random.Generator, bones: dict[int, _Bone], soft_scale: float) -> dict[str, Any]:
    b1, h1 = bones[11].shaft  # type: ignore[misc]
    m1 = _unit(h1 - b1)
    return {
        "wf": rng.uniform(29.0, 32.0), "df": rng.uniform(18.5, 21.0), "rc": -5.0,
        "wh": rng.uniform(41.0, 45.0), "dh": rng.uniform(13.0, 15.5),
        "extra_thick": soft_scale,
        "extra": [
            _SE(np.array([21.0, 33.0, -8.0]), _frame((0.3, 1.0, -0.1), (0, 0, 1)), (22.0, 11.0, 10.0)),  # thenar
            _SE(np.array([-28.0, 38.0, -6.0]), _frame((-0.1, 1.0, 0.0), (0, 0, 1)), (26.0, 9.0, 9.5)),  # hypothenar
            _Tube(b1 - 4.0 * m1, h1 + 16.0 * m1, (11.0, 10.0), (10.0, 9.0), hint=(0, 0, 1)),  # thumb
        ],
    }


def _upsample(coarse: np.ndarray, start: Sequence[float], step: float, axes: Sequence[np.ndarray]) -> np.ndarray:
    """Separable linear interpolation of a field on a regular grid (first sample ``start``, spacing ``step``,
    axes in array order) at the coordinates ``axes`` (one 1-D array per array axis)."""
    out = coarse.astype(np.float32)
    for ax, (s0, pts) in enumerate(zip(start, axes)):
        f = np.clip((np.asarray(pts, float) - s0) / step, 0.0, out.shape[ax] - 1.000001)
        i0 = np.floor(f).astype(int)
        w = (f - i0).astype(np.float32)
        shape = [1] * out.ndim
        shape[ax] = -1
        w = w.reshape(shape)
        out = np.take(out, i0, axis=ax) * (1.0 - w) + np.take(out, i0 + 1, axis=ax) * w
    return out


# ----------------------------------------------------------------------------------------------- sampling
def _draw(rng: np.random.Generator, value: Any, lo: float, hi: float) -> float:
    """Draw uniformly in [lo, hi] (always consuming one number, so fixing one parameter keeps the others)."""
    drawn = float(rng.uniform(lo, hi))
    return drawn if value is None else float(value)


def _check(name: str, value: float | None, lo: float, hi: float) -> None:
    if value is None:
        return
    if not np.isfinite(value) or not lo <= value <= hi:
        raise InputError(f"simulate_hand: {name}={value!r} is outside the supported range [{lo}, {hi}]; "
                         f"pass a value in that range or leave it out to draw one at random.")


def simulate_hand(
    rng: np.random.Generator | int,
    *,
    spacing_mm: float = 0.5,
    side: str | None = None,
    scale: float | None = None,
    deviation_deg: float | None = None,
    flexion_deg: float | None = None,
    pronation_deg: float | None = None,
    ulnar_variance_mm: float | None = None,
    osteoporosis: float | None = None,
    soft_tissue_mm: float | None = None,
    forearm_mm: float | None = None,
    noise_hu: float = 0.0,
) -> HandPhantom:
    """Draw one adult hand/wrist CT phantom (HU) with its bone labels; see the module docstring.

    Parameters (each ``None`` means "draw it from ``rng``"; ranges are the drawn ranges):

    * ``spacing_mm``: isotropic voxel size (0.2-2 mm). 0.5 mm gives ~ 220 x 130 x 330 voxels.
    * ``side``: ``"left"`` or ``"right"`` (50/50).
    * ``scale``: overall size 0.85-1.15.
    * ``deviation_deg``: -15 (radial) .. +25 (ulnar) deviation.
    * ``flexion_deg``: -15 (extension) .. +15 (flexion).
    * ``pronation_deg``: -10 (supination) .. +10 (pronation) rotation of the whole hand about the forearm axis.
    * ``ulnar_variance_mm``: -2 .. +2 (positive: ulnar head more distal).
    * ``osteoporosis``: 0 (young adult) .. 1 (severe); drawn 0 in 60 % of phantoms, else uniform 0.2-1.
    * ``soft_tissue_mm``: -2 .. +4 added to the soft-tissue thickness.
    * ``forearm_mm``: 40-60 mm of forearm proximal to the distal radius in the field.
    * ``noise_hu``: standard deviation of white CT noise added to the HU (default 0: the projector adds its own).
    """
    t0 = time.perf_counter()
    seed = None
    if isinstance(rng, (int, np.integer)):
        seed = int(rng)
        rng = np.random.default_rng(seed)
    elif not isinstance(rng, np.random.Generator):
        raise InputError("simulate_hand: rng must be a numpy Generator or an integer seed.")
    if not (np.isfinite(spacing_mm) and 0.2 <= spacing_mm <= 2.0):
        raise InputError(f"simulate_hand: spacing_mm={spacing_mm!r} must be between 0.2 and 2 mm.")
    if side is not None and side not in ("left", "right"):
        raise InputError(f"simulate_hand: side must be 'left' or 'right' (or None to draw it); got {side!r}.")
    _check("scale", scale, 0.7, 1.3)
    _check("deviation_deg", deviation_deg, -25.0, 35.0)
    _check("flexion_deg", flexion_deg, -30.0, 30.0)
    _check("pronation_deg", pronation_deg, -30.0, 30.0)
    _check("ulnar_variance_mm", ulnar_variance_mm, -4.0, 4.0)
    _check("osteoporosis", osteoporosis, 0.0, 1.0)
    _check("soft_tissue_mm", soft_tissue_mm, -3.0, 8.0)
    _check("forearm_mm", forearm_mm, 20.0, 100.0)
    if not (np.isfinite(noise_hu) and noise_hu >= 0):
        raise InputError(f"simulate_hand: noise_hu={noise_hu!r} must be >= 0.")

    # ---- global draws (always consumed in the same order: fixing one keeps the others)
    side_drawn = "left" if rng.random() < 0.5 else "right"
    side = side or side_drawn
    S = _draw(rng, scale, 0.85, 1.15)
    dev = _draw(rng, deviation_deg, -15.0, 25.0)
    flex = _draw(rng, flexion_deg, -15.0, 15.0)
    pron = _draw(rng, pronation_deg, -10.0, 10.0)
    uvar = _draw(rng, ulnar_variance_mm, -2.0, 2.0)
    o_draw = 0.0 if rng.random() < 0.6 else float(rng.uniform(0.2, 1.0))
    osteo = o_draw if osteoporosis is None else float(osteoporosis)
    soft = _draw(rng, soft_tissue_mm, -2.0, 4.0)
    fore = _draw(rng, forearm_mm, 40.0, 60.0)
    gap_join = float(rng.uniform(1.5, 2.1))  # dilation of the cutters = articular joint space (mm, design)
    cortex_hu = float(rng.uniform(1150.0, 1550.0)) * (1.0 - 0.25 * osteo)
    canc_hu = float(rng.uniform(250.0, 420.0)) * (1.0 - 0.45 * osteo)
    t_cortex = float(rng.uniform(0.9, 1.4)) * (1.0 - 0.4 * osteo)
    marrow_hu = float(rng.uniform(0.0, 80.0))
    fat_mm = float(rng.uniform(2.0, 6.0))
    skin_mm = float(rng.uniform(1.0, 1.6))
    fat_hu = float(rng.uniform(-115.0, -85.0))
    muscle_hu = float(rng.uniform(42.0, 58.0))
    skin_hu = float(rng.uniform(15.0, 45.0))

    bones = _design(rng, uvar)
    sizes = {lab: float(rng.uniform(0.92, 1.08)) for lab in sorted(bones)}
    motions = _motions(dev, flex, bones)
    soft_p = _soft_params(rng, bones, soft)

    # ---- design -> world (LPS) affine
    G = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    if side == "left":
        G = np.diag([-1.0, 1.0, 1.0]) @ G
    world_from_design = np.eye(4)
    world_from_design[:3, :] = (S * G) @ _affine(_rot(1, pron), _FOREARM_CENTRE)[:3, :]

    def bone_map(lab: int, frame: str | None = None) -> np.ndarray:
        """world <- design-neutral coordinates of bone ``lab`` (motion after per-bone size jitter)."""
        b = bones[lab]
        centre = b.prims[0].c
        size = _affine(np.eye(3) * sizes[lab], centre)
        return world_from_design @ motions[frame or b.frame] @ size

    # cutters (concave articular surfaces): frame of the cutting bone, dilated by the joint gap
    cut_specs: dict[int, list[tuple[Any, np.ndarray, float]]] = {
        2: [(bones[7], bone_map(7), S * sizes[7])],
        1: [(bones[7], bone_map(7), S * sizes[7])],
        9: [(bones[1], bone_map(1, "fixed"), S * sizes[1]),
            (bones[2], bone_map(2, "fixed"), S * sizes[2]),
            (bones[10].prims[0], bone_map(10), S * sizes[10])],
    }

    # ---- field of view: the body outline on a coarse grid, z cut at the forearm end and past the MC heads
    mc_tops = []
    for lab in _METACARPALS:
        c = bone_map(lab)
        pts = bones[lab].prims[2].corners()
        mc_tops.append(((pts @ c[:3, :3].T) + c[:3, 3])[:, 2])
    z_hi = float(np.max(np.concatenate(mc_tops))) - 2.0
    z_lo = S * (-18.0 - fore)
    hand_from_world = np.linalg.inv(world_from_design @ motions["distal"])
    fore_from_world = np.linalg.inv(world_from_design)

    def body_on(xs: np.ndarray, ys: np.ndarray, zs: np.ndarray) -> np.ndarray:
        def coords(m: np.ndarray) -> list[np.ndarray]:
            return [(m[r, 0] * xs[None, None, :] + m[r, 1] * ys[None, :, None] + m[r, 2] * zs[:, None, None]
                     + m[r, 3]).astype(np.float32) for r in range(3)]
        return _body_dist(coords(fore_from_world), coords(hand_from_world), soft_p) * S

    # the skin distance is smooth (curvature radii >= 10 mm), so it is evaluated on a 2 mm grid and
    # interpolated (separable linear, error < 0.05 mm) onto the voxel grid
    c4 = np.arange(-120.0, 121.0, 4.0)
    inside = body_on(c4, c4, np.arange(z_lo, z_hi + 4.0, 4.0)) < 0
    if not inside.any():  # pragma: no cover - design error
        raise RuntimeError("hand phantom: empty body outline")
    _, jj, ii = np.nonzero(inside)
    margin = 4.0
    xb = np.arange(c4[max(ii.min() - 1, 0)], c4[min(ii.max() + 1, c4.size - 1)] + 0.1, 2.0)
    yb = np.arange(c4[max(jj.min() - 1, 0)], c4[min(jj.max() + 1, c4.size - 1)] + 0.1, 2.0)
    hc = 2.0
    zc = np.arange(z_lo - hc, z_hi + 2 * hc, hc)
    coarse = body_on(xb, yb, zc)
    _, jj, ii = np.nonzero(coarse < 0)
    x0, x1 = xb[ii.min()] - margin, xb[ii.max()] + margin
    y0, y1 = yb[jj.min()] - margin, yb[jj.max()] + margin
    h = float(spacing_mm)
    ni, nj, nk = (int(np.ceil((x1 - x0) / h)) + 1, int(np.ceil((y1 - y0) / h)) + 1,
                  int(np.ceil((z_hi - z_lo) / h)) + 1)
    origin = np.array([x0, y0, z_lo])
    xs = (origin[0] + h * np.arange(ni)).astype(np.float32)
    ys = (origin[1] + h * np.arange(nj)).astype(np.float32)
    zs = (origin[2] + h * np.arange(nk)).astype(np.float32)

    # ---- soft tissue (full field)
    s_body = _upsample(coarse, (zc[0], yb[0], xb[0]), hc, (zs, ys, xs))
    depth = -s_body
    ct = np.where(depth < skin_mm, np.float32(skin_hu),
                  np.where(depth < skin_mm + fat_mm, np.float32(fat_hu), np.float32(muscle_hu)))
    # gentle muscle inhomogeneity (separable, cheap): +-4 HU
    ct += (4.0 * np.cos(zs / 9.0 + rng.uniform(0, 6.3))).astype(np.float32)[:, None, None] * (depth > skin_mm + fat_mm)
    frac_body = np.clip(0.5 - s_body / h, 0.0, 1.0)
    ct = (frac_body * (ct + np.float32(1000.0)) - np.float32(1000.0)).astype(np.float32)
    del depth, s_body, frac_body

    # ---- bones, pass 1: signed distances in their boxes, two smallest per voxel
    g_min = max(gap_join * S, 1.8 * h)
    hc_bone = h * max(1, int(round(1.0 / h)))
    big = np.float32(1e3)
    S1 = np.full((nk, nj, ni), big, np.float32)
    S2 = np.full((nk, nj, ni), big, np.float32)
    L = np.zeros((nk, nj, ni), np.uint8)
    boxes: dict[int, tuple[tuple[slice, slice, slice], np.ndarray, list[np.ndarray]]] = {}
    for lab in sorted(bones):
        b = bones[lab]
        m = bone_map(lab)
        pts = b.corners() @ m[:3, :3].T + m[:3, 3]
        lo = np.floor((pts.min(0) - g_min - 2 * h - origin) / h).astype(int)
        hi = np.ceil((pts.max(0) + g_min + 2 * h - origin) / h).astype(int) + 1
        lo = np.maximum(lo, 0)
        hi = np.minimum(hi, [ni, nj, nk])
        if np.any(hi <= lo):
            continue
        sl = (slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0]))
        bx, by, bz = xs[sl[2]], ys[sl[1]], zs[sl[0]]
        # the distance is smooth on the voxel scale: evaluate it on a ~1 mm grid and interpolate linearly
        # (error ~ hc^2 / (8 R) < 0.03 mm for surface curvature radii R >= 4 mm)
        if hc_bone == h:
            cx, cy, cz = bx, by, bz
        else:
            cx, cy, cz = (v[0] + hc_bone * np.arange(int(np.ceil((v[-1] - v[0]) / hc_bone - 1e-6)) + 1,
                                                     dtype=np.float32) for v in (bx, by, bz))

        def coords(mm: np.ndarray) -> list[np.ndarray]:
            inv = np.linalg.inv(mm)
            return [(inv[r, 0] * cx[None, None, :] + inv[r, 1] * cy[None, :, None] + inv[r, 2] * cz[:, None, None]
                     + inv[r, 3]).astype(np.float32) for r in range(3)]

        unit = S * sizes[lab]  # design mm -> world mm
        s = b.dist(coords(m)) * unit
        for prim, cm, cu in cut_specs.get(lab, []):
            s = np.maximum(s, gap_join * S - prim.dist(coords(cm)) * cu)
        if hc_bone != h:
            s = _upsample(s, (cz[0], cy[0], cx[0]), hc_bone, (bz, by, bx))
        s = s.astype(np.float32, copy=False)
        s1, s2, lb = S1[sl], S2[sl], L[sl]
        closer = s < s1
        S2[sl] = np.minimum(s2, np.maximum(s1, s))
        S1[sl] = np.where(closer, s, s1)
        L[sl] = np.where(closer, np.uint8(lab), lb)
        boxes[lab] = (sl, s, np.linalg.inv(m))

    # ---- pass 2: carve joint spaces, write labels and HU
    labels = np.zeros((nk, nj, ni), np.uint8)
    tex_sigma = 0.45 / h
    for lab, (sl, s, inv) in boxes.items():
        b = bones[lab]
        other = np.where(L[sl] == lab, S2[sl], S1[sl])
        sc = np.maximum(s, 0.5 * (s - other + g_min))
        inside = sc < 0
        labels[sl][inside] = lab
        frac = np.clip(0.5 - sc / h, 0.0, 1.0)
        near = frac > 0
        if not near.any():
            continue
        # cortex thickness and interior density (cancellous, or marrow in the shafts)
        t_c = np.full(sc.shape, t_cortex, np.float32)
        interior = np.full(sc.shape, canc_hu, np.float32)
        if b.shaft is not None:
            p0, p1 = b.shaft
            ax = p1 - p0
            # axial position t (0 base, 1 head) is affine in the world coordinates: t = g . p + t0
            gvec = (inv[:3, :3].T @ ax) / float(ax @ ax)
            t0 = float((inv[:3, 3] - p0) @ ax) / float(ax @ ax)
            tt = (float(gvec[0]) * xs[sl[2]][None, None, :] + float(gvec[1]) * ys[sl[1]][None, :, None]
                  + float(gvec[2]) * zs[sl[0]][:, None, None] + t0)
            w_epi = np.clip(np.maximum(b.epi - tt, tt - (1.0 - b.epi)) / 0.08 + 0.5, 0.0, 1.0)
            if lab in (9, 10):  # forearm bones: only the distal end is in the field
                w_epi = np.clip((b.epi - tt) / 0.06 + 0.5, 0.0, 1.0)
            t_c = t_c + (b.t_shaft * (1.0 - 0.4 * osteo) - t_c) * (1.0 - w_epi)
            interior = marrow_hu + (canc_hu - marrow_hu) * w_epi
        noise = ndimage.gaussian_filter(rng.standard_normal(sc.shape).astype(np.float32), tex_sigma, mode="nearest")
        noise /= max(float(noise.std()), 1e-6)
        interior = interior * (1.0 + 0.18 * np.clip(noise, -2.5, 2.5))
        w = np.clip((t_c + sc) / 0.4 + 0.5, 0.0, 1.0)  # 1 in the cortex (depth < t_c), 0 deeper
        bone_hu = interior + (cortex_hu - interior) * w
        sub = ct[sl]
        sub[near] = (sub + frac * (bone_hu - sub))[near]
        ct[sl] = sub

    # ---- discrete safety pass: no two bones may be 26-neighbours
    nz = np.nonzero(labels)
    removed = 0
    if nz[0].size:
        bb = tuple(slice(max(int(a.min()) - 1, 0), int(a.max()) + 2) for a in nz)
        sub = labels[bb]
        mx = ndimage.maximum_filter(sub, size=3, mode="constant", cval=0)
        touch = (sub > 0) & (mx > sub)
        removed = int(touch.sum())
        if removed:
            sub[touch] = 0
            labels[bb] = sub
            ctsub = ct[bb]
            ctsub[touch] = muscle_hu
            ct[bb] = ctsub

    if noise_hu > 0:
        ct += rng.normal(0.0, noise_hu, ct.shape).astype(np.float32)

    centres = {}
    for lab in sorted(bones):
        m = bone_map(lab)
        c = bones[lab].prims[0].c
        centres[BONE_NAMES[lab]] = (m[:3, :3] @ c + m[:3, 3]).tolist()
    carpus_c = (world_from_design @ motions["proximal"] @ np.array([2.0, -4.0, 0.0, 1.0]))[:3]
    info = {
        "seed": seed, "side": side, "scale": S, "deviation_deg": dev, "flexion_deg": flex,
        "pronation_deg": pron, "ulnar_variance_mm": uvar, "osteoporosis": osteo, "soft_tissue_mm": soft,
        "forearm_mm": fore, "joint_gap_mm": gap_join * S, "min_gap_mm": g_min, "cortex_hu": cortex_hu,
        "cancellous_hu": canc_hu, "cortex_mm": t_cortex, "marrow_hu": marrow_hu, "fat_mm": fat_mm,
        "bone_size_factors": {BONE_NAMES[k]: v for k, v in sizes.items()},
        "bone_centres_lps": centres, "carpus_centre_lps": carpus_c.tolist(),
        "touch_voxels_removed": removed,
        "frame": "LPS; forearm axis +z (fingers superior), dorsal +y, radial side +x (right hand) / -x (left hand)",
        "seconds": time.perf_counter() - t0,
    }
    meta = {"modality": "CT", "simulated": "hand_phantom", "side": side}
    ct_vol = Volume(ct.astype(np.float32, copy=False), (h, h, h), tuple(origin), np.eye(3), {**meta, "units": "HU"})
    lab_vol = Volume(labels, (h, h, h), tuple(origin), np.eye(3), {**meta, "label_names": dict(BONE_NAMES)})
    return HandPhantom(ct_vol, lab_vol, info)


def pa_view(ph: HandPhantom) -> dict[str, Any]:
    """Where a DRR projector should look for a PA wrist radiograph with the fingers up.

    Returns (LPS, unit vectors), in the conventions of :mod:`MedSegAILib.simulate.drr` (image seen from the
    source side, ``column_dir x row_dir = view_dir``):

    * ``isocentre``: the carpus centre (between the two carpal rows), the point the central ray passes;
    * ``view_dir``: the beam direction, source -> detector = ``(0, -1, 0)`` (from the dorsum to the palm);
    * ``up``: the direction shown at the top of the image (row 0) = ``(0, 0, 1)``, towards the fingers;
    * ``column_dir`` = ``(-1, 0, 0)`` and ``row_dir`` = ``-up``: as when looking at the back of a hand lying
      palm-down on the cassette, the usual display: a left hand has its thumb on the image right (the
      bone-age convention), a right hand on the image left;
    * ``direction``: the 3x3 matrix with columns ``column_dir, row_dir, view_dir`` (a planar Volume's direction);
    * ``source_to_isocentre_mm`` (960) and ``isocentre_to_detector_mm`` (40): a typical table-top PA wrist
      set-up (100 cm source-image distance, hand on the cassette).
    """
    iso = np.asarray(ph.info["carpus_centre_lps"], float)
    view = np.array([0.0, -1.0, 0.0])
    up = np.array([0.0, 0.0, 1.0])
    col = np.cross(-up, view)  # u = v x n with v = -up, so that u x v = n
    return {
        "isocentre": iso,
        "view_dir": view,
        "up": up,
        "column_dir": col,
        "row_dir": -up,
        "direction": np.stack([col, -up, view], axis=1),
        "source_to_isocentre_mm": 960.0,
        "isocentre_to_detector_mm": 40.0,
        "side": ph.info["side"],
    }
