"""Parotid Segmentation: left and right parotid glands in head-and-neck CT (task "parotid").

A thin module: the common GUI is MedSegAICommon.widgetBase; Resources/UI/ParotidSegmentation.ui adds the
evaluation section (reference segmentation, Dice / IoU / HD95 per gland, Bland-Altman plot of volumes over a case
set). All work is MedSegAILib's: the pipeline, the MRML bridge and MedSegAILib.mrml.evaluation.
"""

import os

import slicer
from slicer.i18n import tr as _

from MedSegAICommon.moduleBase import MedSegAIModuleBase, MedSegAIModuleLogic, MedSegAITestBase
from MedSegAICommon.widgetBase import MedSegAIWidgetBase


class ParotidSegmentation(MedSegAIModuleBase):
    def __init__(self, parent):
        MedSegAIModuleBase.__init__(
            self, parent, title=_("Parotid Segmentation"),
            helpText=_("<p>Segments the left and right parotid glands in a head-and-neck CT (the patient's left and"
                       " right, whatever the volume's orientation) and reports their volumes. Two models: a residual"
                       " 3-D U-Net with layer normalisation and a 3-D U-Net with CBAM attention.</p>"
                       "<p><b>Evaluation</b>: select the manual contours of the same CT as the reference"
                       " segmentation and click <b>Evaluate</b> for Dice, IoU and the 95 % Hausdorff distance per"
                       " gland; every evaluated case is added to a Bland-Altman plot of the gland volumes.</p>"
                       "<p>The networks were trained on synthetic CT built on real head-and-neck anatomy (organ"
                       " masks of 16 patients); see the model cards for what that means for real scans.</p>"),
        )


class ParotidSegmentationLogic(MedSegAIModuleLogic):
    TASK_ID = "parotid"

    def evaluate(self, segmentationNode, referenceSegmentationNode, referenceVolumeNode, caseName=None, scene=None):
        """Compare ``segmentationNode`` with ``referenceSegmentationNode`` on ``referenceVolumeNode``'s grid.

        Returns ``MedSegAILib.mrml.evaluation.EvaluationNodes`` (the per-case metrics, the case-set table, the
        Bland-Altman plot chart, and the metrics object).
        """
        from MedSegAILib.mrml.evaluation import evaluate_segmentation_nodes

        return evaluate_segmentation_nodes(scene or slicer.mrmlScene, segmentationNode, referenceSegmentationNode,
                                           referenceVolumeNode, self.task.labels,
                                           caseName or referenceVolumeNode.GetName(), setName=self.TASK_ID)

    def clearEvaluationSet(self, scene=None):
        from MedSegAILib.mrml.evaluation import clear_case_set

        clear_case_set(scene or slicer.mrmlScene, self.TASK_ID)


class ParotidSegmentationWidget(MedSegAIWidgetBase):
    LOGIC_CLASS = ParotidSegmentationLogic

    def setup(self) -> None:
        MedSegAIWidgetBase.setup(self)
        if self.task is None:
            return
        self.ui.evaluateButton.connect("clicked(bool)", self.onEvaluateButton)
        self.ui.clearEvaluationSetButton.connect("clicked(bool)", self.onClearEvaluationSet)

    def onEvaluateButton(self) -> None:
        segmentationNode = self.ui.outputSegmentationSelector.currentNode()
        referenceNode = self.ui.referenceSegmentationSelector.currentNode()
        volumeNode = self._inputSelectors[self.task.reference_role].currentNode() if self._inputSelectors else None
        if segmentationNode is None or referenceNode is None or volumeNode is None:
            self.ui.evaluationResultLabel.text = _("Select the CT, segment it (or pick the result as the output"
                                                   " segmentation), and select a reference segmentation.")
            return
        try:
            with slicer.util.tryWithErrorDisplay(_("Evaluation failed."), waitCursor=True):
                nodes = self.logic.evaluate(segmentationNode, referenceNode, volumeNode)
                self.ui.evaluationResultLabel.text = nodes.summary
                slicer.modules.tables.logic().ShowTable(nodes.caseTable)
                if nodes.plotChart is not None:
                    slicer.modules.plots.logic().ShowChartInLayout(nodes.plotChart)
        except Exception:  # noqa: BLE001 - already shown by tryWithErrorDisplay
            pass

    def onClearEvaluationSet(self) -> None:
        self.logic.clearEvaluationSet()
        self.ui.evaluationResultLabel.text = _("A new case set was started.")


class ParotidSegmentationTest(MedSegAITestBase):
    """Runs in Slicer (Reload and Test, or ctest py_ParotidSegmentation). Needs the MedSegAI test data (environment
    variable MEDSEGAI_TEST_DATA pointing at the shared data folder): a synthetic CT is painted on one held-out
    patient's real organ masks, segmented by the default model, and evaluated against that patient's parotids."""

    MIN_DICE = 0.5  # starter weights; see the model card for the held-out figures

    def runTest(self):
        self.setUp()
        self.test_ParotidSegmentation_synthetic_ct()

    def test_ParotidSegmentation_synthetic_ct(self):
        import numpy as np

        from MedSegAILib.mrml.volumes import node_from_volume
        from MedSegAILib.tasks.parotid import LEFT_PAROTID, RIGHT_PAROTID

        root = os.environ.get("MEDSEGAI_TEST_DATA", "")
        if not root:
            self.delayDisplay("Skipped: set MEDSEGAI_TEST_DATA to the MedSegAI shared data folder to run this test.")
            return
        self.ensureDependencies()
        from MedSegAILib.simulate.headneck_ct import parotid_labelmap, read_organ_masks, synth_ct
        from MedSegAILib.train.parotid import list_scans, scans_of, split_patients

        self.delayDisplay("Painting a synthetic CT on a held-out patient's organ masks")
        scans = list_scans(os.path.join(root, "headneck-oar-masks"))
        scan = scans_of(scans, split_patients(scans)["test"])[0]
        masks = read_organ_masks(scan["folders"][sorted(scan["folders"])[0]])
        ct, _info = synth_ct(masks, np.random.default_rng(20261123))
        truth = parotid_labelmap(masks)
        logic = ParotidSegmentationLogic()
        inputNode = node_from_volume(slicer.mrmlScene, ct, "Synthetic head-and-neck CT")

        self.delayDisplay("Segmenting")
        segmentationNode, _nodes = logic.process({logic.task.reference_role: inputNode}, device="auto")
        for label in (RIGHT_PAROTID, LEFT_PAROTID):
            d = self.dice(self.segmentArray(segmentationNode, label.name, inputNode), truth.array == label.value)
            self.assertGreaterEqual(d, self.MIN_DICE, f"{label.name}: Dice {d:.3f} < {self.MIN_DICE}")

        self.delayDisplay("Evaluating against the reference (the patient's masks as a segmentation node)")
        referenceNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Reference contours")
        referenceNode.SetReferenceImageGeometryParameterFromVolumeNode(inputNode)
        for name, value in (("Parotid-Rt", 1), ("Parotid-Lt", 2)):
            segmentId = referenceNode.GetSegmentation().AddEmptySegment(name, name)
            slicer.util.updateSegmentBinaryLabelmapFromArray((truth.array == value).astype(np.uint8), referenceNode,
                                                             segmentId, inputNode)
        evaluation = logic.evaluate(segmentationNode, referenceNode, inputNode, caseName="case 1")
        self.assertIsNotNone(evaluation.caseTable)
        self.assertGreaterEqual(min(evaluation.metrics.dice.values()), self.MIN_DICE)
        self.finetuneSmokeTest(logic, {logic.task.reference_role: inputNode}, segmentationNode)
        self.delayDisplay("Test passed")
