"""The GUI shared by every MedSegAI task module, built from the task plug-in.

A task module's widget is ``class XWidget(MedSegAIWidgetBase): LOGIC_CLASS = XLogic``. Everything on screen
comes from ``Resources/UI/MedSegAIBase.ui`` plus what the task declares: one volume selector per
``InputSpec``, one editor per field of its ``Parameters`` dataclass, the zoo models of the task.

Threading: "Segment" prepares the inputs on the main thread (MRML -> core volumes), runs
``MedSegAILib.pipeline.segment`` in a Python worker thread, and polls its progress every 100 ms with a
``qt.QTimer``; the worker never touches Qt or MRML. The result is published into the scene on the main
thread; a cancelled or failed run leaves the scene unchanged.
"""

from __future__ import annotations

import logging
import os

import ctk
import qt
import slicer
import vtk
from slicer.i18n import tr as _
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleWidget
from slicer.util import VTKObservationMixin

from MedSegAICommon import dependencies
from MedSegAICommon.finetunePanel import FinetunePanel
from MedSegAICommon.moduleBase import MedSegAIModuleLogic, applyUserModelFolder, userModelFolderSetting
from MedSegAICommon.taskform import describeParameters, inputKey
from MedSegAICommon.worker import BackgroundRun

BASE_UI = "UI/MedSegAIBase.ui"
REQUIREMENTS = "requirements.txt"


class MedSegAIWidgetBase(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Shared widget. Subclasses set ``LOGIC_CLASS`` (a :class:`MedSegAIModuleLogic` subclass)."""

    LOGIC_CLASS = MedSegAIModuleLogic
    POLL_INTERVAL_MS = 100

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)  # needed for parameter node observation
        self.logic = None
        self.task = None
        self._parameterNode = None
        self._taskParameterNode = None
        self._parameterNodeGuiTag = None
        self._taskParameterNodeGuiTag = None
        self._inputSelectors = {}
        self._parameterWidgets = {}
        self._run = None
        self._runContext = None
        self._pollTimer = None
        self._dependenciesChecked = False
        self._finetunePanel = None  #: the "Fine-tune" section (MedSegAICommon.finetunePanel)

    # =============================================================================================== setup
    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)

        uiWidget = slicer.util.loadUI(self.resourcePath(BASE_UI))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        taskUiPath = self.resourcePath(f"UI/{self.moduleName}.ui")
        if os.path.isfile(taskUiPath):  # optional task-specific extras, shown below the common GUI
            taskUiWidget = slicer.util.loadUI(taskUiPath)
            self.layout.addWidget(taskUiWidget)
            vars(self.ui).update(vars(slicer.util.childWidgetVariables(taskUiWidget)))
            taskUiWidget.setMRMLScene(slicer.mrmlScene)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = self.LOGIC_CLASS()
        try:
            self.task = self.logic.task
        except ImportError as exc:  # a package the task plug-ins import is missing: offer to install it
            self.task = self._loadTaskAfterInstalling(exc)
        if self.task is None:
            self.ui.segmentButton.enabled = False
            return

        self.ui.taskDescriptionLabel.text = self.task.description
        self._createInputSelectors()
        self._createParameterWidgets()

        self.ui.userModelFolderPathLineEdit.filters = ctk.ctkPathLineEdit.Dirs
        self.ui.userModelFolderPathLineEdit.currentPath = userModelFolderSetting() or applyUserModelFolder()

        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(self.POLL_INTERVAL_MS)
        self._pollTimer.connect("timeout()", self._onPoll)

        # Connections
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.segmentButton.connect("clicked(bool)", self.onSegmentButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelSelected)
        self.ui.refreshModelsButton.connect("clicked()", self.refreshModelList)
        self.ui.userModelFolderPathLineEdit.connect("currentPathChanged(QString)", self.onUserModelFolderChanged)
        try:  # the Fine-tune section, below the common (and task-specific) ones; Segment works without it
            self._finetunePanel = FinetunePanel(self)
        except Exception:  # noqa: BLE001 - logged with its traceback
            logging.exception("MedSegAI: the Fine-tune section could not be created")
        self.layout.addStretch(1)  # sections packed at the top

        self.initializeParameterNode()
        self._setStatus(_("Ready."))

    def _loadTaskAfterInstalling(self, exc):
        logging.warning(f"MedSegAI: cannot load task {self.logic.TASK_ID!r}: {exc}")
        try:
            dependencies.ensureDependencies(self.resourcePath(REQUIREMENTS))
            self._dependenciesChecked = True
            return self.logic.task
        except Exception as installError:  # noqa: BLE001 - shown to the user
            self._setStatus(_("MedSegAI cannot start: {error}").format(error=installError), error=True)
            return None

    def _createInputSelectors(self) -> None:
        layout = self.ui.inputSelectorsFrame.layout()
        for spec in self.task.inputs:
            selector = slicer.qMRMLNodeComboBox()
            selector.objectName = f"{spec.role}InputSelector"
            # radiograph tasks also take grey images that Slicer loaded as RGB (vector) volumes
            colour = ["vtkMRMLVectorVolumeNode"] if self.task.accepts_colour_nodes else []
            selector.nodeTypes = ["vtkMRMLScalarVolumeNode", *colour]
            selector.showChildNodeTypes = False  # no label maps
            selector.selectNodeUponCreation = True
            selector.addEnabled = False
            selector.removeEnabled = False
            selector.renameEnabled = False
            selector.noneEnabled = not spec.required
            selector.showHidden = False
            selector.setMRMLScene(slicer.mrmlScene)
            selector.toolTip = _("{description} Expected modality: {modality}.").format(
                description=spec.description or spec.title, modality=spec.modality)
            layout.addRow(f"{spec.title}:", selector)
            self._inputSelectors[inputKey(spec.role)] = selector

    def _createParameterWidgets(self) -> None:
        fields = describeParameters(self.task.Parameters)
        layout = self.ui.taskParametersFrame.layout()
        for field in fields:
            widget = self._createParameterWidget(field)
            widget.objectName = f"{field.name}ParameterWidget"
            widget.toolTip = field.help
            label = qt.QLabel(f"{field.label}:")
            label.toolTip = field.help
            layout.addRow(label, widget)
            self._parameterWidgets[field.key] = widget
        self.ui.taskParametersCollapsibleButton.visible = bool(fields)

    @staticmethod
    def _createParameterWidget(field):
        """Range and choices are applied by the parameter-node GUI connector from the field annotations."""
        if field.widget == "QComboBox":
            return qt.QComboBox()
        if field.widget == "QCheckBox":
            return qt.QCheckBox()
        if field.widget == "ctkSliderWidget":
            widget = ctk.ctkSliderWidget()
            widget.decimals = field.decimals
            widget.singleStep = field.singleStep
            widget.pageStep = field.singleStep * 10
            return widget
        if field.widget == "QDoubleSpinBox":
            widget = qt.QDoubleSpinBox()
            widget.decimals = field.decimals
            widget.singleStep = field.singleStep
            return widget
        if field.widget == "QSpinBox":
            return qt.QSpinBox()
        return qt.QLineEdit()

    # =============================================================================================== lifecycle
    def cleanup(self) -> None:
        """Called when the application closes and the module widget is destroyed."""
        if self._run is not None:
            self._run.cancel()
            self._run.wait(5.0)
            self._run = None
        if self._pollTimer is not None:
            self._pollTimer.stop()
        if self._finetunePanel is not None:
            self._finetunePanel.cleanup()
        self.removeObservers()

    def enter(self) -> None:
        if self.task is not None:
            self.initializeParameterNode()

    def exit(self) -> None:
        # Do not react to parameter node changes while the module is not shown
        self._disconnectParameterNodes()

    def onSceneStartClose(self, caller, event) -> None:
        if self._run is not None:  # the inputs are going away: stop, and drop the result
            self._run.cancel()
        if self._finetunePanel is not None:
            self._finetunePanel.onSceneStartClose()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    # =============================================================================================== parameter node
    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        # Select a default input to save the user a few clicks
        if self.task.inputs:
            key = inputKey(self.task.inputs[0].role)
            if self._taskParameterNode.getValue(key) is None:
                volume = self._firstScalarVolume()
                if volume is not None:
                    self._taskParameterNode.setValue(key, volume)

    @staticmethod
    def _firstScalarVolume():
        for node in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode"):
            if not node.IsA("vtkMRMLLabelMapVolumeNode"):
                return node
        return None

    def _disconnectParameterNodes(self) -> None:
        if self._parameterNode is not None:
            if self._parameterNodeGuiTag is not None:
                self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
                self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        if self._taskParameterNode is not None and self._taskParameterNodeGuiTag is not None:
            self._taskParameterNode.disconnectGui(self._taskParameterNodeGuiTag)
            self._taskParameterNodeGuiTag = None

    def setParameterNode(self, inputParameterNode) -> None:
        """Set and observe the parameter node (both wrappers of it)."""
        self._disconnectParameterNodes()
        self._parameterNode = inputParameterNode
        if self._parameterNode is None:
            self._taskParameterNode = None
        elif self._taskParameterNode is None or self._taskParameterNode.parameterNode is not inputParameterNode.parameterNode:
            self._taskParameterNode = self.logic.getTaskParameterNode()  # same MRML node, task-specific fields
        if self._parameterNode is not None:
            # "SlicerParameterName" dynamic properties in MedSegAIBase.ui bind the common widgets ...
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            # ... and the widgets created from the task plug-in are bound by name.
            mapping = dict(self._inputSelectors)
            mapping.update(self._parameterWidgets)
            self._taskParameterNodeGuiTag = self._taskParameterNode.connectParametersToGui(mapping)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self.refreshModelList()
        self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None) -> None:
        running = self._run is not None
        training = self._finetunePanel is not None and self._finetunePanel.running
        missing = []
        if self._taskParameterNode is not None:
            missing = self.logic.missingInputs(self.logic.inputNodesFromParameterNode(self._taskParameterNode))
        canApply = self._parameterNode is not None and not missing and not running and not training
        self.ui.segmentButton.enabled = canApply
        if running:
            self.ui.segmentButton.toolTip = _("A segmentation is running.")
        elif training:
            self.ui.segmentButton.toolTip = _("Fine-tuning is running; Segment is available again when it ends.")
        elif missing:
            self.ui.segmentButton.toolTip = _("Select the input: {inputs}.").format(inputs=", ".join(missing))
        else:
            self.ui.segmentButton.toolTip = _("Run {task} in the background.").format(task=self.task.title)

    # =============================================================================================== models
    def refreshModelList(self) -> None:
        from MedSegAILib.errors import MedSegAIError
        from MedSegAILib.zoo.registry import list_models

        combo = self.ui.modelComboBox
        wasBlocked = combo.blockSignals(True)
        try:
            combo.clear()
            default = self.task.default_model
            combo.addItem(_("Default ({model})").format(model=default) if default else _("None needed"), "")
            try:
                specs = list_models(task=self.task.id)
            except MedSegAIError as exc:
                specs = []
                self._setStatus(str(exc), error=True)
            for spec in specs:
                suffix = _(" (user model)") if spec.source == "user" else ""
                combo.addItem(f"{spec.title} - {spec.id} v{spec.version}{suffix}", spec.key)
                combo.setItemData(combo.count - 1, spec.description or spec.title, qt.Qt.ToolTipRole)
            current = self._parameterNode.modelId if self._parameterNode is not None else ""
            index = combo.findData(current)
            if index < 0 and current:
                self._setStatus(_("Model {model} is no longer available; the default model is used.")
                                .format(model=current), error=True)
            combo.currentIndex = max(index, 0)
        finally:
            combo.blockSignals(wasBlocked)
        self.onModelSelected(combo.currentIndex)

    def onModelSelected(self, index: int) -> None:
        key = self.ui.modelComboBox.itemData(index) or ""
        if self._parameterNode is not None and self._parameterNode.modelId != key:
            self._parameterNode.modelId = key
        self.ui.modelInfoLabel.text = self.ui.modelComboBox.itemData(index, qt.Qt.ToolTipRole) or ""

    def onUserModelFolderChanged(self, path: str) -> None:
        applyUserModelFolder(path, save=True)
        if self.task is not None:
            self.refreshModelList()

    # =============================================================================================== running
    def onSegmentButton(self) -> None:
        if self._run is not None or self._parameterNode is None:
            return
        try:
            if not self._dependenciesChecked:
                dependencies.ensureDependencies(self.resourcePath(REQUIREMENTS))
                self._dependenciesChecked = True
            inputNodes = self.logic.inputNodesFromParameterNode(self._taskParameterNode)
            missing = self.logic.missingInputs(inputNodes)
            if missing:
                from MedSegAILib.errors import InputError

                raise InputError(_("Select the input: {inputs}.").format(inputs=", ".join(missing)))
            params = self.logic.taskParametersFromParameterNode(self._taskParameterNode)
            inputs = self.logic.prepareInputs(inputNodes)
        except Exception as exc:  # noqa: BLE001 - shown to the user
            self._showError(exc, _("Cannot start the segmentation"))
            return

        modelId = self._parameterNode.modelId or None
        device = self._parameterNode.device
        uncertaintyRuns = self._finetunePanel.uncertaintyRuns() if self._finetunePanel is not None else 0
        logic = self.logic
        self._runContext = {"inputNodes": inputNodes, "outputNode": self._parameterNode.outputSegmentation}
        self._run = BackgroundRun(
            lambda progress, cancel: logic.runPipeline(inputs, modelId=modelId, device=device, params=params,
                                                       progress=progress, cancel=cancel,
                                                       uncertaintyRuns=uncertaintyRuns),
            name=self.moduleName,
        ).start()
        self._setRunning(True)
        self._setStatus(_("Segmenting..."))
        self._pollTimer.start()

    def onCancelButton(self) -> None:
        if self._run is not None:
            self._run.cancel()
            self.ui.cancelButton.enabled = False
            self._setStatus(_("Cancelling..."))

    def _onPoll(self) -> None:
        run = self._run
        if run is None:
            self._pollTimer.stop()
            return
        report = run.takeProgress()
        if report is not None and not run.cancelRequested:
            fraction, text = report
            self.ui.progressBar.value = int(round(100 * fraction))
            self._setStatus(text)
        if not run.done:
            return
        self._pollTimer.stop()
        context, self._run, self._runContext = self._runContext, None, None
        self._setRunning(False)
        self._finish(run, context)

    def _finish(self, run, context) -> None:
        from MedSegAILib.errors import Cancelled

        if run.cancelRequested or isinstance(run.error, Cancelled):
            self.ui.progressBar.value = 0
            self._setStatus(_("Cancelled; the scene was not changed."))
            return
        if run.error is not None:
            self.ui.progressBar.value = 0
            self._showError(run.error, _("Segmentation failed"), run.errorTraceback)
            return
        result = run.result
        referenceNode = context["inputNodes"][self.task.reference_role]
        outputNode = context["outputNode"]
        if referenceNode.GetScene() is None or (outputNode is not None and outputNode.GetScene() is None):
            self._setStatus(_("The input or output node was removed while segmenting; the result was discarded."),
                            error=True)
            return
        try:
            segmentationNode, messages = self.logic.publishResult(result, referenceNode, outputNode)
        except Exception as exc:  # noqa: BLE001 - shown to the user
            self._showError(exc, _("Could not add the result to the scene"))
            return
        if self._parameterNode is not None:
            self._parameterNode.outputSegmentation = segmentationNode
        if self._finetunePanel is not None:  # the result's label map is the original output for fine-tuning
            self._finetunePanel.onResultPublished(context["inputNodes"], referenceNode, segmentationNode,
                                                  result.labelmap)
        self._showResult(referenceNode, segmentationNode)
        self.ui.progressBar.value = 100
        lines = [_("Done in {seconds:.1f} s.").format(seconds=run.elapsedSeconds)] + list(messages)
        self._setStatus("\n".join(lines))

    @staticmethod
    def _showResult(referenceNode, segmentationNode) -> None:
        slicer.util.setSliceViewerLayers(background=referenceNode, fit=True)
        segmentationNode.CreateDefaultDisplayNodes()
        displayNode = segmentationNode.GetDisplayNode()
        if displayNode is not None:
            displayNode.SetVisibility(True)
            displayNode.SetVisibility2D(True)

    def _setRunning(self, running: bool) -> None:
        for widget in (self.ui.inputsCollapsibleButton, self.ui.modelCollapsibleButton,
                       self.ui.taskParametersCollapsibleButton, self.ui.outputsCollapsibleButton):
            widget.enabled = not running
        self.ui.cancelButton.enabled = running
        if running:
            self.ui.progressBar.value = 0
        self._checkCanApply()
        if self._finetunePanel is not None:
            self._finetunePanel.updateButtons()

    # =============================================================================================== messages
    def _setStatus(self, text: str, error: bool = False) -> None:
        self.ui.statusLabel.text = text
        self.ui.statusLabel.styleSheet = "color: #c0392b;" if error else ""

    def _showError(self, exc, context: str, tracebackText: str = "") -> None:
        """MedSegAIError: its message, which says what to do. Anything else is a bug: full traceback."""
        import traceback

        from MedSegAILib.errors import MedSegAIError

        message = str(exc)
        if isinstance(exc, (MedSegAIError, dependencies.DependencyError)):
            self._setStatus(message, error=True)
            slicer.util.errorDisplay(message, windowTitle=self.task.title if self.task else "MedSegAI")
            return
        details = tracebackText or "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        logging.error(f"{context}: {message}\n{details}")
        self._setStatus(f"{context}: {message}", error=True)
        slicer.util.errorDisplay(f"{context}: {message}", detailedText=details)
