"""The one code path from images to a result, shared by the CLI, the Slicer batch script and the Slicer GUI.

``segment(task_id, {role: Volume}) -> TaskResult``: validates inputs and parameters, chooses the device,
loads the model (checksum-verified, cached in-process), runs the task with progress and cancel, checks that the
result lies exactly on the reference input's grid, and records provenance.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Union

from MedSegAILib import __version__
from MedSegAILib.core.volume import Volume
from MedSegAILib.engine.device import select_device
from MedSegAILib.engine.progress import CancelToken, Progress
from MedSegAILib.tasks.base import RunContext, TaskResult, parameters_from_strings, validate_parameters
from MedSegAILib.tasks.registry import get_task

if TYPE_CHECKING:
    from MedSegAILib.zoo.registry import LoadedModel, ModelSpec

_CACHE_LOCK = threading.Lock()
_MODEL_CACHE: dict[tuple, "LoadedModel"] = {}
_CACHE_SIZE = 3


def _cached_model(spec: "ModelSpec", device: Any) -> "LoadedModel":
    """Load (or reuse) a model; the key includes each weight file's size and mtime, so a replaced file is
    re-verified against its checksum."""
    from MedSegAILib.zoo.registry import load_model

    stamp = tuple((n, s.weights.stat().st_size, s.weights.stat().st_mtime_ns) if s.weights.exists() else (n, None)
                  for n, s in sorted(spec.networks.items()))
    key = (spec.key, str(spec.folder), str(device), stamp)
    with _CACHE_LOCK:
        if key in _MODEL_CACHE:
            return _MODEL_CACHE[key]
    model = load_model(spec, device)
    with _CACHE_LOCK:
        while len(_MODEL_CACHE) >= _CACHE_SIZE:
            _MODEL_CACHE.pop(next(iter(_MODEL_CACHE)))
        _MODEL_CACHE[key] = model
    return model


def clear_model_cache() -> None:
    with _CACHE_LOCK:
        _MODEL_CACHE.clear()


def segment(
    task_id: str,
    inputs: Mapping[str, Volume],
    *,
    model_id: Optional[str] = None,
    device: str = "auto",
    params: Union[None, Mapping[str, Any], Any] = None,
    progress: Union[None, Progress, Callable[[float, str], None]] = None,
    cancel: Optional[CancelToken] = None,
    model: Optional["LoadedModel"] = None,
) -> TaskResult:
    """Run task ``task_id`` on ``inputs`` (``{role: Volume}``) and return its :class:`TaskResult`.

    ``params``: the task's Parameters dataclass, or a mapping of names to values/strings (CLI ``--param``).
    ``model``: an already loaded model (tests, fine-tuning previews); otherwise ``model_id`` or the task's
    default model is taken from the zoo. The inputs are never modified.
    """
    t_start = time.perf_counter()
    task = get_task(task_id)
    if params is None:
        params = task.Parameters()
    elif isinstance(params, Mapping):
        params = parameters_from_strings(task.Parameters, {k: str(v) for k, v in params.items()})
    validate_parameters(params)
    task.validate_inputs(inputs)

    prog = progress if isinstance(progress, Progress) else Progress(progress)
    cancel = cancel or CancelToken()
    dev, device_message = select_device(device)
    ctx = RunContext(device=dev, progress=prog.sub(0.05, 1.0), cancel=cancel)

    prog(0.0, "Loading model")
    if model is None and (model_id or (task.default_model and task.needs_model(params))):
        from MedSegAILib.zoo.registry import get_model_spec

        spec = get_model_spec(model_id or task.default_model, task=task.id)  # type: ignore[arg-type]
        t0 = time.perf_counter()
        model = _cached_model(spec, dev)
        ctx.add_time("model_load", time.perf_counter() - t0)
    elif model is not None:
        model.to(dev)
    cancel.check()
    prog(0.05, device_message)

    t0 = time.perf_counter()
    result = task.run(inputs, params, model, ctx)
    ctx.add_time("task_run", time.perf_counter() - t0)
    cancel.check()

    reference = inputs[task.reference_role]
    if not result.labelmap.same_geometry(reference):
        raise RuntimeError(
            f"internal error: task {task.id} returned a label map on grid {result.labelmap!r}, not on the input grid "
            f"{reference!r}; the result was discarded"
        )
    for m in result.maps:
        if not m.volume.same_geometry(reference):
            raise RuntimeError(f"internal error: map {m.name!r} of task {task.id} is not on the input grid")

    prov = {
        "task": task.id,
        "task_title": task.title,
        "library_version": __version__,
        "device": str(dev),
        "date": _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds"),
        "parameters": dataclasses.asdict(params) if dataclasses.is_dataclass(params) else {},
        "inputs": {role: str(v.meta.get("name", role)) for role, v in inputs.items()},
    }
    if model is not None:
        prov.update({
            "model_id": model.spec.id,
            "model_version": model.spec.version,
            "model_source": model.spec.source,
            "model_sha256": {n: s.sha256 for n, s in model.spec.networks.items()},
        })
    ctx.timings["total"] = time.perf_counter() - t_start
    prov["timings_s"] = {k: round(v, 4) for k, v in ctx.timings.items()}
    result.provenance = {**result.provenance, **prov}
    result.messages = [device_message] + ctx.messages + result.messages
    prog(1.0, "Done")
    return result
