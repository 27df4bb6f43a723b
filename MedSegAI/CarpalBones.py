"""Carpal Bones: the eight carpal bones, distal radius and distal ulna on a hand/wrist radiograph (task "carpal").

A thin module: the GUI is MedSegAICommon.widgetBase, the work is MedSegAILib (pipeline + MRML bridge).
"""

import slicer
from slicer.i18n import tr as _

from MedSegAICommon.moduleBase import MedSegAIModuleBase, MedSegAIModuleLogic, MedSegAITestBase
from MedSegAICommon.widgetBase import MedSegAIWidgetBase


class CarpalBones(MedSegAIModuleBase):
    def __init__(self, parent):
        MedSegAIModuleBase.__init__(
            self, parent, title=_("Carpal Bones"),
            helpText=_("<p>Segments the scaphoid, lunate, triquetrum, pisiform, trapezium, trapezoid, capitate,"
                       " hamate, distal radius and distal ulna on a PA hand or wrist radiograph (DICOM CR/DX, PNG,"
                       " JPEG), and reports their projected areas (mm<sup>2</sup> when the pixel spacing is known)."
                       " An inverted radiograph (white background) is detected and inverted. The network was"
                       " trained on digitally reconstructed radiographs of hand phantoms.</p>"),
        )


class CarpalBonesLogic(MedSegAIModuleLogic):
    TASK_ID = "carpal"


class CarpalBonesWidget(MedSegAIWidgetBase):
    LOGIC_CLASS = CarpalBonesLogic


class CarpalBonesTest(MedSegAITestBase):
    """Runs in Slicer (Reload and Test, or ctest py_CarpalBones): a DRR of a simulated hand phantom, the whole
    logic, and a per-bone Dice check against the projected phantom labels."""

    SEED = 20261124
    MIN_MEAN_DICE = 0.9

    def runTest(self):
        self.setUp()
        self.test_CarpalBones_simulated()

    def test_CarpalBones_simulated(self):
        import numpy as np

        from MedSegAILib.mrml.volumes import node_from_volume
        from MedSegAILib.simulate.wrist_xray import simulated_radiograph

        self.delayDisplay("Simulating a wrist radiograph (DRR of a hand phantom)")
        self.ensureDependencies()
        image, truth = simulated_radiograph(self.SEED)
        logic = CarpalBonesLogic()
        inputNode = node_from_volume(slicer.mrmlScene, image, "Simulated wrist radiograph")

        self.delayDisplay("Segmenting")
        segmentationNode, _nodes = logic.process({logic.task.reference_role: inputNode}, device="auto")

        from MedSegAILib.tasks.carpal import BONES

        dices = []
        for value, name, *_rest in BONES:
            ref = truth.array == value
            if ref.sum() < 20:
                continue
            dices.append(self.dice(self.segmentArray(segmentationNode, name, inputNode), ref))
        self.assertGreaterEqual(len(dices), 8, "fewer than 8 bones in the simulated view")
        self.assertGreaterEqual(float(np.mean(dices)), self.MIN_MEAN_DICE,
                                f"mean per-bone Dice {np.mean(dices):.3f} < {self.MIN_MEAN_DICE}")
        self.finetuneSmokeTest(logic, {logic.task.reference_role: inputNode}, segmentationNode)
        self.delayDisplay("Test passed")
