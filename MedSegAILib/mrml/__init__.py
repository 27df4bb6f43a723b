"""Layer 2, the MRML bridge: volume nodes <-> core volumes, results -> scene nodes and .seg.nrrd files.

Every function takes the scene and nodes as arguments and never uses ``slicer.app``,
``slicer.mrmlScene`` or ``slicer.modules``, so it runs in the Slicer application and in plain Python
with ``slicer-core`` alike. Importing this package imports ``slicer`` (the core never does).
"""

from MedSegAILib.mrml.logic import SegmentationLogic
from MedSegAILib.mrml.results import ResultNodes, write_result
from MedSegAILib.mrml.segfile import SegmentRecord, read_seg_nrrd, write_seg_nrrd
from MedSegAILib.mrml.terminology import parse_terminology_string, terminology_string
from MedSegAILib.mrml.volumes import node_from_volume, volume_from_node

__all__ = [
    "ResultNodes",
    "SegmentRecord",
    "SegmentationLogic",
    "node_from_volume",
    "parse_terminology_string",
    "read_seg_nrrd",
    "terminology_string",
    "volume_from_node",
    "write_result",
    "write_seg_nrrd",
]
