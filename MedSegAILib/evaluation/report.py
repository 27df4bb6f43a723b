"""The evaluation of a data set: per case, summary statistics, Bland–Altman of the volumes, and the output files.

Summary per structure and metric: n, mean, SD (n − 1), median, min, max, excluded (see
:data:`~MedSegAILib.evaluation.compare.STATUS_RULES` for what is excluded). Bland–Altman of the volumes per
structure (:func:`MedSegAILib.metrics.bland_altman`): difference = prediction − reference, bias = mean difference,
limits of agreement = bias ± 1.96 SD.
"""

from __future__ import annotations

import datetime
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from MedSegAILib.engine.progress import CancelToken, Progress
from MedSegAILib.errors import Cancelled, InputError, MedSegAIError, OutputError
from MedSegAILib.evaluation.compare import (
    COUNTED_STATUSES,
    STATUS_RULES,
    CaseMetrics,
    StructureMetrics,
    evaluate_pair,
    json_number,
)
from MedSegAILib.evaluation.names import LabelsLike, labels_of
from MedSegAILib.evaluation.pairing import pair_cases
from MedSegAILib.evaluation.reading import read_case_labels
from MedSegAILib.tasks.base import Column, LabelInfo, Plot, Table

SUMMARY_METRICS = (("dice", "Dice", ""), ("iou", "IoU", ""), ("hd95_mm", "HD95", "mm"),
                   ("volume_pred_ml", "Volume prediction", "mL"), ("volume_ref_ml", "Volume reference", "mL"),
                   ("volume_diff_ml", "Volume difference", "mL"))


@dataclass
class SummaryRow:
    structure: str
    metric: str
    unit: str
    n: int
    mean: Optional[float]
    sd: Optional[float]  #: sample SD (n - 1); None for n < 2
    median: Optional[float]
    min: Optional[float]
    max: Optional[float]
    excluded: int  #: cases not counted (empty in both, missing, and for HD95 one side empty)


def summarize(values: Sequence[float]) -> dict[str, Optional[float]]:
    """n, mean, sample SD, median, min, max of finite values (None where undefined)."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], float)
    n = int(x.size)
    if n == 0:
        return {"n": 0, "mean": None, "sd": None, "median": None, "min": None, "max": None}
    return {"n": n, "mean": float(x.mean()), "sd": float(x.std(ddof=1)) if n > 1 else None,
            "median": float(np.median(x)), "min": float(x.min()), "max": float(x.max())}


@dataclass
class EvaluationReport:
    """The evaluation of a data set (or of one case): per case, summary, Bland–Altman, and how it was done."""

    labels: list[LabelInfo]
    cases: list[CaseMetrics]
    pred: str = ""
    ref: str = ""
    only_pred: list[str] = field(default_factory=list)  #: cases with a prediction but no reference
    only_ref: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  #: case -> why it could not be evaluated
    notes: list[str] = field(default_factory=list)  #: pairing notes
    created: str = field(default_factory=lambda: datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="seconds"))

    # ------------------------------------------------------------------ numbers
    def per_structure(self, label: LabelInfo) -> list[tuple[str, StructureMetrics]]:
        return [(c.case, c.structure(int(label.value))) for c in self.cases]

    def summary(self) -> list[SummaryRow]:
        rows = []
        for lab in self.labels:
            items = [s for _, s in self.per_structure(lab)]
            for attr, title, unit in SUMMARY_METRICS:
                counted = [s for s in items if s.status in COUNTED_STATUSES]
                vals = [getattr(s, attr) for s in counted]
                vals = [v for v in vals if v is not None and math.isfinite(v)]
                st = summarize(vals)
                rows.append(SummaryRow(lab.name, title, unit, st["n"], st["mean"], st["sd"], st["median"], st["min"],
                                       st["max"], len(items) - st["n"]))
        return rows

    def volume_pairs(self, label: LabelInfo) -> tuple[list[float], list[float], list[str]]:
        """``(prediction volumes, reference volumes, cases)`` in mL of the cases counted (see the module doc)."""
        a, b, names = [], [], []
        for case, s in self.per_structure(label):
            if s.status in COUNTED_STATUSES:
                a.append(float(s.volume_pred_ml))
                b.append(float(s.volume_ref_ml))
                names.append(case)
        return a, b, names

    def bland_altman(self) -> dict[str, Optional[dict[str, float]]]:
        """Per structure: :func:`MedSegAILib.metrics.bland_altman` of the volumes (prediction − reference): bias,
        sd, lower, upper, n; None without any pair; sd and the limits None with a single pair."""
        from MedSegAILib.metrics import bland_altman

        out: dict[str, Optional[dict[str, Any]]] = {}
        for lab in self.labels:
            a, b, _ = self.volume_pairs(lab)
            r: Optional[dict[str, Any]] = bland_altman(a, b) if a else None
            if r is not None and r["n"] < 2:  # one pair has no spread: no limits of agreement (not "SD 0")
                r.update(sd=None, lower=None, upper=None)
            out[lab.name] = r
        return out

    # ------------------------------------------------------------------ tables and plot (for Slicer and files)
    def tables(self) -> list[Table]:
        """``[per case, summary, Bland–Altman]`` as :class:`Table`\\ s (Slicer table nodes, CSV files)."""
        per_case = Table(
            "Metrics per case",
            [Column("Case"), Column("Structure"), Column("Status"), Column("Dice"), Column("IoU"),
             Column("HD95", "mm"), Column("Volume prediction", "mL"), Column("Volume reference", "mL"),
             Column("Volume difference", "mL", "prediction − reference"), Column("Resampled")],
            [[c.case, s.name, s.status, s.dice, s.iou, s.hd95_mm, s.volume_pred_ml, s.volume_ref_ml, s.volume_diff_ml,
              "yes" if c.resampled else "no"] for c in self.cases for s in c.structures],
            "Dice, IoU and HD95 are undefined (empty) when a structure is empty in both or missing.",
        )
        summary = Table(
            "Metrics summary",
            [Column("Structure"), Column("Metric"), Column("Unit"), Column("n"), Column("Mean"), Column("SD"),
             Column("Median"), Column("Min"), Column("Max"), Column("Excluded")],
            [[r.structure, r.metric, r.unit, r.n, r.mean, r.sd, r.median, r.min, r.max, r.excluded]
             for r in self.summary()],
            "Excluded: cases empty in both or missing (and, for HD95, empty on one side: infinite distance).",
        )
        ba = self.bland_altman()
        bland = Table(
            "Bland-Altman of volumes",
            [Column("Structure"), Column("n"), Column("Bias", "mL", "mean of prediction − reference"),
             Column("SD", "mL"), Column("Lower limit of agreement", "mL"), Column("Upper limit of agreement", "mL")],
            [[name, r["n"], r["bias"], r["sd"], r["lower"], r["upper"]] if r else [name, 0, None, None, None, None]
             for name, r in ba.items()],
            "Limits of agreement: bias ± 1.96 SD of the differences.",
        )
        return [per_case, summary, bland]

    def bland_altman_plot(self) -> Plot:
        """One :class:`Plot`: per structure, the cases (scatter: mean of the volumes vs prediction − reference), the
        bias (line) and the limits of agreement (dashed), drawn across the range of the means."""
        series: dict[str, tuple[list[float], list[float]]] = {}
        styles: dict[str, str] = {}
        all_ba = self.bland_altman()
        for lab in self.labels:
            a, b, _ = self.volume_pairs(lab)
            if not a:
                continue
            ba = all_ba[lab.name]
            means = [(x + y) / 2 for x, y in zip(a, b)]
            series[lab.name] = (means, [x - y for x, y in zip(a, b)])
            styles[lab.name] = "scatter"
            lo, hi = min(means), max(means)
            if hi - lo < 1e-9:
                lo, hi = lo - 0.5, hi + 0.5
            for suffix, y, style in (("bias", ba["bias"], "line"), ("+1.96 SD", ba["upper"], "dashed"),
                                     ("-1.96 SD", ba["lower"], "dashed")):
                if y is None:
                    continue
                series[f"{lab.name} {suffix}"] = ([lo, hi], [y, y])
                styles[f"{lab.name} {suffix}"] = style
        if not series:
            raise InputError("No structure has a pair of volumes to plot (every case is empty, missing or failed).")
        return Plot("Bland-Altman of volumes", "Mean of prediction and reference volumes [mL]",
                    "Prediction − reference [mL]", series, kind="scatter", styles=styles)

    def bland_altman_png(self) -> bytes:
        from MedSegAILib.viz import bland_altman_png

        data = {}
        for lab in self.labels:
            a, b, _ = self.volume_pairs(lab)
            data[lab.name] = (a, b)
        return bland_altman_png(data, title="Bland–Altman of volumes (prediction − reference)")

    # ------------------------------------------------------------------ outputs
    def to_json(self) -> dict[str, Any]:
        ba = self.bland_altman()
        return {
            "created": self.created,
            "prediction": self.pred,
            "reference": self.ref,
            "labels": [{"value": int(lab.value), "name": lab.name} for lab in self.labels],
            "pairing": {
                "pairs": [{"case": c.case, "prediction": c.pred_source, "reference": c.ref_source} for c in self.cases]
                + [{"case": k, "error": v} for k, v in self.failed.items()],
                "only_prediction": self.only_pred,
                "only_reference": self.only_ref,
                "notes": self.notes,
            },
            "failed": self.failed,
            "cases": [c.to_json() for c in self.cases],
            "summary": [{**r.__dict__,
                         **{k: json_number(getattr(r, k)) for k in ("mean", "sd", "median", "min", "max")}}
                        for r in self.summary()],
            "bland_altman": {k: ({kk: (json_number(vv) if kk != "n" else vv) for kk, vv in v.items()} if v else None)
                             for k, v in ba.items()},
            "rules": STATUS_RULES,
        }

    OUTPUT_FILES = ("metrics_per_case.csv", "metrics_summary.csv", "bland_altman.csv", "evaluation.json",
                    "bland_altman.png")

    def write(self, outdir: Union[str, os.PathLike], *, overwrite: bool = False) -> list[Path]:
        """Write :data:`OUTPUT_FILES` to ``outdir`` (each atomically); existing ones only with ``overwrite``."""
        from MedSegAILib.core.io import atomic_write_bytes
        from MedSegAILib.outputs import check_output_folder

        out = Path(outdir)
        check_output_folder(out)
        existing = [n for n in self.OUTPUT_FILES if (out / n).exists()]
        if existing and not overwrite:
            raise OutputError(f"{len(existing)} evaluation file(s) already exist in {out} (e.g. {existing[0]}); "
                              "nothing was written. Choose another folder or allow overwriting (--overwrite).")
        per_case, summary, bland = self.tables()
        contents = {
            "metrics_per_case.csv": per_case.to_csv().encode(),
            "metrics_summary.csv": summary.to_csv().encode(),
            "bland_altman.csv": bland.to_csv().encode(),
            "evaluation.json": json.dumps(self.to_json(), indent=2).encode(),
            "bland_altman.png": self.bland_altman_png(),
        }
        return [atomic_write_bytes(out / n, contents[n]) for n in self.OUTPUT_FILES]

    def summary_text(self) -> str:
        """A short table for a terminal: per structure n, Dice, HD95 and the volume bias with its limits."""
        ba = self.bland_altman()
        rows = {(r.structure, r.metric): r for r in self.summary()}

        def ms(r: SummaryRow, digits: int) -> str:
            if r.mean is None:
                return "-"
            sd = f" ± {r.sd:.{digits}f}" if r.sd is not None else ""
            return f"{r.mean:.{digits}f}{sd}"

        width = max([len(lab.name) for lab in self.labels] + [9])
        lines = [f"{'Structure':<{width}}  {'n':>3}  {'Dice':>15}  {'HD95 [mm]':>15}  {'Volume bias [mL] (LoA)':>28}"]
        for lab in self.labels:
            d, h = rows[(lab.name, "Dice")], rows[(lab.name, "HD95")]
            b = ba[lab.name]
            vb = "-" if not b else (f"{b['bias']:+.2f} ({b['lower']:+.2f}, {b['upper']:+.2f})" if b["sd"] is not None
                                    else f"{b['bias']:+.2f} (n = 1)")
            lines.append(f"{lab.name:<{width}}  {d.n:>3}  {ms(d, 3):>15}  {ms(h, 2):>15}  {vb:>28}")
        lines.append(f"{len(self.cases)} case(s) evaluated"
                     + (f"; {len(self.failed)} failed" if self.failed else "")
                     + (f"; {len(self.only_pred)} without reference" if self.only_pred else "")
                     + (f"; {len(self.only_ref)} without prediction" if self.only_ref else ""))
        return "\n".join(lines)


def evaluate_folders(
    pred_dir: Union[str, os.PathLike],
    ref_dir: Union[str, os.PathLike],
    task: LabelsLike,
    *,
    progress: Optional[Progress] = None,
    cancel: Optional[CancelToken] = None,
) -> EvaluationReport:
    """Evaluate every paired case of two folders (:func:`pair_cases`). ``task`` is a task or a sequence of
    :class:`LabelInfo`. A case that cannot be read or compared (e.g. grids without overlap, unmatched names) is
    recorded in ``report.failed`` with its message; the others are still evaluated. No pair at all is an
    :class:`InputError` listing what was found on each side."""
    labels = labels_of(task)
    progress = progress or Progress()
    cancel = cancel or CancelToken()
    pairing = pair_cases(pred_dir, ref_dir)
    if not pairing.pairs:
        raise InputError(
            f"No case pairs: no case name is found in both folders. Prediction ({pred_dir}): "
            f"{', '.join(pairing.only_pred[:8]) or 'no case'}{'...' if len(pairing.only_pred) > 8 else ''}; "
            f"reference ({ref_dir}): {', '.join(pairing.only_ref[:8]) or 'no case'}"
            f"{'...' if len(pairing.only_ref) > 8 else ''}. Cases are paired by file/folder name.")
    report = EvaluationReport(labels, [], str(pred_dir), str(ref_dir), pairing.only_pred, pairing.only_ref,
                              notes=list(pairing.notes))
    for n, (case, psrc, rsrc) in enumerate(pairing.pairs):
        cancel.check()
        progress(n / len(pairing.pairs), f"Evaluating {case}")
        try:
            pred = read_case_labels(psrc, labels)
            ref = read_case_labels(rsrc, labels)
            report.cases.append(evaluate_pair(pred, ref, labels, case=case, cancel=cancel))
        except Cancelled:
            raise
        except MedSegAIError as exc:
            report.failed[case] = str(exc)
    progress(1.0, "Evaluation done")
    return report
