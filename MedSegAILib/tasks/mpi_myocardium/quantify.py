"""Left-ventricle quantification from a myocardium/cavity label map (mpi-myocardium task).

Labels: 0 background, 1 LV myocardium, 2 LV cavity (open at the base). All geometry in LPS millimetres
(:class:`~MedSegAILib.core.volume.Volume` conventions); every number is independent of the grid's direction
matrix (distances are computed in the physical frame).

* :func:`lv_axes` -- the left-ventricular long axis (base -> apex), the centre and the short-axis reference
  directions used by :mod:`.polar_map`.
* :func:`quantify_lv` -- volumes, mass, wall thickness and long-axis length as a :class:`~MedSegAILib.tasks.base.Table`.

Wall thickness method (validated on analytic shells, Testing/test_mpi_quantify.py): surface to surface, with
sub-voxel surfaces. The endocardial surface (boundary of the cavity) and the epicardial surface (boundary of
myocardium + cavity) are extracted by marching cubes from Gaussian-smoothed (0.7 voxel) indicators at level
0.5 -- for a voxelised object this level lies, on average, on the true boundary, half-way between inside and
outside voxel centres. For every endocardial vertex facing myocardium (not the cavity's open basal face), the
thickness is the distance to the epicardial surface (point-to-plane distance at the nearest epicardial vertex).
Vertices closer to the basal opening than ~one wall thickness are excluded: there the cut basal rim, not the
epicardium, is nearest. This is exact for a shell with parallel surfaces and, unlike "twice the distance
transform on the medial surface", has no half-voxel bias, which matters at SPECT voxel sizes (a 10 mm wall is
only 1.5-2 voxels of 6 mm). Without a cavity label the thickness is not computed (NaN, with a note).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from MedSegAILib.core.volume import Volume
from MedSegAILib.errors import InputError
from MedSegAILib.tasks.base import Column, Table
from MedSegAILib.tasks.mpi_myocardium.postprocess import (
    BACKGROUND,
    CAVITY,
    MYOCARDIUM,
    exterior_background,
)

__all__ = ["LVAxes", "lv_axes", "quantify_lv", "wall_thickness_samples"]

_FACE = ndi.generate_binary_structure(3, 1)
#: Gaussian smoothing (in voxels) of a binary mask before its 0.5 iso-surface is extracted.
_SIGMA_VOXELS = 0.7

#: LPS unit vectors of the patient directions used as references.
ANTERIOR_LPS = np.array([0.0, -1.0, 0.0])
RIGHT_LPS = np.array([-1.0, 0.0, 0.0])
LEFT_LPS = np.array([1.0, 0.0, 0.0])


# ---------------------------------------------------------------------------------------------- helpers
def _voxel_points(vol: Volume, mask: np.ndarray) -> np.ndarray:
    """LPS positions (N, 3) of the centres of the voxels of ``mask`` (indexed [k, j, i])."""
    k, j, i = np.nonzero(mask)
    return vol.index_to_lps(np.stack([i, j, k], axis=1).astype(float))


def _opening_mask(lab: np.ndarray) -> np.ndarray:
    """Cavity voxels face-adjacent to the exterior background: the open base (valve plane) of the cavity."""
    cav = lab == CAVITY
    if not cav.any():
        return cav
    ext = exterior_background(lab)
    return cav & ndi.binary_dilation(ext, structure=_FACE)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


# ---------------------------------------------------------------------------------------------- LV axes
@dataclass(frozen=True, eq=False)
class LVAxes:
    """The left-ventricular frame, all in LPS millimetres.

    ``long_axis`` points from the base (valve plane, open) to the apex (closed). ``anterior`` is the short-axis
    reference direction: patient anterior (-y in LPS) projected onto the short-axis plane. ``septal`` is the
    in-plane direction perpendicular to both, with its sign chosen toward the patient's right (-x in LPS),
    where the interventricular septum and the right ventricle lie. Without a right-ventricle segmentation the
    septum cannot be located anatomically; this patient-axis convention is an assumption (fine for standard
    supine acquisitions, wrong for e.g. dextrocardia).
    """

    centre_lps: np.ndarray  #: a point on the long axis (the cavity centroid, else the LV centroid)
    long_axis: np.ndarray  #: unit, base -> apex
    anterior: np.ndarray  #: unit, perpendicular to long_axis
    septal: np.ndarray  #: unit, perpendicular to both, toward the patient's right
    base_lps: np.ndarray  #: on the axis, at the basal end of the LV (myocardium + cavity)
    apex_lps: np.ndarray  #: on the axis, at the epicardial apex
    cavity_apex_lps: Optional[np.ndarray]  #: on the axis, at the apical end of the cavity (None: no cavity)
    length_mm: float  #: base plane to epicardial apex, along the axis
    notes: tuple[str, ...] = field(default_factory=tuple)

    def frame_coordinates(self, points_lps: np.ndarray) -> np.ndarray:
        """(N, 3) LPS points to (N, 3) LV coordinates ``(t, a, s)`` in mm.

        ``t``: distance along the long axis from the base plane (positive toward the apex); ``a`` and ``s``:
        in-plane offsets from the axis along :attr:`anterior` and :attr:`septal`.
        """
        p = np.atleast_2d(np.asarray(points_lps, float))
        t = (p - self.base_lps) @ self.long_axis
        d = p - self.centre_lps
        return np.stack([t, d @ self.anterior, d @ self.septal], axis=1)


def _end_cap_score(pts_myo: np.ndarray, pts_cav: np.ndarray, centre: np.ndarray, d: np.ndarray, voxel: float) -> float:
    """Myocardium volume (voxels) capping the LV at the end of direction ``d``, near the axis.

    With a cavity: myocardium beyond the cavity's extreme along ``d`` and within the cavity's median radius of
    the axis (at the apex the wall caps the cavity; at the open base there is nothing there). Without a cavity:
    myocardium near the axis in the last 20 % of the LV extent.
    """
    rel = pts_myo - centre
    t = rel @ d
    r = np.linalg.norm(rel - np.outer(t, d), axis=1)
    if len(pts_cav):
        rel_c = pts_cav - centre
        tc = rel_c @ d
        rc = np.linalg.norm(rel_c - np.outer(tc, d), axis=1)
        r_lim = max(float(np.median(rc)), voxel)
        return float(np.count_nonzero((t > tc.max()) & (r <= r_lim)))
    t0, t1 = np.percentile(t, [0, 100])
    r_lim = max(0.35 * float(np.percentile(r, 90)), voxel)
    return float(np.count_nonzero((t > t1 - 0.2 * (t1 - t0)) & (r <= r_lim)))


def _refine_symmetry_axis(points: np.ndarray, u0: np.ndarray, voxel: float, iterations: int = 8) -> tuple[np.ndarray, float]:
    """Refine a candidate long axis by the rotational symmetry of the LV; returns (axis, asymmetry score).

    The points are cut into slabs one voxel thick perpendicular to the current axis (central 10-90 % of the
    extent: away from the cut base and the apex tip); for a body of revolution the slab centroids lie on its
    axis. The new axis is the line fitted through the centroids (weighted by slab size); iterate until it
    settles. The residual is the weighted RMS distance of the centroids from that line: ~0 on the true axis,
    large for a wrong candidate (e.g. a diameter of a truncated ellipsoid, whose slab centroids lie on an arc).
    """
    u = _unit(np.asarray(u0, float))
    if iterations <= 1:  # score the candidate as it is
        return u, _asymmetry(points, u, voxel) + _centroid_rms(points, u, voxel) / max(_mean_radius(points, u), voxel)
    rms = float("inf")
    for _ in range(iterations):
        t = (points - points.mean(axis=0)) @ u
        lo, hi = np.percentile(t, [10, 90])
        if hi - lo < 2 * voxel:
            return u, float("inf")
        idx = np.floor((t - lo) / voxel).astype(int)
        sel = (t >= lo) & (t <= hi)
        idx, pts = idx[sel], points[sel]
        counts = np.bincount(idx)
        good = np.flatnonzero(counts >= 3)
        if len(good) < 3:
            return u, float("inf")
        cents = np.stack([np.bincount(idx, weights=pts[:, d])[good] / counts[good] for d in range(3)], axis=1)
        w = counts[good] / counts[good].sum()
        m = w @ cents
        rel = cents - m
        d = np.linalg.eigh((rel * w[:, None]).T @ rel)[1][:, -1]
        if d @ u < 0:
            d = -d
        resid = rel - np.outer(rel @ d, d)
        rms = float(np.sqrt(w @ np.sum(resid**2, axis=1)))
        converged = float(d @ u) > np.cos(np.radians(0.05))
        u = d
        if converged:
            break
    return u, _asymmetry(points, u, voxel) + rms / max(_mean_radius(points, u), voxel)


def _centroid_rms(points: np.ndarray, u: np.ndarray, voxel: float) -> float:
    """Weighted RMS distance of the slab centroids (slabs perpendicular to ``u``) from the line along ``u``
    through the centroid of the points."""
    rel = points - points.mean(axis=0)
    t = rel @ u
    lo, hi = np.percentile(t, [10, 90])
    sel = (t >= lo) & (t <= hi)
    idx = np.floor((t[sel] - lo) / voxel).astype(int)
    perp = rel[sel] - np.outer(t[sel], u)
    n = np.bincount(idx).astype(float)
    good = n >= 3
    if not good.any():
        return float("inf")
    cents = np.stack([np.bincount(idx, perp[:, d])[good] / n[good] for d in range(3)], axis=1)
    w = n[good] / n[good].sum()
    return float(np.sqrt(w @ np.sum(cents**2, axis=1)))


def _mean_radius(points: np.ndarray, u: np.ndarray) -> float:
    rel = points - points.mean(axis=0)
    return float(np.mean(np.linalg.norm(rel - np.outer(rel @ u, u), axis=1)))


def _asymmetry(points: np.ndarray, u: np.ndarray, voxel: float) -> float:
    """Mean anisotropy (0 = circular) of the cross-sections of slabs perpendicular to ``u`` (central 10-90 %)."""
    rel = points - points.mean(axis=0)
    e1 = _unit(np.cross(u, [1.0, 0.0, 0.0]) if abs(u[0]) < 0.9 else np.cross(u, [0.0, 1.0, 0.0]))
    e2 = np.cross(u, e1)
    t = rel @ u
    lo, hi = np.percentile(t, [10, 90])
    sel = (t >= lo) & (t <= hi)
    idx = np.floor((t[sel] - lo) / voxel).astype(int)
    x, y = rel[sel] @ e1, rel[sel] @ e2
    n = np.bincount(idx).astype(float)
    good = n >= 5
    if not good.any():
        return float("inf")
    sx, sy = np.bincount(idx, x)[good] / n[good], np.bincount(idx, y)[good] / n[good]
    cxx = np.bincount(idx, x * x)[good] / n[good] - sx**2
    cyy = np.bincount(idx, y * y)[good] / n[good] - sy**2
    cxy = np.bincount(idx, x * y)[good] / n[good] - sx * sy
    aniso = np.sqrt((cxx - cyy) ** 2 + 4 * cxy**2) / np.maximum(cxx + cyy, 1e-9)
    w = n[good] / n[good].sum()
    return float(w @ aniso)


def lv_axes(labels: Volume) -> LVAxes:
    """The LV long axis and short-axis frame of a label map (1 myocardium, 2 cavity); see :class:`LVAxes`.

    * **Axis direction**: the LV is (roughly) a body of revolution. Candidates: the three principal axes (PCA)
      of the cavity voxel positions in LPS (of myocardium + cavity when the cavity has < 30 voxels) -- the
      cavity is used because a perfusion defect can remove myocardium but leaves the blood pool symmetric --
      and the line from the centroid of the basal opening (cavity voxels touching the exterior) to the LV
      centroid. Each is refined by :func:`_refine_symmetry_axis` (slab centroids of a body of revolution lie
      on its axis) and the most symmetric wins. Plain "largest PCA axis" is not used alone: a truncated LV is
      often barely elongated (a short, wide ventricle is even oblate), and the opening axis alone is pulled
      sideways when part of the basal wall is missing.
    * **Sign** (base -> apex): the apex is the end where myocardium caps the cavity near the axis
      (:func:`_end_cap_score`), the base the open end. If that is not decisive (scores within a factor 2), the
      side away from the cavity's basal opening; failing that, the apex is assumed toward the patient's left
      (+x), as in normal anatomy (recorded in ``notes``).
    * **Short-axis reference**: see :class:`LVAxes` (anterior = -y projected; septal toward -x).

    Raises :class:`~MedSegAILib.errors.InputError` when the map holds fewer than 10 LV voxels.
    """
    lab = np.asarray(labels.array)
    myo = lab == MYOCARDIUM
    cav = lab == CAVITY
    lv = myo | cav
    if np.count_nonzero(lv) < 10:
        raise InputError(
            "The left-ventricle segmentation is empty (or only a few voxels): the LV axes cannot be determined. "
            "Check the segmentation before quantification."
        )
    notes: list[str] = []
    voxel = float(np.mean(labels.spacing))
    pts_lv = _voxel_points(labels, lv)
    pts_myo = _voxel_points(labels, myo)
    pts_cav = _voxel_points(labels, cav)
    c_lv = pts_lv.mean(axis=0)

    # Candidate axes: the principal axes of the body (the cavity when it has enough voxels: it is not affected
    # by missing myocardium in a defect) and the axis through the basal opening; each is refined by the
    # symmetry criterion and the most symmetric wins.
    body = pts_cav if len(pts_cav) >= 30 else pts_lv
    evals, evecs = np.linalg.eigh(np.cov((body - body.mean(axis=0)).T))
    candidates = [evecs[:, n] for n in range(3)]
    opening = _opening_mask(lab)
    u_open = None
    if np.count_nonzero(opening) >= 3:
        c_open = _voxel_points(labels, opening).mean(axis=0)
        v = c_lv - c_open
        if np.linalg.norm(v) > 0.5 * voxel:
            u_open = _unit(v)
            candidates.append(u_open)
    scored = []
    for c in candidates:  # each candidate as is, and refined (refinement helps bad starts, adds noise to good)
        scored.append(_refine_symmetry_axis(body, c, voxel, iterations=1))
        scored.append(_refine_symmetry_axis(body, c, voxel))
    u, rms = min(scored, key=lambda r: r[1])
    if not np.isfinite(rms):
        u = evecs[:, -1]
        notes.append("The LV is too small for a reliable long axis (principal axis used).")
    elif rms > 0.5:
        notes.append(f"The LV is far from rotationally symmetric (asymmetry {rms:.2f}): the long axis is uncertain.")

    centre = pts_cav.mean(axis=0) if len(pts_cav) else c_lv
    if len(pts_myo):
        s_plus = _end_cap_score(pts_myo, pts_cav, centre, u, voxel)
        s_minus = _end_cap_score(pts_myo, pts_cav, centre, -u, voxel)
    else:
        s_plus = s_minus = 0.0
    if max(s_plus, s_minus) > 0 and max(s_plus, s_minus) >= 2.0 * min(s_plus, s_minus):
        if s_minus > s_plus:
            u = -u
    elif u_open is not None:
        if u @ u_open < 0:
            u = -u
        notes.append("Apex side chosen from the basal opening (the apical cap was not decisive).")
    else:
        if u @ LEFT_LPS < 0:
            u = -u
        notes.append("Apex side assumed toward the patient's left (neither an apical cap nor a basal opening found).")

    # Extent along the axis, from sub-voxel surfaces (marching cubes of the smoothed indicators): the extreme
    # voxel centres lie inside the boundary by an orientation-dependent fraction of a voxel.
    t_lv = _surface_extent(labels, lv, centre, u)
    t_min, t_max = float(t_lv[0]), float(t_lv[1])
    base = centre + t_min * u
    apex = centre + t_max * u
    cav_apex = centre + float(_surface_extent(labels, cav, centre, u)[1]) * u if len(pts_cav) else None

    anterior = ANTERIOR_LPS - (ANTERIOR_LPS @ u) * u
    if np.linalg.norm(anterior) < 0.2:
        notes.append("The long axis is nearly antero-posterior: the superior direction is the short-axis reference.")
        sup = np.array([0.0, 0.0, 1.0])
        anterior = sup - (sup @ u) * u
    anterior = _unit(anterior)
    septal = _unit(np.cross(u, anterior))
    if septal @ RIGHT_LPS < 0:
        septal = -septal
    return LVAxes(
        centre_lps=centre,
        long_axis=u,
        anterior=anterior,
        septal=septal,
        base_lps=base,
        apex_lps=apex,
        cavity_apex_lps=cav_apex,
        length_mm=t_max - t_min,
        notes=tuple(notes),
    )


def _surface_extent(vol: Volume, mask: np.ndarray, centre: np.ndarray, u: np.ndarray) -> tuple[float, float]:
    """(min, max) of ``(p - centre) . u`` over the sub-voxel surface of ``mask`` (voxel centres as fallback)."""
    from skimage.measure import marching_cubes

    idx = np.nonzero(mask)
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)
    lo = np.array([b.start for b in box]) - 2
    sub = np.pad(mask[box].astype(np.float32), 2)
    g = ndi.gaussian_filter(sub, _SIGMA_VOXELS, mode="constant")
    try:
        verts = marching_cubes(g, level=0.5)[0] + lo  # (k, j, i) indices of the full grid
        t = (vol.index_to_lps(verts[:, ::-1]) - centre) @ u
    except (ValueError, RuntimeError):
        t = (_voxel_points(vol, mask) - centre) @ u
    return float(t.min()), float(t.max())


# ---------------------------------------------------------------------------------------------- wall thickness
def _vertex_normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted vertex normals (unit length; sign irrelevant here) of a triangle mesh."""
    tri = verts[faces]
    fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    vn = np.zeros_like(verts)
    for c in range(3):
        np.add.at(vn, faces[:, c], fn)
    return vn / np.maximum(np.linalg.norm(vn, axis=1, keepdims=True), 1e-12)


def wall_thickness_samples(labels: Volume, sigma_voxels: float = _SIGMA_VOXELS) -> np.ndarray:
    """Local myocardial wall thickness (mm) at endocardial surface points; empty without a cavity.

    See the module docstring for the method. Depends only on the label array and the spacing (thickness is
    invariant to the direction matrix and the origin).
    """
    from skimage.measure import marching_cubes

    lab_full = np.asarray(labels.array)
    myo_f = lab_full == MYOCARDIUM
    cav_f = lab_full == CAVITY
    if not myo_f.any() or not cav_f.any():
        return np.zeros(0)
    # Crop to the LV with a margin and pad, so that both surfaces are closed.
    idx = np.nonzero(myo_f | cav_f)
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)
    pad = 3
    lab = np.pad(lab_full[box], pad, constant_values=BACKGROUND)
    sampling = tuple(float(s) for s in labels.spacing[::-1])  # (sk, sj, si) for [k, j, i] arrays

    myo = lab == MYOCARDIUM
    cav = lab == CAVITY
    bg = lab == BACKGROUND
    smooth = lambda m: ndi.gaussian_filter(m.astype(np.float32), sigma_voxels, mode="constant")  # noqa: E731
    g_myo, g_cav, g_bg = smooth(myo), smooth(cav), smooth(bg)
    g_lv = g_myo + g_cav

    try:
        v_endo, _, _, _ = marching_cubes(g_cav, level=0.5, spacing=sampling)
        v_epi, f_epi, _, _ = marching_cubes(g_lv, level=0.5, spacing=sampling)
    except (ValueError, RuntimeError):
        return np.zeros(0)

    def at(vol: np.ndarray, pts_mm: np.ndarray) -> np.ndarray:
        return ndi.map_coordinates(vol, (pts_mm / np.asarray(sampling)).T, order=1, mode="nearest")

    # Endocardium: the part of the cavity boundary facing myocardium (not the open basal face).
    v_endo = v_endo[at(g_myo, v_endo) > at(g_bg, v_endo)]
    # Vertex normals from the mesh in millimetres (skimage's gradient normals ignore anisotropic spacing).
    n_epi = _vertex_normals(v_epi, f_epi)
    # Epicardium: the part of the LV boundary whose inside is myocardium (not the cavity's basal face).
    keep = at(g_myo, v_epi) > at(g_cav, v_epi)
    v_epi, n_epi = v_epi[keep], n_epi[keep]
    if len(v_endo) == 0 or len(v_epi) == 0:
        return np.zeros(0)
    n_epi = n_epi / np.maximum(np.linalg.norm(n_epi, axis=1, keepdims=True), 1e-9)

    _, nearest = cKDTree(v_epi).query(v_endo)
    thick = np.abs(np.sum((v_endo - v_epi[nearest]) * n_epi[nearest], axis=1))

    # Exclude the basal rim: within about one wall thickness of the opening the cut face is nearest.
    opening = _opening_mask(lab)
    if opening.any():
        d_open = ndi.distance_transform_edt(~opening, sampling=sampling)
        limit = float(np.median(thick)) + max(sampling)
        far = at(d_open.astype(np.float32), v_endo) > limit
        if np.count_nonzero(far) >= 10:
            thick = thick[far]
    return thick


# ---------------------------------------------------------------------------------------------- the table
def quantify_lv(labels: Volume, image: Volume | None = None, density_g_per_ml: float = 1.05) -> Table:
    """Left-ventricle measurements as a :class:`~MedSegAILib.tasks.base.Table` named "Left ventricle measurements".

    Layout: one row per quantity, columns ``Measurement``, ``Value``, ``Unit``, ``Note``. Rows, in this order:

    1. ``Myocardial volume`` (mL): myocardium voxel count x voxel volume.
    2. ``Myocardial mass`` (g): volume x ``density_g_per_ml`` (default 1.05 g/mL, the usual myocardial density).
    3. ``LV cavity volume`` (mL): cavity voxel count x voxel volume. It is the volume at whatever phase the
       image shows (an ungated study gives a time-averaged value, not an end-diastolic volume) and, since the
       base is open, it depends on where the segmentation places the valve plane.
    4. ``Mean wall thickness`` (mm) and 5. ``Wall thickness SD`` (mm): over endocardial surface points, see the
       module docstring (NaN without a cavity label).
    6. ``LV long-axis length`` (mm): base plane to epicardial apex along :func:`lv_axes`' axis (NaN if the
       axes cannot be determined).
    7. ``Mean myocardial intensity`` (image units) -- only when ``image`` is given (sampled at the label voxel
       centres; linear interpolation when the grids differ).

    An empty segmentation gives zero volumes and NaN for the rest (never an exception).
    """
    lab = np.asarray(labels.array)
    vox_ml = labels.voxel_volume_mm3 / 1000.0
    myo = lab == MYOCARDIUM
    myo_ml = float(np.count_nonzero(myo)) * vox_ml
    cav_ml = float(np.count_nonzero(lab == CAVITY)) * vox_ml

    thick = wall_thickness_samples(labels)
    t_mean = float(np.mean(thick)) if len(thick) else float("nan")
    t_sd = float(np.std(thick)) if len(thick) else float("nan")
    t_note = (
        f"surface-to-surface, {len(thick)} endocardial points (basal rim excluded)"
        if len(thick)
        else "not computed: needs both a myocardium and a cavity label"
    )
    try:
        axes = lv_axes(labels)
        length = axes.length_mm
        l_note = "base plane to epicardial apex along the long axis" + (
            f" ({' '.join(axes.notes)})" if axes.notes else ""
        )
    except InputError:
        length, l_note = float("nan"), "not computed: empty segmentation"

    rows: list[list] = [
        ["Myocardial volume", myo_ml, "mL", "voxel count x voxel volume"],
        ["Myocardial mass", myo_ml * density_g_per_ml, "g", f"volume x density {density_g_per_ml:g} g/mL"],
        [
            "LV cavity volume",
            cav_ml,
            "mL",
            "at the phase of the image (ungated: time-averaged, not end-diastolic); depends on the valve plane",
        ],
        ["Mean wall thickness", t_mean, "mm", t_note],
        ["Wall thickness SD", t_sd, "mm", "spatial SD of the local thickness"],
        ["LV long-axis length", float(length), "mm", l_note],
    ]
    if image is not None:
        rows.append(["Mean myocardial intensity", _mean_intensity(image, labels, myo), "image units", "mean over the myocardium"])
    return Table(
        name="Left ventricle measurements",
        columns=[Column("Measurement"), Column("Value"), Column("Unit"), Column("Note")],
        rows=rows,
        description="Left-ventricle volumes, mass and wall thickness from the myocardium (1) / cavity (2) labels.",
    )


def sample_image(image: Volume, labels: Volume, mask: np.ndarray) -> np.ndarray:
    """Image values at the centres of the label voxels in ``mask`` (direct when the grids match)."""
    if image.same_geometry(labels):
        return np.asarray(image.array, float)[mask]
    pts = _voxel_points(labels, mask)
    ijk = image.lps_to_index(pts)
    return ndi.map_coordinates(np.asarray(image.array, float), ijk[:, ::-1].T, order=1, mode="nearest")


def _mean_intensity(image: Volume, labels: Volume, mask: np.ndarray) -> float:
    if not mask.any():
        return float("nan")
    return float(np.mean(sample_image(image, labels, mask)))
