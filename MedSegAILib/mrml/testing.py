"""Helpers for the MRML bridge tests and for in-Slicer self-tests (small synthetic data, no files).

Kept in the library so that the pytest suite (slicer-core) and the extension's ScriptedLoadableModuleTest
(the real application) exercise the bridge with the same data.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from MedSegAILib.core.volume import Volume, random_rotation
from MedSegAILib.tasks.base import (
    ANATOMICAL_STRUCTURE,
    MORPHOLOGICALLY_ALTERED_STRUCTURE,
    RIGHT,
    CodedTerm,
    Column,
    LabelInfo,
    Plot,
    PointList,
    ScalarMap,
    Table,
    TaskResult,
)


def oblique_volume(seed: int = 0, shape: tuple[int, int, int] = (6, 7, 8), dtype: Any = np.int16) -> Volume:
    """A random oblique, anisotropic CT-like volume ``[k, j, i]``."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(-1000, 1000, size=shape).astype(dtype)
    return Volume(
        arr, tuple(rng.uniform(0.3, 4.0, 3)), tuple(rng.uniform(-200, 200, 3)), random_rotation(rng), {"modality": "CT"}
    )


DEMO_LABELS = (
    LabelInfo(1, "Liver", (0.86, 0.55, 0.43), ANATOMICAL_STRUCTURE, CodedTerm("SCT", "10200004", "Liver")),
    LabelInfo(2, "Right kidney", (0.73, 0.31, 0.24), ANATOMICAL_STRUCTURE, CodedTerm("SCT", "64033007", "Kidney"), RIGHT),
    LabelInfo(
        3, "Tumor", (0.9, 0.9, 0.2), MORPHOLOGICALLY_ALTERED_STRUCTURE, CodedTerm("SCT", "108369006", "Neoplasm")
    ),
)


def demo_labelmap(shape: tuple[int, int, int], present: tuple[int, ...] = (1, 2)) -> np.ndarray:
    """Blocks of label 1 and 2 (label 3 absent unless asked for) on a ``[k, j, i]`` grid."""
    lab = np.zeros(shape, np.uint8)
    nk, nj, ni = shape
    if 1 in present:
        lab[: nk // 2, : nj // 2, : ni // 2] = 1
    if 2 in present:
        lab[nk // 2 :, nj // 2 :, ni // 2 :] = 2
    if 3 in present:
        lab[0, -1, -1] = 3
    return lab


def demo_result(
    reference: Volume,
    *,
    task_id: str = "demo",
    present: tuple[int, ...] = (1, 2),
    extras: bool = True,
    provenance: Optional[dict] = None,
) -> TaskResult:
    """A TaskResult on ``reference``'s grid with every kind of extra (map, table, points, plot)."""
    lab = reference.with_array(demo_labelmap(reference.shape, present))
    result = TaskResult(
        task_id=task_id,
        labelmap=lab,
        labels=list(DEMO_LABELS),
        provenance=provenance
        if provenance is not None
        else {
            "model_id": "demo-unet",
            "model_version": "1.2.0",
            "device": "cpu",
            "date": "2026-01-02T03:04:05+00:00",
            "parameters": {"threshold": 0.5},
        },
        messages=["demo result"],
    )
    if extras:
        rng = np.random.default_rng(1)
        result.maps.append(ScalarMap("Uncertainty", reference.with_array(rng.random(reference.shape)), "Inferno", (0.0, 1.0), "1"))
        result.tables.append(
            Table("Volumes", [Column("Structure"), Column("Volume", "mL"), Column("Voxels")], [["Liver", 1.25, 10], ["Right kidney", None, 3]])
        )
        result.points.append(PointList("Landmarks", reference.index_to_lps([[0, 0, 0], [1, 2, 3]]), ["A", "B"], ["first", ""]))
        result.plots.append(Plot("Curve", "time [s]", "counts", {"ROI": ([0, 1, 2], [3.0, 4.0, 5.0]), "BG": ([0, 2], [1.0, 1.5])}))
    return result
