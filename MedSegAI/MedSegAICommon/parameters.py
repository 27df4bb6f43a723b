"""Parameter-node wrappers of the MedSegAI modules (GUI state saved with the scene).

Two wrappers share each module's one ``vtkMRMLScriptedModuleNode`` (their parameter names never clash):

* :class:`MedSegAIParameterNode` - what every task has; bound to ``Resources/UI/MedSegAIBase.ui`` through
  the ``SlicerParameterName`` dynamic properties and ``connectGui``.
* a per-task class made by :func:`makeTaskParameterNodeClass` from the task plug-in: ``input_<role>``
  volume nodes and ``param_<name>`` task parameters, bound with ``connectParametersToGui`` to the widgets
  that the widget base creates for them.
"""

from __future__ import annotations

from typing import Annotated

from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import Choice, Maximum, Minimum, WithinRange, parameterNodeWrapper

from MedSegAICommon.taskform import describeParameters, inputKey

DEVICE_CHOICES = ["auto", "cuda", "mps", "cpu"]


@parameterNodeWrapper
class MedSegAIParameterNode:
    """State common to every MedSegAI task module.

    modelId - zoo model key ``id@version``; empty: the task's default model (the combo box is filled at
        run time from the zoo, so it is bound by hand, not with ``SlicerParameterName``).
    device - "auto", "cuda", "mps" or "cpu".
    outputSegmentation - where the result goes; None: a new segmentation node is created.
    """

    modelId: str = ""
    device: Annotated[str, Choice(DEVICE_CHOICES)] = "auto"
    outputSegmentation: vtkMRMLSegmentationNode


def _annotatedType(field):
    if field.choices is not None:
        return Annotated[field.pytype, Choice(list(field.choices))]
    bounds = []
    if field.minimum is not None and field.maximum is not None:
        bounds.append(WithinRange(field.minimum, field.maximum))
    else:
        if field.minimum is not None:
            bounds.append(Minimum(field.minimum))
        if field.maximum is not None:
            bounds.append(Maximum(field.maximum))
    return Annotated[(field.pytype, *bounds)] if bounds else field.pytype


def makeTaskParameterNodeClass(task):
    """A parameter-node wrapper class for ``task``: ``input_<role>`` nodes and ``param_<name>`` values."""
    annotations = {}
    defaults = {}
    for spec in task.inputs:
        annotations[inputKey(spec.role)] = vtkMRMLScalarVolumeNode
    for field in describeParameters(task.Parameters):
        annotations[field.key] = _annotatedType(field)
        defaults[field.key] = field.default
    name = "".join(part.capitalize() for part in task.id.replace("_", "-").split("-")) + "TaskParameterNode"
    cls = type(name, (), {"__annotations__": annotations, "__module__": __name__, **defaults})
    return parameterNodeWrapper(cls)


def taskParameterValues(taskParameterNode, task) -> dict:
    """``{param_<name>: value}`` read from a task wrapper (for :func:`taskform.buildParameters`)."""
    return {f.key: taskParameterNode.getValue(f.key) for f in describeParameters(task.Parameters)}


__all__ = ["DEVICE_CHOICES", "MedSegAIParameterNode", "makeTaskParameterNodeClass", "taskParameterValues"]
