"""Parathyroid Subtraction: dual-tracer 99mTc-sestamibi - 123I planar subtraction with ranked candidate foci
(task "parathyroid", NM-USNet re-implementation plus the classical subtraction as reference).

A thin module: the GUI is MedSegAICommon.widgetBase, the work is MedSegAILib (pipeline + MRML bridge).
"""

import slicer
from slicer.i18n import tr as _

from MedSegAICommon.moduleBase import MedSegAIModuleBase, MedSegAIModuleLogic, MedSegAITestBase
from MedSegAICommon.widgetBase import MedSegAIWidgetBase


class ParathyroidSubtraction(MedSegAIModuleBase):
    def __init__(self, parent):
        MedSegAIModuleBase.__init__(
            self, parent, title=_("Parathyroid Subtraction"),
            helpText=_("<p>Dual-tracer parathyroid scintigraphy: select the planar anterior neck images of"
                       " 99mTc-sestamibi and 123I (optionally the late sestamibi image). The iodine image is"
                       " registered to the sestamibi image, scaled on the thyroid and subtracted (classical), and"
                       " a trained network (NM-USNet) produces the parathyroid-only image. Candidate foci are"
                       " ranked, labelled thyroid bed or ectopic, and measured; registration and scale-factor"
                       " quality are reported with flags when doubtful.</p>"),
        )


class ParathyroidSubtractionLogic(MedSegAIModuleLogic):
    TASK_ID = "parathyroid"


class ParathyroidSubtractionWidget(MedSegAIWidgetBase):
    LOGIC_CLASS = ParathyroidSubtractionLogic


class ParathyroidSubtractionTest(MedSegAITestBase):
    """Runs in Slicer (Reload and Test, or ctest py_ParathyroidSubtraction): a simulated dual-tracer study with
    one 14 mm adenoma, the whole logic, and a check that the top-ranked focus lies on the adenoma."""

    SEED = 20261123
    TOLERANCE_MM = 10.0

    def runTest(self):
        self.setUp()
        self.test_ParathyroidSubtraction_simulated()

    def test_ParathyroidSubtraction_simulated(self):
        import numpy as np

        from MedSegAILib.mrml.volumes import node_from_volume
        from MedSegAILib.simulate.planar_neck import simulate_neck

        self.delayDisplay("Simulating a dual-tracer parathyroid study")
        self.ensureDependencies()
        study = simulate_neck(self.SEED, n_adenomas=1, min_diameter_mm=14.0, max_diameter_mm=14.0)
        logic = ParathyroidSubtractionLogic()
        tcNode = node_from_volume(slicer.mrmlScene, study.tc, "Sestamibi")
        iodineNode = node_from_volume(slicer.mrmlScene, study.iodine, "Iodine-123")

        self.delayDisplay("Subtracting and detecting foci")
        segmentationNode, nodes = logic.process({"sestamibi": tcNode, "iodine": iodineNode}, device="auto")

        self.assertGreaterEqual(segmentationNode.GetSegmentation().GetNumberOfSegments(), 1, "no focus found")
        points = list(nodes.points)
        self.assertTrue(points, "no markups point list was created")
        top = np.zeros(3)
        points[0].GetNthControlPointPositionWorld(0, top)
        truth_ras = np.array([-1.0, -1.0, 1.0]) * study.adenomas[0].center_lps
        distance = float(np.linalg.norm(top - truth_ras))
        self.assertLess(distance, self.TOLERANCE_MM, f"top focus {distance:.1f} mm from the adenoma")
        self.finetuneSmokeTest(logic, {"sestamibi": tcNode, "iodine": iodineNode}, segmentationNode)
        self.delayDisplay("Test passed")
