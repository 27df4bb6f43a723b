"""The "Fine-tune" section of every MedSegAI task module (``Resources/UI/MedSegAIFinetune.ui``).

It only binds widgets; the work is the library's: :mod:`MedSegAILib.mrml.finetune` (cases from the scene, the
correction Dice, the live training plot, the candidate pairs), :func:`MedSegAILib.finetune.engine.finetune` (the
one training loop, run in a :class:`~MedSegAICommon.worker.BackgroundRun` thread) and
:mod:`MedSegAILib.finetune.publish` (new model versions, export, import, delete).

Threading: the cases are copied out of the scene on the main thread (the worker never touches MRML or Qt). The
worker's ``on_epoch`` puts each epoch record into a :class:`~MedSegAILib.mrml.finetune.RecordSlot`; a
``qt.QTimer`` polls it with the progress and refreshes the plot. "Stop" sets the cancel token; the engine returns
the best state so far and the user is asked whether to keep it.

Originals: when Segment publishes a result, the widget hands its label map (``TaskResult.labelmap``, already on
the reference grid) to :meth:`FinetunePanel.onResultPublished`, so a result the user then corrects in place still
has its model output for the correction Dice; no node is added to the scene for that.
"""

from __future__ import annotations

import logging

import qt
import slicer
from slicer.i18n import tr as _

from MedSegAICommon.worker import BackgroundRun

FINETUNE_UI = "UI/MedSegAIFinetune.ui"
REQUIREMENTS = "requirements.txt"
VOLUME_COLUMN, SEGMENTATION_COLUMN, ORIGINAL_COLUMN = 0, 1, 2


class FinetunePanel:
    """Binds the Fine-tune section to a :class:`~MedSegAICommon.widgetBase.MedSegAIWidgetBase` (``widget``)."""

    POLL_INTERVAL_MS = 250

    def __init__(self, widget) -> None:
        from MedSegAILib.mrml.finetune import KeptOutputs

        self.widget = widget
        self.task = widget.task
        self._run = None
        self._slot = None
        self._context = None
        self._plot = None
        self._chartShown = False
        self._kept = KeptOutputs()
        self._inputsByVolume = {}  # reference volume ID -> {role: volume node} of its last Segment run

        uiWidget = slicer.util.loadUI(widget.resourcePath(FINETUNE_UI))
        widget.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        table = self.ui.pairsTableWidget
        table.setColumnCount(3)
        table.setHorizontalHeaderLabels([_("Volume"), _("Corrected segmentation"), _("Original output")])
        try:
            table.horizontalHeader().setSectionResizeMode(qt.QHeaderView.Stretch)
        except AttributeError:  # cosmetic only
            pass

        self._timer = qt.QTimer()
        self._timer.setInterval(self.POLL_INTERVAL_MS)
        self._timer.connect("timeout()", self._onPoll)

        self.ui.addPairButton.connect("clicked()", lambda: self.addRow())
        self.ui.removePairButton.connect("clicked()", self.onRemoveRows)
        self.ui.findPairsButton.connect("clicked()", self.onFindPairs)
        self.ui.editPairButton.connect("clicked()", self.onCorrectRow)
        self.ui.finetuneButton.connect("clicked()", self.onFinetuneButton)
        self.ui.stopButton.connect("clicked()", self.onStopButton)
        self.ui.exportModelButton.connect("clicked()", self.onExportModel)
        self.ui.importModelButton.connect("clicked()", self.onImportModel)
        self.ui.deleteModelButton.connect("clicked()", self.onDeleteModel)
        self.updateButtons()

    # =============================================================================================== state
    @property
    def running(self) -> bool:
        return self._run is not None

    def uncertaintyRuns(self) -> int:
        """Perturbed runs for the next Segment (0: no uncertainty map)."""
        return int(self.ui.uncertaintyRunsSpinBox.value) if self.ui.uncertaintyCheckBox.checked else 0

    def updateButtons(self) -> None:
        running = self.running
        segmenting = self.widget._run is not None
        rows = self.ui.pairsTableWidget.rowCount
        self.ui.finetuneButton.enabled = not running and not segmenting and rows > 0
        if running:
            self.ui.finetuneButton.toolTip = _("Fine-tuning is running.")
        elif segmenting:
            self.ui.finetuneButton.toolTip = _("Wait for the segmentation to finish.")
        elif rows == 0:
            self.ui.finetuneButton.toolTip = _("Add training cases first (Find in scene, or Add).")
        else:
            self.ui.finetuneButton.toolTip = _("Fine-tune the selected model on the listed cases, in the background.")
        self.ui.stopButton.enabled = running and not self._run.cancelRequested
        for w in (self.ui.pairsTableWidget, self.ui.addPairButton, self.ui.removePairButton, self.ui.findPairsButton,
                  self.ui.optionsGroupBox, self.ui.exportModelButton, self.ui.importModelButton,
                  self.ui.deleteModelButton):
            w.enabled = not running

    def _setStatus(self, text: str, error: bool = False) -> None:
        self.ui.finetuneStatusLabel.text = text
        self.ui.finetuneStatusLabel.styleSheet = "color: #c0392b;" if error else ""

    # =============================================================================================== the pairs table
    def _selector(self, nodeTypes, noneDisplay: str, toolTip: str):
        s = slicer.qMRMLNodeComboBox()
        s.nodeTypes = nodeTypes
        s.showChildNodeTypes = False
        s.noneEnabled = True
        s.noneDisplay = noneDisplay
        s.addEnabled = False
        s.removeEnabled = False
        s.renameEnabled = False
        s.showHidden = False
        s.setMRMLScene(slicer.mrmlScene)
        s.toolTip = toolTip
        s.connect("currentNodeChanged(vtkMRMLNode*)", self._onRowsChanged)
        return s

    def addRow(self, volume=None, segmentation=None, original=None) -> int:
        """Append a row (the nodes may be None: the user picks them); returns its index."""
        table = self.ui.pairsTableWidget
        row = table.rowCount
        table.insertRow(row)
        volumeTypes = ["vtkMRMLScalarVolumeNode"]
        if self.task.accepts_colour_nodes:  # radiographs stored as RGB
            volumeTypes.append("vtkMRMLVectorVolumeNode")
        selectors = (
            self._selector(volumeTypes, _("(select)"), _("The image ({role}) of this case.").format(
                role=self.task.input_spec(self.task.reference_role).title)),
            self._selector(["vtkMRMLSegmentationNode"], _("(select)"), _(
                "The corrected segmentation: segments named as the model's labels.")),
            self._selector(["vtkMRMLSegmentationNode"], _("(none)"), _(
                "Optional: the model's output before your corrections, to report how much you corrected.")),
        )
        for column, (selector, node) in enumerate(zip(selectors, (volume, segmentation, original))):
            table.setCellWidget(row, column, selector)
            wasBlocked = selector.blockSignals(True)
            selector.setCurrentNode(node)
            selector.blockSignals(wasBlocked)
        self._onRowsChanged()
        return row

    def rows(self) -> list:
        """``[(volume node, segmentation node, original node), ...]`` (None where nothing is selected)."""
        table = self.ui.pairsTableWidget

        def node(r, c):
            selector = table.cellWidget(r, c)
            return selector.currentNode() if selector is not None else None

        return [tuple(node(r, c) for c in (VOLUME_COLUMN, SEGMENTATION_COLUMN, ORIGINAL_COLUMN))
                for r in range(table.rowCount)]

    def _selectedRows(self) -> list:
        return sorted({index.row() for index in self.ui.pairsTableWidget.selectionModel().selectedRows()})

    def _onRowsChanged(self, node=None) -> None:
        """The original column says when a model output kept from the Segment run will be used."""
        table = self.ui.pairsTableWidget
        for r, (volume, segmentation, _original) in enumerate(self.rows()):
            selector = table.cellWidget(r, ORIGINAL_COLUMN)
            if selector is not None:
                kept = self._kept.get(segmentation, volume) is not None
                selector.noneDisplay = _("kept from Segment") if kept else _("(none)")
        self.updateButtons()

    def onRemoveRows(self) -> None:
        rows = self._selectedRows() or ([self.ui.pairsTableWidget.rowCount - 1] if self.ui.pairsTableWidget.rowCount
                                        else [])
        for r in reversed(rows):
            self.ui.pairsTableWidget.removeRow(r)
        self._onRowsChanged()

    def onFindPairs(self) -> None:
        from MedSegAILib.mrml.finetune import pairs_in_scene

        listed = {(v.GetID(), s.GetID()) for v, s, _o in self.rows() if v is not None and s is not None}
        added = 0
        for pair in pairs_in_scene(slicer.mrmlScene, self.task):
            if (pair.volume.GetID(), pair.segmentation.GetID()) not in listed:
                self.addRow(pair.volume, pair.segmentation)
                added += 1
        self._setStatus(_("{n} case(s) added from the scene.").format(n=added) if added else
                        _("No further segmentation on a volume's grid with segments this model knows."))

    def onResultPublished(self, inputNodes: dict, referenceNode, segmentationNode, labelmap) -> None:
        """Called by the widget after Segment wrote a result: keep its label map as the original output and list
        the pair (once)."""
        try:
            self._kept.remember(segmentationNode, referenceNode, labelmap)
            self._inputsByVolume[referenceNode.GetID()] = dict(inputNodes)
            if not any(s is segmentationNode for _v, s, _o in self.rows()):
                self.addRow(referenceNode, segmentationNode)
            else:
                self._onRowsChanged()
        except Exception:  # noqa: BLE001 - bookkeeping only: the Segment result stands
            logging.exception("MedSegAI: could not list the result for fine-tuning")

    def onCorrectRow(self) -> None:
        rows = self.rows()
        selected = [r for r in self._selectedRows() if r < len(rows)]
        if not rows:
            self._setStatus(_("Add a case first."), error=True)
            return
        volume, segmentation, _original = rows[selected[0] if selected else len(rows) - 1]
        if segmentation is None:
            self._setStatus(_("Select the row's segmentation first."), error=True)
            return
        slicer.util.selectModule("SegmentEditor")
        try:
            editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
            editor.setSegmentationNode(segmentation)
            if volume is not None:
                setSource = getattr(editor, "setSourceVolumeNode", None) or editor.setMasterVolumeNode
                setSource(volume)
        except Exception as exc:  # noqa: BLE001 - the module is open anyway; the user can pick the nodes
            logging.warning(f"MedSegAI: could not preset the Segment Editor: {exc}")

    # =============================================================================================== cases and options
    def _inputNodesFor(self, volume) -> dict:
        """All inputs of the case whose reference image is ``volume``: those of its last Segment run, else the
        module's current selection when it is on that volume, else the volume alone (enough for one-input tasks)."""
        role = self.task.reference_role
        inputs = dict(self._inputsByVolume.get(volume.GetID(), {}))
        if not inputs:
            logic = self.widget.logic
            current = logic.inputNodesFromParameterNode(logic.getTaskParameterNode())
            if current.get(role) is volume:
                inputs = current
        inputs[role] = volume
        return {r: n for r, n in inputs.items() if n is not None and n.GetScene() is not None}

    def _cases(self) -> list:
        from MedSegAILib.errors import InputError
        from MedSegAILib.mrml.finetune import case_from_nodes

        rows = self.rows()
        if not rows:
            raise InputError(_("Add at least one training case: a volume and its corrected segmentation."))
        cases, names = [], set()
        for n, (volume, segmentation, original) in enumerate(rows, start=1):
            if volume is None or segmentation is None:
                raise InputError(_("Row {n}: select the volume and its corrected segmentation, or remove the row.")
                                 .format(n=n))
            name = volume.GetName() or volume.GetID()
            if name in names:
                name = f"{name} ({segmentation.GetName()})"
            if name in names:
                name = f"{name} #{n}"
            names.add(name)
            kept = None if original is not None else self._kept.get(segmentation, volume)
            cases.append(case_from_nodes(self.task, self._inputNodesFor(volume), segmentation,
                                         original_segmentation_node=original, original=kept, name=name))
        return cases

    def _options(self):
        from MedSegAILib.finetune.engine import FinetuneOptions

        minutes = float(self.ui.minutesSpinBox.value)
        lr = float(self.ui.learningRateSpinBox.value)
        return FinetuneOptions(epochs=int(self.ui.epochsSpinBox.value), minutes=minutes or None, lr=lr or None,
                               val_share=int(self.ui.validationShareSpinBox.value) / 100.0,
                               augment=bool(self.ui.augmentCheckBox.checked),
                               device=self.widget.logic.getParameterNode().device or "auto").validate()

    # =============================================================================================== running
    def onFinetuneButton(self) -> None:
        if self.running or self.widget._run is not None:
            return
        try:
            if not self.widget._dependenciesChecked:
                from MedSegAICommon import dependencies

                dependencies.ensureDependencies(self.widget.resourcePath(REQUIREMENTS))
                self.widget._dependenciesChecked = True
            qt.QApplication.setOverrideCursor(qt.Qt.WaitCursor)
            try:
                cases = self._cases()
                options = self._options()
            finally:
                qt.QApplication.restoreOverrideCursor()
        except Exception as exc:  # noqa: BLE001 - shown to the user
            self.widget._showError(exc, _("Cannot start fine-tuning"))
            return
        from MedSegAILib.mrml.finetune import RecordSlot, correction_dice, correction_text

        corrections = [correction_text(c, d) for c in cases if (d := correction_dice(c))]
        notes = [note for c in cases for note in c.notes]
        modelKey = self.widget.logic.getParameterNode().modelId or None
        taskId = self.task.id
        slot = RecordSlot()

        def target(progress, cancel):
            from MedSegAILib.finetune.engine import finetune

            return finetune(taskId, cases, model=modelKey, options=options, progress=progress, cancel=cancel,
                            on_epoch=slot.put)

        self._ensurePlot().update([])  # a fresh curve for this run
        self._chartShown = False
        self._slot = slot
        self._context = {"name": self.ui.modelNameLineEdit.text.strip() or None, "corrections": corrections,
                         "epochs": options.epochs}
        lines = []
        if corrections:
            lines.append(_("How much you corrected (Dice of the model output vs your correction; 1 = unchanged):"))
            lines += corrections
        self.ui.summaryLabel.text = "\n".join(lines + notes)
        self.ui.finetuneProgressBar.value = 0
        self._run = BackgroundRun(target, name=f"{self.widget.moduleName} fine-tuning").start()
        self._setStatus(_("Preparing {n} case(s)...").format(n=len(cases)))
        self._timer.start()
        self.updateButtons()
        self.widget._checkCanApply()

    def onStopButton(self) -> None:
        if self._run is not None:
            self._run.cancel()
            self._setStatus(_("Stopping after the current training step..."))
            self.updateButtons()

    def _onPoll(self) -> None:
        from MedSegAILib.mrml.finetune import epoch_text

        run = self._run
        if run is None:
            self._timer.stop()
            return
        report = run.takeProgress()
        if report is not None and not run.cancelRequested:
            fraction, text = report
            self.ui.finetuneProgressBar.value = int(round(100 * fraction))
            self._setStatus(text)
        records = self._slot.take()
        if records:
            self._ensurePlot().update(records)
            if not run.cancelRequested:
                self._setStatus(epoch_text(records[-1], self._context["epochs"]))
            if not self._chartShown:
                self._showChart()
        if not run.done:
            return
        self._timer.stop()
        context, self._run = self._context, None
        try:
            self._finish(run, context)
        finally:
            self.updateButtons()
            self.widget._checkCanApply()

    def _ensurePlot(self):
        """The run's :class:`~MedSegAILib.mrml.finetune.TrainingPlot` (a new one after the scene was closed)."""
        from MedSegAILib.mrml.finetune import TrainingPlot

        if self._plot is None:
            self._plot = TrainingPlot(slicer.mrmlScene, _("{task} fine-tuning").format(task=self.task.title))
            self._chartShown = False
        return self._plot

    def _showChart(self) -> None:
        self._chartShown = True
        try:
            slicer.modules.plots.logic().ShowChartInLayout(self._plot.chart)
        except Exception as exc:  # noqa: BLE001 - the plot nodes are in the scene anyway
            logging.warning(f"MedSegAI: could not show the training plot: {exc}")

    def _finish(self, run, context) -> None:
        from MedSegAILib.errors import Cancelled
        from MedSegAILib.mrml.finetune import run_summary

        if isinstance(run.error, Cancelled):
            self.ui.finetuneProgressBar.value = 0
            self._setStatus(_("Stopped before the first epoch; nothing was written."))
            return
        if run.error is not None:
            self.ui.finetuneProgressBar.value = 0
            self._setStatus(_("Fine-tuning failed; nothing was written."), error=True)
            self.widget._showError(run.error, _("Fine-tuning failed"), run.errorTraceback)
            return
        result = run.result
        self._ensurePlot().update(result.history)
        self.ui.finetuneProgressBar.value = 100
        if result.state is None:
            self._setStatus(_("No epoch was completed, so there is no model to keep; nothing was written."))
            self.ui.summaryLabel.text = run_summary(result)
            return
        keep, keepIfWorse = True, None
        if result.stopped_by == "cancel" or run.cancelRequested:
            keep = slicer.util.confirmYesNoDisplay(
                _("Fine-tuning was stopped after {n} epoch(s).\n\n{summary}\n\nKeep the best model so far as a new "
                  "model version? (No: discard it; nothing is written.)").format(
                    n=len(result.history), summary=run_summary(result).splitlines()[0]),
                windowTitle=self.task.title)
            keepIfWorse = keep or None
        elif not result.improved:
            keep = slicer.util.confirmYesNoDisplay(
                _("Fine-tuning did not improve the validation Dice.\n\n{summary}\n\nKeep the fine-tuned model anyway "
                  "as a new model version? (No: discard it; nothing is written.)").format(
                    summary=run_summary(result).splitlines()[0]),
                windowTitle=self.task.title)
            keepIfWorse = keep or None
        spec = None
        if keep:
            from MedSegAILib.finetune.publish import publish

            try:
                qt.QApplication.setOverrideCursor(qt.Qt.WaitCursor)
                try:
                    spec = publish(result, name=context["name"], keep_if_worse=keepIfWorse)
                finally:
                    qt.QApplication.restoreOverrideCursor()
            except Exception as exc:  # noqa: BLE001 - shown to the user; publish writes all or nothing
                self.widget._showError(exc, _("Could not save the new model"))
            else:
                self.selectModel(spec.key)
        summary = run_summary(result, spec)
        if spec is None and keep:
            summary += "\n" + _("The new model was not saved (see the message).")
        elif not keep:
            summary += "\n" + _("Discarded: no new model was written.")
        self.ui.summaryLabel.text = "\n".join([summary] + list(context["corrections"]))
        self._setStatus(_("Done in {seconds:.0f} s.").format(seconds=run.elapsedSeconds))

    # =============================================================================================== user models
    def selectModel(self, key: str) -> None:
        """Make ``key`` the module's model (``""``: the task's default) and refresh the model list."""
        self.widget.logic.getParameterNode().modelId = key
        self.widget.refreshModelList()

    def _selectedUserModel(self):
        key = self.widget.logic.getParameterNode().modelId
        if not key:
            self._setStatus(_("Select one of your models (fine-tuned or imported) in the model list above."),
                            error=True)
        return key or None

    def _guarded(self, context: str, function):
        try:
            qt.QApplication.setOverrideCursor(qt.Qt.WaitCursor)
            try:
                return function()
            finally:
                qt.QApplication.restoreOverrideCursor()
        except Exception as exc:  # noqa: BLE001 - shown to the user
            self.widget._showError(exc, context)
            return None

    def onExportModel(self) -> None:
        from MedSegAILib.finetune.publish import EXPORT_SUFFIX, export_model

        key = self._selectedUserModel()
        if key is None:
            return
        path = qt.QFileDialog.getSaveFileName(
            slicer.util.mainWindow(), _("Export model"), key.replace("@", "-") + EXPORT_SUFFIX,
            _("MedSegAI model (*{suffix})").format(suffix=EXPORT_SUFFIX))
        if not path:
            return
        if not path.endswith(EXPORT_SUFFIX):
            path += EXPORT_SUFFIX
        out = self._guarded(_("Could not export the model"), lambda: export_model(key, path))
        if out is not None:
            self._setStatus(_("Model {key} exported to {path}.").format(key=key, path=out))

    def onImportModel(self) -> None:
        from MedSegAILib.finetune.publish import EXPORT_SUFFIX, import_model

        path = qt.QFileDialog.getOpenFileName(
            slicer.util.mainWindow(), _("Import model"), "",
            _("MedSegAI model (*{suffix});;All files (*)").format(suffix=EXPORT_SUFFIX))
        if not path:
            return
        spec = self._guarded(_("Could not import the model"), lambda: import_model(path))
        if spec is None:
            return
        if spec.task != self.task.id:
            self._setStatus(_("Imported {key}, a model of the {task} task: select it in that module.")
                            .format(key=spec.key, task=spec.task))
            return
        self.selectModel(spec.key)
        self._setStatus(_("Imported and selected {key}.").format(key=spec.key))

    def onDeleteModel(self) -> None:
        from MedSegAILib.finetune.publish import delete_model

        key = self._selectedUserModel()
        if key is None:
            return
        if not slicer.util.confirmYesNoDisplay(
                _("Delete the model {key} from the user model folder? This cannot be undone (export it first to keep "
                  "a copy).").format(key=key), windowTitle=self.task.title):
            return
        if self._guarded(_("Could not delete the model"), lambda: delete_model(key)) is not None:
            self.selectModel("")
            self._setStatus(_("Deleted {key}; the default model is selected.").format(key=key))

    # =============================================================================================== lifecycle
    def onSceneStartClose(self) -> None:
        """The scene is being cleared: forget its nodes (a running training works on copies and goes on)."""
        self._kept.clear()
        self._inputsByVolume.clear()
        self.ui.pairsTableWidget.setRowCount(0)
        self._plot = None
        self._chartShown = False
        self.updateButtons()

    def cleanup(self) -> None:
        if self._run is not None:
            self._run.cancel()
            self._run.wait(5.0)
            self._run = None
        self._timer.stop()
