"""Pairing the cases of a prediction folder with those of a reference folder (by name; see :data:`PAIRING_RULES`)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Union

from MedSegAILib.core.io import split_stem
from MedSegAILib.errors import InputError
from MedSegAILib.evaluation.reading import (
    OUTPUT_LABELS_SUFFIX,
    SEG_SUFFIX,
    CaseSource,
    case_source,
    is_mask_file,
    output_stems,
    visible_entries,
)

_CASE_SUFFIX = re.compile(r"[-_.](seg|segmentation|segmentations|labels?|labelmap|mask|masks|gt|pred|prediction)$",
                          re.IGNORECASE)


def case_key(name: str) -> str:
    """The key two case names are paired on: lower-cased, one trailing ``_seg``/``-labels``/``.mask``/``_gt``/
    ``_pred``... removed (so ``case01_seg.nii.gz`` pairs with ``case01.nii.gz``)."""
    return _CASE_SUFFIX.sub("", name.strip()).lower()


def _is_single_case(p: Path) -> bool:
    """A path that is one case, not a folder of cases: a file, ``<case>/`` with ``segmentations/``, or
    ``.../segmentations`` itself."""
    return p.is_file() or (p / "segmentations").is_dir() or p.name == "segmentations"


def discover_cases(path: Union[str, os.PathLike]) -> tuple[dict[str, CaseSource], list[str]]:
    """The cases at ``path``: ``({name: source}, notes)``. See :data:`PAIRING_RULES`."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"Not found: {p}. Check the path.")
    if _is_single_case(p):
        src = case_source(p)
        return {src.name: src}, []
    notes: list[str] = []
    cases: dict[str, CaseSource] = {}
    outputs = output_stems(p)
    for stem, src in outputs.items():
        cases[stem] = src
    for f in visible_entries(p):
        if not is_mask_file(f) or f.name.lower().endswith(SEG_SUFFIX) or f.name.lower().endswith(OUTPUT_LABELS_SUFFIX):
            continue
        owner = next((s for s in outputs if f.name.startswith(s + ".")), None)
        if owner is not None:  # a scalar map of one of our results (<stem>.<map>.nrrd): not a segmentation
            continue
        stem = split_stem(f)[0]
        if stem in cases:
            notes.append(f"{f.name} ignored: the case {stem!r} is already read from {cases[stem].path.name}")
            continue
        cases[stem] = CaseSource(stem, f, "labelmap")
    for d in visible_entries(p):
        if not d.is_dir():
            continue
        try:
            src = case_source(d)
        except InputError as exc:
            notes.append(f"folder {d.name} skipped: {exc}")
            continue
        if src.kind == "mask folder" and not any(is_mask_file(f) for f in visible_entries(src.path)):
            continue  # an unrelated or empty folder
        if src.name in cases:
            notes.append(f"folder {d.name} ignored: the case {src.name!r} is already read from "
                         f"{cases[src.name].path.name}")
            continue
        cases[src.name] = src
    return cases, notes


@dataclass
class Pairing:
    """Which prediction goes with which reference."""

    pairs: list[tuple[str, CaseSource, CaseSource]]  #: (case name, prediction, reference)
    only_pred: list[str]  #: cases found in the prediction folder only
    only_ref: list[str]
    notes: list[str]


def pair_cases(pred: Union[str, os.PathLike], ref: Union[str, os.PathLike]) -> Pairing:
    """Pair the cases of two folders by :func:`case_key` (two single cases are paired whatever their names)."""
    pcases, pnotes = discover_cases(pred)
    rcases, rnotes = discover_cases(ref)
    notes = [f"prediction: {n}" for n in pnotes] + [f"reference: {n}" for n in rnotes]
    if _is_single_case(Path(pred)) and _is_single_case(Path(ref)):
        (pname, psrc), (rname, rsrc) = next(iter(pcases.items())), next(iter(rcases.items()))
        if case_key(pname) != case_key(rname):
            notes.append(f"single case: {pname!r} (prediction) compared with {rname!r} (reference)")
        return Pairing([(rname, psrc, rsrc)], [], [], notes)

    def keyed(cases: Mapping[str, CaseSource], side: str) -> dict[str, str]:
        out: dict[str, str] = {}
        for name in cases:
            k = case_key(name)
            if k in out:
                raise InputError(f"Two cases of the {side} folder have the same name once normalised: {out[k]!r} and "
                                 f"{name!r}; rename one of them.")
            out[k] = name
        return out

    pk, rk = keyed(pcases, "prediction"), keyed(rcases, "reference")
    pairs = [(rk[k], pcases[pk[k]], rcases[rk[k]]) for k in sorted(pk.keys() & rk.keys(), key=lambda k: rk[k])]
    only_pred = sorted(pk[k] for k in pk.keys() - rk.keys())
    only_ref = sorted(rk[k] for k in rk.keys() - pk.keys())
    return Pairing(pairs, only_pred, only_ref, notes)


PAIRING_RULES = """\
Cases. PRED and REF are each a folder of cases (or one case). In a folder:
  <name>.seg.nrrd                      a Slicer segmentation (segments matched by name)
  <name>.labels.nii.gz (+.labels.json) a label map written by `medsegai segment` (legend matched by
                                       name); if <name>.seg.nrrd exists too, that one is used; other
                                       <name>.*.nrrd files of a result (scalar maps) are ignored
  <name>.nii.gz / .nrrd / .mha ...     a label map whose values are the labels' values
  <name>/segmentations/<Organ>.nrrd    one-structure masks (also <name>/<Organ>.nrrd)
  <name>/<stem>.seg.nrrd               a folder holding one `medsegai segment` result
  PRED or REF may also be one case: a file, <name>/ with segmentations/ in it, or .../segmentations.
Pairing. Cases are paired by name, ignoring case and one trailing _seg/_label(s)/_mask/_gt/_pred;
  cases found on one side only are listed. Two single cases are compared whatever their names.
Structures. Names are matched to the labels by words and side: camelCase split, lower-cased, split
  on anything not a letter/digit; l/lt/left = left, r/rt/right = right; 'gland', 'structure',
  'mask'... are ignored; the side must be the same (left is never matched to right). Two names for
  one label, or no name matching any label, stop that case with the names found. A label with no
  segment/file is 'missing' (no metric); one without voxels is 'empty'.
Grids. A prediction on another grid is resampled (nearest neighbour) onto the reference grid (noted);
  grids that do not overlap in space are an error for that case."""
