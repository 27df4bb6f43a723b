"""The ``medsegai`` command: ``segment``, ``models`` (list, export, import, delete), ``tasks``, ``demo``, ``drr``
(training pairs from a CT), ``evaluate`` (segmentations against references: :mod:`MedSegAILib.evaluation`), and
``train``, ``finetune``, ``rank`` (local training and case ranking: :mod:`MedSegAILib.cli_train`).

It enters the same pipeline as the Slicer GUI and batch script (:func:`MedSegAILib.pipeline.segment`) and
leaves through the same writers (:mod:`MedSegAILib.outputs`, whose ``.seg.nrrd`` goes through the MRML bridge).
Exit codes: 0 success, 2 a problem with the input/model/output (message printed), 130 cancelled (Ctrl+C).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional, Sequence

from MedSegAILib import __version__
from MedSegAILib.errors import Cancelled, MedSegAIError

if TYPE_CHECKING:
    from MedSegAILib.engine.progress import CancelToken

DEMO_INPUT = Path(__file__).resolve().parent / "data" / "demo-mpi-spect.nii.gz"


class TerminalProgress:
    """A one-line progress bar on stderr (plain log lines when stderr is not a terminal)."""

    def __init__(self, quiet: bool = False, stream=None):  # noqa: ANN001
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_text = None
        self._last_time = 0.0
        self.start = time.perf_counter()

    def __call__(self, fraction: float, text: str) -> None:
        if self.quiet:
            return
        elapsed = time.perf_counter() - self.start
        if self.tty:
            width = 30
            filled = int(round(width * fraction))
            bar = "#" * filled + "-" * (width - filled)
            self.stream.write(f"\r[{bar}] {fraction * 100:5.1f}% {elapsed:6.1f}s  {text[:60]:<60}")
            if fraction >= 1.0:
                self.stream.write("\n")
            self.stream.flush()
        elif text != self._last_text and (elapsed - self._last_time > 0.5 or fraction >= 1.0 or fraction == 0.0):
            self.stream.write(f"{fraction * 100:5.1f}% {elapsed:6.1f}s {text}\n")
            self._last_text, self._last_time = text, elapsed


@contextlib.contextmanager
def sigint_cancels(cancel: "CancelToken") -> Iterator[None]:
    """Within the block, Ctrl+C cancels ``cancel`` (the work stops at its next check) instead of killing."""
    previous = signal.getsignal(signal.SIGINT)

    def on_sigint(signum, frame):  # noqa: ANN001, ARG001
        cancel.cancel()
        sys.stderr.write("\nCancelling (Ctrl+C)...\n")

    try:
        signal.signal(signal.SIGINT, on_sigint)
    except ValueError:  # not in the main thread
        previous = None
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _parse_params(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            raise MedSegAIError(f"--param expects NAME=VALUE; got {item!r}.")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def run_segment(
    task_id: str,
    input_paths: Sequence[str],
    outdir: str,
    *,
    device: str = "auto",
    model_id: Optional[str] = None,
    params: Optional[dict[str, str]] = None,
    overwrite: bool = False,
    quiet: bool = False,
    overlay: bool = True,
    uncertainty_runs: int = 0,
) -> list[Path]:
    """Read the inputs, segment (with ``uncertainty_runs`` perturbed extra runs for an uncertainty map), write
    every output; returns the written paths."""
    from MedSegAILib.core.io import split_stem
    from MedSegAILib.engine.progress import CancelToken
    from MedSegAILib.errors import InputError
    from MedSegAILib.outputs import check_output_folder, write_result_files
    from MedSegAILib.pipeline import segment
    from MedSegAILib.tasks.registry import get_task

    task = get_task(task_id)
    roles = [s for s in task.inputs]
    required = [s for s in roles if s.required]
    if len(input_paths) < len(required):
        names = ", ".join(s.title for s in required)
        raise InputError(f"Task {task_id} needs {len(required)} input image(s) ({names}); got {len(input_paths)}.")
    if len(input_paths) > len(roles):
        raise InputError(f"Task {task_id} takes at most {len(roles)} input image(s); got {len(input_paths)}.")
    out = Path(outdir)
    check_output_folder(out)  # fail before the computation, not after
    inputs = {spec.role: task.read_input(spec.role, p) for spec, p in zip(roles, input_paths)}
    stem = split_stem(input_paths[0])[0]

    cancel = CancelToken()
    with sigint_cancels(cancel):
        progress = TerminalProgress(quiet)
        if uncertainty_runs:
            from MedSegAILib.uncertainty import segment_with_uncertainty

            result = segment_with_uncertainty(task_id, inputs, runs=uncertainty_runs, model_id=model_id,
                                              device=device, params=params, progress=progress, cancel=cancel)
        else:
            result = segment(task_id, inputs, model_id=model_id, device=device, params=params, progress=progress,
                             cancel=cancel)
        paths = write_result_files(result, out, stem, image=inputs[task.reference_role] if overlay else None,
                                   overwrite=overwrite, cancel=cancel)
    if not quiet:
        for msg in result.messages:
            print(f"note: {msg}")
        for t in result.tables:
            if len(t.rows) <= 20:
                print(f"\n{t.name}:")
                print(t.to_csv().rstrip())
        t = result.provenance.get("timings_s", {})
        print(f"\nSegmented in {t.get('total', float('nan')):.2f} s on {result.provenance.get('device')}; "
              f"wrote {len(paths)} files to {out.resolve()}:")
        for p in paths:
            print(f"  {p.name}")
    return paths


def cmd_models(args: argparse.Namespace) -> int:
    from MedSegAILib.zoo.registry import list_models, user_model_dir, user_models

    if args.export or args.import_path or args.delete:
        from MedSegAILib.finetune import publish

        if args.export:
            print(f"Exported {args.export} to {publish.export_model(args.export, args.to)}")
        if args.import_path:
            spec = publish.import_model(args.import_path)
            print(f"Imported {spec.key} into {spec.folder}")
        if args.delete:
            print(f"Deleted {args.delete} ({publish.delete_model(args.delete)})")
        return 0

    specs = list_models(task=args.task)
    if args.json:
        print(json.dumps([{"id": s.id, "version": s.version, "task": s.task, "title": s.title, "source": s.source,
                           "license": s.license, "metrics": s.metrics} for s in specs], indent=2))
        return 0
    if not specs:
        print("No models found.")
    for s in specs:
        metrics = ", ".join(f"{k}={v}" for k, v in list(s.metrics.items())[:3])
        print(f"{s.key:40s} task={s.task:16s} [{s.source}] {s.title}" + (f"  ({metrics})" if metrics else ""))
    print(f"\nUser model folder: {user_model_dir()}")
    for problem in user_models()[1]:
        print(f"warning: {problem}")
    return 0


def cmd_tasks(args: argparse.Namespace) -> int:  # noqa: ARG001
    from MedSegAILib.tasks.registry import get_task, task_ids

    for tid in task_ids():
        t = get_task(tid)
        ins = ", ".join(f"{s.role} ({s.modality}, {s.dims}-D)" for s in t.inputs)
        print(f"{tid:16s} {t.title}: inputs {ins}; default model {t.default_model}")
    return 0


def cmd_segment(args: argparse.Namespace) -> int:
    params = _parse_params(args.param)
    if args.point is not None:
        import dataclasses

        from MedSegAILib.tasks.registry import get_task

        task = get_task(args.task)
        if "point_ras" not in {f.name for f in dataclasses.fields(task.Parameters)}:
            raise MedSegAIError(f"The {task.title} task has no single-point mode; --point is for tasks that segment "
                                "the structure under a point (lung-nodule).")
        params["point_ras"] = args.point
    run_segment(args.task, args.inputs, args.output, device=args.device, model_id=args.model,
                params=params, overwrite=args.overwrite, quiet=args.quiet,
                overlay=not args.no_overlay, uncertainty_runs=args.uncertainty)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    out = Path(args.output)
    print(f"MedSegAI {__version__} demo: myocardium segmentation of a simulated myocardial-perfusion SPECT volume\n"
          f"input: {DEMO_INPUT}")
    paths = run_segment("mpi-myocardium", [str(DEMO_INPUT)], str(out), device=args.device, overwrite=True)
    overlay = next((p for p in paths if p.name.endswith(".overlay.png")), None)
    print(f"\nDone. Open {out.resolve() / paths[0].name} in 3D Slicer together with the input, "
          f"or look at the overlay picture {overlay}.")
    return 0


def _label_names_from_header(path: str) -> dict[int, str]:
    """Segment names of a Slicer .seg.nrrd label map (``SegmentN_Name`` / ``SegmentN_LabelValue``), if any."""
    try:
        import SimpleITK as sitk

        r = sitk.ImageFileReader()
        r.SetFileName(str(path))
        r.ReadImageInformation()
        keys = set(r.GetMetaDataKeys())
    except Exception:  # noqa: BLE001 - names are optional; other formats simply have none
        return {}
    names: dict[int, str] = {}
    n = 0
    while f"Segment{n}_Name" in keys:
        value = r.GetMetaData(f"Segment{n}_LabelValue") if f"Segment{n}_LabelValue" in keys else str(n + 1)
        try:
            names[int(value)] = r.GetMetaData(f"Segment{n}_Name")
        except ValueError:
            pass
        n += 1
    return names


def cmd_drr(args: argparse.Namespace) -> int:
    from MedSegAILib.core.io import read_volume
    from MedSegAILib.simulate.drr import make_drr_pairs

    def floats(text: str, what: str, count: int) -> tuple[float, ...]:
        try:
            vals = tuple(float(x) for x in text.split(","))
        except ValueError:
            vals = ()
        if len(vals) not in ((1, count) if count == 2 else (count,)):
            raise MedSegAIError(f"--{what} expects {count} comma-separated numbers; got {text!r}.")
        return vals

    try:
        ignore = tuple(int(x) for x in args.ignore_labels.split(",") if x.strip()) if args.ignore_labels else ()
        on_top = tuple(int(x) for x in args.on_top_labels.split(",") if x.strip()) if args.on_top_labels else ()
    except ValueError:
        raise MedSegAIError("--ignore-labels and --on-top-labels expect comma-separated integers; got "
                            f"{args.ignore_labels!r}, {args.on_top_labels!r}.") from None
    sdd = floats(args.sdd, "sdd", 2)
    ct = read_volume(args.ct)
    labels = read_volume(args.labels)
    out = Path(args.output)
    progress = TerminalProgress(quiet=args.quiet)
    from MedSegAILib.engine.progress import Progress

    records = make_drr_pairs(
        ct, labels, out, n=args.n, rng=args.seed, size=args.size, pixel_mm=args.pixel_mm,
        sdd_range_mm=sdd[0] if len(sdd) == 1 else sdd, view=floats(args.view, "view", 3),
        up=floats(args.up, "up", 3), min_path_mm=args.min_path_mm, ignore=ignore, on_top=on_top,
        label_names=_label_names_from_header(args.labels), overwrite=args.overwrite, progress=Progress(progress),
    )
    if not args.quiet:
        print(f"Wrote {len(records)} DRR/label pairs and drr.json to {out.resolve()}")
    return 0


def _evaluation_labels(task_id: Optional[str], items: Sequence[str]):  # noqa: ANN202
    """The labels to evaluate: the task's (all, or those named/numbered in ``items``), or ``VALUE=NAME`` items."""
    from MedSegAILib.errors import InputError
    from MedSegAILib.evaluation import make_labels

    if task_id is None:
        if not items:
            raise InputError("Give --task TASK (its labels are evaluated) or --labels VALUE=NAME ... "
                             "(e.g. --labels '1=Right parotid gland' '2=Left parotid gland').")
        names: dict[int, str] = {}
        for item in items:
            value, sep, name = item.partition("=")
            try:
                names[int(value)] = name.strip()
            except ValueError:
                value = ""
            if not sep or not value or not name.strip():
                raise InputError(f"Without --task, --labels expects VALUE=NAME items; got {item!r}.")
        return make_labels(names)
    from MedSegAILib.tasks.registry import get_task

    labels = list(get_task(task_id).labels)
    if not labels:
        raise InputError(f"Task {task_id} declares no fixed labels; give them with --labels VALUE=NAME instead.")
    if not items:
        return labels
    chosen = []
    for item in items:
        hit = [lab for lab in labels if item.strip().lower() == lab.name.lower() or item.strip() == str(lab.value)]
        if not hit:
            raise InputError(f"Task {task_id} has no label {item!r}; its labels are: "
                             f"{', '.join(f'{lab.value}={lab.name}' for lab in labels)}.")
        chosen += [h for h in hit if h not in chosen]
    return chosen


def cmd_evaluate(args: argparse.Namespace) -> int:
    from MedSegAILib.engine.progress import Progress
    from MedSegAILib.evaluation import evaluate_folders

    labels = _evaluation_labels(args.task, args.labels)
    if args.output:  # fail before the computation, not after
        from MedSegAILib.errors import OutputError
        from MedSegAILib.evaluation import EvaluationReport
        from MedSegAILib.outputs import check_output_folder

        check_output_folder(Path(args.output))
        existing = [n for n in EvaluationReport.OUTPUT_FILES if (Path(args.output) / n).exists()]
        if existing and not args.overwrite:
            raise OutputError(f"{len(existing)} evaluation file(s) already exist in {args.output} "
                              f"(e.g. {existing[0]}); nothing was written. Choose another folder or allow overwriting (--overwrite).")
    report = evaluate_folders(args.pred, args.ref, labels, progress=Progress(TerminalProgress(args.quiet)))
    paths = report.write(args.output, overwrite=args.overwrite) if args.output else []
    for note in report.notes + [n for c in report.cases for n in c.notes]:
        print(f"note: {note}", file=sys.stderr)
    for case, msg in report.failed.items():
        print(f"medsegai: warning: case {case} not evaluated: {msg}", file=sys.stderr)
    if report.only_pred:
        print(f"medsegai: warning: no reference for {len(report.only_pred)} case(s): {', '.join(report.only_pred)}",
              file=sys.stderr)
    if report.only_ref:
        print(f"medsegai: warning: no prediction for {len(report.only_ref)} case(s): {', '.join(report.only_ref)}",
              file=sys.stderr)
    if not report.cases:
        print("medsegai: error: no case could be evaluated (see the warnings above).", file=sys.stderr)
        return 2
    if not args.quiet:
        print(report.summary_text())
        if paths:
            print(f"\nWrote {len(paths)} files to {Path(args.output).resolve()}: {', '.join(p.name for p in paths)}")
        else:
            print("\n(use -o OUT to write metrics_per_case.csv, metrics_summary.csv, evaluation.json and the "
                  "Bland-Altman plot)")
    if args.strict and (report.failed or report.only_pred or report.only_ref):
        print("medsegai: error: --strict: some cases were unpaired or not evaluated.", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medsegai", description="MedSegAI: AI segmentation for nuclear medicine, CT "
                                "and X-ray, the same pipeline as the 3D Slicer extension.")
    p.add_argument("--version", action="version", version=f"MedSegAI {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("segment", help="segment one case and write .seg.nrrd, label map, tables and pictures")
    s.add_argument("--task", required=True, help="task id (see `medsegai tasks`)")
    s.add_argument("inputs", nargs="+", help="input image(s): NIfTI, NRRD, MHA, a DICOM folder...")
    s.add_argument("-o", "--output", required=True, help="output folder")
    s.add_argument("--device", default="auto", help="auto (default), cuda, cuda:N, mps or cpu")
    s.add_argument("--model", default=None, help="model id or id@version (default: the task's default model)")
    s.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="task parameter (repeatable)")
    s.add_argument("--point", default=None, metavar="R,A,S",
                   help="single-structure mode: segment only what lies at this point (RAS mm; lung-nodule task); write "
                        "--point=R,A,S when R is negative")
    s.add_argument("--overwrite", action="store_true", help="replace existing output files")
    s.add_argument("--no-overlay", action="store_true", help="do not render the overlay picture")
    s.add_argument("--uncertainty", type=int, default=0, metavar="N",
                   help="also write an uncertainty map and score from N perturbed extra runs (test-time "
                        "augmentation; N times slower)")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    s.set_defaults(func=cmd_segment)

    m = sub.add_parser("models", help="list the models of the zoo and the user model folder")
    m.add_argument("--task", default=None)
    m.add_argument("--json", action="store_true")
    m.add_argument("--export", metavar="MODEL", default=None, help="export a user model (id or id@version) to --to")
    m.add_argument("--to", metavar="PATH", default=".", help="file or folder for --export (default: here)")
    m.add_argument("--import", dest="import_path", metavar="FILE", default=None,
                   help="install an exported model (.medsegai-model.zip) into the user model folder")
    m.add_argument("--delete", metavar="MODEL", default=None, help="delete a user model (id@version)")
    m.set_defaults(func=cmd_models)

    t = sub.add_parser("tasks", help="list the tasks")
    t.set_defaults(func=cmd_tasks)

    d = sub.add_parser("demo", help="segment the embedded demo volume and write the results")
    d.add_argument("-o", "--output", default="medsegai-demo-output")
    d.add_argument("--device", default="auto")
    d.set_defaults(func=cmd_demo)

    r = sub.add_parser("drr", help="simulate radiographs (DRRs) and label images from a CT (HU) and a bone label map")
    r.add_argument("ct", help="CT volume in Hounsfield units")
    r.add_argument("labels", help="label volume (integer ids) on the CT grid (else resampled, nearest neighbour)")
    r.add_argument("-o", "--output", required=True, help="output folder")
    r.add_argument("--n", type=int, default=6, help="number of projections (default 6)")
    r.add_argument("--size", type=int, default=256, help="detector size in pixels (square, default 256)")
    r.add_argument("--pixel-mm", type=float, default=0.5, help="detector pixel size in mm (default 0.5)")
    r.add_argument("--sdd", default="900,1200", help="source-detector distance in mm, a value or a MIN,MAX range")
    r.add_argument("--view", default="0,1,0", help="beam direction source->detector in LPS (default 0,1,0: AP)")
    r.add_argument("--up", default="0,0,1", help="LPS direction shown at the top of the image (default 0,0,1)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--min-path-mm", type=float, default=1.0, help="shortest bone path that labels a pixel")
    r.add_argument("--ignore-labels", default="", help="comma-separated label ids drawn as background")
    r.add_argument("--on-top-labels", default="", help="comma-separated label ids drawn whole over the bones under "
                   "them (e.g. a small bone lying over a larger one; default: the longest path wins everywhere)")
    r.add_argument("--overwrite", action="store_true", help="write into an existing, non-empty folder")
    r.add_argument("-q", "--quiet", action="store_true")
    r.set_defaults(func=cmd_drr)

    from MedSegAILib.evaluation import PAIRING_RULES

    e = sub.add_parser(
        "evaluate", help="compare segmentations with references: Dice, IoU, HD95, volumes, Bland-Altman",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Compare predicted segmentations (e.g. `medsegai segment` outputs) with reference ones, case by "
                    "case and structure by structure, and summarise over the cases.",
        epilog=PAIRING_RULES + "\nMetrics. Dice, IoU, HD95 (mm), volumes (mL) and their difference (prediction -\n"
               "  reference) per case and structure; mean, SD, median, min, max per structure; Bland-Altman of\n"
               "  the volumes. A structure empty in both is reported as such and left out of the means (never\n"
               "  counted as Dice 1).\n"
               "Outputs in OUT: metrics_per_case.csv, metrics_summary.csv, bland_altman.csv, evaluation.json\n"
               "  (everything, incl. pairing and resampling notes), bland_altman.png.\n"
               "Exit codes: 0 done; 2 no case pair or bad input (with --strict also any unpaired or failed case).")
    e.add_argument("--task", default=None, help="task id whose labels are evaluated (see `medsegai tasks`)")
    e.add_argument("--pred", required=True, help="predictions: a folder of cases, or one case")
    e.add_argument("--ref", required=True, help="references: a folder of cases, or one case")
    e.add_argument("-o", "--output", default=None, help="folder for the CSV/JSON/PNG files (default: print only)")
    e.add_argument("--labels", nargs="+", default=[], metavar="LABEL",
                   help="with --task: evaluate only these labels (names or values); without --task: the labels "
                        "as VALUE=NAME items, e.g. '1=Right parotid gland' '2=Left parotid gland'")
    e.add_argument("--overwrite", action="store_true", help="replace existing evaluation files in OUT")
    e.add_argument("--strict", action="store_true", help="exit with 2 when a case is unpaired or cannot be evaluated")
    e.add_argument("-q", "--quiet", action="store_true", help="no progress or summary table")
    e.set_defaults(func=cmd_evaluate)

    from MedSegAILib.cli_train import add_training_commands

    add_training_commands(sub)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except Cancelled as exc:
        print(f"medsegai: {exc}", file=sys.stderr)
        return 130
    except MedSegAIError as exc:
        print(f"medsegai: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
