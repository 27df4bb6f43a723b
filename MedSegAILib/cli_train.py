"""``medsegai train``, ``medsegai finetune`` and ``medsegai rank``: local training and case ranking from the command
line, through the same code as the Slicer "Fine-tune" section (:mod:`MedSegAILib.finetune`).

Exit codes: 0 a new model version was written (or ranking done); 3 training ran but no model was written (it did
not improve validation Dice, or it was stopped with Ctrl+C without ``--keep-on-stop``); 2 bad input; 130 stopped
before any epoch ended.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

EXIT_NOT_WRITTEN = 3


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", required=True, help="task id (see `medsegai tasks`)")
    p.add_argument("--data", required=True, help="folder of cases: DIR/<case>/{image,mask}.nii.gz (or the task's "
                   "input roles, a .seg.nrrd mask, optional original.*), or imagesTr/ + labelsTr/; optional "
                   "patients.csv (case,patient)")
    p.add_argument("--name", default=None, help="name of the new model (id becomes <base id>-<name>)")
    p.add_argument("--epochs", type=int, default=20, help="maximum number of epochs (default 20)")
    p.add_argument("--minutes", type=float, default=None, help="time budget in minutes (stops at the first of "
                   "--epochs / --minutes)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default 3e-4 fine-tuning, 1e-3 training)")
    p.add_argument("--val-share", type=float, default=0.2, help="share of patients kept for validation (default 0.2)")
    p.add_argument("--folds", type=int, default=0, help="k-fold cross-validation by patient (e.g. 10 for the "
                   "parathyroid task, as its paper); the final model is trained on all cases")
    p.add_argument("--no-augment", action="store_true", help="no data augmentation")
    p.add_argument("--batch", type=int, default=None, help="batch size (default: the task's, smaller on a CPU)")
    p.add_argument("--patience", type=int, default=5, help="early stopping after N epochs without improvement")
    p.add_argument("--device", default="auto", help="auto (default), cuda, cuda:N, mps or cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--strict-grid", action="store_true", help="refuse masks on another grid than their image "
                   "(default: resample them, nearest neighbour, with a note)")
    p.add_argument("--keep-if-worse", action="store_true", help="write the new model even when validation Dice "
                   "did not improve")
    p.add_argument("--keep-on-stop", action="store_true", help="on Ctrl+C, write the best model so far")
    p.add_argument("-q", "--quiet", action="store_true")


def add_training_commands(sub: Any) -> None:
    f = sub.add_parser("finetune", help="fine-tune a model on folders of image + corrected mask pairs; writes a new "
                       "model version (the base is never modified)")
    _add_common(f)
    f.add_argument("--model", default=None, help="model to start from (id or id@version; default: the task's)")
    f.set_defaults(func=cmd_finetune, from_scratch=False)
    t = sub.add_parser("train", help="train a task's network from scratch on folders of image + mask pairs")
    _add_common(t)
    t.set_defaults(func=cmd_finetune, from_scratch=True, model=None)
    r = sub.add_parser("rank", help="rank cases by uncertainty (perturbed repeat runs): correct the most uncertain "
                       "first")
    r.add_argument("--task", required=True)
    r.add_argument("--data", required=True, help="folder of images (one file or DICOM folder per case; a case "
                   "folder with the task's input roles for multi-input tasks)")
    r.add_argument("--model", default=None)
    r.add_argument("--runs", type=int, default=4, help="perturbed runs per case (default 4)")
    r.add_argument("--device", default="auto")
    r.add_argument("-o", "--output", default=None, help="CSV file for the ranking (default: print only)")
    r.add_argument("-q", "--quiet", action="store_true")
    r.set_defaults(func=cmd_rank)


def cmd_finetune(args: argparse.Namespace) -> int:
    from MedSegAILib.cli import TerminalProgress, sigint_cancels
    from MedSegAILib.engine.progress import CancelToken
    from MedSegAILib.finetune.data import read_cases
    from MedSegAILib.finetune.engine import FinetuneOptions, finetune
    from MedSegAILib.finetune.publish import publish

    opts = FinetuneOptions(epochs=args.epochs, minutes=args.minutes, lr=args.lr, val_share=args.val_share,
                           folds=args.folds, augment=not args.no_augment, batch=args.batch, patience=args.patience,
                           device=args.device, seed=args.seed, from_scratch=args.from_scratch,
                           keep_if_worse=args.keep_if_worse).validate()
    log = (lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    cancel = CancelToken()
    with sigint_cancels(cancel):
        progress = TerminalProgress(args.quiet)
        cases = read_cases(args.task, args.data, strict_grid=args.strict_grid, progress=progress)
        log(f"{len(cases)} case(s) read from {args.data}")
        run = finetune(args.task, cases, model=args.model, options=opts, progress=progress, cancel=cancel, log=log)
    print(run.summary())
    for m in run.messages:
        print(f"note: {m}")
    if run.stopped_by == "cancel" and not args.keep_on_stop:
        print("Stopped; nothing was written (use --keep-on-stop to keep the best model so far).")
        return EXIT_NOT_WRITTEN
    if run.state is None:
        print("Stopped before the first epoch ended; nothing was written.")
        return 130
    if not run.improved and not opts.keep_if_worse:
        print(f"Validation Dice did not improve ({run.dice_before:.3f} -> {run.dice_after:.3f}); no model was "
              "written (use --keep-if-worse to keep it anyway).")
        return EXIT_NOT_WRITTEN
    spec = publish(run, args.name)
    print(f"New model {spec.key} in {spec.folder} (model card: {spec.card.name}, curves: training-curves.png). "
          f"Use it with: medsegai segment --task {args.task} --model {spec.key} ...")
    return 0


def cmd_rank(args: argparse.Namespace) -> int:
    from MedSegAILib.cli import TerminalProgress, sigint_cancels
    from MedSegAILib.core.io import split_stem
    from MedSegAILib.engine.progress import CancelToken
    from MedSegAILib.errors import InputError
    from MedSegAILib.inputs import find_cases
    from MedSegAILib.tasks.registry import get_task
    from MedSegAILib.uncertainty import rank_cases

    task = get_task(args.task)
    root = Path(args.data)
    found = find_cases(root, None, task)
    if len(task.inputs) == 1 and root.is_dir():  # a DICOM series folder is one case too
        found += [(d.name, {task.reference_role: d}) for d in sorted(root.iterdir())
                  if d.is_dir() and not d.name.startswith(".")]
    if not found:
        raise InputError(f"No cases in {args.data}: one image file per case, or for tasks with several images one "
                         f"folder per case with files named {', '.join(s.role for s in task.inputs)}.")
    cases = []
    for name, files in found:
        missing = [s.role for s in task.inputs if s.required and s.role not in files]
        if missing:
            raise InputError(f"{name}: no image for input(s) {', '.join(missing)}.")
        cases.append((split_stem(name)[0], {r: task.read_input(r, str(f)) for r, f in files.items()}))
    cancel = CancelToken()
    with sigint_cancels(cancel):
        ranking = rank_cases(args.task, cases, runs=args.runs, model_id=args.model, device=args.device,
                             progress=TerminalProgress(args.quiet), cancel=cancel)

    def num(v: Any) -> str:
        return "" if v is None else f"{float(v):.4f}"

    lines = ["rank,case,score,mean_entropy,error"] + [
        f"{i + 1},{r['name']},{num(r['score'])},{num(r.get('mean_entropy'))},\"{r.get('error') or ''}\""
        for i, r in enumerate(ranking)]
    print("\n".join(lines))
    if args.output:
        Path(args.output).write_text("\n".join(lines) + "\n", encoding="utf-8")
        Path(args.output).with_suffix(".json").write_text(json.dumps(ranking, indent=1, default=str), "utf-8")
    return 0
