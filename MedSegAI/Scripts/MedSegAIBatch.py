#!/usr/bin/env python
"""Segment many images with a MedSegAI task, headless, through the same MRML logic as the Slicer modules.

In 3D Slicer::

    Slicer --no-main-window --python-script MedSegAIBatch.py --task mpi-myocardium \\
        --input DIR_OR_FILE --output DIR [--model ID] [--device auto|cuda|mps|cpu] [--pattern '*.nii.gz'] \\
        [--param NAME=VALUE ...]

or with plain Python and the ``slicer-core`` wheel (no Slicer application needed)::

    python MedSegAIBatch.py --task mpi-myocardium --input DIR --output DIR

Tasks with several input images (e.g. ``parathyroid``: a sestamibi and a 123I image) take one sub-folder per case,
holding one file per input named after its role (``sestamibi.nrrd``, ``iodine.nrrd``, optionally
``sestamibi_late.nrrd``; any image suffix); ``--input`` may also be a single such case folder.

For each input file: load it into an MRML scene through a ``vtkMRMLVolumeArchetypeStorageNode``, run
``MedSegAILib.mrml.logic.SegmentationLogic`` (volume node -> pipeline -> segmentation node, exactly what the
module's Segment button does), and write ``<output>/<stem>.seg.nrrd`` (an existing file is replaced, atomically). A failed case is reported and the
batch goes on. ``<output>/summary.csv`` lists ``case, status, seconds, message`` for every case.

Exit status: 0 all cases succeeded, 1 at least one case failed, 2 bad command line / nothing to do.
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
import time
import traceback
from pathlib import Path

SUMMARY_NAME = "summary.csv"
SUMMARY_COLUMNS = ("case", "status", "seconds", "message")


def _make_library_importable() -> None:
    """Installed: MedSegAILib is beside the Scripts folder; source tree: two levels up."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent, here.parent.parent):
        if (candidate / "MedSegAILib" / "__init__.py").is_file() and str(candidate) not in sys.path:
            sys.path.insert(0, str(candidate))
            break


def _in_slicer_app(slicer) -> bool:
    return getattr(slicer, "app", None) is not None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="MedSegAIBatch", description=__doc__.split("\n\n")[0])
    p.add_argument("--task", required=True, help="task id, e.g. mpi-myocardium")
    p.add_argument("--input", required=True, help="an image file, or a folder of images")
    p.add_argument("--output", required=True, help="output folder (created if needed)")
    p.add_argument("--model", default=None, help="zoo model id or id@version (default: the task's default model)")
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "mps", "cpu"))
    p.add_argument("--pattern", default=None,
                   help="file name pattern when --input is a folder (default: common image suffixes)")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="task parameter (repeatable)")
    return p


def parse_params(items: list[str]) -> dict[str, str]:
    from MedSegAILib.errors import InputError

    params = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise InputError(f"--param expects NAME=VALUE, got {item!r}.")
        params[name.strip()] = value.strip()
    return params


# ------------------------------------------------------------------------------------------------- one case
def load_volume_node(scene, path: Path, name: str):
    """Read ``path`` into a new scalar volume node through a storage node (works without slicer.app)."""
    import slicer

    from MedSegAILib.errors import InputError

    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    storage.SetSingleFile(True)  # never glue neighbouring files of the folder into one series
    node = slicer.vtkMRMLScalarVolumeNode()
    node.SetName(name)
    scene.AddNode(node)
    node.SetAndObserveStorageNodeID(storage.GetID())
    if not storage.ReadData(node) or node.GetImageData() is None:
        details = ""
        messages = storage.GetUserMessages() if hasattr(storage, "GetUserMessages") else None
        if messages is not None and hasattr(messages, "GetAllMessagesAsString"):
            details = " ".join(messages.GetAllMessagesAsString().split())
        if len(details) > 240:
            details = details[:237] + "..."
        raise InputError(f"Cannot read {path.name} as an image volume; check that it is a valid NIfTI, NRRD or MHA "
                         f"file.{' Reader: ' + details if details else ''}")
    node.CreateDefaultDisplayNodes()
    return node


def load_input_node(scene, task, role: str, path: Path, name: str):
    """Slicer's own reader, unless the task reads its inputs itself (radiographs: grey images stored as RGB,
    MONOCHROME1, pixel spacing tags); then the task's reader and a node with the exact geometry."""
    from MedSegAILib.mrml.volumes import node_from_volume
    from MedSegAILib.tasks.base import Task

    if type(task).read_input is Task.read_input:
        return load_volume_node(scene, path, name)
    return node_from_volume(scene, task.read_input(role, str(path)), name)


def run_case(scene, logic, task, case: str, files: dict, out_dir: Path, args, params) -> str:
    """Segment one case (``{role: file}``) into ``<out_dir>/<stem>.seg.nrrd`` (stem: the reference file's stem, or
    the case folder's name for multi-image tasks); returns the user messages. Raises on failure (nothing is written
    then); the caller removes the nodes this case added to the scene."""
    from MedSegAILib.core.io import split_stem
    from MedSegAILib.errors import InputError
    from MedSegAILib.mrml import write_seg_nrrd

    missing = [spec.title for spec in task.inputs if spec.required and spec.role not in files]
    if missing:
        raise InputError(f"Case {case}: no file for {', '.join(missing)} (expected files named "
                         f"{', '.join(spec.role + '.<suffix>' for spec in task.inputs if spec.required)}).")
    stem = split_stem(files[task.reference_role])[0] if len(task.inputs) == 1 else case
    nodes = {role: load_input_node(scene, task, role, path, f"{stem} {role}" if len(task.inputs) > 1 else stem)
             for role, path in files.items()}
    published = logic.run(scene, task.id, nodes, model_id=args.model, device=args.device, params=params or None)
    # the file holds the input's full voxel grid, so it overlays the input exactly in any viewer
    write_seg_nrrd(published.segmentation, out_dir / f"{stem}.seg.nrrd", reference_geometry=nodes[task.reference_role])
    return " ".join(published.messages)


def _remove_new_nodes(scene, before: set) -> None:
    for i in reversed(range(scene.GetNumberOfNodes())):
        node = scene.GetNthNode(i)
        if node is not None and node.GetID() not in before and not node.GetSingletonTag():
            scene.RemoveNode(node)


def write_summary(out_dir: Path, rows: list[dict]) -> Path:
    path = out_dir / SUMMARY_NAME
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=SUMMARY_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return path


# ------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    _make_library_importable()
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    log = logging.getLogger("MedSegAIBatch")

    import slicer

    from MedSegAILib.errors import MedSegAIError
    from MedSegAILib.inputs import find_cases
    from MedSegAILib.mrml.logic import SegmentationLogic
    from MedSegAILib.tasks.registry import get_task

    try:
        task = get_task(args.task)
        params = parse_params(args.param)
    except MedSegAIError as exc:
        log.error(str(exc))
        return 2
    inputs = find_cases(Path(args.input), args.pattern, task)
    if not inputs:
        log.error(f"No input images found at {args.input}" + (f" matching {args.pattern!r}" if args.pattern else ""))
        return 2
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)

    scene = slicer.mrmlScene if _in_slicer_app(slicer) else slicer.vtkMRMLScene()
    logic = SegmentationLogic()
    rows = []
    for index, (case, files) in enumerate(inputs, 1):
        log.info(f"[{index}/{len(inputs)}] {case}")
        before = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
        start = time.perf_counter()
        try:
            message = run_case(scene, logic, task, case, files, out_dir, args, params)
            status = "ok"
        except MedSegAIError as exc:
            status, message = "failed", str(exc)
        except Exception as exc:  # noqa: BLE001 - a bug or an unreadable file: report, go on
            status, message = "failed", f"{type(exc).__name__}: {exc}"
            log.debug(traceback.format_exc())
        finally:
            _remove_new_nodes(scene, before)
        seconds = time.perf_counter() - start
        (log.info if status == "ok" else log.error)(f"    {status} in {seconds:.1f} s{': ' + message if message else ''}")
        rows.append({"case": case, "status": status, "seconds": f"{seconds:.2f}", "message": message})
    summary = write_summary(out_dir, rows)
    failed = sum(r["status"] != "ok" for r in rows)
    log.info(f"{len(rows) - failed} of {len(rows)} case(s) segmented; summary: {summary}")
    return 1 if failed else 0


def _exit(code: int) -> None:
    try:
        import slicer
    except ImportError:
        slicer = None
    if slicer is not None and _in_slicer_app(slicer):
        slicer.util.exit(code)  # lets Slicer shut down cleanly (--no-main-window --python-script)
    else:
        sys.exit(code)


if __name__ == "__main__":
    try:
        status = main(sys.argv[1:])
    except SystemExit as exc:  # argparse: usage errors
        status = exc.code if isinstance(exc.code, int) else 2
    except Exception:  # noqa: BLE001 - never leave a headless Slicer hanging
        traceback.print_exc()
        status = 2
    _exit(status)
