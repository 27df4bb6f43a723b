"""Dual-tracer planar neck scintigraphy simulator (99mTc-sestamibi + 123I) with exact parathyroid truth.

The physician's problem (the NM-USNet task): sestamibi is taken up by the thyroid, by hyperfunctioning
parathyroid adenomas, the salivary glands, the heart and a soft-tissue background; 123I only by the thyroid
(and a faint background). A scaled, registered iodine image subtracted from the sestamibi image leaves the
adenomas. This module draws one random anatomy and images it twice (plus, optionally, a delayed sestamibi
frame), analytically and fast enough to generate thousands of training studies.

Projection model
----------------
Anterior parallel-hole planar imaging: the expected count density at an image point is the integral of the
activity concentration along the anterior-posterior line through it. Every structure is
an ellipsoid (or a difference of two: the myocardial shell) with in-plane semi-axes ``(a, b)`` rotated by
``phi`` and a depth semi-axis ``c``; its line integral is the chord length

    L(u, v) = 2 c sqrt(1 - r^2),   r^2 = (u'/a)^2 + (v'/b)^2   (0 outside),

times its concentration. The discretised chord image of each ellipsoid is renormalised so that its sum times
the sample area equals the exact volume ``4/3 pi a b c`` (so the counts of each structure, e.g. of each
adenoma, are exact whatever the pixel size). Chords are sampled on a grid 2x finer than the image and
area-averaged 2x2 (anti-aliasing). The neck/body is an elliptic cylinder whose half-width ``w(v)`` and
half-depth ``d(v)`` vary smoothly with height (head above the jaw line, neck, shoulders/upper chest at the
bottom of large fields of view): ``L_body = 2 d(v) sqrt(1 - ((u - midline) / w(v))^2)``. It is the one
structure thick enough (100-230 mm) for attenuation to change its look, so it enters as the attenuation-weighted
thickness ``(1 - exp(-mu L_body)) / mu`` (mu = 0.0150 / mm at 140 keV, 0.0145 / mm at 159 keV): without it the
chest and head would outshine the neck in proportion to their thickness. Being smooth on the pixel scale, it is
sampled at the pixel centres. The organs are unattenuated (their concentrations are effective values).

Image-plane coordinates: ``u`` = LPS x (mm, towards the patient's left = +i) and ``v`` = -(LPS z) (mm,
towards inferior = +j). The image plane is LPS y = 0; direction columns i=(1,0,0), j=(0,0,-1), k=(0,1,0)
(anterior view, row 0 superior, column 0 the patient's right), as everywhere in the project.

Counts
------
Each image gets a gain ``s`` (expected counts per pixel per mm of chord at unit, thyroid-relative,
concentration): the expected image is ``s * blur(sum_structures conc * L)``, then Poisson noise. Physical
consistency: ``s = G * A0 * D(t0, T) * pixel_area`` with the decay integral

    D(t0, T) = exp(-lambda t0) (1 - exp(-lambda T)) / lambda,   lambda = ln 2 / half-life,

``A0`` the injected activity (MBq), ``t0`` the frame start after that tracer's injection and ``T`` the frame
duration. ``G`` (the lumped camera sensitivity x thyroid uptake) is chosen so that the thyroid peak of a
10-minute frame started at the drawn ``t0`` would be the drawn target (Tc 40-200, 123I 100-500 counts per
pixel, the clinical ranges: sestamibi thyroid images are the noisier ones). The same ``G`` serves the delayed
sestamibi frame, so early and late counts are mutually consistent. Because the thyroid concentration is 1 in
both tracers (nodules scale both alike), ``true_scale = s_tc / s_iodine`` is exactly the ideal subtraction
factor: noise-free thyroid counts in Tc = ``true_scale`` x those of 123I before blur (after blur the ratio of
sums over the thyroid is ``true_scale``; pointwise it differs only by the slightly different blur).

Drawn ranges (and why)
----------------------
* pixel 1.6-3.0 mm (128 matrix: FOV 200-380 mm, from a zoomed neck view to neck + upper chest, which is
  where ectopic mediastinal glands and the heart come in); FOV centre: neck midline within +-15 mm of the centre column, thyroid centre in the central third
  of the rows; adenomas are drawn inside the FOV (5 mm margin) whenever the FOV allows it.
* body: neck half-width 50-70 mm (neck width 100-140 mm), half-depth 45-60 mm; head above the jaw line
  (half-width 65-80, half-depth 75-95); shoulders/upper chest below the sternal notch (half-width 150-210,
  half-depth 85-115). Background concentration relative to thyroid: Tc 0.045-0.09, 123I 0.006-0.02
  (sestamibi has a much higher soft-tissue/muscle background than iodide): a neck background of roughly
  14-37 % of the thyroid peak in Tc and 2-10 % in 123I.
* thyroid: lobes height 35-60 mm, width 12-25 mm, depth 12-20 mm, centres 18-28 mm from the midline,
  tilted -5..+15 deg with the upper pole outwards (the butterfly shape of thyroid scans; within +-15 deg),
  right/left size ratio 0.75-1.25; isthmus (85 %): thin bar 6-12 mm high, 4-8 mm deep across the lower
  thirds; a co-moving heterogeneity of 5-20 % (random plane waves, wavelengths 10-30 mm, identical in both
  tracers) keeps the lobes from looking like uniform ellipsoids. Nodules (8 % cold, concentration 0.1-0.4;
  6 % hot, 1.5-2.5; both tracers alike so they cancel in an ideal subtraction and never enter the truth).
* salivary glands: parotids (centre 60-100 mm above the thyroid's upper pole, 45-62 mm lateral, 40-60 mm
  high, 16-24 mm effective depth) and submandibular glands (35-60 mm above, 22-38 mm lateral, 14-20 mm deep);
  sestamibi 0.4-1.5 x thyroid concentration, 123I 0-3 % (iodide-poor in these images). In projection they are
  typically 0.7-2.8x (median 1.4x) the thyroid peak, as in early sestamibi images; often partly outside small FOVs.
* heart (50 % of cases; visible only in the larger FOVs): myocardial shell of the left ventricle, centre
  30-60 mm left of the midline and 150-200 mm below the thyroid centre, sestamibi 0.25-0.7 x thyroid (an
  effective value: the heart lies deep, attenuation roughly halves it), no 123I.
* adenomas: n ~ {0: 15 %, 1: 55 %, 2: 20 %, 3: 10 %}; largest diameter uniform in [min, max], other axes
  0.7-1 x; orthotopic (inferior pole 55 %, superior pole 25 %, posterior/lateral margin 20 %, partly
  overlapping the lobe in projection since they lie behind it) or ectopic (mediastinal 20-60 mm below the
  thyroid's lower edge within 15 mm of the midline; carotid-sheath/undescended 10-30 mm lateral to a lobe, up
  to 40 mm above the upper pole; retro-oesophageal near the midline behind the thyroid). Sestamibi
  concentration 0.7-2.0 x thyroid, no 123I. Footprints never overlap (>= 2 mm apart in projection).
* blur (collimator + scatter), Gaussian FWHM: Tc 7-11 mm; 123I = Tc + 0-2 mm, clipped to 8-12 mm.
* timing: Tc frame start 10-20 min after injection; 123I 2-4 h after its own injection; frames 300-900 s
  each; injected Tc 400-900 MBq, 123I 10-25 MBq. Delayed sestamibi (``late=True``) starts 100-140 min after
  the early frame with biological retention thyroid 40-70 %, adenomas 75-105 %, salivary 30-60 %,
  background 60-80 %, heart 75-95 % (differential washout: adenomas retain sestamibi longer).
* motion (iodine anatomy vs tc): dx, dy in [-6, 6] mm, rotation in [-3, 3] deg about the thyroid centre.

Motion convention
-----------------
A point ``p = (u, v)`` of the anatomy in the tc image (``u`` along +i = LPS +x, ``v`` along +j = LPS -z, in
mm) is at ``p' = c + R(theta) (p - c) + (dx, dy)`` in the iodine image, with ``c`` the thyroid centre and
``R = [[cos, -sin], [sin, cos]]`` acting on ``(u, v)``: positive ``rotation_deg`` turns +i towards +j, i.e.
clockwise on a screen showing row 0 at the top. ``dx_mm > 0`` moves the iodine anatomy to the patient's left
(higher column index), ``dy_mm > 0`` moves it inferiorly (higher row index). See :func:`apply_motion`.

Not modelled: organ attenuation and depth-dependent resolution (adenomas behind the thyroid are in reality a
little more attenuated than the thyroid), septal penetration of 123I's high-energy photons, pinhole
magnification, lungs, liver.

Everything is drawn from ``numpy.random.default_rng(seed)``, in independent streams (anatomy, adenomas,
acquisition, noise): the anatomy and the acquisition do not depend on the keyword switches (``n_adenomas``,
``motion``, ``late``, ``salivary``, ``heart``, ``noise``, ``count_scale``, the iodine grid), so flipping one of
them changes only what it names. (The adenoma positions do depend on the tc FOV, i.e. on ``matrix`` and
``pixel_mm``, since they are drawn inside it.) Speed: ~10-15 ms per 128^2 study on one core.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import numpy as np
from scipy import ndimage

from MedSegAILib.core.volume import Volume
from MedSegAILib.errors import InputError

TC_HALF_LIFE_S = 6.0067 * 3600
I123_HALF_LIFE_S = 13.2235 * 3600

#: Planar anterior-view direction matrix (columns i, j, k in LPS): i -> patient's left, j -> inferior.
PLANAR_DIRECTION = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])

from MedSegAILib.core.filters import FWHM_TO_SIGMA  # noqa: E402
_TRUNCATE = 4.0  # Gaussian kernel radius in sigmas
_SS = 2  # supersampling factor per axis
_REFERENCE_FRAME_S = 600.0  # the count targets are for a 10-minute frame
_MAX_ADENOMAS = 6
#: Narrow-beam soft-tissue attenuation coefficients (1/mm) at 140 keV (99mTc) and 159 keV (123I), used for
#: the thick body background only.
MU_TC, MU_I123 = 0.0150, 0.0145

#: Biological retention ranges of the delayed sestamibi frame, per structure category.
LATE_RETENTION = {
    "thyroid": (0.40, 0.70),
    "adenoma": (0.75, 1.05),
    "salivary": (0.30, 0.60),
    "background": (0.60, 0.80),
    "heart": (0.75, 0.95),
}
_CATEGORIES = ("background", "thyroid", "salivary", "heart", "adenoma")


# ---------------------------------------------------------------------------------------------- public types
@dataclass
class Adenoma:
    """One parathyroid adenoma (in-plane position in LPS on the image plane y = 0)."""

    label: int  #: 1..n, its value in ``NeckStudy.adenoma_labels``
    center_lps: np.ndarray  #: (3,) mm, on the image plane
    diameter_mm: float  #: largest diameter
    ectopic: bool
    site: str  #: "inferior-left", "superior-right", "posterior-left", "mediastinal", "carotid-sheath-left"...
    uptake_ratio: float  #: sestamibi concentration relative to thyroid tissue
    semi_axes_mm: tuple = (0.0, 0.0, 0.0)  #: (a, b, c): in-plane a along angle_deg, in-plane b, depth c
    angle_deg: float = 0.0  #: in-plane orientation of the a axis, from +i towards +j
    expected_counts: float = 0.0  #: noise-free Tc counts of this adenoma in ``tc`` (= its sum in ``parathyroid``)


@dataclass
class NeckStudy:
    """One simulated dual-tracer study. All count images are float32 ``(1, H, W)`` planar Volumes."""

    tc: Volume
    iodine: Volume
    tc_late: Optional[Volume]
    parathyroid: Volume
    adenoma_labels: Volume
    thyroid_mask: Volume
    salivary_mask: Volume
    adenomas: list
    motion: dict
    true_scale: float
    params: dict
    #: noise-free expected counts per image and structure category (only with ``components=True``):
    #: ``{"tc": {"background", "thyroid", "salivary", "heart", "adenoma"}, "iodine": {...}, "tc_late": {...}}``
    components: dict = field(default_factory=dict)
    #: noise-free expected images ``{"tc", "iodine", "tc_late"}`` (the Poisson means of the images).
    expected: dict = field(default_factory=dict)


def decay_integral(half_life_s: float, start_s: float, duration_s: float) -> float:
    """``int_{t0}^{t0+T} exp(-lambda t) dt`` (seconds): counts per unit initial activity and sensitivity."""
    lam = math.log(2.0) / half_life_s
    return math.exp(-lam * start_s) * (1.0 - math.exp(-lam * duration_s)) / lam


def apply_motion(points_lps: np.ndarray, motion: dict) -> np.ndarray:
    """Map (N, 3) LPS points of the tc anatomy to where that anatomy is in the iodine image (y unchanged).

    ``p' = c + R(theta) (p - c) + (dx, dy)`` in plane coordinates ``(u, v) = (x, -z)``; see the module docstring.
    """
    pts = np.atleast_2d(np.asarray(points_lps, dtype=float)).copy()
    c = np.asarray(motion["center_lps"], float)
    th = math.radians(float(motion["rotation_deg"]))
    cs, sn = math.cos(th), math.sin(th)
    du, dv = pts[:, 0] - c[0], -(pts[:, 2] - c[2])
    u = c[0] + cs * du - sn * dv + float(motion["dx_mm"])
    v = -c[2] + sn * du + cs * dv + float(motion["dy_mm"])
    pts[:, 0], pts[:, 2] = u, -v
    return pts


# ---------------------------------------------------------------------------------------------- internals
@dataclass
class _Ell:
    """A projected ellipsoid: centre (u, v) mm, in-plane semi-axes a (along phi) and b, depth semi-axis c."""

    cu: float
    cv: float
    a: float
    b: float
    c: float
    phi: float  # radians, from +u towards +v
    cat: str
    conc_tc: float
    conc_i: float
    label: int = 0  # adenoma label (0: none)
    mask: str = ""  # footprint mask it contributes to ("thyroid", "salivary" or "")

    def moved(self, mot: "_Motion") -> "_Ell":
        cu, cv = mot.point(self.cu, self.cv)
        return _Ell(cu, cv, self.a, self.b, self.c, self.phi + mot.theta, self.cat, self.conc_tc, self.conc_i,
                    self.label, self.mask)

    def extent(self) -> tuple[float, float]:
        cs, sn = math.cos(self.phi), math.sin(self.phi)
        return math.hypot(self.a * cs, self.b * sn), math.hypot(self.a * sn, self.b * cs)

    def to_dict(self) -> dict[str, Any]:
        return {"center_uv_mm": [self.cu, self.cv], "semi_axes_mm": [self.a, self.b, self.c],
                "angle_deg": math.degrees(self.phi), "conc_tc": self.conc_tc, "conc_iodine": self.conc_i}


@dataclass
class _Motion:
    cu: float
    cv: float
    dx: float
    dy: float
    theta: float

    def point(self, u: float, v: float) -> tuple[float, float]:
        cs, sn = math.cos(self.theta), math.sin(self.theta)
        du, dv = u - self.cu, v - self.cv
        return self.cu + cs * du - sn * dv + self.dx, self.cv + sn * du + cs * dv + self.dy

    def inverse_grid(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Anatomy coordinates (before motion) of the image points (u, v) of the moved image."""
        cs, sn = math.cos(self.theta), math.sin(self.theta)
        du, dv = u - self.cu - self.dx, v - self.cv - self.dy
        return self.cu + cs * du + sn * dv, self.cv - sn * du + cs * dv

    @property
    def is_identity(self) -> bool:
        return self.dx == 0.0 and self.dy == 0.0 and self.theta == 0.0


def _smoothstep(x: np.ndarray) -> np.ndarray:
    """0 for x <= -0.5, 1 for x >= 0.5, C1-smooth cubic in between (a cheap sigmoid)."""
    t = np.clip(x + 0.5, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


@dataclass
class _Body:
    midline: float
    neck_w: float
    neck_d: float
    head_w: float
    head_d: float
    chest_w: float
    chest_d: float
    v_jaw: float  # head above (v < v_jaw)
    v_shoulder: float  # chest below (v > v_shoulder)
    conc_tc: float
    conc_i: float

    def chord(self, u: np.ndarray, v: np.ndarray, mu: float) -> np.ndarray:
        """Attenuation-weighted thickness ``(1 - exp(-mu L)) / mu`` of the body along the AP line (mm).

        The background is the one structure thick enough (100-230 mm) for attenuation to matter: without it the
        head and chest would outshine the neck in proportion to their thickness, which real images do not show.
        """
        head = _smoothstep((self.v_jaw - v) / 25.0)  # jaw line: 25 mm transition
        chest = _smoothstep((v - self.v_shoulder) / 70.0)  # neck -> shoulders: 70 mm transition
        w = self.neck_w + (self.head_w - self.neck_w) * head + (self.chest_w - self.neck_w) * chest
        d = self.neck_d + (self.head_d - self.neck_d) * head + (self.chest_d - self.neck_d) * chest
        r2 = ((u - self.midline) / w) ** 2
        length = 2.0 * d * np.sqrt(np.clip(1.0 - r2, 0.0, None))
        return -np.expm1(-mu * length) / mu

    def to_dict(self) -> dict[str, Any]:
        return {k: float(getattr(self, k)) for k in self.__dataclass_fields__}


@dataclass
class _Grid:
    """A square-pixel planar grid with a render margin (pixels) around the image."""

    n_i: int
    n_j: int
    p: float
    u0: float  # u of pixel (0, 0) centre
    v0: float
    margin: int = 0

    def sub_axes(self) -> tuple[np.ndarray, np.ndarray]:
        """u (columns) and v (rows) of the supersampled render grid (margin included)."""
        h = self.p / _SS
        ni = (self.n_i + 2 * self.margin) * _SS
        nj = (self.n_j + 2 * self.margin) * _SS
        u = self.u0 - (self.margin + 0.5) * self.p + (np.arange(ni) + 0.5) * h
        v = self.v0 - (self.margin + 0.5) * self.p + (np.arange(nj) + 0.5) * h
        return u, v

    def pixel_axes(self) -> tuple[np.ndarray, np.ndarray]:
        """u (columns) and v (rows) of the pixel centres of the render grid (margin included)."""
        u = self.u0 + (np.arange(self.n_i + 2 * self.margin) - self.margin) * self.p
        v = self.v0 + (np.arange(self.n_j + 2 * self.margin) - self.margin) * self.p
        return u, v

    def volume(self, array: np.ndarray, meta: dict[str, Any]) -> Volume:
        origin = (self.u0, 0.0, -self.v0)
        return Volume(array[np.newaxis], (self.p, self.p, 1.0), origin, PLANAR_DIRECTION.copy(), meta)


def _down(a: np.ndarray) -> np.ndarray:
    """2x2 area average (the supersampling factor is 2)."""
    return 0.25 * (a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2])


def _render(ells: list[_Ell], body: Optional[_Body], grid: _Grid, tracer: str, mot: Optional[_Motion],
            with_masks: bool, texture: Optional[dict[str, Any]] = None
            ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Area-averaged projected concentration per category on ``grid`` (margin included), and footprints.

    Each ellipsoid is sampled 2x2 per pixel in its own (pixel-aligned) bounding box, mass-renormalised,
    area-averaged and added to the pixel-resolution canvas of its category, so the cost scales with the
    structures' areas. Returns ``(images, footprints)``: images[cat] (nj+2m, ni+2m) float64 in
    mm x relative concentration; footprints (only with ``with_masks``): "thyroid" and "salivary" coverage
    (largest fraction of a pixel covered by one ellipsoid of the structure) and "labels" (adenoma labels where
    an adenoma covers at least half of the pixel; at least its best-covered pixel).
    ``texture`` (thyroid only): ``1 + amp * sum_k cos(k . p + phase) / sqrt(K / 2)`` evaluated at the anatomical
    position ``p`` (before motion), so both tracers see the same, co-moving heterogeneity.
    """
    us, vs = grid.sub_axes()
    h = grid.p / _SS
    nsj, nsi = vs.size, us.size
    nj, ni = nsj // _SS, nsi // _SS
    canv: dict[str, np.ndarray] = {}
    foot: dict[str, np.ndarray] = {}
    if with_masks:
        foot = {"thyroid": np.zeros((nj, ni)), "salivary": np.zeros((nj, ni)), "labels": np.zeros((nj, ni), np.int32)}
    if body is not None:
        conc = body.conc_tc if tracer == "tc" else body.conc_i
        if conc != 0.0:
            mu = MU_TC if tracer == "tc" else MU_I123
            # the body is smooth on the pixel scale (its lateral edge is softened by the >= 7 mm blur): sampled
            # at the pixel centres, which is 4x cheaper than the 2x2 supersampling of the organs
            pu, pv = grid.pixel_axes()
            if mot is None or mot.is_identity:
                img = body.chord(pu[None, :], pv[:, None], mu)
            else:
                uu, vv = mot.inverse_grid(pu[None, :], pv[:, None])
                img = body.chord(uu, vv, mu)
            canv["background"] = conc * img
    for e0 in ells:
        conc = e0.conc_tc if tracer == "tc" else e0.conc_i
        if conc == 0.0 and not (with_masks and (e0.label or e0.mask)):
            continue
        e = e0.moved(mot) if mot is not None and not mot.is_identity else e0
        eu, ev = e.extent()
        # unclipped box in pixels (so the mass renormalisation sees the whole ellipsoid)
        p0u, p0v = us[0] + 0.5 * h, vs[0] + 0.5 * h  # centre of render pixel (0, 0)
        i0 = int(math.floor((e.cu - eu - p0u) / grid.p))
        i1 = int(math.ceil((e.cu + eu - p0u) / grid.p)) + 1
        j0 = int(math.floor((e.cv - ev - p0v) / grid.p))
        j1 = int(math.ceil((e.cv + ev - p0v) / grid.p)) + 1
        if i1 <= 0 or j1 <= 0 or i0 >= ni or j0 >= nj:
            continue
        du = (us[0] + np.arange(_SS * i0, _SS * i1) * h - e.cu)[None, :]
        dv = (vs[0] + np.arange(_SS * j0, _SS * j1) * h - e.cv)[:, None]
        cs, sn = math.cos(e.phi), math.sin(e.phi)
        r2 = ((cs * du + sn * dv) / e.a) ** 2 + ((-sn * du + cs * dv) / e.b) ** 2
        inside = r2 < 1.0
        chord = 2.0 * e.c * np.sqrt(np.where(inside, 1.0 - r2, 0.0))
        total = chord.sum() * h * h
        exact = 4.0 / 3.0 * math.pi * e.a * e.b * e.c
        if total > 0:
            chord *= exact / total
        else:  # smaller than a sub-sample: all its mass at the nearest sample
            jj = int(np.clip(round((e.cv - vs[0]) / h) - _SS * j0, 0, chord.shape[0] - 1))
            ii = int(np.clip(round((e.cu - us[0]) / h) - _SS * i0, 0, chord.shape[1] - 1))
            chord[jj, ii] = exact / (h * h)
            inside = chord > 0
        if texture is not None and e.cat == "thyroid" and conc != 0.0:
            pu, pv = du + e.cu, dv + e.cv
            if mot is not None and not mot.is_identity:
                pu, pv = mot.inverse_grid(pu, pv)
            kv, ph = texture["k"], texture["phase"]
            tex = sum(np.cos(kv[q, 0] * pu + kv[q, 1] * pv + ph[q]) for q in range(len(ph)))
            chord = chord * np.clip(1.0 + texture["amp"] * math.sqrt(2.0 / len(ph)) * tex, 0.3, None)
        ci0, cj0, ci1, cj1 = max(i0, 0), max(j0, 0), min(i1, ni), min(j1, nj)
        sl_c = (slice(cj0, cj1), slice(ci0, ci1))
        sl_b = (slice(cj0 - j0, cj1 - j0), slice(ci0 - i0, ci1 - i0))
        if conc != 0.0:
            if e.cat not in canv:
                canv[e.cat] = np.zeros((nj, ni))
            canv[e.cat][sl_c] += conc * _down(chord)[sl_b]
        if with_masks and (e.mask or e.label):
            frac = _down(inside.astype(np.float64))
            if e.mask:
                np.maximum(foot[e.mask][sl_c], frac[sl_b], out=foot[e.mask][sl_c])
            if e.label:
                sel = frac >= 0.5
                if not sel.any():  # tiny adenoma: at least its best-covered pixel
                    sel = frac == frac.max()
                foot["labels"][sl_c][sel[sl_b]] = e.label
    return canv, foot


def _blur(img: np.ndarray, fwhm_mm: float, pixel_mm: float) -> np.ndarray:
    return ndimage.gaussian_filter(img, fwhm_mm * FWHM_TO_SIGMA / pixel_mm, mode="constant", truncate=_TRUNCATE)


def _margin_px(fwhm_mm: float, pixel_mm: float) -> int:
    return int(math.ceil(_TRUNCATE * fwhm_mm * FWHM_TO_SIGMA / pixel_mm)) + 1


def _crop(a: np.ndarray, m: int) -> np.ndarray:
    return a[m:a.shape[0] - m, m:a.shape[1] - m] if m else a


# ---------------------------------------------------------------------------------------------- anatomy
def _draw_anatomy(rng: np.random.Generator) -> dict[str, Any]:
    """Body, thyroid (+ nodules), salivary glands and heart in plane coordinates (mm)."""
    midline = float(rng.uniform(-20, 20))
    vt = float(rng.uniform(-20, 20))  # thyroid centre height (v = -z)
    ells: list[_Ell] = []
    height = rng.uniform(35, 60)
    width = rng.uniform(12, 25)
    depth = rng.uniform(12, 20)
    asym = rng.uniform(0.75, 1.25)
    lobes = []
    for side in (-1, 1):  # -1: patient's right (low u), +1: patient's left
        f = asym if side == -1 else 1.0
        f *= rng.uniform(0.95, 1.05)
        off = rng.uniform(18, 28)
        tilt = math.radians(rng.uniform(-5, 15))
        e = _Ell(midline + side * off, vt + rng.uniform(-4, 4), width * f / 2, height * f / 2, depth * f / 2,
                 side * tilt, "thyroid", 1.0, 1.0, mask="thyroid")
        lobes.append(e)
        ells.append(e)
    has_isthmus = bool(rng.random() < 0.85)
    ih, idp = rng.uniform(6, 12), rng.uniform(4, 8)
    lr = lobes[1].cu - lobes[0].cu
    iv = 0.5 * (lobes[0].cv + lobes[1].cv) + rng.uniform(0.15, 0.35) * 0.5 * (lobes[0].b + lobes[1].b)
    if has_isthmus:
        ells.append(_Ell(midline + 0.5 * (lobes[0].cu + lobes[1].cu - 2 * midline), iv, 0.5 * lr, ih / 2,
                         idp / 2, 0.0, "thyroid", 1.0, 1.0, mask="thyroid"))
    # nodules (both tracers alike)
    u = rng.random()
    nodule = "cold" if u < 0.08 else ("hot" if u < 0.14 else "none")
    nod_lobe = int(rng.integers(0, 2))
    nod_r = rng.uniform(4, 10)
    nod_pos = rng.uniform(-0.5, 0.5, 2)
    nod_mult = rng.uniform(0.1, 0.4) if nodule == "cold" else rng.uniform(1.5, 2.5)
    if nodule != "none":
        lb = lobes[nod_lobe]
        r = min(nod_r, 0.9 * lb.a)
        cs, sn = math.cos(lb.phi), math.sin(lb.phi)
        pu, pv = nod_pos[0] * (lb.a - r), nod_pos[1] * (lb.b - r)
        ells.append(_Ell(lb.cu + cs * pu - sn * pv, lb.cv + sn * pu + cs * pv, r, r, min(r, 0.8 * lb.c), 0.0,
                         "thyroid", nod_mult - 1.0, nod_mult - 1.0))
    top = min(e.cv - e.extent()[1] for e in lobes)
    bottom = max(e.cv + e.extent()[1] for e in lobes)
    # salivary glands
    sal = []
    for side in (-1, 1):
        sal.append(_Ell(midline + side * rng.uniform(45, 62), top - rng.uniform(60, 100), rng.uniform(12, 18),
                        rng.uniform(20, 30), rng.uniform(8, 12), side * math.radians(rng.uniform(-10, 10)),
                        "salivary", float(rng.uniform(0.4, 1.5)), float(rng.uniform(0, 0.03)), mask="salivary"))
        sal.append(_Ell(midline + side * rng.uniform(22, 38), top - rng.uniform(35, 60), rng.uniform(12, 18),
                        rng.uniform(8, 13), rng.uniform(7, 10), side * math.radians(rng.uniform(-20, 20)),
                        "salivary", float(rng.uniform(0.4, 1.5)), float(rng.uniform(0, 0.03)), mask="salivary"))
    # heart: myocardial shell = outer ellipsoid minus the (low-activity) cavity
    has_heart = bool(rng.random() < 0.5)
    hc = (midline + rng.uniform(30, 60), vt + rng.uniform(150, 200))
    ha, hb, hcd = rng.uniform(42, 52), rng.uniform(30, 38), rng.uniform(32, 40)
    wall = rng.uniform(8, 12)
    hphi = math.radians(rng.uniform(30, 60))
    hconc = float(rng.uniform(0.25, 0.7))
    blood = float(rng.uniform(0.1, 0.25))
    heart = [_Ell(hc[0], hc[1], ha, hb, hcd, hphi, "heart", hconc, 0.0),
             _Ell(hc[0], hc[1], ha - wall, hb - wall, hcd - wall, hphi, "heart", -hconc * (1 - blood), 0.0)]
    body = _Body(midline=midline, neck_w=rng.uniform(50, 70), neck_d=rng.uniform(45, 60),
                 head_w=rng.uniform(65, 80), head_d=rng.uniform(75, 95), chest_w=rng.uniform(150, 210),
                 chest_d=rng.uniform(85, 115), v_jaw=top - rng.uniform(30, 45), v_shoulder=bottom + rng.uniform(20, 40),
                 conc_tc=float(rng.uniform(0.045, 0.09)), conc_i=float(rng.uniform(0.006, 0.02)))
    # thyroid heterogeneity: a few random plane waves, wavelengths 10-30 mm, relative amplitude 0.05-0.2
    n_waves = 8
    lam = rng.uniform(10, 30, n_waves)
    ang = rng.uniform(0, 2 * math.pi, n_waves)
    texture = {"k": np.stack([np.cos(ang), np.sin(ang)], axis=1) * (2 * math.pi / lam)[:, None],
               "phase": rng.uniform(0, 2 * math.pi, n_waves), "amp": float(rng.uniform(0.05, 0.2))}
    return {
        "texture": texture,
        "midline": midline, "lobes": lobes, "thyroid": ells, "salivary": sal, "heart": heart, "body": body,
        "top": top, "bottom": bottom, "has_isthmus": has_isthmus, "nodule": nodule, "nodule_multiplier": nod_mult,
        "has_heart": has_heart, "center": (0.5 * (lobes[0].cu + lobes[1].cu), 0.5 * (lobes[0].cv + lobes[1].cv)),
    }


def _draw_adenomas(rng: np.random.Generator, anat: dict[str, Any], n: int, dmin: float, dmax: float,
                   ectopic_fraction: float, box: tuple[float, float, float, float]) -> list[tuple[_Ell, bool, str]]:
    """Draw ``n`` adenomas (rejection sampling: no projected overlap, inside ``box`` = (u_lo, u_hi, v_lo, v_hi)
    with a 5 mm margin; the box constraint is dropped after 300 failed attempts, e.g. for a tiny FOV)."""
    lobes = anat["lobes"]
    mid, top, bottom = anat["midline"], anat["top"], anat["bottom"]
    out: list[tuple[_Ell, bool, str]] = []
    for label in range(1, n + 1):
        for _attempt in range(500):
            d = rng.uniform(dmin, dmax)
            a = d / 2
            b = a * rng.uniform(0.7, 1.0)
            c = a * rng.uniform(0.7, 1.0)
            phi = rng.uniform(0, math.pi)
            ratio = float(rng.uniform(0.7, 2.0))
            side = int(rng.integers(0, 2))
            sname = "left" if side == 1 else "right"
            sgn = 1.0 if side == 1 else -1.0
            lb = lobes[side]
            cs, sn = math.cos(lb.phi), math.sin(lb.phi)
            ectopic = bool(rng.random() < ectopic_fraction)
            w = rng.random()
            if not ectopic:
                if w < 0.55 or w >= 0.8:
                    along_pole = lb.b + a * rng.uniform(-0.7, 0.5)
                    across = rng.uniform(-0.5, 0.5) * lb.a
                    if w < 0.55:
                        site, pa, pb = f"inferior-{sname}", across, along_pole
                    else:
                        pa = sgn * (rng.uniform(0.3, 1.0) * lb.a + a * rng.uniform(-0.3, 0.5))
                        pb = rng.uniform(-0.5, 0.5) * lb.b
                        site = f"{'posterior' if abs(pa) < lb.a else 'lateral'}-{sname}"
                else:
                    site, pa, pb = f"superior-{sname}", rng.uniform(-0.5, 0.5) * lb.a, -(lb.b + a * rng.uniform(-0.7, 0.5))
                cu, cv = lb.cu + cs * pa - sn * pb, lb.cv + sn * pa + cs * pb
            else:
                if w < 0.4:
                    site, cu, cv = "mediastinal", mid + rng.uniform(-15, 15), bottom + rng.uniform(20, 60)
                elif w < 0.75:
                    site = f"carotid-sheath-{sname}"
                    cu, cv = lb.cu + sgn * rng.uniform(10, 30), top - rng.uniform(-10, 40)
                else:
                    site = "retro-oesophageal"
                    cu, cv = mid + rng.uniform(-8, 8), anat["center"][1] + rng.uniform(-15, 15)
            ok = all(math.hypot(cu - o.cu, cv - o.cv) > a + max(o.a, o.b) + 2.0 for o, _, _ in out)
            if _attempt < 300:
                r = a + 5.0
                ok = ok and box[0] + r <= cu <= box[1] - r and box[2] + r <= cv <= box[3] - r
            if ok:
                out.append((_Ell(float(cu), float(cv), a, b, c, phi, "adenoma", ratio, 0.0, label=label),
                            ectopic, site))
                break
        else:  # pragma: no cover - 500 failures for <= 6 small adenomas does not happen
            raise InputError(f"Could not place {n} non-overlapping adenomas; ask for fewer or smaller ones.")
    return out


def _fov_center(t_u: float, t_v: float, anat: dict[str, Any], fov: float) -> tuple[float, float]:
    """FOV centre from two uniform [0, 1) numbers: the neck midline within +-15 mm of the centre column and the
    thyroid centre in the central third of the rows. It does not depend on the adenomas (they are drawn inside
    it), so the same seed frames the same anatomy whatever ``n_adenomas``."""
    cu = anat["midline"] - 15.0 + 30.0 * t_u
    vt = anat["center"][1]
    return float(cu), float(vt - fov / 6.0 + t_v * fov / 3.0)


# ---------------------------------------------------------------------------------------------- main entry
def simulate_neck(
    seed: Union[int, np.random.Generator, None] = None,
    *,
    matrix: int = 128,
    pixel_mm: Optional[float] = None,
    n_adenomas: Optional[int] = None,
    min_diameter_mm: float = 5.0,
    max_diameter_mm: float = 20.0,
    ectopic_fraction: float = 0.2,
    motion: Union[bool, dict] = True,
    late: bool = False,
    count_scale: float = 1.0,
    iodine_matrix: Optional[int] = None,
    iodine_pixel_mm: Optional[float] = None,
    salivary: bool = True,
    heart: bool = True,
    noise: bool = True,
    components: bool = False,
) -> NeckStudy:
    """Simulate one anterior planar dual-tracer (sestamibi + 123I) neck study. See the module docstring.

    Parameters
    ----------
    seed: int (one simulated patient) or a ``numpy.random.Generator``.
    matrix, pixel_mm: tc image size (square) and pixel size (default uniform 1.6-3.0 mm).
    n_adenomas: force the number of adenomas (0-6); default drawn {0: 15 %, 1: 55 %, 2: 20 %, 3: 10 %}.
    min_diameter_mm, max_diameter_mm: adenoma largest-diameter range.
    ectopic_fraction: probability that an adenoma is ectopic.
    motion: True (random, within +-6 mm and +-3 deg), False (none) or a dict
        ``{"dx_mm", "dy_mm", "rotation_deg"}`` to impose one (rotation about the thyroid centre).
    late: also simulate the delayed (~2 h) sestamibi frame.
    count_scale: multiplies every count density (> 0, finite); e.g. 0.5 for half-dose / half-time studies.
    iodine_matrix, iodine_pixel_mm: a different camera grid for the iodine image (same plane and FOV centre).
    salivary, heart: include these sestamibi-avid structures.
    noise: Poisson noise (False: the images are the expected counts).
    components: also return the noise-free expected counts of each structure category (slower).
    """
    matrix = _check_int("matrix", matrix, 16, 1024)
    if iodine_matrix is not None:
        iodine_matrix = _check_int("iodine_matrix", iodine_matrix, 16, 1024)
    for name, val in (("pixel_mm", pixel_mm), ("iodine_pixel_mm", iodine_pixel_mm)):
        if val is not None and not (np.isfinite(val) and 0.2 <= float(val) <= 20.0):
            raise InputError(f"{name} must be a pixel size in mm between 0.2 and 20; got {val!r}.")
    if n_adenomas is not None:
        n_adenomas = _check_int("n_adenomas", n_adenomas, 0, _MAX_ADENOMAS)
    if not (np.isfinite(min_diameter_mm) and np.isfinite(max_diameter_mm) and 1.0 <= min_diameter_mm <= max_diameter_mm <= 60.0):
        raise InputError(f"Adenoma diameters must satisfy 1 <= min_diameter_mm <= max_diameter_mm <= 60 mm; got "
                         f"{min_diameter_mm!r}, {max_diameter_mm!r}.")
    if not (0.0 <= float(ectopic_fraction) <= 1.0):
        raise InputError(f"ectopic_fraction must be in [0, 1]; got {ectopic_fraction!r}.")
    if not (np.isfinite(count_scale) and count_scale > 0):
        raise InputError(f"count_scale must be a positive finite number (use noise=False for noise-free images); "
                         f"got {count_scale!r}.")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    # independent streams: the anatomy does not depend on the adenoma count or on the switches
    rng_anat, rng_aden, rng_acq, rng_noise = (np.random.default_rng(int(s)) for s in rng.integers(0, 2**63, 4))

    anat = _draw_anatomy(rng_anat)
    p_tc = float(pixel_mm) if pixel_mm is not None else float(rng_anat.uniform(1.6, 3.0))
    n_draw = int(rng_aden.choice(4, p=[0.15, 0.55, 0.20, 0.10]))
    n = n_draw if n_adenomas is None else n_adenomas

    # acquisition parameters (always drawn, in a fixed order)
    a = rng_acq
    fwhm_tc = float(a.uniform(7, 11))
    fwhm_i = float(np.clip(fwhm_tc + a.uniform(0, 2), 8, 12))
    peak_tc, peak_i = float(a.uniform(40, 200)), float(a.uniform(100, 500))
    t_tc, t_i = float(a.uniform(600, 1200)), float(a.uniform(2 * 3600, 4 * 3600))
    T_tc, T_i, T_late = (float(x) for x in a.uniform(300, 900, 3))
    t_late = t_tc + float(a.uniform(100 * 60, 140 * 60))
    A_tc, A_i = float(a.uniform(400, 900)), float(a.uniform(10, 25))
    retention = {k: float(a.uniform(*r)) for k, r in LATE_RETENTION.items()}
    mot_draw = {"dx_mm": float(a.uniform(-6, 6)), "dy_mm": float(a.uniform(-6, 6)),
                "rotation_deg": float(a.uniform(-3, 3))}
    fov_tu, fov_tv = float(a.random()), float(a.random())

    if isinstance(motion, dict):
        try:
            mot_d = {k: float(motion[k]) for k in ("dx_mm", "dy_mm", "rotation_deg")}
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError("motion must be True, False or a dict with numeric 'dx_mm', 'dy_mm' and "
                             f"'rotation_deg'; got {motion!r}.") from exc
    elif motion:
        mot_d = mot_draw
    else:
        mot_d = {"dx_mm": 0.0, "dy_mm": 0.0, "rotation_deg": 0.0}
    c_u, c_v = anat["center"]
    mot = _Motion(c_u, c_v, mot_d["dx_mm"], mot_d["dy_mm"], math.radians(mot_d["rotation_deg"]))

    # grids
    fov = matrix * p_tc
    fc_u, fc_v = _fov_center(fov_tu, fov_tv, anat, fov)
    half = (matrix * p_tc) / 2.0
    aden = _draw_adenomas(rng_aden, anat, n, float(min_diameter_mm), float(max_diameter_mm), float(ectopic_fraction),
                          (fc_u - half, fc_u + half, fc_v - half, fc_v + half))
    m_tc = _margin_px(fwhm_tc, p_tc)
    g_tc = _Grid(matrix, matrix, p_tc, fc_u - (matrix - 1) / 2 * p_tc, fc_v - (matrix - 1) / 2 * p_tc, m_tc)
    n_i = iodine_matrix or matrix
    p_i = float(iodine_pixel_mm) if iodine_pixel_mm is not None else p_tc
    g_i = _Grid(n_i, n_i, p_i, fc_u - (n_i - 1) / 2 * p_i, fc_v - (n_i - 1) / 2 * p_i, _margin_px(fwhm_i, p_i))

    ells_tc = list(anat["thyroid"]) + (anat["salivary"] if salivary else [])
    if heart and anat["has_heart"]:
        ells_tc += anat["heart"]
    ells_tc += [e for e, _, _ in aden]
    imgs_tc, foot = _render(ells_tc, anat["body"], g_tc, "tc", None, with_masks=True, texture=anat["texture"])
    imgs_i, _ = _render(ells_tc, anat["body"], g_i, "iodine", mot, with_masks=False, texture=anat["texture"])

    # gains (expected counts per pixel per mm of unit-concentration chord)
    thy_tc_blur = _blur(imgs_tc["thyroid"], fwhm_tc, p_tc)
    peak_unit = float(thy_tc_blur.max())
    if peak_unit <= 0:  # pragma: no cover - the thyroid is always in the FOV by construction
        raise InputError("The thyroid fell outside the field of view; use a larger matrix or pixel size.")
    D_tc, D_i = decay_integral(TC_HALF_LIFE_S, t_tc, T_tc), decay_integral(I123_HALF_LIFE_S, t_i, T_i)
    D_late = decay_integral(TC_HALF_LIFE_S, t_late, T_late)
    area_tc, area_i = p_tc * p_tc, p_i * p_i
    G_tc = peak_tc * count_scale / (peak_unit * A_tc * decay_integral(TC_HALF_LIFE_S, t_tc, _REFERENCE_FRAME_S) * area_tc)
    # the 123I target is per tc-sized pixel: one sensitivity per camera, counts per pixel scale with its area
    G_i = peak_i * count_scale / (peak_unit * A_i * decay_integral(I123_HALF_LIFE_S, t_i, _REFERENCE_FRAME_S) * area_tc)
    s_tc, s_i, s_late = G_tc * A_tc * D_tc * area_tc, G_i * A_i * D_i * area_i, G_tc * A_tc * D_late * area_tc
    true_scale = s_tc / s_i

    # blurred expected counts (blur is linear: blur the non-adenoma sum once, the adenomas once for the truth)
    zero_tc = np.zeros_like(imgs_tc["thyroid"])
    adeno = imgs_tc.get("adenoma", zero_tc)
    rest_tc = sum(imgs_tc.get(k, zero_tc) for k in ("background", "salivary", "heart"))
    truth = _crop(_blur(adeno, fwhm_tc, p_tc), m_tc) * s_tc
    exp_tc = _crop(_blur(rest_tc, fwhm_tc, p_tc) + thy_tc_blur, m_tc) * s_tc + truth
    zero_i = np.zeros((n_i + 2 * g_i.margin,) * 2)
    rest_i = sum(imgs_i.get(k, zero_i) for k in ("background", "thyroid", "salivary"))
    exp_i = _crop(_blur(rest_i, fwhm_i, p_i), g_i.margin) * s_i
    exp_late = None
    if late:
        late_sum = sum(retention[k] * imgs_tc[k] for k in _CATEGORIES if k in imgs_tc)
        exp_late = _crop(_blur(late_sum, fwhm_tc, p_tc), m_tc) * s_late

    comps: dict[str, dict[str, np.ndarray]] = {}
    if components:
        comps["tc"] = {k: (_crop(_blur(imgs_tc[k], fwhm_tc, p_tc), m_tc) * s_tc).astype(np.float32)
                       if k in imgs_tc else np.zeros((matrix, matrix), np.float32) for k in _CATEGORIES}
        comps["iodine"] = {k: (_crop(_blur(imgs_i[k], fwhm_i, p_i), g_i.margin) * s_i).astype(np.float32)
                           if k in imgs_i else np.zeros((n_i, n_i), np.float32) for k in _CATEGORIES}
        if late:
            comps["tc_late"] = {k: v * np.float32(retention[k] * s_late / s_tc) for k, v in comps["tc"].items()}

    def counts(lam: np.ndarray) -> np.ndarray:
        lam = np.clip(lam, 0.0, None)
        return (rng_noise.poisson(lam) if noise else lam).astype(np.float32)

    # always consume the noise stream in the same order (tc, iodine, late)
    img_tc, img_i = counts(exp_tc), counts(exp_i)
    img_late = counts(exp_late) if late else None

    base_meta = {"modality": "NM", "simulated": True, "view": "anterior", "units": "counts"}
    meta_tc = {**base_meta, "tracer": "sestamibi", "radionuclide": "Tc-99m", "half_life_s": TC_HALF_LIFE_S,
               "frame_duration_s": T_tc, "acquisition_start_s": t_tc, "injected_MBq": A_tc, "fwhm_mm": fwhm_tc}
    meta_i = {**base_meta, "tracer": "iodine", "radionuclide": "I-123", "half_life_s": I123_HALF_LIFE_S,
              "frame_duration_s": T_i, "acquisition_start_s": t_i, "injected_MBq": A_i, "fwhm_mm": fwhm_i}
    tc_vol = g_tc.volume(img_tc, meta_tc)
    iodine_vol = g_i.volume(img_i, meta_i)
    late_vol = None
    if late:
        late_vol = g_tc.volume(img_late, {**meta_tc, "frame_duration_s": T_late, "acquisition_start_s": t_late,
                                          "phase": "delayed"})
    truth_vol = g_tc.volume(truth.astype(np.float32), {**meta_tc, "truth": "parathyroid adenomas, noise-free"})
    labels = _crop(foot["labels"], m_tc).astype(np.uint8)
    lab_vol = g_tc.volume(labels, {"is_labelmap": True, "label_names": {int(e.label): s for e, _, s in aden}})
    thy_vol = g_tc.volume((_crop(foot["thyroid"], m_tc) >= 0.5).astype(np.uint8), {"is_labelmap": True})
    sal_vol = g_tc.volume((_crop(foot["salivary"], m_tc) >= 0.5).astype(np.uint8), {"is_labelmap": True})

    voxel_mm2 = area_tc
    adenomas = []
    for e, ectopic, site in aden:
        vol_mm3 = 4.0 / 3.0 * math.pi * e.a * e.b * e.c
        adenomas.append(Adenoma(
            label=e.label, center_lps=np.array([e.cu, 0.0, -e.cv]), diameter_mm=2.0 * e.a, ectopic=ectopic,
            site=site, uptake_ratio=e.conc_tc, semi_axes_mm=(e.a, e.b, e.c), angle_deg=math.degrees(e.phi),
            expected_counts=float(s_tc * e.conc_tc * vol_mm3 / voxel_mm2)))
    motion_out = {**mot_d, "center_lps": [c_u, 0.0, -c_v],
                  "convention": "p_iodine = c + R(theta)(p_tc - c) + (dx, dy) in (u, v) = (LPS x, -LPS z) mm"}
    params: dict[str, Any] = {
        "seed": int(seed) if isinstance(seed, (int, np.integer)) else None,
        "pixel_mm": p_tc, "matrix": matrix, "iodine_pixel_mm": p_i, "iodine_matrix": n_i,
        "fov_center_lps": [fc_u, 0.0, -fc_v],
        "fwhm_tc_mm": fwhm_tc, "fwhm_iodine_mm": fwhm_i,
        "peak_target_tc": peak_tc, "peak_target_iodine": peak_i, "count_scale": float(count_scale),
        "gain_tc": s_tc, "gain_iodine": s_i, "gain_tc_late": s_late if late else None,
        "sensitivity_tc": G_tc, "sensitivity_iodine": G_i, "reference_frame_s": _REFERENCE_FRAME_S,
        "tc": {"injected_MBq": A_tc, "acquisition_start_s": t_tc, "frame_duration_s": T_tc},
        "iodine": {"injected_MBq": A_i, "acquisition_start_s": t_i, "frame_duration_s": T_i},
        "tc_late": {"acquisition_start_s": t_late, "frame_duration_s": T_late, "retention": retention} if late else None,
        "n_adenomas": n, "n_adenomas_drawn": n_draw,
        "adenomas": [{"label": e.label, "site": s, "ectopic": ec, **e.to_dict()} for e, ec, s in aden],
        "midline_x_mm": anat["midline"], "thyroid_center_lps": [c_u, 0.0, -c_v],
        "thyroid_top_z_mm": -anat["top"], "thyroid_bottom_z_mm": -anat["bottom"],
        "lobes": [e.to_dict() for e in anat["lobes"]], "isthmus": anat["has_isthmus"],
        "thyroid_texture_amplitude": anat["texture"]["amp"],
        "nodule": anat["nodule"], "nodule_multiplier": anat["nodule_multiplier"] if anat["nodule"] != "none" else None,
        "salivary": salivary, "salivary_glands": [e.to_dict() for e in anat["salivary"]],
        "heart": bool(heart and anat["has_heart"]), "heart_geometry": [e.to_dict() for e in anat["heart"]],
        "body": anat["body"].to_dict(), "background_tc": anat["body"].conc_tc,
        "background_iodine": anat["body"].conc_i, "noise": bool(noise),
    }
    expected = {"tc": exp_tc.astype(np.float32), "iodine": exp_i.astype(np.float32)}
    if late:
        expected["tc_late"] = exp_late.astype(np.float32)
    return NeckStudy(tc=tc_vol, iodine=iodine_vol, tc_late=late_vol, parathyroid=truth_vol, adenoma_labels=lab_vol,
                     thyroid_mask=thy_vol, salivary_mask=sal_vol, adenomas=adenomas, motion=motion_out,
                     true_scale=float(true_scale), params=params, components=comps, expected=expected)


def _check_int(name: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= int(value) <= hi:
        raise InputError(f"{name} must be an integer between {lo} and {hi}; got {value!r}.")
    return int(value)
