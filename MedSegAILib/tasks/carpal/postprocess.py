"""Label-map clean-up for 2-D bone segmentations, and the decision whether the image shows a wrist at all.

A bone is one piece of bone: each label keeps its largest 8-connected component (small islands are network
noise, usually a bone's class leaking into a neighbour), and background holes inside it are filled. Pixels removed
from a label become background; another bone inside a bone's outline is kept (the pisiform is drawn whole over the
triquetrum, see :mod:`MedSegAILib.simulate.drr`).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
from scipy import ndimage


def keep_largest_per_label(label: np.ndarray, values: Iterable[int], fill_holes: bool = True) -> np.ndarray:
    """Return a copy of the 2-D ``label`` with each of ``values`` reduced to its largest connected component
    (8-connectivity) and, with ``fill_holes``, its holes filled. Other values are left unchanged.

    Each label is processed inside its bounding box (one pixel larger), so a 2048 x 2048 radiograph costs what
    its bones cost, not ten passes over four million pixels."""
    out = label.copy()
    eight = np.ones((3, 3), bool)
    boxes = ndimage.find_objects(out)
    for v in values:
        if v < 1 or v > len(boxes) or boxes[v - 1] is None:
            continue
        sl = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in boxes[v - 1])
        sub = out[sl]  # a view: edits go to ``out``
        mask = sub == v
        comp, n = ndimage.label(mask, structure=eight)
        if n > 1:
            sizes = np.bincount(comp.ravel())[1:]
            keep = comp == (int(np.argmax(sizes)) + 1)
            sub[mask & ~keep] = 0
            mask = keep
        if fill_holes and mask.any():  # inside the kept piece's own box (stray islands made the first box large)
            tight = ndimage.find_objects(mask.astype(np.uint8))[0]
            tight = tuple(slice(max(t.start - 1, 0), t.stop + 1) for t in tight)
            m, region = mask[tight], sub[tight]
            # only background holes: another bone inside the outline stays (the pisiform drawn over the triquetrum)
            region[ndimage.binary_fill_holes(m) & ~m & (region == 0)] = v
    return out


def label_confidence(label: np.ndarray, confidence: np.ndarray, values: Iterable[int]
                     ) -> dict[int, tuple[float, int]]:
    """``{value: (mean confidence, pixel count)}`` of the labels of ``values`` present in ``label`` (one pass)."""
    values = list(values)
    flat = label.ravel().astype(np.intp)
    counts = np.bincount(flat, minlength=max(values) + 1)
    sums = np.bincount(flat, weights=confidence.ravel(), minlength=max(values) + 1)
    return {v: (float(sums[v] / counts[v]), int(counts[v])) for v in values if counts[v] > 0}


def confident_bones(label: np.ndarray, confidence: np.ndarray, values: Iterable[int], key_values: Iterable[int],
                    min_confidence: float, min_key: int, key_confidence: float
                    ) -> tuple[np.ndarray, list[int], bool]:
    """Drop labels whose mean ``confidence`` (the winning softmax probability) is below ``min_confidence``, and
    decide whether the image shows the structure at all: at least ``min_key`` of ``key_values`` (the carpal
    bones) with a mean confidence >= ``key_confidence``. When it does not, every label is dropped (a network
    asked about a chest film or a photograph still answers; the answer is not reported).

    Returns the cleaned label map, the dropped values (present but not confident) and the decision."""
    out = label.copy()
    means = {v: m for v, (m, _n) in label_confidence(label, confidence, values).items()}
    dropped = [v for v, m in means.items() if m < min_confidence]
    for v in dropped:
        out[out == v] = 0
    is_structure = sum(1 for v in key_values if means.get(v, 0.0) >= key_confidence) >= min_key
    if not is_structure:
        out[:] = 0
    return out, dropped, is_structure
