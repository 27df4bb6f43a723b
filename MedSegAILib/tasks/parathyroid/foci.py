"""Candidate parathyroid foci on an evidence image: detection, measurement, location, ranking; truth matching.

Evidence is the learned parathyroid image (NM-USNet) or the classical significance map ``Z``
(:func:`MedSegAILib.tasks.parathyroid.subtraction.classical_subtraction`). Arrays are 2-D ``[row j, column i]``
on the sestamibi grid, ``spacing = (si, sj)`` mm.

Detection (:func:`detect_foci`):

1. the evidence is optionally smoothed (``smooth_fwhm_mm``; the classical ``Z`` is already smooth);
2. candidates are local maxima (within ``peak_separation_mm``) whose value reaches ``threshold``;
3. each candidate grows into its region: the pixels of its watershed basin (so that two touching foci stay
   apart) that are connected to the peak and at least ``region_fraction`` (50 %) of the peak value;
4. regions smaller than ``min_diameter_mm`` (equivalent diameter) are dropped.

Measurements of a :class:`Focus`: area, equivalent diameter ``2 sqrt(area / pi)``, peak and mean evidence, the
evidence-weighted centroid, and the **contrast to the thyroid bed** = mean sestamibi counts in the focus / mean
sestamibi counts in the ring 2-8 mm outside it (other foci excluded): how much the focus stands out from its
immediate surroundings on the original image (1 = invisible on the sestamibi image; a focus over the thyroid
with contrast close to 1 is only seen after subtraction).

Location: "thyroid bed" when the focus centroid lies within ``bed_margin_mm`` (15 mm) of the thyroid mask,
"ectopic" otherwise (above the upper pole, below the lower pole, or lateral), "unknown" without a thyroid.

Nuisance structures (sestamibi-avid, no iodine, so they survive any subtraction). Geometry is measured in the
patient frame: "superior" comes from ``reference``'s direction matrix (row 0 = superior when none is given)
and the midline is the thyroid's centroid column:

* **probable salivary gland**: more than ``salivary_height_mm`` (30 mm) above the thyroid's upper pole and
  either large (equivalent diameter > 25 mm), or part of a large structure (the connected evidence above the
  threshold around it, ``structure_diameter_mm`` > 45 mm: the parotid and submandibular glands of one side
  often merge), or paired (another focus more than 20 mm above the upper pole, on the other side of the
  midline at a mirror position within 20 mm and within 20 mm in height), or far up (> 50 mm above the upper
  pole); or overlapping a given ``salivary_hint`` mask by >= 30 % wherever it is. A focus > 30 mm above the
  upper pole that fits none of these is only flagged "possible salivary gland" (undescended parathyroid
  adenomas lie up to ~40 mm above the upper pole, next to the submandibular glands);
* **probable myocardium**: more than 80 mm below the thyroid's lower pole and either large (> 30 mm, or part
  of a > 40 mm structure: the myocardial ring breaks into several foci) or touching the inferior image
  border; or any focus > 30 mm across touching the inferior border.

The constants are module attributes (``SALIVARY_*``, ``MYOCARDIUM_*``). The sizes are those of the 50 %
regions on the classical z map (smoothed, so larger than the organs' true sizes).

With ``classical=True`` (the evidence still contains them) such foci are ranked after every other focus; with
``classical=False`` (a learned parathyroid image, trained to remove them) they are only flagged, never
demoted, so that an undescended adenoma near the jaw is not hidden.

Ranking: ``score`` = peak evidence (``Z`` for the classical map). With ``classical=True`` foci are sorted in
three tiers, then by score: (0) candidates; (1) "possible salivary gland" (high above the thyroid but not
confirmed by the rules above) and foci touching the image border (partly outside the field of view, where the
background estimate is least reliable - on the simulator these are the main false positives, at the cut edges
of the shoulders); (2) probable salivary gland / myocardium. Ranks 1..n; at most ``max_foci`` are returned.
The default classical threshold (:data:`CLASSICAL_Z_THRESHOLD` = 6.5) was chosen on the validation studies of
``bench/bench_parathyroid.py --split val --sweep`` (60 studies, seeds 2 900 000 000+, never used for training or
for the reported test numbers), as the threshold with the highest sensitivity for adenomas >= 8 mm at <= 0.3 false
positives per study (with the task's removal of probable salivary glands and myocardium): 100 % at 0.07 FP/study.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
from scipy import ndimage

from MedSegAILib.core.filters import sigma_px
from MedSegAILib.core.volume import Volume
from MedSegAILib.errors import InputError

#: Default detection threshold on the classical significance map (Poisson z units).
CLASSICAL_Z_THRESHOLD = 6.5

PROBABLE_SALIVARY = "probable salivary gland"
PROBABLE_MYOCARDIUM = "probable myocardium"


@dataclass
class Focus:
    """One candidate focus. Index pairs are ``(i, j)`` = (column, row), as :meth:`Volume.index_to_lps` takes them."""

    rank: int
    peak_ij: tuple[int, int]
    centroid_ij: tuple[float, float]
    area_mm2: float
    equivalent_diameter_mm: float
    peak: float  #: evidence at the peak
    mean: float  #: mean evidence in the region
    contrast_to_bed: float  #: mean Tc in the focus / mean Tc in the 2-8 mm ring around it (nan without Tc)
    score: float  #: ranking score (peak evidence)
    location: str  #: "thyroid bed", "ectopic" or "unknown"
    flags: list[str] = field(default_factory=list)
    kind: str = "candidate"  #: "candidate", "probable salivary gland" or "probable myocardium"
    #: ranking tier (classical method): 0 candidate, 1 possible salivary gland or at the image border, 2 nuisance
    tier: int = 0
    significance_peak: float = float("nan")  #: significance at the peak when a significance map was given
    distance_to_thyroid_mm: float = float("nan")
    height_above_upper_pole_mm: float = float("nan")  #: > 0 above the thyroid's upper pole
    #: equivalent diameter of the connected evidence >= threshold that contains the focus (its whole structure)
    structure_diameter_mm: float = float("nan")
    mask: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]
    spacing: tuple[float, float] = field(default=(1.0, 1.0), repr=False)

    @property
    def is_nuisance(self) -> bool:
        return self.kind != "candidate"

    def centroid_lps(self, reference: Volume) -> np.ndarray:
        """The centroid in LPS mm on ``reference``'s grid (the image the evidence is on)."""
        return reference.index_to_lps([self.centroid_ij[0], self.centroid_ij[1], 0.0])[0]


# ---------------------------------------------------------------------------------------------- geometry helpers
def _superior_axes(reference: Optional[Volume]) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors (d_row, d_col) per pixel step pointing superior and towards the patient's left, in (row, col).

    From the direction matrix when it has an in-plane superior component; otherwise the display convention
    (row 0 superior, column 0 the patient's right).
    """
    sup = np.array([-1.0, 0.0])  # (row, col): decreasing row = superior
    left = np.array([0.0, 1.0])
    if reference is not None:
        d = np.asarray(reference.direction, float)
        zi, zj = d[2, 0], d[2, 1]  # superior (LPS +z) components of the i and j axes
        xi, xj = d[0, 0], d[0, 1]  # left (LPS +x) components
        if math.hypot(zi, zj) > 0.5:
            sup = np.array([zj, zi]) / math.hypot(zi, zj)
        if math.hypot(xi, xj) > 0.5:
            left = np.array([xj, xi]) / math.hypot(xi, xj)
    return sup, left


def _local_maxima(img: np.ndarray, radius_px: tuple[int, int], threshold: float) -> np.ndarray:
    """(N, 2) row/col of the local maxima >= threshold (plateaus give one point), strongest first."""
    size = (2 * radius_px[0] + 1, 2 * radius_px[1] + 1)
    mx = ndimage.maximum_filter(img, size=size, mode="nearest")
    cand = (img >= mx) & (img >= threshold)
    lab, n = ndimage.label(cand)
    if n == 0:
        return np.zeros((0, 2), int)
    pos = np.array(ndimage.maximum_position(img, lab, np.arange(1, n + 1)), int).reshape(n, 2)
    order = np.argsort(-img[pos[:, 0], pos[:, 1]], kind="stable")
    return pos[order]


# ---------------------------------------------------------------------------------------------- detection
def detect_foci(
    evidence: np.ndarray,
    spacing: Sequence[float],
    *,
    thyroid_mask: Optional[np.ndarray],
    threshold: float,
    tc_image: Optional[np.ndarray] = None,
    salivary_hint: Optional[np.ndarray] = None,
    significance: Optional[np.ndarray] = None,
    min_diameter_mm: float = 5.0,
    max_foci: int = 10,
    classical: bool = True,
    reference: Optional[Volume] = None,
    smooth_fwhm_mm: float = 0.0,
    region_fraction: float = 0.5,
    peak_separation_mm: float = 8.0,
    bed_margin_mm: float = 15.0,
    salivary_height_mm: float = 30.0,
) -> list[Focus]:
    """Find, measure, classify and rank candidate foci (see the module docstring).

    ``threshold`` applies to the evidence peak. ``significance`` (optional, same grid) is only recorded per
    focus (``significance_peak``); ``tc_image`` gives ``contrast_to_bed``; ``reference`` (the sestamibi
    :class:`Volume`) gives the superior direction.
    """
    ev = np.asarray(evidence, np.float64)
    if ev.ndim == 3 and ev.shape[0] == 1:
        ev = ev[0]
    if ev.ndim != 2:
        raise InputError(f"detect_foci needs a 2-D evidence image; got shape {ev.shape}.")
    if not np.all(np.isfinite(ev)):
        raise InputError("The evidence image contains NaN or infinite values.")
    shape = ev.shape

    def plane(a: Optional[np.ndarray], name: str, dtype: Any) -> Optional[np.ndarray]:
        if a is None:
            return None
        a = np.asarray(a, dtype)
        if a.ndim == 3 and a.shape[0] == 1:
            a = a[0]
        if a.shape != shape:
            raise InputError(f"detect_foci: the {name} {a.shape} is not on the evidence grid {shape}.")
        return a

    thy = plane(thyroid_mask, "thyroid mask", bool)
    tc = plane(tc_image, "sestamibi image", np.float64)
    sal = plane(salivary_hint, "salivary mask", bool)
    sig = plane(significance, "significance map", np.float64)
    si, sj = float(spacing[0]), float(spacing[1])
    if smooth_fwhm_mm > 0:
        ev = ndimage.gaussian_filter(ev, sigma_px((si, sj), smooth_fwhm_mm),
                                     mode="nearest")
    rad = (max(1, int(round(peak_separation_mm / 2 / sj))), max(1, int(round(peak_separation_mm / 2 / si))))
    peaks = _local_maxima(ev, rad, float(threshold))
    if len(peaks) == 0:
        return []
    peaks = peaks[: 4 * max_foci + 10]  # more than enough: nuisance foci may be demoted

    # basins: watershed of -evidence from the peaks, over the pixels above a low level
    from skimage.segmentation import watershed

    low = min(region_fraction * float(ev[peaks[:, 0], peaks[:, 1]].min()), float(threshold))
    markers = np.zeros(shape, np.int32)
    markers[peaks[:, 0], peaks[:, 1]] = np.arange(1, len(peaks) + 1)
    basins = watershed(-ev, markers, mask=ev >= low)

    pix_area = si * sj
    sup, left = _superior_axes(reference)
    rr, cc = np.mgrid[0:shape[0], 0:shape[1]]
    # thyroid geometry in the patient frame (mm): height along superior, lateral along left
    if thy is not None and thy.any():
        h_map = (rr * sup[0] * sj + cc * sup[1] * si)
        x_map = (rr * left[0] * sj + cc * left[1] * si)
        upper_pole = float(h_map[thy].max())
        lower_pole = float(h_map[thy].min())
        midline = float(x_map[thy].mean())
        dist_thy = ndimage.distance_transform_edt(~thy, sampling=(sj, si))
    else:
        h_map = x_map = dist_thy = None
        upper_pole = lower_pole = midline = float("nan")
    inferior_border = _inferior_border(shape, sup)
    ring_in = max(1, int(round(2.0 / min(si, sj))))
    ring_out = max(ring_in + 1, int(round(8.0 / min(si, sj))))

    # the "structure" of a focus: the connected evidence >= threshold around its peak (a salivary gland or the
    # heart breaks into several foci but stays one large structure)
    struct_lab, _ = ndimage.label(ev >= float(threshold), structure=np.ones((3, 3), bool))
    struct_area = np.bincount(struct_lab.ravel()) * pix_area

    regions: list[tuple[int, np.ndarray]] = []
    taken = np.zeros(shape, bool)
    for n, (r0, c0) in enumerate(peaks, start=1):
        pk = float(ev[r0, c0])
        region = (basins == n) & (ev >= region_fraction * pk) & ~taken
        lab, _ = ndimage.label(region)
        if lab[r0, c0] == 0:
            continue
        region = lab == lab[r0, c0]
        regions.append((n, region))
        taken |= region
    all_foci = taken

    found: list[Focus] = []
    for n, region in regions:
        r0, c0 = peaks[n - 1]
        area = float(region.sum()) * pix_area
        diam = 2.0 * math.sqrt(area / math.pi)
        if diam < min_diameter_mm:
            continue
        w = np.clip(ev[region], 0, None)
        rows, cols = rr[region], cc[region]
        if w.sum() > 0:
            cr, ccol = float((rows * w).sum() / w.sum()), float((cols * w).sum() / w.sum())
        else:
            cr, ccol = float(rows.mean()), float(cols.mean())
        contrast = float("nan")
        if tc is not None:
            grown_out = ndimage.binary_dilation(region, iterations=ring_out)
            grown_in = ndimage.binary_dilation(region, iterations=ring_in)
            ring = grown_out & ~grown_in & ~all_foci
            if ring.any():
                bed_mean = float(tc[ring].mean())
                contrast = float(tc[region].mean()) / bed_mean if bed_mean > 0 else float("inf")
        flags: list[str] = []
        if rows.min() == 0 or cols.min() == 0 or rows.max() == shape[0] - 1 or cols.max() == shape[1] - 1:
            flags.append("at image border")  # partly outside the field of view: size and background unreliable
        location, dist, height = "unknown", float("nan"), float("nan")
        if dist_thy is not None:
            ri, ci = int(round(cr)), int(round(ccol))
            dist = float(dist_thy[ri, ci])
            location = "thyroid bed" if dist <= bed_margin_mm else "ectopic"
            height = float(h_map[ri, ci]) - upper_pole
        found.append(Focus(
            rank=0, peak_ij=(int(c0), int(r0)), centroid_ij=(ccol, cr), area_mm2=area, equivalent_diameter_mm=diam,
            peak=float(ev[r0, c0]), mean=float(ev[region].mean()), contrast_to_bed=contrast, score=float(ev[r0, c0]),
            location=location, flags=flags, significance_peak=float(sig[r0, c0]) if sig is not None else float("nan"),
            distance_to_thyroid_mm=dist, height_above_upper_pole_mm=height, mask=region, spacing=(si, sj),
            structure_diameter_mm=2.0 * math.sqrt(float(struct_area[struct_lab[r0, c0]]) / math.pi),
        ))

    _classify_nuisance(found, h_map, x_map, upper_pole, lower_pole, midline, inferior_border, sal,
                       salivary_height_mm, classical)
    found.sort(key=lambda f: (f.tier, -f.score))
    found = found[:max_foci]
    for rank, f in enumerate(found, start=1):
        f.rank = rank
    return found


def _inferior_border(shape: tuple[int, int], sup: np.ndarray) -> np.ndarray:
    """Bool mask of the image edge on the inferior side (the border row/column the superior axis points away from)."""
    edge = np.zeros(shape, bool)
    if abs(sup[0]) >= abs(sup[1]):
        edge[-1 if sup[0] < 0 else 0, :] = True
    else:
        edge[:, -1 if sup[1] < 0 else 0] = True
    return edge


def _classify_nuisance(found: list[Focus], h_map: Optional[np.ndarray], x_map: Optional[np.ndarray],
                       upper_pole: float, lower_pole: float, midline: float, inferior_border: np.ndarray,
                       salivary_hint: Optional[np.ndarray], salivary_height_mm: float, classical: bool) -> None:
    """Set ``kind``, ``tier`` and flags of salivary-gland and myocardium look-alikes (see the module docstring)."""
    geo = []
    for f in found:
        ri, ci = int(round(f.centroid_ij[1])), int(round(f.centroid_ij[0]))
        if h_map is not None:
            geo.append((float(h_map[ri, ci]) - upper_pole, lower_pole - float(h_map[ri, ci]),
                        float(x_map[ri, ci]) - midline))
        else:
            geo.append((float("nan"), float("nan"), float("nan")))
    for n, f in enumerate(found):
        above, below, lateral = geo[n]
        touches_bottom = bool((f.mask & inferior_border).any())
        reasons: list[str] = []
        kind = "candidate"
        possible = False
        if salivary_hint is not None and float(salivary_hint[f.mask].mean()) >= 0.3:
            kind, reasons = PROBABLE_SALIVARY, ["overlaps the salivary-gland mask"]
        elif np.isfinite(above) and above > salivary_height_mm:
            paired = any(
                m != n and geo[m][0] > 20.0 and abs(geo[m][0] - above) < 20.0
                and abs(lateral) > 10.0 and abs(geo[m][2]) > 10.0 and np.sign(geo[m][2]) != np.sign(lateral)
                and abs(geo[m][2] + lateral) < 20.0
                for m in range(len(found)))
            if f.equivalent_diameter_mm > SALIVARY_MIN_DIAMETER_MM:
                reasons.append(f"large ({f.equivalent_diameter_mm:.0f} mm)")
            if f.structure_diameter_mm > SALIVARY_MIN_STRUCTURE_MM:
                reasons.append(f"part of a {f.structure_diameter_mm:.0f} mm structure")
            if paired:
                reasons.append("paired with a focus mirrored about the midline")
            if above > SALIVARY_CERTAIN_HEIGHT_MM:
                reasons.append("far above the thyroid")
            if reasons:
                kind = PROBABLE_SALIVARY
                reasons.insert(0, f"{above:.0f} mm above the thyroid's upper pole")
            else:
                possible = True
                f.flags.append(f"possible salivary gland ({above:.0f} mm above the thyroid's upper pole)")
        if kind == "candidate":
            low = np.isfinite(below) and below > MYOCARDIUM_MIN_DEPTH_MM
            big = f.equivalent_diameter_mm > 30.0 or f.structure_diameter_mm > MYOCARDIUM_MIN_STRUCTURE_MM
            if (low and (big or touches_bottom)) or (touches_bottom and f.equivalent_diameter_mm > 30.0):
                kind = PROBABLE_MYOCARDIUM
                reasons = [f"{max(f.equivalent_diameter_mm, f.structure_diameter_mm):.0f} mm structure"]
                if touches_bottom:
                    reasons.append("at the inferior image border")
                if np.isfinite(below):
                    reasons.append(f"{below:.0f} mm below the thyroid")
        if kind != "candidate":
            if classical:
                f.kind = kind
                f.tier = 2
                f.flags.append(f"{kind} ({', '.join(reasons)}): ranked after the other foci")
            else:
                f.flags.append(f"possible {kind.split(' ', 1)[1]} ({', '.join(reasons)})")
        elif classical and (possible or "at image border" in f.flags):
            f.tier = 1


#: Salivary-gland rules (mm): a focus this far above the thyroid's upper pole is suspect; it is a probable
#: salivary gland when also large, part of a large structure, paired, or very high.
SALIVARY_MIN_DIAMETER_MM = 25.0
SALIVARY_MIN_STRUCTURE_MM = 45.0
SALIVARY_CERTAIN_HEIGHT_MM = 50.0
#: Myocardium rules (mm below the thyroid's lower pole; size of the structure).
MYOCARDIUM_MIN_DEPTH_MM = 80.0
MYOCARDIUM_MIN_STRUCTURE_MM = 40.0


# ---------------------------------------------------------------------------------------------- outputs
def focus_masks(foci: Sequence[Focus], shape: Sequence[int]) -> np.ndarray:
    """uint8 label image of ``shape`` (2-D, or ``(1, H, W)``): each focus' region holds its rank."""
    shape = tuple(int(s) for s in shape)
    plane_shape = shape[-2:]
    out = np.zeros(plane_shape, np.uint8)
    for f in sorted(foci, key=lambda f: -f.rank):  # better ranks painted last (win any overlap)
        out[np.asarray(f.mask, bool)] = np.uint8(min(f.rank, 255))
    return out.reshape(shape)


# ---------------------------------------------------------------------------------------------- evaluation
def _get(obj: Any, name: str) -> Any:
    return obj[name] if isinstance(obj, dict) else getattr(obj, name)


def match_foci(
    foci: Sequence[Focus],
    truth_labels: np.ndarray,
    adenomas: Sequence[Any],
    tolerance_mm: float = 10.0,
    *,
    reference: Optional[Volume] = None,
    include_nuisance: bool = False,
) -> tuple[int, int, int, dict[str, Any]]:
    """Match detections to true adenomas: ``(tp, fp, fn, details)``.

    A focus detects an adenoma when its centroid lies inside the adenoma's footprint (``truth_labels`` ==
    its ``label``) or within ``tolerance_mm`` of the adenoma's centre (the footprint centroid; the projected
    ``center_lps`` via ``reference`` when the footprint is empty). Foci are taken in rank order and each
    adenoma is detected at most once (the nearest qualifying adenoma); unmatched foci are false positives.
    Foci labelled as nuisance (probable salivary gland / myocardium) are not counted as false positives unless
    ``include_nuisance`` (they are listed in ``details["nuisance"]``); one that hits an adenoma still counts.
    ``details``: ``{"adenomas": [{label, diameter_mm, ectopic, detected_by (rank or None), distance_mm}],
    "false_positives": [ranks], "nuisance": [ranks]}``.
    """
    lab = np.asarray(truth_labels)
    if lab.ndim == 3 and lab.shape[0] == 1:
        lab = lab[0]
    spacing = foci[0].spacing if foci else ((reference.spacing[0], reference.spacing[1]) if reference else (1.0, 1.0))
    si, sj = float(spacing[0]), float(spacing[1])
    centres: dict[int, np.ndarray] = {}
    for a in adenomas:
        label = int(_get(a, "label"))
        rows, cols = np.nonzero(lab == label)
        if rows.size:
            centres[label] = np.array([cols.mean(), rows.mean()])
        elif reference is not None:
            centres[label] = reference.lps_to_index(np.asarray(_get(a, "center_lps"), float).reshape(1, 3))[0, :2]
    matched: dict[int, tuple[int, float]] = {}
    fps: list[int] = []
    nuisance: list[int] = []
    for f in sorted(foci, key=lambda f: f.rank):
        ci, cj = f.centroid_ij
        ri, cii = int(round(cj)), int(round(ci))
        inside = int(lab[ri, cii]) if 0 <= ri < lab.shape[0] and 0 <= cii < lab.shape[1] else 0
        best, best_d = None, float("inf")
        for label, c in centres.items():
            if label in matched:
                continue
            d = math.hypot((ci - c[0]) * si, (cj - c[1]) * sj)
            if (label == inside or d <= tolerance_mm) and d < best_d:
                best, best_d = label, d
        if best is not None:
            matched[best] = (f.rank, best_d)
        elif f.is_nuisance and not include_nuisance:
            nuisance.append(f.rank)
        else:
            fps.append(f.rank)
    rows_out = []
    for a in adenomas:
        label = int(_get(a, "label"))
        hit = matched.get(label)
        rows_out.append({"label": label, "diameter_mm": float(_get(a, "diameter_mm")),
                         "ectopic": bool(_get(a, "ectopic")), "detected_by": hit[0] if hit else None,
                         "distance_mm": hit[1] if hit else None})
    tp = len(matched)
    fn = len(adenomas) - tp
    return tp, len(fps), fn, {"adenomas": rows_out, "false_positives": fps, "nuisance": nuisance}
