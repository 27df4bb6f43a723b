"""The scene-side logic the Slicer widgets and the batch script call.

Three steps, so a GUI can run the heavy middle one in a worker thread:

1. :meth:`SegmentationLogic.prepare` (main thread): volume nodes -> ``{role: Volume}`` (copies voxels,
   so the scene may change while the worker computes);
2. ``MedSegAILib.pipeline.segment(...)`` (any thread; no scene access) -> :class:`TaskResult`;
3. :meth:`SegmentationLogic.publish` (main thread): result -> nodes, atomically
   (:func:`MedSegAILib.mrml.results.write_result`).

:meth:`SegmentationLogic.run` chains the three for scripts and tests. The compute function is injected
(``SegmentationLogic(segment_function=...)``), which lets tests and alternative back ends (e.g. an
out-of-process runner) reuse the scene side unchanged.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

from MedSegAILib.core.volume import Volume
from MedSegAILib.engine.progress import CancelToken
from MedSegAILib.errors import InputError
from MedSegAILib.mrml.results import ResultNodes, write_result
from MedSegAILib.mrml.volumes import volume_from_node
from MedSegAILib.tasks.base import TaskResult

#: ``segment(task_id, inputs, model_id=None, device="auto", params=None, progress=None, cancel=None)``
SegmentFunction = Callable[..., TaskResult]


def _default_segment(*args: Any, **kwargs: Any) -> TaskResult:
    from MedSegAILib.pipeline import segment  # lazy: torch and the task registry load on first use

    return segment(*args, **kwargs)


class SegmentationLogic:
    """Scene <-> core glue. Holds no scene and no Qt object; every call takes the scene as an argument."""

    def __init__(self, segment_function: Optional[SegmentFunction] = None):
        self.segment_function: SegmentFunction = segment_function or _default_segment

    # ------------------------------------------------------------------ step 1 (main thread)
    def prepare(self, scene: Any, input_nodes: Mapping[str, Any], task_id: Optional[str] = None) -> dict[str, Volume]:
        """``{role: Volume}`` copies of the input volume nodes (see :func:`volume_from_node`). With ``task_id``,
        colour (vector) nodes are offered to the task's :meth:`Task.scalar_from_vector` (a radiograph task accepts
        grey images stored as RGB)."""
        if not input_nodes:
            raise InputError("No input volume was selected.")
        volumes: dict[str, Volume] = {}
        for role, node in input_nodes.items():
            if node is None:
                continue  # optional input left empty; the task checks what it requires
            if node.GetScene() is not scene:
                raise ValueError(f"prepare: the node for {role!r} is not in the given scene")
            converter = None
            if task_id is not None and node.IsA("vtkMRMLVectorVolumeNode"):  # the task is looked up only then
                from MedSegAILib.tasks.registry import get_task

                converter = get_task(task_id).scalar_from_vector
            volumes[role] = volume_from_node(node, vector_to_scalar=converter)
        if not volumes:
            raise InputError("No input volume was selected.")
        return volumes

    # ------------------------------------------------------------------ step 2 (worker thread)
    def compute(
        self,
        task_id: str,
        inputs: Mapping[str, Volume],
        *,
        model_id: Optional[str] = None,
        device: str = "auto",
        params: Any = None,
        progress: Any = None,
        cancel: Optional[CancelToken] = None,
    ) -> TaskResult:
        """Runs the injected segment function; touches no scene (safe in a worker thread)."""
        return self.segment_function(
            task_id, dict(inputs), model_id=model_id, device=device, params=params, progress=progress, cancel=cancel
        )

    # ------------------------------------------------------------------ step 3 (main thread)
    def publish(
        self,
        scene: Any,
        result: TaskResult,
        reference_node: Any,
        output_segmentation_node: Any = None,
        *,
        name: Optional[str] = None,
        empty_segments: bool = True,
    ) -> ResultNodes:
        """Write ``result`` into ``scene`` (atomic; see :func:`write_result`)."""
        return write_result(
            scene, result, reference_node, output_segmentation_node, name=name, empty_segments=empty_segments
        )

    # ------------------------------------------------------------------ all three (blocking)
    def run(
        self,
        scene: Any,
        task_id: str,
        input_nodes: Mapping[str, Any],
        *,
        model_id: Optional[str] = None,
        device: str = "auto",
        params: Any = None,
        progress: Any = None,
        cancel: Optional[CancelToken] = None,
        output_segmentation_node: Any = None,
        name: Optional[str] = None,
    ) -> ResultNodes:
        """prepare + compute + publish. The reference node is ``input_nodes[result.reference_role]``."""
        inputs = self.prepare(scene, input_nodes, task_id)
        result = self.compute(
            task_id, inputs, model_id=model_id, device=device, params=params, progress=progress, cancel=cancel
        )
        if cancel is not None:
            cancel.check()  # cancelled after compute: write nothing
        reference = input_nodes.get(result.reference_role)
        if reference is None:
            raise InputError(
                f"The task's reference input {result.reference_role!r} was not given; inputs: {sorted(input_nodes)}."
            )
        return self.publish(scene, result, reference, output_segmentation_node, name=name)
