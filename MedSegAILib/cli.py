"""The ``medsegai`` command: ``segment``, ``models``, ``tasks`` and ``demo``.

It enters the same pipeline as the Slicer GUI and batch script (:func:`MedSegAILib.pipeline.segment`) and
leaves through the same writers (:mod:`MedSegAILib.outputs`, whose ``.seg.nrrd`` goes through the MRML bridge).
Exit codes: 0 success, 2 a problem with the input/model/output (message printed), 130 cancelled (Ctrl+C).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from MedSegAILib import __version__
from MedSegAILib.errors import Cancelled, MedSegAIError

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
) -> list[Path]:
    """Read the inputs, segment, write every output; returns the written paths."""
    from MedSegAILib.core.io import read_volume, split_stem
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
    inputs = {spec.role: read_volume(p) for spec, p in zip(roles, input_paths)}
    stem = split_stem(input_paths[0])[0]

    cancel = CancelToken()
    previous = signal.getsignal(signal.SIGINT)

    def on_sigint(signum, frame):  # noqa: ANN001, ARG001
        cancel.cancel()
        sys.stderr.write("\nCancelling (Ctrl+C)...\n")

    try:
        signal.signal(signal.SIGINT, on_sigint)
    except ValueError:  # not in the main thread
        previous = None
    try:
        progress = TerminalProgress(quiet)
        result = segment(task_id, inputs, model_id=model_id, device=device, params=params, progress=progress,
                         cancel=cancel)
        paths = write_result_files(result, out, stem, image=inputs[task.reference_role] if overlay else None,
                                   overwrite=overwrite, cancel=cancel)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
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
    run_segment(args.task, args.inputs, args.output, device=args.device, model_id=args.model,
                params=_parse_params(args.param), overwrite=args.overwrite, quiet=args.quiet,
                overlay=not args.no_overlay)
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
    s.add_argument("--overwrite", action="store_true", help="replace existing output files")
    s.add_argument("--no-overlay", action="store_true", help="do not render the overlay picture")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    s.set_defaults(func=cmd_segment)

    m = sub.add_parser("models", help="list the models of the zoo and the user model folder")
    m.add_argument("--task", default=None)
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=cmd_models)

    t = sub.add_parser("tasks", help="list the tasks")
    t.set_defaults(func=cmd_tasks)

    d = sub.add_parser("demo", help="segment the embedded demo volume and write the results")
    d.add_argument("-o", "--output", default="medsegai-demo-output")
    d.add_argument("--device", default="auto")
    d.set_defaults(func=cmd_demo)
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
