"""Evaluating segmentations against reference segmentations: per case, per structure, and over a data set.

Used by ``medsegai evaluate``, the Slicer module and the benchmarks; it knows no task in particular, only a list of
:class:`~MedSegAILib.tasks.base.LabelInfo` (a task's ``labels``, or labels built by the caller).

**Inputs.** A *case* on either side can be

* a label-map file (NIfTI, NRRD, MHA...) whose integer values are the labels' ``value``\\ s (values of no label are
  ignored, with a note). A legend ``<stem>.labels.json`` beside a ``<stem>.labels.nii.gz`` (what
  :func:`MedSegAILib.outputs.write_result_files` writes) maps its values by name instead;
* a Slicer segmentation ``.seg.nrrd`` (segments found by name in its header; several layers are handled); read
  with SimpleITK, so no Slicer is needed;
* a folder of one-structure masks, ``<Organ>.nrrd`` etc. (a ``<case>/segmentations/`` sub-folder is looked into).

Structure names (segment names, mask file names, legend names) are matched to the label names by
:func:`match_structures` (tokens, sides; see there). Everything is turned into a label map in the labels' values
(:func:`read_case_labels`), then compared by :func:`evaluate_pair`.

**Metrics** per structure (:mod:`MedSegAILib.metrics`): Dice ``2|P∩R| / (|P|+|R|)``, IoU ``|P∩R| / |P∪R|``,
HD95 (95th percentile of the symmetric surface distances, mm), the volumes (mL) of P and R and the difference P − R.

**Empty and missing structures** are never averaged in silently:

* ``ok`` — present in both;
* ``empty in prediction`` / ``empty in reference`` — present in one only: Dice = IoU = 0, HD95 = inf (in the summary
  Dice/IoU count as 0, HD95 is left out of the mean and counted under "excluded");
* ``empty in both`` — absent from both: Dice, IoU, HD95 undefined (not 1.0); the case is left out of every summary
  statistic and of the Bland–Altman analysis, and counted under "excluded";
* ``missing in prediction`` / ``missing in reference`` / ``missing in both`` — the structure could not be found at all
  (no segment or mask file of that name; a label map has no such notion, an absent value there is "empty"): no
  metric, excluded, and a note says so. A missing structure is not taken for an empty one, because a naming
  mismatch must not turn into a Dice of 0.

**Grids.** When the prediction's grid differs from the reference's, the prediction is resampled (nearest neighbour)
onto the reference grid and the case says so; reference voxels outside the prediction's grid count as background
(the covered fraction is reported); grids whose physical extents do not overlap at all are an error for that case.
Volumes are measured on each segmentation's own grid (resampling does not change them).

**Summary** per structure and metric: n, mean, SD (n − 1), median, min, max, excluded. **Bland–Altman** of the
volumes per structure (:func:`MedSegAILib.metrics.bland_altman`): difference = prediction − reference, bias = mean
difference, limits of agreement = bias ± 1.96 SD.
**Modules.** :mod:`~MedSegAILib.evaluation.names` (structure names and sides),
:mod:`~MedSegAILib.evaluation.reading` (one case of either form -> label map),
:mod:`~MedSegAILib.evaluation.pairing` (cases of two folders), :mod:`~MedSegAILib.evaluation.compare` (one case:
metrics and statuses), :mod:`~MedSegAILib.evaluation.report` (a data set: summary, Bland–Altman, files). Segmentation
*nodes* of a Slicer scene are evaluated by :mod:`MedSegAILib.mrml.evaluation`, with these same rules.
"""

from MedSegAILib.evaluation.compare import (
    COUNTED_STATUSES,
    EMPTY_BOTH,
    EMPTY_PRED,
    EMPTY_REF,
    MISSING_BOTH,
    MISSING_PRED,
    MISSING_REF,
    OK,
    STATUS_RULES,
    CaseMetrics,
    StructureMetrics,
    evaluate_pair,
)
from MedSegAILib.evaluation.names import (
    GENERIC_WORDS,
    SIDE_WORDS,
    LabelsLike,
    NameKey,
    labels_of,
    make_labels,
    match_structures,
    name_key,
)
from MedSegAILib.evaluation.pairing import PAIRING_RULES, Pairing, case_key, discover_cases, pair_cases
from MedSegAILib.evaluation.reading import CaseSource, case_source, label_map_volume, read_case_labels
from MedSegAILib.evaluation.report import (
    SUMMARY_METRICS,
    EvaluationReport,
    SummaryRow,
    evaluate_folders,
    summarize,
)

__all__ = [
    "COUNTED_STATUSES",
    "EMPTY_BOTH",
    "EMPTY_PRED",
    "EMPTY_REF",
    "GENERIC_WORDS",
    "MISSING_BOTH",
    "MISSING_PRED",
    "MISSING_REF",
    "OK",
    "PAIRING_RULES",
    "SIDE_WORDS",
    "STATUS_RULES",
    "SUMMARY_METRICS",
    "CaseMetrics",
    "CaseSource",
    "EvaluationReport",
    "LabelsLike",
    "NameKey",
    "Pairing",
    "StructureMetrics",
    "SummaryRow",
    "case_key",
    "case_source",
    "discover_cases",
    "evaluate_folders",
    "evaluate_pair",
    "label_map_volume",
    "labels_of",
    "make_labels",
    "match_structures",
    "name_key",
    "pair_cases",
    "read_case_labels",
    "summarize",
]
