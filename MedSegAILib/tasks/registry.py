"""Task plug-in discovery: every :class:`~MedSegAILib.tasks.base.Task` subclass defined in a module or
sub-package of ``MedSegAILib.tasks`` is a task. Adding a task = adding one module; no list to edit.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from functools import lru_cache

from MedSegAILib.errors import InputError
from MedSegAILib.tasks.base import Task

#: The task ids of the product (implemented or planned), for messages only.
PLANNED_TASKS = ("parathyroid", "lung-nodule", "mpi-myocardium", "parotid", "carpal")


@lru_cache(maxsize=None)
def _discover() -> dict[str, type[Task]]:
    import MedSegAILib.tasks as pkg

    found: dict[str, type[Task]] = {}
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name in ("base", "registry") or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{pkg.__name__}.{info.name}")
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, Task) and obj is not Task and not inspect.isabstract(obj) and getattr(obj, "id", None):
                if obj.id in found and found[obj.id] is not obj:
                    raise RuntimeError(f"task id {obj.id!r} defined twice ({found[obj.id]} and {obj})")
                found[obj.id] = obj
    return found


_EXTERNAL: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    """Register a task class defined outside this package (a third-party plug-in, or a test)."""
    if cls.id in _discover() and _discover()[cls.id] is not cls:
        raise ValueError(f"task id {cls.id!r} is already taken by {_discover()[cls.id]}")
    _EXTERNAL[cls.id] = cls
    return cls


def _all() -> dict[str, type[Task]]:
    return {**_discover(), **_EXTERNAL}


def task_ids() -> list[str]:
    return sorted(_all())


def get_task(task_id: str) -> Task:
    """A fresh instance of the task plug-in ``task_id``."""
    tasks = _all()
    if task_id not in tasks:
        planned = " (planned, not available in this version)" if task_id in PLANNED_TASKS else ""
        raise InputError(f"Unknown task {task_id!r}{planned}. Available tasks: {', '.join(sorted(tasks)) or 'none'}.")
    return tasks[task_id]()
