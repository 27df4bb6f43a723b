"""Myocardium SPECT: left-ventricle myocardium and cavity in myocardial-perfusion SPECT (task "mpi-myocardium").

A thin module: the GUI is MedSegAICommon.widgetBase, the work is MedSegAILib (pipeline + MRML bridge).
"""

import slicer
from slicer.i18n import tr as _

from MedSegAICommon.moduleBase import MedSegAIModuleBase, MedSegAIModuleLogic, MedSegAITestBase
from MedSegAICommon.widgetBase import MedSegAIWidgetBase


class MyocardiumSPECT(MedSegAIModuleBase):
    def __init__(self, parent):
        MedSegAIModuleBase.__init__(
            self, parent, title=_("Myocardium SPECT"),
            helpText=_("<p>Segments the left-ventricle myocardium and cavity in a myocardial-perfusion SPECT"
                       " volume (Tc-99m sestamibi/tetrofosmin, reconstructed, any orientation), and reports"
                       " myocardial and cavity volumes and a polar map.</p>"),
        )


class MyocardiumSPECTLogic(MedSegAIModuleLogic):
    TASK_ID = "mpi-myocardium"


class MyocardiumSPECTWidget(MedSegAIWidgetBase):
    LOGIC_CLASS = MyocardiumSPECTLogic


class MyocardiumSPECTTest(MedSegAITestBase):
    """Runs in Slicer (Reload and Test, or ctest py_MyocardiumSPECT): a simulated study, the whole logic,
    and a Dice check against the simulator's exact ground truth."""

    SEED = 20260501
    MIN_DICE = 0.85

    def runTest(self):
        self.setUp()
        self.test_MyocardiumSPECT_simulated()

    def test_MyocardiumSPECT_simulated(self):
        from MedSegAILib.mrml.volumes import node_from_volume
        from MedSegAILib.simulate.spect import CAVITY, MYOCARDIUM, simulate_spect

        self.delayDisplay("Simulating a myocardial-perfusion SPECT study")
        self.ensureDependencies()
        image, truth, _params = simulate_spect(seed=self.SEED, orientation="typical")
        logic = MyocardiumSPECTLogic()
        inputNode = node_from_volume(slicer.mrmlScene, image, "Simulated SPECT")

        self.delayDisplay("Segmenting")
        segmentationNode, _nodes = logic.process({logic.task.reference_role: inputNode}, device="auto")

        for name, value in (("Left ventricle myocardium", MYOCARDIUM), ("Left ventricle cavity", CAVITY)):
            dice = self.dice(self.segmentArray(segmentationNode, name, inputNode), truth.array == value)
            self.assertGreaterEqual(dice, self.MIN_DICE, f"{name}: Dice {dice:.3f} < {self.MIN_DICE}")
        self.finetuneSmokeTest(logic, {logic.task.reference_role: inputNode}, segmentationNode)
        self.delayDisplay("Test passed")
