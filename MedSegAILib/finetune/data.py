"""Training cases: the task's inputs plus a corrected label map, read from folders or built by the MRML bridge,
checked, and split by patient.

Folder layouts read by :func:`read_cases` (``medsegai train/finetune --data DIR``):

* one folder per case: ``DIR/<case>/<role>.nii.gz`` for every input role of the task (a single-input task may
  call it ``image.*``) and the mask as ``mask.*``, ``label.*``, ``labels.*``, ``segmentation.*`` or any
  ``*.seg.nrrd``; optionally the model's original output as ``original.*`` (or ``prediction.*``), used only to
  report how much the user corrected;
* nnU-Net style: ``DIR/imagesTr/<case>_0000.nii.gz`` (``_0001``... for further inputs, in the task's input
  order) and ``DIR/labelsTr/<case>.nii.gz``.

Any format :func:`MedSegAILib.core.io.read_volume` reads (NIfTI, NRRD, MHA...) and Slicer ``.seg.nrrd`` files
(segments matched to the task's labels by name and side). Patients: ``DIR/patients.csv`` with columns ``case``
and ``patient`` (cases of one patient are never split between training and validation); without it each case
is its own patient.

Checks (:func:`check_labels`): label values or segment names the task does not know are refused with the list
of known labels; an empty mask is refused; a mask on another grid than its image is resampled onto the image
grid (nearest neighbour, reported in the case's notes) when it covers the image, and refused when it does not
(or always, with ``strict_grid``). Files are only read, never written.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from MedSegAILib.core.io import VOLUME_SUFFIXES, split_stem
from MedSegAILib.core.volume import Volume
from MedSegAILib.errors import InputError

MASK_STEMS = ("mask", "label", "labels", "segmentation", "seg")
ORIGINAL_STEMS = ("original", "prediction")
SEG_SUFFIX = ".seg.nrrd"
GRID_TOL_MM = 1e-3
#: a mask on another grid is resampled when it covers at least this fraction of the image's voxels
MIN_COVERAGE = 0.5


@dataclass
class Case:
    """One training case: the task's inputs, the (corrected) label map on the reference input's grid holding the
    task's label values (instance tasks: any value > 0), and optionally the model's original output."""

    name: str
    patient: str
    inputs: dict[str, Volume]
    labels: Volume
    original: Optional[Volume] = None
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- discovery
def _is_volume_file(p: Path) -> bool:
    return p.is_file() and not p.name.startswith(".") and (
        p.name.lower().endswith(SEG_SUFFIX) or split_stem(p)[1].lower() in VOLUME_SUFFIXES)


def _stem(p: Path) -> str:
    return p.name[: -len(SEG_SUFFIX)] if p.name.lower().endswith(SEG_SUFFIX) else split_stem(p)[0]


def _patients(folder: Path) -> dict[str, str]:
    path = folder / "patients.csv"
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if rows and not {"case", "patient"} <= set(rows[0]):
        raise InputError(f"{path} needs the columns 'case' and 'patient' (found {', '.join(rows[0])}).")
    return {r["case"].strip(): r["patient"].strip() for r in rows if r.get("case")}


@dataclass(frozen=True)
class CaseFiles:
    name: str
    inputs: dict[str, Path]
    mask: Path
    original: Optional[Path] = None


def discover_cases(folder: Union[str, os.PathLike], roles: Sequence[str],
                   optional: Sequence[str] = ()) -> list[CaseFiles]:
    """The cases in ``folder`` (either layout), with the files of each input role (``roles`` required in every
    case, ``optional`` roles taken where a case has them) and of the mask."""
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"Training data folder not found: {root}.")
    if (root / "imagesTr").is_dir() and (root / "labelsTr").is_dir():
        return _discover_nnunet(root, roles)
    out: list[CaseFiles] = []
    problems: list[str] = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = [p for p in sorted(sub.iterdir()) if _is_volume_file(p)]
        by_stem = {_stem(p).lower(): p for p in files}
        masks = [by_stem[s] for s in MASK_STEMS if s in by_stem] or [p for p in files if p.name.lower().endswith(SEG_SUFFIX)]
        originals = [by_stem[s] for s in ORIGINAL_STEMS if s in by_stem]
        inputs: dict[str, Path] = {}
        for role in list(roles) + list(optional):
            if role.lower() in by_stem:
                inputs[role] = by_stem[role.lower()]
        if len(roles) == 1 and roles[0] not in inputs:
            rest = [p for p in files if p not in masks and p not in originals]
            if "image" in by_stem:
                inputs[roles[0]] = by_stem["image"]
            elif len(rest) == 1:
                inputs[roles[0]] = rest[0]
        missing = [r for r in roles if r not in inputs]
        if not masks:
            problems.append(f"{sub.name}: no mask (name it mask.nii.gz, label.nrrd, segmentation.seg.nrrd ...)")
        elif len(masks) > 1 and not any(_stem(m).lower() in MASK_STEMS for m in masks):
            problems.append(f"{sub.name}: several .seg.nrrd files ({', '.join(m.name for m in masks)}); keep one")
        elif missing:
            problems.append(f"{sub.name}: no image for input(s) {', '.join(missing)} (name the files "
                            f"{', '.join(r + '.nii.gz' for r in roles)})")
        else:
            out.append(CaseFiles(sub.name, inputs, masks[0], originals[0] if originals else None))
    if problems:
        raise InputError(f"Training data in {root} is incomplete:\n  " + "\n  ".join(problems))
    if not out:
        raise InputError(f"No cases in {root}: expected one folder per case holding the image(s) "
                         f"({', '.join(roles)}) and a mask, or imagesTr/ + labelsTr/ (nnU-Net layout).")
    return out


def _discover_nnunet(root: Path, roles: Sequence[str]) -> list[CaseFiles]:
    out: list[CaseFiles] = []
    problems: list[str] = []
    for mask in sorted(p for p in (root / "labelsTr").iterdir() if _is_volume_file(p)):
        name = _stem(mask)
        inputs: dict[str, Path] = {}
        for c, role in enumerate(roles):
            hits = [p for p in (root / "imagesTr").glob(f"{name}_{c:04d}.*") if _is_volume_file(p)]
            if hits:
                inputs[role] = hits[0]
        if len(inputs) != len(roles):
            problems.append(f"{name}: imagesTr lacks {name}_{len(inputs):04d}.* ({len(roles)} input(s) expected)")
        else:
            out.append(CaseFiles(name, inputs, mask))
    if problems:
        raise InputError(f"Training data in {root} is incomplete:\n  " + "\n  ".join(problems))
    if not out:
        raise InputError(f"No cases in {root}/labelsTr.")
    return out


# ---------------------------------------------------------------------------------------------- reading
def _segment_names(path: Path) -> list[str]:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    keys = set(reader.GetMetaDataKeys())
    names, n = [], 0
    while f"Segment{n}_Name" in keys or f"Segment{n}_ID" in keys:
        k = f"Segment{n}_Name" if f"Segment{n}_Name" in keys else f"Segment{n}_ID"
        names.append(reader.GetMetaData(k).strip())
        n += 1
    return names


def known_labels_text(task: Any) -> str:
    """The task's labels as ``"1 = name, 2 = name"`` for messages."""
    return ", ".join(f"{lab.value} = {lab.name}" for lab in task.labels) or "any segment (instance task)"


def unknown_segments(task: Any, names: Sequence[str], where: str) -> list[str]:
    """Segment names that match no label of ``task`` by name and side (none for an instance task, which takes
    every segment)."""
    from MedSegAILib.evaluation.names import match_structures

    if not task.labels:
        return []
    matched = set(match_structures(list(names), list(task.labels), where).values())
    return [n for n in names if n not in matched]


def read_mask(task: Any, path: Union[str, os.PathLike], instance_labels: bool = False) -> Volume:
    """A mask file as a label map in the task's label values (``instance_labels``: every non-zero voxel, any
    segment, is foreground 1). Unknown label values / segment names are refused."""
    from MedSegAILib.core.io import read_volume
    from MedSegAILib.evaluation.reading import integer_labels, read_case_labels

    p = Path(path)
    known = known_labels_text(task)
    if p.name.lower().endswith(SEG_SUFFIX):
        if instance_labels:
            import SimpleITK as sitk

            img = sitk.ReadImage(str(p))
            arr = sitk.GetArrayFromImage(img)
            fg = (arr != 0).any(axis=-1) if arr.ndim == 4 else arr != 0
            vol = Volume(fg.astype(np.uint8), img.GetSpacing(), img.GetOrigin(),
                         np.asarray(img.GetDirection(), float).reshape(3, 3))
            return vol
        unknown = unknown_segments(task, _segment_names(p), str(p))
        if unknown:
            raise InputError(f"{p}: segment(s) {', '.join(repr(n) for n in unknown)} are not labels of the "
                             f"{task.title} model (it knows {known}). Rename or remove them.")
        return read_case_labels(p, task)
    vol = read_volume(p)
    arr = integer_labels(vol, str(p))
    if instance_labels:
        return vol.with_array((arr != 0).astype(np.uint8))
    values = {int(lab.value) for lab in task.labels}
    present = {int(v) for v in np.unique(arr)} - {0}
    stray = sorted(present - values)
    if stray:
        raise InputError(f"{p}: label value(s) {stray} are not labels of the {task.title} model (it knows {known}). "
                         "Relabel the mask (0 = background).")
    return vol.with_array(arr.astype(np.uint8 if max(values, default=0) < 256 else np.uint16))


def check_labels(case_name: str, labels: Volume, reference: Volume, strict_grid: bool = False
                 ) -> tuple[Volume, list[str]]:
    """``labels`` on the ``reference`` grid (resampled by nearest neighbour when it covers the image) and notes;
    empty masks and masks that do not cover the image are refused."""
    from MedSegAILib.evaluation.compare import onto_reference

    notes: list[str] = []
    arr = np.asarray(labels.array)
    if not labels.same_geometry(reference, GRID_TOL_MM):
        if strict_grid:
            raise InputError(f"{case_name}: the mask's grid ({_grid(labels)}) differs from the image's "
                             f"({_grid(reference)}). Save the mask on the image's grid (in Slicer: export the "
                             "segmentation with the image as reference geometry).")
        res, coverage = onto_reference(labels, reference)
        if coverage < MIN_COVERAGE:
            raise InputError(f"{case_name}: the mask covers only {coverage:.0%} of the image ({_grid(labels)} vs "
                             f"{_grid(reference)}); was it drawn on this image? Check origins and orientation.")
        notes.append(f"{case_name}: the mask was on another grid ({_grid(labels)}) and was resampled (nearest "
                     f"neighbour) onto the image's ({_grid(reference)})")
        labels = reference.with_array(res)
    else:
        labels = reference.with_array(arr)
    if not np.any(labels.array):
        raise InputError(f"{case_name}: the mask is empty (no labelled voxel). Draw the structure, or leave the case "
                         "out: an empty mask would teach the model to find nothing.")
    return labels, notes


def _grid(v: Volume) -> str:
    return (f"{'x'.join(str(n) for n in v.size_ijk)} voxels of {' x '.join(f'{s:.3g}' for s in v.spacing)} mm "
            f"at {tuple(round(o, 1) for o in v.origin)}")


def load_case(task: Any, files: CaseFiles, patient: Optional[str] = None, instance_labels: bool = False,
              strict_grid: bool = False) -> Case:
    """Read and check one case (the task's own input reader and input checks, then the mask checks)."""
    inputs = {role: task.read_input(role, str(p)) for role, p in files.inputs.items()}
    try:
        task.validate_inputs(inputs)
    except InputError as exc:
        raise InputError(f"{files.name}: {exc}") from None
    ref = inputs[task.reference_role]
    labels, notes = check_labels(files.name, read_mask(task, files.mask, instance_labels), ref, strict_grid)
    original = None
    if files.original is not None:
        original, _ = check_labels(files.name + " (original output)",
                                   read_mask(task, files.original, instance_labels), ref)
    return Case(files.name, patient or files.name, inputs, labels, original, notes)


def read_cases(task_id: str, folder: Union[str, os.PathLike], *, instance_labels: Optional[bool] = None,
               strict_grid: bool = False, progress: Any = None) -> list[Case]:
    """All cases of ``folder`` for task ``task_id``, read and checked (see the module docstring)."""
    from MedSegAILib.tasks.registry import get_task

    task = get_task(task_id)
    if instance_labels is None:
        instance_labels = not task.labels
    files = discover_cases(folder, [s.role for s in task.inputs if s.required],
                           [s.role for s in task.inputs if not s.required])
    patients = _patients(Path(folder))
    cases = []
    for n, f in enumerate(files):
        if progress is not None:
            progress(n / len(files), f"reading {f.name}")
        cases.append(load_case(task, f, patients.get(f.name), instance_labels, strict_grid))
    return cases


# ---------------------------------------------------------------------------------------------- splits
def _patient_order(cases: Sequence[Case], seed: int) -> list[str]:
    patients = sorted({c.patient for c in cases})
    rng = np.random.default_rng(seed)
    return [patients[i] for i in rng.permutation(len(patients))]


def split_by_patient(cases: Sequence[Case], val_share: float, seed: int = 0) -> tuple[list[Case], list[Case]]:
    """``(train, validation)``: ``round(val_share x patients)`` patients (at least one when ``val_share > 0``)
    for validation, never a patient in both."""
    if not 0.0 <= val_share < 1.0:
        raise InputError(f"The validation share must be in [0, 1); got {val_share}.")
    order = _patient_order(cases, seed)
    if val_share == 0.0:
        return list(cases), []
    n_val = max(1, int(round(val_share * len(order))))
    if n_val >= len(order):
        raise InputError(
            f"{len(cases)} case(s) from {len(order)} patient(s): a validation share of {val_share:.0%} leaves no "
            "patient to train on. Add cases, or set the validation share to 0 (then the model is not validated "
            "and no Dice before/after can be reported).")
    val = set(order[:n_val])
    return [c for c in cases if c.patient not in val], [c for c in cases if c.patient in val]


def kfold_by_patient(cases: Sequence[Case], folds: int, seed: int = 0) -> list[tuple[list[Case], list[Case]]]:
    """``folds`` (train, validation) splits; each patient is validated exactly once."""
    order = _patient_order(cases, seed)
    if folds < 2:
        raise InputError(f"Cross-validation needs at least 2 folds; got {folds}.")
    if folds > len(order):
        raise InputError(f"{folds}-fold cross-validation needs at least {folds} patients; the data has "
                         f"{len(order)}. Use fewer folds.")
    groups = [set(order[f::folds]) for f in range(folds)]
    return [([c for c in cases if c.patient not in g], [c for c in cases if c.patient in g]) for g in groups]

