"""Terminology entry strings: the 7-component "~" format of Slicer 5.12, accepted by Slicer's own logic."""

from __future__ import annotations

import pytest

from MedSegAILib.mrml.terminology import (
    ANATOMIC_CONTEXT,
    CATEGORY_TYPE_CONTEXT,
    parse_terminology_string,
    terminology_string,
)
from MedSegAILib.tasks.base import ANATOMICAL_STRUCTURE, LEFT, RIGHT, CodedTerm, LabelInfo

KIDNEY = LabelInfo(2, "Right kidney", (1, 0, 0), ANATOMICAL_STRUCTURE, CodedTerm("SCT", "64033007", "Kidney"), RIGHT)
LESION = LabelInfo(
    3,
    "Lesion",
    (0, 1, 0),
    CodedTerm("SCT", "49755003", "Morphologically Altered Structure"),
    CodedTerm("SCT", "52988006", "Lesion"),
    None,
    CodedTerm("SCT", "39607008", "Lung"),
    LEFT,
)


def test_format_matches_slicer_and_totalsegmentator():
    # the string TotalSegmentator's Slicer extension writes for the right kidney
    assert terminology_string(KIDNEY) == (
        "Segmentation category and type - DICOM master list~SCT^123037004^Anatomical Structure"
        "~SCT^64033007^Kidney~SCT^24028007^Right~Anatomic codes - DICOM master list~^^~^^"
    )
    assert terminology_string(LESION).endswith("~Anatomic codes - DICOM master list~SCT^39607008^Lung~SCT^7771000^Left")


@pytest.mark.parametrize("label", [KIDNEY, LESION])
def test_parse_round_trip(label):
    entry = parse_terminology_string(terminology_string(label))
    assert entry.context == CATEGORY_TYPE_CONTEXT and entry.anatomic_context == ANATOMIC_CONTEXT
    assert (entry.category, entry.type, entry.type_modifier) == (label.category, label.type, label.type_modifier)
    assert (entry.region, entry.region_modifier) == (label.region, label.region_modifier)


def test_parse_rejects_malformed():
    with pytest.raises(ValueError):
        parse_terminology_string("ctx~SCT^1^A")
    with pytest.raises(ValueError):
        parse_terminology_string("a~b~c~d~e~f~g")
    with pytest.raises(ValueError):
        terminology_string(LabelInfo(1, "x", (0, 0, 0), CodedTerm("SCT", "1~2", "bad"), ANATOMICAL_STRUCTURE))


@pytest.mark.parametrize("label", [KIDNEY, LESION])
def test_slicer_terminology_logic_round_trip(label):
    slicer = pytest.importorskip("slicer")
    logic = slicer.vtkSlicerTerminologiesModuleLogic()
    entry = slicer.vtkSlicerTerminologyEntry()
    text = terminology_string(label)
    assert logic.DeserializeTerminologyEntry(text, entry)
    assert entry.GetTypeObject().GetCodeValue() == label.type.code
    assert entry.GetCategoryObject().GetCodeMeaning() == label.category.meaning
    assert slicer.vtkSlicerTerminologiesModuleLogic.SerializeTerminologyEntry(entry) == text
    # and a vtkSegment stores it under the tag Slicer reads
    segment = slicer.vtkSegment()
    segment.SetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), text)
    assert segment.GetTerminology() == text
