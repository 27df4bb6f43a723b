"""Which structure is which: matching segment / mask-file / legend names to the labels of an evaluation.

A name says *what* (its words) and *which side*; both must agree for a match, so a "Parotid-Lt" segment is never
compared with the right parotid (see :func:`name_key` and :func:`match_structures`). Also how an evaluation gets its
labels (:func:`labels_of`, :func:`make_labels`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

from MedSegAILib.errors import InputError
from MedSegAILib.tasks.base import ANATOMICAL_STRUCTURE, LEFT, RIGHT, CodedTerm, LabelInfo

LabelsLike = Union[Sequence[LabelInfo], Any]  # a Task (anything with ``.labels``) or the labels themselves

#: side words (after lower-casing and splitting on anything not a letter or digit)
SIDE_WORDS = {"l": "left", "lt": "left", "lft": "left", "left": "left",
              "r": "right", "rt": "right", "rgt": "right", "right": "right"}
#: words that say nothing about which structure it is
GENERIC_WORDS = frozenset({"gland", "glands", "structure", "organ", "segment", "segmentation", "seg", "mask",
                           "label", "contour", "roi", "the", "of"})


@dataclass(frozen=True)
class NameKey:
    """What a structure name says: its side (``"left"``, ``"right"``, None, or ``"conflict"``) and its other words."""

    side: Optional[str]
    words: frozenset[str]


def name_key(name: str, modifier: Optional[CodedTerm] = None) -> NameKey:
    """The matching key of a structure name.

    Rule: split camelCase (``ParotidLt`` -> ``Parotid Lt``), lower-case, split on every character that is not a
    letter or a digit; ``l``/``lt``/``lft``/``left`` mean left and ``r``/``rt``/``rgt``/``right`` mean right; generic
    words (:data:`GENERIC_WORDS`: gland, structure, mask...) are dropped. ``modifier`` (a label's terminology type
    modifier, LEFT or RIGHT) gives the side when the name has none. A name with both sides gets side ``"conflict"``
    and matches nothing.

    >>> name_key("Parotid_Lt") == name_key("Left parotid gland") == name_key("parotid left")
    True
    """
    spaced = re.sub(r"([a-z])([A-Z])", r"\1 \2", name)
    tokens = [t for t in re.split(r"[^0-9a-z]+", spaced.lower()) if t]
    sides = {SIDE_WORDS[t] for t in tokens if t in SIDE_WORDS}
    words = frozenset(t for t in tokens if t not in SIDE_WORDS and t not in GENERIC_WORDS)
    if len(sides) > 1:
        return NameKey("conflict", words)
    side = next(iter(sides), None)
    if side is None and modifier is not None:
        side = {LEFT.code: "left", RIGHT.code: "right"}.get(modifier.code)
    return NameKey(side, words)


def match_structures(found: Iterable[str], labels: Sequence[LabelInfo], where: str = "") -> dict[int, str]:
    """Which of the ``found`` structure names is which label: ``{label value: found name}`` (unmatched labels absent).

    A label matches a name when the names are equal ignoring case, else when their :func:`name_key`\\ s are equal
    (same words, and the same side: left is never matched to right, and a name without a side never to a label
    with one). Two names matching one label is an :class:`InputError` listing them (e.g. ``Parotid-Lt`` and
    ``Parotid_L`` in one folder); so is a name matching two labels (labels whose keys coincide).
    """
    found = list(dict.fromkeys(found))
    keys = {n: name_key(n) for n in found}
    out: dict[int, str] = {}
    for lab in labels:
        hits = [n for n in found if n.strip().lower() == lab.name.strip().lower()]
        if not hits:
            key = name_key(lab.name, lab.type_modifier)
            hits = [n for n in found if key.side != "conflict" and keys[n] == key]
        if len(hits) > 1:
            raise InputError(f"{where}: several structures match {lab.name!r}: {', '.join(hits)}. Keep one of them "
                             "(or rename the others) and run again.")
        if hits:
            out[int(lab.value)] = hits[0]
    by_name: dict[str, list[str]] = {}
    for value, n in out.items():
        by_name.setdefault(n, []).append(next(lab.name for lab in labels if int(lab.value) == value))
    twice = {n: labs for n, labs in by_name.items() if len(labs) > 1}
    if twice:
        n, labs = next(iter(twice.items()))
        raise InputError(f"{where}: the structure {n!r} matches several labels ({', '.join(labs)}); "
                         "their names are too alike to tell apart.")
    return out


def unmatched_message(where: str, found: Sequence[str], labels: Sequence[LabelInfo]) -> str:
    return (f"{where}: none of its structures matches a label. Found: {', '.join(found) or 'none'}; looked for: "
            f"{', '.join(lab.name for lab in labels)}. Names are matched by words and side (e.g. 'Parotid-Lt' = "
            "'Left parotid gland'); rename the structures or choose the matching task/labels.")


def labels_of(task_or_labels: LabelsLike) -> list[LabelInfo]:
    """The labels of a task (``task.labels``) or a sequence of :class:`LabelInfo`, checked (values > 0, unique)."""
    labels = list(getattr(task_or_labels, "labels", task_or_labels))
    if not labels or not all(isinstance(lab, LabelInfo) for lab in labels):
        raise InputError("Evaluation needs the labels to compare (a task with labels, or LabelInfo objects); got "
                         f"{task_or_labels!r}.")
    values = [int(lab.value) for lab in labels]
    if min(values) <= 0 or len(set(values)) != len(values):
        raise InputError(f"Label values must be positive and unique; got {values}.")
    return labels


def make_labels(names: Mapping[int, str]) -> list[LabelInfo]:
    """:class:`LabelInfo`\\ s for an evaluation without a task (``{1: "Right parotid gland", ...}``).

    Colours are tab10; the terminology is a placeholder (private scheme ``99MEDSEGAI``), since an evaluation only
    needs the values and names.
    """
    tab10 = [(0.122, 0.467, 0.706), (1.0, 0.498, 0.055), (0.173, 0.627, 0.173), (0.839, 0.153, 0.157),
             (0.58, 0.404, 0.741), (0.549, 0.337, 0.294), (0.89, 0.467, 0.761), (0.498, 0.498, 0.498)]
    return [LabelInfo(int(v), str(n), tab10[i % len(tab10)], ANATOMICAL_STRUCTURE,
                      CodedTerm("99MEDSEGAI", f"label-{int(v)}", str(n)))
            for i, (v, n) in enumerate(sorted(names.items()))]
