"""Slicer terminology entry strings for :class:`~MedSegAILib.tasks.base.LabelInfo`.

Slicer stores the standard meaning of a segment in the segment tag named
``vtkSegment.GetTerminologyEntryTagName()`` (``"TerminologyEntry"``) as one string of seven
``~``-separated components (``vtkSlicerTerminologiesModuleLogic::SerializeTerminologyEntry``,
unchanged in Slicer 5.12, checked against slicer-core 5.12.4)::

    <category-and-type context name>~<category>~<type>~<type modifier>~<anatomic/region context name>~<region>~<region modifier>

where each coded component is a ``scheme^code^meaning`` triplet and an absent one is ``^^``, e.g.::

    Segmentation category and type - DICOM master list~SCT^123037004^Anatomical Structure~SCT^64033007^Kidney~SCT^24028007^Right~Anatomic codes - DICOM master list~^^~^^

This module is pure Python (no ``slicer`` import) so the same strings can be written into
``.seg.nrrd`` headers by the file writers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from MedSegAILib.tasks.base import CodedTerm, LabelInfo

#: Context names of the DICOM master lists that Slicer ships (used by TotalSegmentator's Slicer extension too).
CATEGORY_TYPE_CONTEXT = "Segmentation category and type - DICOM master list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"

_EMPTY = "^^"


def _triplet(term: Optional[CodedTerm]) -> str:
    if term is None:
        return _EMPTY
    for part in (term.scheme, term.code, term.meaning):
        if "~" in part or "^" in part or "|" in part:
            raise ValueError(f"coded term {term!r} contains a reserved character (~ ^ |)")
    return term.as_slicer_triplet()


def terminology_string(
    label: LabelInfo,
    context: str = CATEGORY_TYPE_CONTEXT,
    anatomic_context: str = ANATOMIC_CONTEXT,
) -> str:
    """The Slicer terminology entry string of ``label`` (see the module docstring)."""
    return "~".join(
        [
            context,
            _triplet(label.category),
            _triplet(label.type),
            _triplet(label.type_modifier),
            anatomic_context,
            _triplet(label.region),
            _triplet(label.region_modifier),
        ]
    )


@dataclass(frozen=True)
class TerminologyEntry:
    """A parsed terminology entry string; absent coded components are ``None``."""

    context: str
    category: Optional[CodedTerm]
    type: Optional[CodedTerm]
    type_modifier: Optional[CodedTerm]
    anatomic_context: str
    region: Optional[CodedTerm]
    region_modifier: Optional[CodedTerm]


def _parse_triplet(text: str) -> Optional[CodedTerm]:
    parts = text.split("^")
    if len(parts) != 3:
        raise ValueError(f"terminology component {text!r} is not a scheme^code^meaning triplet")
    if not any(parts):
        return None
    return CodedTerm(*parts)


def parse_terminology_string(text: str) -> TerminologyEntry:
    """Parse a Slicer terminology entry string (the inverse of :func:`terminology_string`).

    Raises ``ValueError`` when the string does not have the seven ``~``-separated components.
    """
    parts = text.split("~")
    if len(parts) != 7:
        raise ValueError(f"a terminology entry has 7 '~'-separated components; got {len(parts)} in {text!r}")
    return TerminologyEntry(
        parts[0],
        _parse_triplet(parts[1]),
        _parse_triplet(parts[2]),
        _parse_triplet(parts[3]),
        parts[4],
        _parse_triplet(parts[5]),
        _parse_triplet(parts[6]),
    )
