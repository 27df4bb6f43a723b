"""Per-nodule measurements, the heterogeneity map and its picture (lung-nodule task).

Everything here works on the CT's own grid and on physical coordinates (spacing and direction of the volume), so
an oblique or flipped CT gets the same numbers.

**Heterogeneity map** (one scalar volume, zero outside the nodules). Inside a fused nodule its value is the
generator's *nodule image* (the WGAN-GP branch outputs the CT's density inside the nodule and exactly 0 elsewhere),
in relative density units::

    rho = (HU + 1000) / 1000          (0 = air, 1 = water / soft tissue, 0.3-0.5 = ground glass)

so a ground-glass rim around a solid core appears as a dark-to-bright gradient. It is shown with the perceptually
uniform *Inferno* colour map over the display range 0-1.2 (black/purple = ground glass, orange/yellow = solid),
with values at 0 transparent. The seed code min-max scaled each *slice* and coloured it with JET (with red and blue
swapped when written); a per-slice scale makes two nodules, or two slices of one nodule, incomparable, so an
absolute density scale is used instead.

**Table columns** (one row per nodule):

* centroid (RAS, mm); volume (mm^3) = voxels x voxel volume; equivalent diameter = (6 V / pi)^(1/3);
* longest axial diameter: the largest distance between two voxel centres of the nodule in one axial slice (the
  slices perpendicular to the array axis closest to the patient's S axis), plus one in-plane voxel size;
* mean and standard deviation of the CT number (HU) inside the nodule;
* solid fraction: the share of nodule voxels at or above -300 HU (the usual threshold for a solid component);
* heterogeneity index: the 10-90th percentile range (HU) of the nodule image inside the nodule core (the nodule
  eroded by one voxel when at least 20 voxels remain, so that partial-volume edges do not count): near 0 for a
  uniform nodule, several hundred HU for a solid component of at least a tenth of a ground-glass nodule;
* detector score: the Faster R-CNN support of the nodule (the largest score of a detection on it), NaN in
  single-nodule mode, where the detector does not run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from MedSegAILib.core.volume import Volume, bounding_slices, lps_to_ras_points
from MedSegAILib.tasks.base import Column, Picture, ScalarMap, Table

#: CT number at and above which a nodule voxel counts as solid (HU)
SOLID_HU = -300.0
#: display range of the heterogeneity map (relative density)
MAP_WINDOW = (0.0, 1.2)
MAP_COLORMAP = "Inferno"
MAP_UNITS = "relative density (HU + 1000) / 1000"


@dataclass
class NoduleMeasures:
    centroid_lps: np.ndarray
    volume_mm3: float
    equivalent_diameter_mm: float
    longest_axial_diameter_mm: float
    mean_hu: float
    sd_hu: float
    solid_fraction: float
    heterogeneity_range_hu: float
    score: float


def axial_axis(vol: Volume) -> int:
    """Array axis (0 = k, 1 = j, 2 = i) whose direction is closest to the patient's S axis."""
    d = np.asarray(vol.direction, dtype=float)  # columns: i, j, k in LPS
    col = int(np.argmax(np.abs(d[2])))  # 0 = i, 1 = j, 2 = k
    return 2 - col


def longest_axial_diameter(mask: np.ndarray, vol: Volume) -> float:
    """Largest distance (mm) between two voxel centres of ``mask`` within one axial slice, plus one in-plane voxel."""
    from scipy.spatial.distance import pdist

    ax = axial_axis(vol)
    m2i = vol.ijk_to_lps()[:3, :3]
    best = 0.0
    for s in np.unique(np.argwhere(mask)[:, ax]):
        sl = np.take(mask, s, axis=ax)
        pts2 = np.argwhere(sl)
        if len(pts2) < 2:
            continue
        if len(pts2) > 400:  # the farthest pair lies on the convex hull
            from scipy.spatial import ConvexHull

            try:
                pts2 = pts2[ConvexHull(pts2).vertices]
            except Exception:  # noqa: BLE001 - degenerate (collinear) slices: keep all points
                pass
        kji = np.insert(pts2, ax, s, axis=1).astype(float)
        xyz = kji[:, ::-1] @ m2i.T
        best = max(best, float(pdist(xyz).max()))
    in_plane = [vol.spacing[a] for a in range(3) if a != 2 - ax]
    return best + float(np.mean(in_plane))


def measure_nodule(mask: np.ndarray, ct: Volume, nodule_image: np.ndarray, score: float) -> NoduleMeasures:
    """Measurements of one nodule (``mask`` and ``nodule_image`` on the CT's grid)."""
    from scipy import ndimage

    box = bounding_slices(mask, pad=1)
    m = mask[box]
    hu = np.asarray(ct.array)[box][m].astype(np.float64)
    idx = np.argwhere(m) + np.array([sl.start for sl in box])  # the box already holds every nodule voxel
    centroid = ct.index_to_lps(idx.mean(0)[::-1][None])[0]
    v = float(len(idx) * ct.voxel_volume_mm3)
    core = ndimage.binary_erosion(m)
    if core.sum() < 20:
        core = m
    rho = np.asarray(nodule_image)[box][core].astype(np.float64)
    spread = float(np.subtract(*np.percentile(rho * 1000.0, [90, 10]))) if rho.size else float("nan")
    return NoduleMeasures(
        centroid_lps=centroid, volume_mm3=v, equivalent_diameter_mm=float((6.0 * v / np.pi) ** (1.0 / 3.0)),
        longest_axial_diameter_mm=longest_axial_diameter(m, _sub(ct, box)),
        mean_hu=float(hu.mean()), sd_hu=float(hu.std()), solid_fraction=float((hu >= SOLID_HU).mean()),
        heterogeneity_range_hu=spread, score=float(score),
    )


def _sub(vol: Volume, box: tuple[slice, ...]) -> Volume:
    """The geometry of ``vol`` restricted to the index box ``box`` (array not copied: a 1-voxel placeholder)."""
    start = np.array([box[2].start, box[1].start, box[0].start], dtype=float)
    origin = vol.index_to_lps(start[None])[0]
    shape = tuple(s.stop - s.start for s in box)
    return Volume(np.zeros(shape, np.uint8), vol.spacing, origin, vol.direction.copy(), {})


NODULE_COLUMNS = [
    Column("Nodule"), Column("Centroid R", "mm"), Column("Centroid A", "mm"), Column("Centroid S", "mm"),
    Column("Volume", "mm3"), Column("Equivalent diameter", "mm"), Column("Longest axial diameter", "mm"),
    Column("Mean CT number", "HU"), Column("SD CT number", "HU"), Column("Solid fraction"),
    Column("Heterogeneity index", "HU", "10-90th percentile range of the generator's nodule image inside "
                                        "the nodule core"),
    Column("Detector score"),
]


def nodule_table(names: Sequence[str], measures: Sequence[NoduleMeasures]) -> Table:
    rows = []
    for name, m in zip(names, measures):
        ras = lps_to_ras_points(m.centroid_lps[None])[0]
        rows.append([name, float(ras[0]), float(ras[1]), float(ras[2]), m.volume_mm3, m.equivalent_diameter_mm,
                     m.longest_axial_diameter_mm, m.mean_hu, m.sd_hu, m.solid_fraction, m.heterogeneity_range_hu,
                     m.score])
    return Table(
        "Lung nodules", NODULE_COLUMNS, rows,
        description="Per nodule: centroid (RAS), volume, equivalent and longest axial diameters, CT number mean/SD, "
                    f"solid fraction (voxels >= {SOLID_HU:.0f} HU), heterogeneity index (10-90th percentile range of the "
                    "nodule image in the nodule core, HU) and the detector's score (NaN in single-nodule mode).",
    )


def heterogeneity_map(ct: Volume, labels: np.ndarray, nodule_image: np.ndarray) -> ScalarMap:
    """The map: ``nodule_image`` (relative density) inside labelled voxels, 0 elsewhere, on the CT's grid."""
    arr = np.where(labels > 0, np.asarray(nodule_image, dtype=np.float32), np.float32(0.0)).astype(np.float32)
    # a labelled voxel is never 0 on the map (0 = "not a nodule"): the generator's threshold keeps rho > 0 anyway
    arr[(labels > 0) & (arr <= 0)] = np.float32(1e-3)
    vol = Volume(arr, ct.spacing, ct.origin, ct.direction.copy(), {"modality": "MAP"})
    return ScalarMap(
        name="Nodule heterogeneity", volume=vol, colormap=MAP_COLORMAP, window=MAP_WINDOW, units=MAP_UNITS,
        description="Generator nodule image inside the lung nodules, (HU + 1000) / 1000: 0 = air, about 0.3-0.6 = "
                    "ground glass, 1 = soft tissue. Inferno colour map, 0-1.2; zero (transparent) outside nodules.",
        zero_transparent=True,
    )


def heterogeneity_picture(ct: Volume, labels: np.ndarray, hmap: np.ndarray, names: Sequence[str],
                          max_tiles: int = 8) -> Optional[Picture]:
    """Axial tiles through each nodule's centre (lung window) with the map in colour and a colour-bar legend."""
    if not names:
        return None
    from MedSegAILib.viz import _figure, _png

    ax = axial_axis(ct)
    n = min(len(names), max_tiles)
    fig = _figure(2.6 * n + 1.2, 3.2)
    fig.patch.set_facecolor("black")
    im_map = None
    for t in range(n):
        m = labels == (t + 1)
        if not m.any():
            continue
        idx = np.argwhere(m)
        c = idx.mean(0).round().astype(int)
        sl = [slice(None)] * 3
        sl[ax] = c[ax]
        img = np.asarray(ct.array)[tuple(sl)].astype(np.float32)
        hm = np.asarray(hmap)[tuple(sl)]
        lab = m[tuple(sl)]
        # a square around the nodule: at least 30 mm, 2x its extent
        in_axes = [a for a in range(3) if a != ax]
        half = []
        for a in in_axes:
            sp = ct.spacing[2 - a]
            ext = (idx[:, a].max() - idx[:, a].min() + 1) * sp
            half.append(int(np.ceil(max(15.0, ext) / sp)))
        r0 = slice(max(0, c[in_axes[0]] - half[0]), c[in_axes[0]] + half[0] + 1)
        r1 = slice(max(0, c[in_axes[1]] - half[1]), c[in_axes[1]] + half[1] + 1)
        a_ = fig.add_subplot(1, n + 1, t + 1)
        a_.imshow(img[r0, r1], cmap="gray", vmin=-1350, vmax=150, interpolation="bilinear")
        im_map = a_.imshow(np.ma.masked_where(hm[r0, r1] <= 0, hm[r0, r1]), cmap=MAP_COLORMAP.lower(),
                           vmin=MAP_WINDOW[0], vmax=MAP_WINDOW[1], interpolation="nearest")
        a_.contour(lab[r0, r1], levels=[0.5], colors=["cyan"], linewidths=0.6)
        a_.set_title(names[t], color="white", fontsize=9)
        a_.set_axis_off()
    if im_map is not None:
        cax = fig.add_axes([1.0 - 0.8 / (2.6 * n + 1.2), 0.12, 0.12 / (2.6 * n + 1.2) * 2.6, 0.72])
        cb = fig.colorbar(im_map, cax=cax)
        cb.set_label("(HU + 1000) / 1000", color="white", fontsize=8)
        cb.ax.tick_params(colors="white", labelsize=7)
    fig.suptitle("Intra-nodular heterogeneity (generator nodule image; axial slices, lung window)", color="white",
                 fontsize=10)
    return Picture("Nodule heterogeneity", _png(fig, tight=True),
                   description="Axial slice through each nodule's centre: CT in lung window, nodule image in Inferno "
                               "(0 = air ... 1 = soft tissue), nodule border in cyan.")
