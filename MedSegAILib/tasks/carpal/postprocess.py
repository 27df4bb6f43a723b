"""Label-map clean-up for 2-D bone segmentations, and the decision whether the image shows a wrist at all.

A bone is one piece of bone: each label keeps its largest 8-connected component (small islands are network
noise, usually a bone's class leaking into a neighbour), and holes inside it are filled. Pixels removed from a
label become background, and hole pixels are taken from whatever they were (background or a stray island of
another class): a bone cannot contain another bone in a single projection's label rule (longest path wins).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
from scipy import ndimage


def keep_largest_per_label(label: np.ndarray, values: Iterable[int], fill_holes: bool = True) -> np.ndarray:
    """Return a copy of the 2-D ``label`` with each of ``values`` reduced to its largest connected component
    (8-connectivity) and, with ``fill_holes``, its holes filled. Other values are left unchanged."""
    out = label.copy()
    eight = np.ones((3, 3), bool)
    for v in values:
        mask = out == v
        if not mask.any():
            continue
        comp, n = ndimage.label(mask, structure=eight)
        if n > 1:
            sizes = np.bincount(comp.ravel())[1:]
            keep = comp == (int(np.argmax(sizes)) + 1)
            out[mask & ~keep] = 0
            mask = keep
        if fill_holes:
            filled = ndimage.binary_fill_holes(mask)
            out[filled & ~mask] = v
    return out


def confident_bones(label: np.ndarray, confidence: np.ndarray, values: Iterable[int], key_values: Iterable[int],
                    min_confidence: float, min_key: int, key_confidence: float
                    ) -> tuple[np.ndarray, list[int], bool]:
    """Drop labels whose mean ``confidence`` (the winning softmax probability) is below ``min_confidence``, and
    decide whether the image shows the structure at all: at least ``min_key`` of ``key_values`` (the carpal
    bones) with a mean confidence >= ``key_confidence``. When it does not, every label is dropped (a network
    asked about a chest film or a photograph still answers; the answer is not reported).

    Returns the cleaned label map, the dropped values (present but not confident) and the decision."""
    out = label.copy()
    means = {v: float(confidence[label == v].mean()) for v in values if (label == v).any()}
    dropped = [v for v, m in means.items() if m < min_confidence]
    for v in dropped:
        out[out == v] = 0
    is_structure = sum(1 for v in key_values if means.get(v, 0.0) >= key_confidence) >= min_key
    if not is_structure:
        out[:] = 0
    return out, dropped, is_structure
