"""Finding input cases in files and folders, for the batch script and ``medsegai rank``.

A one-image task takes one image file per case (single-file 2-D formats — PNG, JPEG, TIFF, a DICOM file — only for
tasks on planar images: for volume tasks they are slices of a series); a task with several images takes one folder
per case holding one file per input, named after its role (``sestamibi.nrrd``, ``iodine.nii.gz``...), or a single
such case folder.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any


def find_inputs(path: Path, pattern: "str | None", planar: bool = False) -> list[Path]:
    """Image files of a folder. Single-file 2-D formats (PNG, JPEG, TIFF, a DICOM file) are cases only for tasks
    on planar images (``planar``): for volume tasks they are slices of a series, not cases."""
    from MedSegAILib.core.io import VOLUME_SUFFIXES

    if path.is_file():
        return [path]
    if not path.is_dir():
        return []
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    if pattern:
        return [p for p in files if fnmatch.fnmatch(p.name, pattern)]
    single_2d = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm")
    suffixes = tuple(s for s in VOLUME_SUFFIXES if s != ".npy" and (planar or s not in single_2d))
    return [p for p in files if p.name.lower().endswith(suffixes) and not p.name.lower().endswith(".seg.nrrd")]


def _role_files(folder: Path, task: Any) -> dict[str, Path]:
    """``{role: file}`` of a case folder: files whose name (without image suffixes) is an input role."""
    from MedSegAILib.core.io import split_stem

    roles = {spec.role.lower(): spec.role for spec in task.inputs}
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()) if folder.is_dir() else []:
        if p.name.startswith("."):
            continue
        stem = split_stem(p)[0].lower()
        if stem in roles:
            found[roles[stem]] = p
    return found


def find_cases(path: Path, pattern: "str | None", task: Any) -> list[tuple[str, dict[str, Path]]]:
    """``[(case name, {role: file})]``: one file per case for one-image tasks, one folder per case otherwise."""
    if len(task.inputs) == 1:
        planar = all(spec.dims == 2 for spec in task.inputs)
        return [(p.name, {task.reference_role: p}) for p in find_inputs(path, pattern, planar)]
    if _role_files(path, task):
        return [(path.name, _role_files(path, task))]
    if not path.is_dir():
        return []
    return [(d.name, _role_files(d, task)) for d in sorted(path.iterdir()) if d.is_dir() and not d.name.startswith(".")]
