"""Comparing one case: per structure Dice, IoU, HD95 and volumes, with the status rules of :data:`STATUS_RULES`.

Formulas (:mod:`MedSegAILib.metrics`): Dice ``2|P∩R| / (|P|+|R|)``, IoU ``|P∩R| / |P∪R|``, HD95 = 95th percentile of
the symmetric surface distances (mm), volumes in mL on each segmentation's own grid, difference = prediction −
reference. A prediction on another grid is resampled (nearest neighbour) onto the reference grid first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import numpy as np

from MedSegAILib.core.volume import Volume, bounding_slices
from MedSegAILib.engine.progress import CancelToken
from MedSegAILib.errors import InputError
from MedSegAILib.evaluation.names import LabelsLike, labels_of
from MedSegAILib.evaluation.reading import GEOMETRY_TOL_MM, integer_labels

#: how statuses enter the numbers (also written into evaluation.json); the package docstring says why
STATUS_RULES = (
    "ok: present in both. empty in prediction / empty in reference: Dice = IoU = 0, HD95 = inf (summary: Dice and "
    "IoU count as 0, HD95 is excluded). empty in both: Dice/IoU/HD95 undefined, excluded from every summary "
    "statistic and from Bland-Altman. missing in prediction/reference/both: the structure was not found at all "
    "(no segment or mask file of that name): no metric, excluded. Volumes in mL on each segmentation's own grid; "
    "volume difference and Bland-Altman difference = prediction - reference; limits of agreement = bias +/- 1.96 SD "
    "(sample SD; undefined for a single pair)."
)

# statuses of a structure in a case
OK = "ok"
EMPTY_PRED = "empty in prediction"
EMPTY_REF = "empty in reference"
EMPTY_BOTH = "empty in both"
MISSING_PRED = "missing in prediction"
MISSING_REF = "missing in reference"
MISSING_BOTH = "missing in both"
#: statuses whose volumes enter the summary and the Bland–Altman analysis
COUNTED_STATUSES = (OK, EMPTY_PRED, EMPTY_REF)


@dataclass
class StructureMetrics:
    """One structure of one case. Dice/IoU/HD95 are None when undefined (empty in both, missing)."""

    value: int
    name: str
    status: str
    dice: Optional[float]
    iou: Optional[float]
    hd95_mm: Optional[float]  #: inf when one side is empty
    volume_pred_ml: Optional[float]
    volume_ref_ml: Optional[float]

    @property
    def volume_diff_ml(self) -> Optional[float]:
        """Prediction − reference (mL)."""
        if self.volume_pred_ml is None or self.volume_ref_ml is None:
            return None
        return self.volume_pred_ml - self.volume_ref_ml

    def to_json(self) -> dict[str, Any]:
        return {"value": self.value, "name": self.name, "status": self.status, "dice": json_number(self.dice),
                "iou": json_number(self.iou), "hd95_mm": json_number(self.hd95_mm),
                "volume_pred_ml": json_number(self.volume_pred_ml), "volume_ref_ml": json_number(self.volume_ref_ml),
                "volume_diff_ml": json_number(self.volume_diff_ml)}


@dataclass
class CaseMetrics:
    """All structures of one case, with what was done to compare them."""

    case: str
    structures: list[StructureMetrics]
    resampled: bool = False
    coverage: float = 1.0  #: fraction of the reference grid inside the prediction's grid
    notes: list[str] = field(default_factory=list)
    pred_source: str = ""
    ref_source: str = ""

    def structure(self, name_or_value: Union[str, int]) -> StructureMetrics:
        for s in self.structures:
            if s.name == name_or_value or s.value == name_or_value:
                return s
        raise KeyError(name_or_value)

    # one metric per structure, by label name (what a GUI or a self-test wants: ``min(m.dice.values())``)
    @property
    def dice(self) -> dict[str, Optional[float]]:
        """``{label name: Dice}``; None where undefined (empty in both, missing), so that a structure that was not
        found can never pass for a good one (``min`` over the values then fails loudly instead)."""
        return {s.name: s.dice for s in self.structures}

    @property
    def iou(self) -> dict[str, Optional[float]]:
        """``{label name: IoU}``; None where undefined (as :attr:`dice`)."""
        return {s.name: s.iou for s in self.structures}

    @property
    def hd95_mm(self) -> dict[str, Optional[float]]:
        """``{label name: HD95 in mm}``; inf when one side is empty, None where undefined or planar."""
        return {s.name: s.hd95_mm for s in self.structures}

    def to_json(self) -> dict[str, Any]:
        return {"case": self.case, "prediction": self.pred_source, "reference": self.ref_source,
                "resampled": self.resampled, "coverage": round(self.coverage, 6), "notes": self.notes,
                "structures": [s.to_json() for s in self.structures]}


def json_number(v: Optional[float]) -> Optional[float]:
    """JSON has no inf/NaN: those become null (the status says why)."""
    if v is None or not math.isfinite(float(v)):
        return None
    return float(v)


def _extent_text(v: Volume) -> str:
    c = v.index_to_lps(np.array([[i, j, k] for i in (-0.5, v.size_ijk[0] - 0.5) for j in (-0.5, v.size_ijk[1] - 0.5)
                                 for k in (-0.5, v.size_ijk[2] - 0.5)]))
    lo, hi = c.min(axis=0), c.max(axis=0)
    return "x {:.0f}..{:.0f}, y {:.0f}..{:.0f}, z {:.0f}..{:.0f} mm (LPS)".format(*np.ravel(np.c_[lo, hi]))


def _grid_text(v: Volume) -> str:
    return f"{'x'.join(str(n) for n in v.size_ijk)} voxels of {' x '.join(f'{s:.3g}' for s in v.spacing)} mm"


def onto_reference(pred: Volume, ref: Volume) -> tuple[np.ndarray, float]:
    """The prediction's labels on the reference grid (nearest neighbour) and the fraction of reference voxels that
    lie inside the prediction's grid. The labels are shifted by +1 before resampling so that the resampler's
    outside value 0 tells "outside the grid" apart from "background"."""
    from MedSegAILib.core.resample import resample_volume

    arr = pred.array
    shifted = pred.with_array(arr.astype(np.uint16 if int(arr.max(initial=0)) < 65535 else np.int64) + 1)
    res = resample_volume(shifted, reference=ref.geometry(), interpolation="nearest", default_value=0).array
    inside = res > 0
    return np.where(inside, res - 1, 0).astype(arr.dtype), float(inside.mean())


def evaluate_pair(
    pred: Volume,
    ref: Volume,
    labels: LabelsLike,
    *,
    case: str = "",
    cancel: Optional[CancelToken] = None,
) -> CaseMetrics:
    """Compare two label maps already in the labels' values (e.g. from :func:`read_case_labels`).

    ``pred`` is resampled onto ``ref``'s grid when they differ (nearest neighbour; :class:`InputError` when the
    grids do not overlap at all). ``meta["missing_labels"]`` of either volume marks structures that were not
    found at all (status "missing"); otherwise an absent value is an empty structure. HD95 is not computed for
    planar (single-slice) images (None, with a note): the surface of a one-slice mask is not defined in 3-D.
    """
    from MedSegAILib.metrics import dice, hausdorff95, iou

    labs = labels_of(labels)
    cancel = cancel or CancelToken()
    case = case or str(ref.meta.get("name", "")) or "case"
    notes = list(pred.meta.get("read_notes", [])) + list(ref.meta.get("read_notes", []))
    parr = integer_labels(pred, f"The prediction of {case}")
    rarr = integer_labels(ref, f"The reference of {case}")
    resampled, coverage = False, 1.0
    if not pred.same_geometry(ref, GEOMETRY_TOL_MM):
        parr, coverage = onto_reference(pred.with_array(parr), ref)
        if coverage == 0.0:
            raise InputError(f"{case}: the prediction and the reference do not overlap in space (prediction "
                             f"{_extent_text(pred)}; reference {_extent_text(ref)}). Were they made on the same "
                             "image? Check the origins/orientation of the files.")
        resampled = True
        msg = (f"{case}: prediction resampled (nearest neighbour) from {_grid_text(pred)} onto the reference grid "
               f"({_grid_text(ref)})")
        if coverage < 1.0:
            msg += f"; it covers {coverage:.1%} of the reference grid, the rest counts as background"
        notes.append(msg)
    pmiss = set(pred.meta.get("missing_labels", ()))
    rmiss = set(ref.meta.get("missing_labels", ()))
    planar = ref.is_2d
    if planar:
        notes.append(f"{case}: planar image: HD95 not computed")
    spacing_kji = tuple(ref.spacing[::-1])
    out: list[StructureMetrics] = []
    for lab in labs:
        cancel.check()
        v = int(lab.value)
        vpred = None if v in pmiss else float(np.count_nonzero(pred.array == v)) * pred.voxel_volume_mm3 / 1000.0
        vref = None if v in rmiss else float(np.count_nonzero(rarr == v)) * ref.voxel_volume_mm3 / 1000.0
        if v in pmiss or v in rmiss:
            status = MISSING_BOTH if (v in pmiss and v in rmiss) else (MISSING_PRED if v in pmiss else MISSING_REF)
            where = {MISSING_PRED: "the prediction", MISSING_REF: "the reference", MISSING_BOTH: "either side"}[status]
            notes.append(f"{case}: no structure {lab.name!r} in {where} (not evaluated)")
            out.append(StructureMetrics(v, lab.name, status, None, None, None, vpred, vref))
            continue
        p, r = parr == v, rarr == v
        union = p | r
        if not union.any():
            out.append(StructureMetrics(v, lab.name, EMPTY_BOTH, None, None, None, vpred, vref))
            continue
        box = bounding_slices(union, pad=1)  # pad: surface voxels stay off the box border (same distances)
        pb, rb = p[box], r[box]
        hd = None if planar else hausdorff95(pb, rb, spacing_kji)
        status = OK if (pb.any() and rb.any()) else (EMPTY_PRED if rb.any() else EMPTY_REF)
        out.append(StructureMetrics(v, lab.name, status, dice(pb, rb), iou(pb, rb), hd, vpred, vref))
    return CaseMetrics(case, out, resampled, coverage, notes, str(pred.meta.get("source", "")),
                       str(ref.meta.get("source", "")))
