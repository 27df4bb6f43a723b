"""AHA 17-segment polar map ("bull's-eye") of myocardial perfusion (mpi-myocardium task).

Segment model: Cerqueira et al., "Standardized myocardial segmentation and nomenclature for tomographic imaging
of the heart", Circulation 2002;105:539-542. Basal (1-6) and mid-cavity (7-12) rings of six 60-degree segments,
apical ring (13-16) of four 90-degree segments, and the apex (17).

Conventions (see :func:`polar_map`):

* LV frame from :func:`~MedSegAILib.tasks.mpi_myocardium.quantify.lv_axes`: long axis base -> apex; angular
  reference = patient anterior (-y in LPS) projected onto the short-axis plane; septum toward the patient's
  right (-x in LPS). Without a right-ventricle segmentation the septum (RV insertion points) cannot be found
  anatomically: this patient-axis convention is an **assumption**, valid for standard supine acquisitions of a
  normally positioned heart.
* Longitudinal division: the apex (17) is the myocardium beyond the apical end of the cavity (the "apical
  cap"); the range from the base plane to the cavity's apical end is cut into equal thirds: basal, mid, apical.
* Sampling: like clinical software, the value of a radial profile through the wall is its **maximum** count
  (robust to partial-volume thinning of the wall); see :func:`polar_map` for how profiles are formed.
* Display: the standard bull's-eye, anterior at the top, septal on the left, lateral on the right, inferior at
  the bottom, apex in the centre, basal ring outside.

Never imports slicer, qt, vtk or pyplot (the figure is rendered with the Agg canvas directly).
"""

from __future__ import annotations

import io
import math

import numpy as np

from MedSegAILib.core.volume import Volume
from MedSegAILib.errors import InputError
from MedSegAILib.tasks.base import Column, Picture, Table
from MedSegAILib.tasks.mpi_myocardium.postprocess import MYOCARDIUM
from MedSegAILib.tasks.mpi_myocardium.quantify import LVAxes, _voxel_points, lv_axes, sample_image

__all__ = ["AHA_SEGMENT_NAMES", "polar_map", "assign_segments", "render_polar_map"]

_WALLS6 = ("anterior", "anteroseptal", "inferoseptal", "inferior", "inferolateral", "anterolateral")
_WALLS4 = ("anterior", "septal", "inferior", "lateral")

#: Segment number (1-17) -> AHA name.
AHA_SEGMENT_NAMES: dict[int, str] = {
    **{i + 1: f"basal {w}" for i, w in enumerate(_WALLS6)},
    **{i + 7: f"mid {w}" for i, w in enumerate(_WALLS6)},
    **{i + 13: f"apical {w}" for i, w in enumerate(_WALLS4)},
    17: "apex",
}


def _display_angle(a: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Angle (degrees, [0, 360), counter-clockwise from the right) on the standard bull's-eye display.

    Anterior (+a) is at the top (90 deg), septal (+s) on the left (180 deg), lateral on the right (0 deg),
    inferior at the bottom (270 deg).
    """
    return np.degrees(np.arctan2(a, -s)) % 360.0


def assign_segments(coords: np.ndarray, t_cavity_end: float) -> np.ndarray:
    """AHA segment (1-17) of points given in LV coordinates ``(t, a, s)`` (see ``LVAxes.frame_coordinates``).

    ``t_cavity_end``: distance from the base plane to the apical end of the cavity. Points with ``t`` beyond it
    are the apex (17); the rest is split into thirds along ``t`` (points with ``t < 0`` count as basal) and
    into angular sectors: basal/mid segments 1/7 (anterior) span display angles 60-120 deg, then
    counter-clockwise (anteroseptal, inferoseptal, inferior, inferolateral, anterolateral); apical segment 13
    (anterior) spans 45-135 deg, then septal, inferior, lateral.
    """
    t, a, s = coords[:, 0], coords[:, 1], coords[:, 2]
    phi = _display_angle(a, s)
    third = np.clip(np.floor(3.0 * t / max(t_cavity_end, 1e-6)), 0, 2).astype(int)
    sector6 = (np.floor(((phi - 60.0) % 360.0) / 60.0).astype(int)) % 6
    sector4 = (np.floor(((phi - 45.0) % 360.0) / 90.0).astype(int)) % 4
    seg = np.where(third == 0, 1 + sector6, np.where(third == 1, 7 + sector6, 13 + sector4))
    return np.where(t > t_cavity_end, 17, seg).astype(int)


def polar_map(image: Volume, labels: Volume, *, sampling: str = "max") -> tuple[Table, Picture]:
    """AHA 17-segment relative-perfusion polar map from a SPECT ``image`` and its LV ``labels`` (1 myocardium).

    1. LV frame from :func:`lv_axes` (conventions in the module docstring).
    2. Every myocardium voxel gets a segment (:func:`assign_segments`); the ``Voxels`` column counts them.
    3. ``sampling="max"`` (default, as clinical software): radial count profiles through the wall
       (:func:`_profile_maxima`): for rings 1-16, rays perpendicular to the long axis on a half-voxel grid of
       short-axis positions and angles; for the apex, columns parallel to the long axis through the apical cap.
       Along a profile only points inside the myocardium label count and the image is interpolated
       (trilinear) on its own grid, so image and labels may be on different grids. A profile's value is its
       maximum; a segment's value is the mean over its profiles (``Samples``). ``sampling="mean"``: the mean
       image value over the segment's myocardium voxel centres (``Samples`` = voxels).
    4. Relative perfusion = segment value / maximum over segments x 100 %.

    Returns a table named "AHA 17-segment polar map" (columns Segment, Name, Relative perfusion [%],
    Uptake [image units], Voxels, Samples = profiles) and a picture named "Polar map" (PNG, the bull's-eye in
    standard orientation). Segments without myocardium get NaN, are drawn hatched grey and are listed in the
    picture's note and the table's description -- never a silent 0.
    """
    if sampling not in ("max", "mean"):
        raise ValueError(f"sampling must be 'max' or 'mean'; got {sampling!r}")
    lab = np.asarray(labels.array)
    myo = lab == MYOCARDIUM
    if not myo.any():
        raise InputError("The segmentation has no myocardium (label 1): no polar map can be made.")
    axes = lv_axes(labels)
    values = sample_image(image, labels, myo)
    coords = axes.frame_coordinates(_voxel_points(labels, myo))
    t_cav = _cavity_end(axes, coords)
    seg = assign_segments(coords, t_cav)

    seg_value = np.full(18, np.nan)
    n_vox = np.bincount(seg, minlength=18)
    n_samples = np.zeros(18, int)
    if sampling == "mean":
        sums = np.bincount(seg, weights=values, minlength=18)
        with np.errstate(invalid="ignore", divide="ignore"):
            seg_value = np.where(n_vox > 0, sums / np.maximum(n_vox, 1), np.nan)
        n_samples = n_vox.copy()
    else:
        seg_value, n_samples = _profile_maxima(image, labels, axes, coords, seg, t_cav)
        seg_value = np.concatenate([[np.nan], seg_value])
        n_samples = np.concatenate([[0], n_samples])

    seg_value = seg_value[1:18]
    ref = np.nanmax(seg_value) if np.any(np.isfinite(seg_value)) else np.nan
    rel = 100.0 * seg_value / ref if (np.isfinite(ref) and ref > 0) else np.full(17, np.nan)
    missing = [i + 1 for i in range(17) if not np.isfinite(rel[i])]

    rows = [
        [i + 1, AHA_SEGMENT_NAMES[i + 1], float(rel[i]), float(seg_value[i]), int(n_vox[i + 1]), int(n_samples[i + 1])]
        for i in range(17)
    ]
    desc = (
        f"AHA 17-segment model; {'maximum count per radial profile' if sampling == 'max' else 'mean count'}, "
        "relative to the highest segment. Orientation assumed from the patient axes (anterior = -y, septum toward "
        "the patient's right), no RV segmentation."
    )
    if missing:
        desc += f" No myocardium in segment(s) {', '.join(map(str, missing))}: NaN."
    if axes.notes:
        desc += " " + " ".join(axes.notes)
    table = Table(
        name="AHA 17-segment polar map",
        columns=[
            Column("Segment"),
            Column("Name"),
            Column("Relative perfusion", "%"),
            Column("Uptake", "image units", "mean of the profile maxima (or voxel mean)"),
            Column("Voxels"),
            Column("Samples", "", "radial profiles (sampling='max') or voxels (sampling='mean')"),
        ],
        rows=rows,
        description=desc,
    )
    png = render_polar_map(rel, title="Relative perfusion (AHA 17 segments)")
    pic_desc = "Bull's-eye: anterior top, septal left, lateral right, inferior bottom, apex centre."
    if missing:
        pic_desc += f" Hatched grey: no myocardium sampled (segment(s) {', '.join(map(str, missing))})."
    return table, Picture(name="Polar map", png=png, description=pic_desc)


def _profile_maxima(
    image: Volume, labels: Volume, axes: LVAxes, coords: np.ndarray, seg: np.ndarray, t_cav: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per-segment mean of radial-profile maxima, and the number of profiles (arrays of 17).

    Rings 1-16: rays from the long axis, perpendicular to it, on a regular grid of short-axis positions ``t``
    (step half a voxel) and display angles (step about half a voxel of arc at the mean myocardial radius);
    each ray is sampled every quarter voxel. Apex 17: columns parallel to the long axis through the apical cap
    (starting a little inside the cavity), on a half-voxel grid across the short-axis plane, out to the radius of
    the cap's myocardium. Along each profile only the points whose (nearest) label
    voxel is myocardium count; the profile's value is the maximum of the image there (trilinear interpolation
    on the image's own grid). Profiles that meet no myocardium are not counted.
    """
    from scipy import ndimage as ndi

    lab = np.asarray(labels.array)
    img = np.asarray(image.array, dtype=np.float32)
    voxel = float(np.mean(labels.spacing))
    dr = 0.25 * float(min(labels.spacing))
    t, a, s = coords[:, 0], coords[:, 1], coords[:, 2]
    radius = np.hypot(a, s)
    ring = seg != 17

    def profile_max(points_lps: np.ndarray) -> np.ndarray:
        """points (..., n, 3) -> max image value over the myocardium points of each profile (-inf: none)."""
        flat = points_lps.reshape(-1, 3)
        ijk = np.rint(labels.lps_to_index(flat)).astype(np.int64)
        inside = np.all((ijk >= 0) & (ijk < np.asarray(labels.size_ijk)), axis=1)
        is_myo = np.zeros(len(flat), bool)
        ii = ijk[inside]
        is_myo[inside] = lab[ii[:, 2], ii[:, 1], ii[:, 0]] == MYOCARDIUM
        vals = np.full(len(flat), -np.inf, dtype=np.float32)
        if is_myo.any():
            q = image.lps_to_index(flat[is_myo])[:, ::-1].T
            vals[is_myo] = ndi.map_coordinates(img, q, order=1, mode="nearest")
        return vals.reshape(points_lps.shape[:-1]).max(axis=-1)

    sums = np.zeros(18)
    counts = np.zeros(18, int)
    if np.any(ring):
        r_max = float(radius[ring].max()) + voxel
        r_mean = float(radius[ring].mean())
        n_phi = int(np.clip(round(2 * math.pi * r_mean / (0.5 * voxel)), 36, 720))
        phi = (np.arange(n_phi) + 0.5) * 360.0 / n_phi
        rr = np.arange(dr / 2, r_max, dr)
        # in-plane unit vectors of each display angle: x_display = -s, y_display = a
        dirs = np.outer(np.sin(np.radians(phi)), axes.anterior) - np.outer(np.cos(np.radians(phi)), axes.septal)
        t_lo = min(0.0, float(t[ring].min()))
        for tv in np.arange(t_lo + 0.25 * voxel, t_cav, 0.5 * voxel):
            centre = axes.base_lps + tv * axes.long_axis
            pts = centre + dirs[:, None, :] * rr[None, :, None]  # (n_phi, n_r, 3)
            m = profile_max(pts)
            hit = np.isfinite(m)
            if not hit.any():
                continue
            d = pts[:, 0, :] - axes.centre_lps  # segment of each ray from its (t, angle)
            c = np.stack([np.full(n_phi, tv), d @ axes.anterior + np.sin(np.radians(phi)),
                          d @ axes.septal - np.cos(np.radians(phi))], axis=1)
            sg = assign_segments(c, t_cav)
            np.add.at(sums, sg[hit], m[hit])
            np.add.at(counts, sg[hit], 1)
    apex = seg == 17
    if np.any(apex):
        half = float(radius[apex].max()) + voxel
        g = np.arange(-half, half + 1e-9, 0.5 * voxel)
        ga, gs = np.meshgrid(g, g, indexing="ij")
        ga, gs = ga.ravel(), gs.ravel()
        # Columns start inside the cavity, half a cap thickness before its apical end, so that near the edge of
        # the cap they still cross the whole (curving) wall instead of only its outer part.
        t_end = float(t[apex].max()) + voxel
        tt = np.arange(t_cav - 0.5 * (t_end - t_cav), t_end, dr)
        # column points: axis point at tt, offset (a, s) from the axis line through centre_lps
        axis_pt = axes.centre_lps + ((axes.base_lps - axes.centre_lps) @ axes.long_axis) * axes.long_axis
        base_cols = axis_pt + np.outer(ga, axes.anterior) + np.outer(gs, axes.septal)  # (n_col, 3)
        pts = base_cols[:, None, :] + tt[None, :, None] * axes.long_axis  # (n_col, n_t, 3)
        m = profile_max(pts)
        hit = np.isfinite(m)
        sums[17] += float(m[hit].sum())
        counts[17] += int(hit.sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        value = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return value[1:], counts[1:]


def _cavity_end(axes: LVAxes, coords: np.ndarray) -> float:
    """Distance from the base plane to the apical end of the cavity (where the apical cap starts).

    From the cavity when there is one; otherwise where the myocardium first covers the axis (within one voxel
    radius), else 85 % of the LV length.
    """
    if axes.cavity_apex_lps is not None:
        return float((axes.cavity_apex_lps - axes.base_lps) @ axes.long_axis)
    t, a, s = coords[:, 0], coords[:, 1], coords[:, 2]
    on_axis = np.hypot(a, s) < 0.05 * axes.length_mm + 1.0
    if np.any(on_axis):
        return float(np.min(t[on_axis]))
    return 0.85 * axes.length_mm


# ---------------------------------------------------------------------------------------------- rendering
def render_polar_map(relative: np.ndarray, title: str = "Relative perfusion", cmap: str = "turbo") -> bytes:
    """PNG bytes of the standard AHA bull's-eye for 17 relative values (%; NaN = not sampled).

    Rings from the centre: apex (17), apical (13-16), mid (7-12), basal (1-6). Anterior at the top, septal on
    the left, lateral on the right, inferior at the bottom. 640 x 560 pixels.
    """
    import matplotlib

    from matplotlib import cm, colors
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Circle, Wedge

    rel = np.asarray(relative, float).reshape(17)
    norm = colors.Normalize(vmin=0.0, vmax=100.0)
    cmap_obj = matplotlib.colormaps[cmap]
    fig = Figure(figsize=(6.4, 5.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.04, 0.08, 0.74, 0.82))
    ax.set_aspect("equal")
    ax.set_xlim(-4.8, 4.8)
    ax.set_ylim(-4.8, 4.8)
    ax.axis("off")

    def style(v: float) -> dict:
        if np.isfinite(v):
            return dict(facecolor=cmap_obj(norm(v)), edgecolor="black", linewidth=1.2)
        return dict(facecolor="0.85", edgecolor="black", linewidth=1.2, hatch="///")

    def label(x: float, y: float, seg: int, v: float) -> None:
        txt = f"{seg}\n{v:.0f}%" if np.isfinite(v) else f"{seg}\nn/a"
        dark = np.isfinite(v) and (norm(v) < 0.15 or norm(v) > 0.85)
        box = None if np.isfinite(v) else dict(facecolor="white", edgecolor="none", pad=1.0)
        ax.text(x, y, txt, ha="center", va="center", fontsize=8.5, color="white" if dark else "black", bbox=box)

    for ring, (r_in, first, n) in enumerate(((3.0, 1, 6), (2.0, 7, 6), (1.0, 13, 4))):
        width = 360.0 / n
        start = 60.0 if n == 6 else 45.0
        for k in range(n):
            seg = first + k
            th1 = start + k * width
            ax.add_patch(Wedge((0, 0), r_in + 1.0, th1, th1 + width, width=1.0, **style(rel[seg - 1])))
            mid = math.radians(th1 + width / 2)
            label((r_in + 0.5) * math.cos(mid), (r_in + 0.5) * math.sin(mid), seg, rel[seg - 1])
    ax.add_patch(Circle((0, 0), 1.0, **style(rel[16])))
    label(0, 0, 17, rel[16])

    for txt, (x, y) in {"ANT": (0, 4.45), "INF": (0, -4.45), "SEPT": (-4.45, 0), "LAT": (4.45, 0)}.items():
        ax.text(x, y, txt, ha="center", va="center", fontsize=10, fontweight="bold",
                rotation=90 if txt in ("SEPT", "LAT") else 0)
    fig.suptitle(title, fontsize=12)
    cax = fig.add_axes((0.82, 0.15, 0.035, 0.68))
    fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap_obj), cax=cax, label="Relative perfusion (%)")
    missing = [i + 1 for i in range(17) if not np.isfinite(rel[i])]
    note = "Orientation assumed from patient axes (no RV segmentation)."
    if missing:
        note = f"Hatched grey: no myocardium sampled (segment {', '.join(map(str, missing))}).\n" + note
    fig.text(0.43, 0.02, note, ha="center", va="bottom", fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
