"""Base classes of a MedSegAI task module: the module description, the module logic, and self-test helpers.

The module logic is a thin adapter: the scene side is ``MedSegAILib.mrml.logic.SegmentationLogic``
(volume nodes <-> core volumes, results -> segmentation nodes) and the computation is
``MedSegAILib.pipeline.segment``; both are shared with the batch script and the CLI.
"""

from __future__ import annotations

import logging
import os

import qt
import slicer
from slicer.i18n import tr as _
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleLogic, ScriptedLoadableModuleTest

from MedSegAICommon.parameters import MedSegAIParameterNode, makeTaskParameterNodeClass, taskParameterValues
from MedSegAICommon.taskform import buildParameters, inputKey

CATEGORY = "Segmentation.MedSegAI"
CONTRIBUTORS = ["MedSegAI team"]
HOMEPAGE = "https://github.com/medsegai/SlicerMedSegAI"
#: the modules' shared Resources folder (MedSegAICommon is installed beside the module files)
RESOURCES_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "Resources")
USER_MODEL_FOLDER_SETTING = "MedSegAI/UserModelFolder"
USER_MODEL_FOLDER_ENV = "MEDSEGAI_MODEL_DIR"  # read by MedSegAILib.zoo.registry.user_model_dir()


def userModelFolderSetting() -> str:
    value = qt.QSettings().value(USER_MODEL_FOLDER_SETTING, "")
    return str(value) if value else ""


def applyUserModelFolder(path: str | None = None, save: bool = False) -> str:
    """Export the user model folder (``path``, else the saved setting) to ``MEDSEGAI_MODEL_DIR``.

    An empty setting leaves the environment alone, so a folder set before starting Slicer still applies.
    """
    if path is None:
        path = userModelFolderSetting()
    elif save:
        qt.QSettings().setValue(USER_MODEL_FOLDER_SETTING, path)
    if path:
        os.environ[USER_MODEL_FOLDER_ENV] = path
    elif save:
        os.environ.pop(USER_MODEL_FOLDER_ENV, None)
    return os.environ.get(USER_MODEL_FOLDER_ENV, "")


class MedSegAIModuleBase(ScriptedLoadableModule):
    """Common module description; a task module passes its title and help text."""

    def __init__(self, parent, title: str, helpText: str, acknowledgementText: str = ""):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = title
        self.parent.categories = [CATEGORY]
        self.parent.dependencies = []
        self.parent.contributors = list(CONTRIBUTORS)
        self.parent.helpText = helpText + _(
            "<p>Pick the input, a model (the task's default model is used when none is chosen) and a device, then"
            " click <b>Segment</b>. The work runs in the background: <b>Cancel</b> stops it and leaves the scene"
            " unchanged. Models found in the <b>user model folder</b> are listed beside the bundled ones.</p>"
            "<p><b>Fine-tune</b>: correct results in the Segment Editor, list the cases (a result is listed"
            " automatically, and its model output is kept to report how much you corrected), and click"
            " <b>Fine-tune</b>: the selected model is trained further in the background, with the loss and the"
            " validation Dice plotted live; the result is a new model version in the user model folder (the base"
            " model is never changed), selected at once. <b>Stop</b> asks whether to keep the best model so far."
            " Models can be exported, imported and deleted there; the <i>uncertainty map</i> option shows which"
            " cases to correct first.</p>"
            '<p>See the <a href="{homepage}">MedSegAI documentation</a>.</p>'
        ).format(homepage=HOMEPAGE)
        self.parent.acknowledgementText = acknowledgementText or _(
            "MedSegAI was developed by the MedSegAI team. It builds on 3D Slicer, PyTorch (through the PyTorch"
            " extension's PyTorchUtils), SimpleITK and scikit-image."
        )


class MedSegAIModuleLogic(ScriptedLoadableModuleLogic):
    """Logic of one task module. Everything here can be used without the GUI widget.

    Subclasses set ``TASK_ID`` and are named ``<ModuleName>Logic`` (the parameter node is per module).
    """

    TASK_ID: str = ""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        applyUserModelFolder()
        self._task = None
        self._taskParameterNodeClass = None
        self._sceneLogic = None
        self.lastPublished = None  #: MedSegAILib.mrml.ResultNodes of the last result written to the scene

    # -------------------------------------------------------------------------------------------- task
    @property
    def task(self):
        """The task plug-in (``MedSegAILib.tasks.registry.get_task``); imported on first use."""
        if self._task is None:
            from MedSegAILib.tasks.registry import get_task

            self._task = get_task(self.TASK_ID)
        return self._task

    @property
    def sceneLogic(self):
        if self._sceneLogic is None:
            from MedSegAILib.mrml.logic import SegmentationLogic

            self._sceneLogic = SegmentationLogic()
        return self._sceneLogic

    # -------------------------------------------------------------------------------------------- parameters
    def getParameterNode(self) -> MedSegAIParameterNode:
        return MedSegAIParameterNode(super().getParameterNode())

    def getTaskParameterNode(self):
        """The task-specific wrapper (``input_<role>``, ``param_<name>``) of the same parameter node."""
        if self._taskParameterNodeClass is None:
            self._taskParameterNodeClass = makeTaskParameterNodeClass(self.task)
        return self._taskParameterNodeClass(ScriptedLoadableModuleLogic.getParameterNode(self))

    def inputNodesFromParameterNode(self, taskParameterNode) -> dict:
        nodes = {}
        for spec in self.task.inputs:
            node = taskParameterNode.getValue(inputKey(spec.role))
            if node is not None:
                nodes[spec.role] = node
        return nodes

    def taskParametersFromParameterNode(self, taskParameterNode):
        return buildParameters(self.task.Parameters, taskParameterValues(taskParameterNode, self.task))

    def missingInputs(self, inputNodes: dict) -> list:
        """Titles of required inputs that are not selected."""
        return [spec.title for spec in self.task.inputs if spec.required and inputNodes.get(spec.role) is None]

    # -------------------------------------------------------------------------------------------- the three steps
    def prepareInputs(self, inputNodes: dict, scene=None) -> dict:
        """Main thread: volume nodes -> ``{role: Volume}`` (copies; the worker never touches MRML)."""
        return self.sceneLogic.prepare(scene or slicer.mrmlScene, inputNodes, self.TASK_ID)

    def runPipeline(self, inputs: dict, modelId=None, device="auto", params=None, progress=None, cancel=None,
                    uncertaintyRuns: int = 0):
        """Any thread: the computation (``MedSegAILib.pipeline.segment``), exactly as the CLI and the batch
        script run it. Touches no scene.

        ``uncertaintyRuns`` > 0: ``MedSegAILib.uncertainty.segment_with_uncertainty`` instead (the same result plus
        an uncertainty map and score from that many perturbed runs; the Fine-tune section's case-ranking option).
        """
        if uncertaintyRuns and uncertaintyRuns > 0:
            from MedSegAILib.uncertainty import segment_with_uncertainty

            return segment_with_uncertainty(self.TASK_ID, dict(inputs), runs=int(uncertaintyRuns),
                                            model_id=modelId or None, device=device or "auto", params=params,
                                            progress=progress, cancel=cancel)
        return self.sceneLogic.compute(self.TASK_ID, inputs, model_id=modelId or None, device=device or "auto",
                                       params=params, progress=progress, cancel=cancel)

    def publishResult(self, result, referenceNode, outputSegmentationNode=None, scene=None):
        """Main thread: write the result into the scene (atomically: all or nothing).

        ``outputSegmentationNode`` None: a new segmentation node is created; otherwise only the segments
        this task writes are replaced in it. Returns ``(segmentationNode, messages)``: the result's messages
        plus the scene writer's (empty segments...).
        """
        published = self.sceneLogic.publish(scene or slicer.mrmlScene, result, referenceNode, outputSegmentationNode)
        self.lastPublished = published  # every node of the last result (maps, tables, points) for the task's widget
        return published.segmentation, list(published.messages)

    def process(self, inputNodes: dict, outputSegmentationNode=None, modelId=None, device="auto", params=None,
                progress=None, cancel=None):
        """Segment synchronously (scripting, self-tests): ``SegmentationLogic.run`` on ``slicer.mrmlScene``.

        Returns ``(segmentationNode, resultNodes)`` (``MedSegAILib.mrml.ResultNodes``: every node created).
        """
        import time

        start = time.time()
        missing = self.missingInputs(inputNodes)
        if missing:
            from MedSegAILib.errors import InputError

            raise InputError(_("Select the input: {inputs}.").format(inputs=", ".join(missing)))
        published = self.sceneLogic.run(slicer.mrmlScene, self.TASK_ID, inputNodes, model_id=modelId or None,
                                        device=device or "auto", params=params, progress=progress, cancel=cancel,
                                        output_segmentation_node=outputSegmentationNode)
        logging.info(f"MedSegAI {self.TASK_ID}: done in {time.time() - start:.2f} s. " + " ".join(published.messages))
        return published.segmentation, published


class MedSegAITestBase(ScriptedLoadableModuleTest):
    """Helpers for the task modules' self-tests."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def ensureDependencies(self):
        """torch through PyTorchUtils and the packages of Resources/requirements.txt (no prompts in tests)."""
        from MedSegAICommon import dependencies

        dependencies.ensureDependencies(os.path.join(RESOURCES_DIR, "requirements.txt"), askConfirmation=False)

    def segmentArray(self, segmentationNode, segmentName: str, referenceVolumeNode):
        """Binary numpy array ``[k, j, i]`` of the segment called ``segmentName`` on the reference grid."""
        segmentation = segmentationNode.GetSegmentation()
        segmentId = segmentation.GetSegmentIdBySegmentName(segmentName)
        self.assertTrue(segmentId, f"no segment named {segmentName!r}; found "
                        f"{[segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]}")
        return slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, referenceVolumeNode) > 0

    @staticmethod
    def dice(a, b) -> float:
        from MedSegAILib.metrics import dice

        return dice(a, b)

    def finetuneSmokeTest(self, logic, inputNodes: dict, segmentationNode, minutes: float = 0.05, steps: int = 2):
        """A few fine-tuning steps through the Fine-tune section's code path, on the result the test just made
        (taken as the "corrected" segmentation): ``case_from_nodes`` -> ``engine.finetune`` in a ``BackgroundRun``
        with the live ``TrainingPlot`` -> ``publish`` into a temporary user model folder. Checks that the new
        version is listed and loads and that the base model's weight files are unchanged (checksums), then deletes
        it. Guarded: one epoch of ``steps`` batches within a ``minutes`` time budget, no validation. A task that
        cannot be fine-tuned is skipped with a message. Returns the TrainingRun (None when skipped)."""
        import tempfile

        from MedSegAILib.errors import ModelError
        from MedSegAILib.finetune.engine import FinetuneOptions, finetune
        from MedSegAILib.finetune.publish import delete_model, publish
        from MedSegAILib.mrml.finetune import RecordSlot, TrainingPlot, case_from_nodes
        from MedSegAILib.zoo.registry import get_model_spec, list_models, load_model, verify_weights

        from MedSegAICommon.worker import BackgroundRun

        task = logic.task
        if not task.default_model:
            self.delayDisplay("Fine-tune smoke test skipped: the task has no model.")
            return None
        base = get_model_spec(task.default_model, task.id)
        try:
            task.training_adapter(base)
        except ModelError as exc:
            self.delayDisplay(f"Fine-tune smoke test skipped: {exc}")
            return None
        self.delayDisplay(f"Fine-tuning {base.key} for a few steps (smoke test)")
        case = case_from_nodes(task, inputNodes, segmentationNode, name="self-test case")
        options = FinetuneOptions(epochs=1, minutes=minutes, val_share=0.0, steps_per_epoch=steps, keep_if_worse=True)
        slot = RecordSlot()
        run = BackgroundRun(lambda progress, cancel: finetune(task.id, [case], model=base, options=options,
                                                              progress=progress, cancel=cancel, on_epoch=slot.put),
                            name="MedSegAI fine-tune self-test").start()
        while not run.wait(0.1):
            slicer.app.processEvents()
        if run.error is not None:
            raise run.error
        result = run.result
        self.assertGreaterEqual(len(result.history), 1, "no epoch was recorded")
        plot = TrainingPlot(slicer.mrmlScene, f"{task.title} fine-tuning self-test")
        self.assertEqual(plot.update(slot.records()), len(result.history))
        saved = os.environ.get(USER_MODEL_FOLDER_ENV)
        with tempfile.TemporaryDirectory(prefix="MedSegAI-selftest-") as folder:
            os.environ[USER_MODEL_FOLDER_ENV] = folder
            try:
                spec = publish(result, name="self-test")
                self.assertIn(spec.key, [s.key for s in list_models(task=task.id)])
                self.assertEqual(spec.base_model, base.key)
                load_model(spec, "cpu")
                verify_weights(base)  # ModelError if a base weight file changed
                delete_model(spec.key)
                self.assertNotIn(spec.key, [s.key for s in list_models(task=task.id)])
            finally:
                if saved is None:
                    os.environ.pop(USER_MODEL_FOLDER_ENV, None)
                else:
                    os.environ[USER_MODEL_FOLDER_ENV] = saved
        plot.remove()
        self.delayDisplay(f"Fine-tune smoke test passed ({len(result.history)} epoch(s), {result.seconds:.1f} s)")
        return result
