"""Writing a :class:`~MedSegAILib.tasks.base.TaskResult` to files, for users inside and outside Slicer.

For an input ``<stem>`` the output folder receives:

* ``<stem>.seg.nrrd`` — Slicer segmentation (names, colours, terminology, the input's geometry), written through
  the MRML bridge so it is exactly what Slicer itself writes;
* ``<stem>.labels.nii.gz`` + ``<stem>.labels.json`` — a plain label map and its legend (value -> name, colour,
  terminology) with the provenance, for tools outside Slicer;
* one ``<stem>.<name>.csv`` per table, ``<stem>.<name>.nrrd`` per scalar map, ``<stem>.<name>.png`` per picture
  and plot, ``<stem>.<name>.mrk.json`` per point list (Slicer markups JSON: drag it into Slicer), and
  ``<stem>.overlay.png`` (the result over the image).

All files are first written to a hidden staging folder inside the output folder and moved into place only when
every one of them was written: a failure or a cancel leaves no partial result. Existing files are never
overwritten unless ``overwrite=True``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

from MedSegAILib.core.io import write_volume
from MedSegAILib.core.volume import Volume
from MedSegAILib.engine.progress import CancelToken
from MedSegAILib.errors import OutputError
from MedSegAILib.tasks.base import LabelInfo, PointList, TaskResult


def slug(text: str) -> str:
    s = re.sub(r"[^A-Za-z0-9]+", "-", text.strip().lower()).strip("-")
    return s or "output"


def _label_json(info: LabelInfo) -> dict:
    def coded(c):  # noqa: ANN001, ANN202
        return None if c is None else {"scheme": c.scheme, "code": c.code, "meaning": c.meaning}

    return {
        "value": info.value, "name": info.name, "color": [round(float(c), 4) for c in info.color],
        "category": coded(info.category), "type": coded(info.type), "type_modifier": coded(info.type_modifier),
        "region": coded(info.region), "region_modifier": coded(info.region_modifier),
    }


def markups_json(points: PointList) -> dict:
    """A point list as Slicer's markups JSON (``.mrk.json``, schema v1.0.3), in LPS like Slicer writes it."""
    control_points = []
    for n, xyz in enumerate(np.asarray(points.points_lps, dtype=float).reshape(-1, 3)):
        control_points.append({
            "id": str(n + 1),
            "label": points.labels[n] if n < len(points.labels) else f"P{n + 1}",
            "description": points.descriptions[n] if n < len(points.descriptions) else "",
            "position": [round(float(v), 4) for v in xyz],
            "orientation": [-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0],
            "selected": True, "locked": True, "visibility": True, "positionStatus": "defined",
        })
    return {
        "@schema": "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/"
                   "Schema/markups-schema-v1.0.3.json#",
        "markups": [{"type": "Fiducial", "coordinateSystem": "LPS", "coordinateUnits": "mm", "locked": True,
                     "labelFormat": "%N-%d", "controlPoints": control_points}],
    }


def planned_files(result: TaskResult, stem: str, with_overlay: bool) -> list[str]:
    names = [f"{stem}.seg.nrrd", f"{stem}.labels.nii.gz", f"{stem}.labels.json"]
    names += [f"{stem}.{slug(t.name)}.csv" for t in result.tables]
    names += [f"{stem}.{slug(m.name)}.nrrd" for m in result.maps]
    names += [f"{stem}.{slug(p.name)}.png" for p in result.pictures]
    names += [f"{stem}.{slug(p.name)}.png" for p in result.plots]
    names += [f"{stem}.{slug(p.name)}.mrk.json" for p in result.points]
    if with_overlay:
        names.append(f"{stem}.overlay.png")
    if len(set(names)) != len(names):
        raise OutputError(f"Two outputs of this result would have the same file name: {sorted(names)}")
    return names


def check_output_folder(outdir: Path) -> None:
    """Fail early (before any computation) when results could not be written."""
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"Cannot create the output folder {outdir}: {exc.strerror or exc}. "
                          "Choose another folder.") from None
    if not outdir.is_dir():
        raise OutputError(f"The output path {outdir} exists and is not a folder.")
    if not os.access(outdir, os.W_OK | os.X_OK):
        raise OutputError(f"The output folder {outdir} is not writable. Choose another folder or fix its permissions.")


def write_result_files(
    result: TaskResult,
    outdir: str | os.PathLike,
    stem: str,
    *,
    image: Optional[Volume] = None,
    overwrite: bool = False,
    cancel: Optional[CancelToken] = None,
) -> list[Path]:
    """Write every output of ``result`` (see the module docstring); returns the final paths."""
    from MedSegAILib.mrml.segfile import write_seg_nrrd
    from MedSegAILib.viz import overlay_png, plot_png

    outdir = Path(outdir)
    check_output_folder(outdir)
    names = planned_files(result, stem, image is not None)
    existing = [n for n in names if (outdir / n).exists()]
    if existing and not overwrite:
        raise OutputError(f"{len(existing)} output file(s) already exist in {outdir} (e.g. {existing[0]}); "
                          "nothing was written. Choose another folder or allow overwriting (--overwrite).")
    cancel = cancel or CancelToken()
    staging = Path(tempfile.mkdtemp(prefix=".medsegai-staging-", dir=outdir))
    try:
        lab = result.labelmap
        max_value = max([1] + [info.value for info in result.labels])
        lab_arr = lab.array.astype(np.uint8 if max_value < 256 else np.uint16)
        labels_volume = lab.with_array(lab_arr)
        write_seg_nrrd(result, staging / f"{stem}.seg.nrrd")
        cancel.check()
        write_volume(labels_volume, staging / f"{stem}.labels.nii.gz")
        legend = {
            "task": result.task_id,
            "labels": [_label_json(i) for i in result.labels],
            "provenance": result.provenance,
            "messages": result.messages,
        }
        (staging / f"{stem}.labels.json").write_text(json.dumps(legend, indent=2, default=str), encoding="utf-8")
        for t in result.tables:
            (staging / f"{stem}.{slug(t.name)}.csv").write_text(t.to_csv(), encoding="utf-8")
        for m in result.maps:
            write_volume(m.volume, staging / f"{stem}.{slug(m.name)}.nrrd")
        for p in result.pictures:
            (staging / f"{stem}.{slug(p.name)}.png").write_bytes(p.png)
        for p in result.plots:
            (staging / f"{stem}.{slug(p.name)}.png").write_bytes(plot_png(p))
        for pl in result.points:
            (staging / f"{stem}.{slug(pl.name)}.mrk.json").write_text(
                json.dumps(markups_json(pl), indent=2), encoding="utf-8")
        if image is not None:
            title = f"{result.provenance.get('task_title', result.task_id)} — {stem}"
            (staging / f"{stem}.overlay.png").write_bytes(overlay_png(image, lab, result.labels, title))
        cancel.check()
        final = []
        for n in names:
            os.replace(staging / n, outdir / n)
            final.append(outdir / n)
        return final
    except OSError as exc:
        raise OutputError(f"Could not write the results to {outdir}: {exc.strerror or exc}. Nothing was kept.") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
