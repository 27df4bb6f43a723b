"""New model versions in the user model folder, written atomically; export, import and delete of user models.

A fine-tuned or trained model is a folder ``<user model folder>/<id>-<version>/`` holding ``model.json`` (one
manifest model object: networks with sha256, the base model's input constants and labels, ``base_model``,
``created``, the fine-tuning metrics), the weights (the trained network as new safetensors; the other networks
copied byte for byte from the base model), ``card.md`` (the model card), ``history.json`` and
``training-curves.png``.

Atomicity: everything is written into a hidden staging folder beside the destination, flushed to disk, checked
(parsed with the registry's own reader, checksums verified), and only then renamed into place — a single
``rename`` on one file system, so the model appears whole or not at all. Any failure (a full disk included)
removes the staging folder and leaves the user folder as it was. The base model's files are only read.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import os
import re
import shutil
import uuid
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional, Union

from MedSegAILib.errors import InputError, ModelError

if TYPE_CHECKING:
    from MedSegAILib.finetune.engine import TrainingRun
    from MedSegAILib.zoo.registry import ModelSpec

EXPORT_SUFFIX = ".medsegai-model.zip"


def slug(text: str) -> str:
    """A model-id-safe version of ``text`` (lower case, ``[a-z0-9._-]``)."""
    s = re.sub(r"[^a-z0-9._-]+", "-", text.strip().lower()).strip("-._")
    return s or "custom"


def _disk_error(exc: OSError, folder: Path, what: str) -> ModelError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ModelError(f"Not enough disk space in {folder} to {what}; nothing was written (free some space and "
                          "run again — the fine-tuned weights are still in memory in the GUI until you close it).")
    return ModelError(f"Could not {what} in {folder}: {exc.strerror or exc}; nothing was written.")


@contextlib.contextmanager
def _staged(folder: Path, label: str, what: str, create: bool = True) -> Iterator[Path]:
    """A hidden staging folder in ``folder`` for the block (which renames it into place); on any failure it is
    removed, and an ``OSError`` (e.g. a full disk) becomes a clear :class:`ModelError`."""
    staging = folder / f".staging-{label}-{uuid.uuid4().hex[:8]}"
    try:
        if create:
            staging.mkdir()
        yield staging
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise _disk_error(exc, folder, what) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _fsync_tree(folder: Path) -> None:
    for p in folder.iterdir():
        if p.is_file():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())


def _next_version(model_id: str, folder: Path) -> str:
    from MedSegAILib.zoo.registry import list_models

    taken = [s.version_tuple for s in list_models() if s.id == model_id]
    taken += [(int(m.group(1)), int(m.group(2)), 0) for p in folder.glob(f"{model_id}-*")
              if (m := re.fullmatch(re.escape(model_id) + r"-(\d+)\.(\d+)\.\d+", p.name))]
    if not taken:
        return "1.0.0"
    major, minor, _ = max(taken)
    return f"{major}.{minor + 1}.0"


def _root_id(spec: "ModelSpec") -> str:
    return str(spec.raw.get("finetune_root", spec.id))


def new_model_id(run: "TrainingRun", name: Optional[str]) -> str:
    """``<base id>-<name>`` (fine-tuning) or ``<task>-<name>`` (from scratch); name default ``finetuned`` /
    ``trained``."""
    default = "trained" if run.options.from_scratch else "finetuned"
    label = slug(name or default)
    root = run.task_id if run.options.from_scratch else _root_id(run.base)
    return label if label.startswith(root) else f"{root}-{label}"


def _card(run: "TrainingRun", entry: dict[str, Any], curves: bool) -> str:
    def f(v: Optional[float]) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    o = run.options
    what = "Trained from scratch" if o.from_scratch else f"Fine-tuned from **{run.base.key}**"
    lines = [
        f"# {entry['title']}", "",
        f"{what} by MedSegAI on {entry['created']} (task `{run.task_id}`, network `{run.network}`; the other "
        "networks are the base model's, unchanged).", "",
        "## Data", "",
        f"- {run.n_cases} case(s) from {run.n_patients} patient(s), the user's own corrected masks "
        f"({run.n_train} for training, {run.n_val} for validation; split by patient).",
        f"- Cases: {', '.join(run.case_names[:20])}{' ...' if len(run.case_names) > 20 else ''}.",
    ]
    if run.correction_dice is not None:
        lines.append(f"- Mean Dice between the model's original outputs and the corrected masks: "
                     f"{run.correction_dice:.3f} (how much was corrected).")
    lines += ["", "## Validation (network grid)", "",
              f"- Dice before: {f(run.dice_before)}; after: {f(run.dice_after)}."]
    for fo in run.folds:
        lines.append(f"  - fold {fo['fold']}: {fo['n_val']} validation case(s), Dice {f(fo['dice_before'])} -> "
                     f"{f(fo['dice_after'])} (best epoch {fo['best_epoch'] + 1} of {fo['epochs']})")
    if not run.improved:
        lines.append("- **Not better than the starting model on the validation cases**; kept at the user's request.")
    lines += ["", "## Settings", "",
              f"- epochs {o.epochs}, time budget {o.minutes or 'none'} min, learning rate "
              f"{o.lr or ('1e-3' if o.from_scratch else '3e-4')}, validation share {o.val_share}, folds {o.folds}, "
              f"augmentation {'on' if o.augment else 'off'}, batch {run.batch}, early stopping after "
              f"{o.patience} epochs without improvement, seed {o.seed}.",
              f"- {len(run.history)} epoch(s) in {run.seconds:.0f} s on {run.device}; stopped by {run.stopped_by}; "
              f"best epoch {run.best_epoch + 1}.",
              f"- Recipe: `{entry['recipe']}`.", ""]
    if curves:
        lines += ["![training curves](training-curves.png)", ""]
    if run.messages:
        lines += ["## Notes", ""] + [f"- {m}" for m in run.messages] + [""]
    lines += ["## Limits", "",
              "- Validated only on the validation cases above (few, from the same source as the training cases); "
              "check it on new cases before relying on it.",
              f"- Base model card: {run.base.card.name} of {run.base.key} (its limits apply).", ""]
    return "\n".join(lines)


def _curves_png(run: "TrainingRun") -> Optional[bytes]:
    from MedSegAILib.tasks.base import Plot
    from MedSegAILib.viz import plot_png

    if not run.history:
        return None
    ep = [r.epoch + 1 for r in run.history]
    series = {"training loss": (ep, [r.train_loss for r in run.history])}
    vals = [(r.epoch + 1, r.val_metric) for r in run.history if r.val_metric is not None]
    if vals:
        series["validation Dice"] = ([v[0] for v in vals], [v[1] for v in vals])
    return plot_png(Plot("Training curves", "epoch", "loss / Dice", series))


def publish(run: "TrainingRun", name: Optional[str] = None, *, folder: Optional[Path] = None,
            keep_if_worse: Optional[bool] = None, recipe: Optional[str] = None) -> "ModelSpec":
    """Write ``run`` as a new model version in the user model folder (atomically) and return its spec.

    Refused (nothing written) when the run has no trained state, or when it did not improve validation Dice and
    neither ``keep_if_worse`` nor ``run.options.keep_if_worse`` asks to keep it anyway."""
    from safetensors.torch import save_file

    from MedSegAILib.zoo.registry import _parse_model, sha256_file, user_model_dir, validate_manifest, verify_weights

    keep = run.options.keep_if_worse if keep_if_worse is None else keep_if_worse
    if run.state is None:
        raise ModelError("The run produced no trained weights (stopped before the first epoch ended); nothing "
                         "was written.")
    if not run.improved and not keep:
        raise ModelError(f"Fine-tuning did not improve the validation Dice ({run.dice_before:.3f} before, "
                         f"{run.dice_after:.3f} after); no new model was written. Keep it anyway with "
                         "--keep-if-worse (GUI: answer Yes when asked), or try more cases/epochs.")
    folder = Path(folder) if folder is not None else user_model_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _disk_error(exc, folder, "create the user model folder") from None
    base = run.base
    model_id = new_model_id(run, name)
    version = _next_version(model_id, folder)
    final = folder / f"{model_id}-{version}"
    if final.exists():
        raise ModelError(f"{final} already exists; choose another name.")
    created = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    o = run.options
    cmd = recipe or (f"medsegai {'train' if o.from_scratch else 'finetune'} --task {run.task_id}"
                     + ("" if o.from_scratch else f" --model {base.key}")
                     + f" --data DIR --epochs {o.epochs}" + (f" --minutes {o.minutes}" if o.minutes else "")
                     + (f" --lr {o.lr}" if o.lr else "") + f" --val-share {o.val_share}"
                     + (f" --folds {o.folds}" if o.folds else "") + ("" if o.augment else " --no-augment")
                     + f" --seed {o.seed}")
    entry = {k: v for k, v in base.raw.items() if k not in ("metrics", "base_model", "created")}
    entry.update({
        "id": model_id, "version": version,
        "title": f"{base.title} — {'trained' if o.from_scratch else 'fine-tuned'} on {run.n_cases} local case(s)",
        "description": (f"{'Trained from scratch' if o.from_scratch else 'Fine-tuned from ' + base.key} on "
                        f"{run.n_cases} user case(s) by MedSegAI ({run.network}); other networks as in {base.key}."),
        "training_data": f"{run.n_cases} local case(s) from {run.n_patients} patient(s): "
                         + ", ".join(run.case_names[:50]),
        "recipe": cmd, "card": "card.md", "base_model": base.key, "created": created,
        "finetune_root": _root_id(base),
        "metrics": {"finetune": {
            "validation_dice_before": run.dice_before, "validation_dice_after": run.dice_after,
            "improved": run.improved, "n_cases": run.n_cases, "n_patients": run.n_patients,
            "n_train": run.n_train, "n_val": run.n_val, "folds": run.folds, "epochs": len(run.history),
            "best_epoch": run.best_epoch + 1, "seconds": round(run.seconds, 1), "device": run.device,
            "correction_dice": run.correction_dice, "options": o.as_dict()}},
    })
    with _staged(folder, model_id, "write the new model") as staging:
        networks: dict[str, Any] = {}
        for net_name, net in base.networks.items():
            dst = staging / f"{net_name}.safetensors"
            if net_name == run.network:
                save_file({k: v.detach().contiguous().cpu() for k, v in run.state.items()}, str(dst),
                          metadata={"base_model": base.key, "created": created})
            else:
                shutil.copyfile(net.weights, dst)
            networks[net_name] = {"architecture": net.architecture, "hyperparameters": net.hyperparameters,
                                  "weights": dst.name, "sha256": sha256_file(dst)}
        entry["networks"] = networks
        png = _curves_png(run)
        if png:
            (staging / "training-curves.png").write_bytes(png)
        (staging / "history.json").write_text(json.dumps([r.__dict__ for r in run.history], indent=1), "utf-8")
        (staging / "card.md").write_text(_card(run, entry, png is not None), "utf-8")
        (staging / "model.json").write_text(json.dumps(entry, indent=1), "utf-8")
        validate_manifest({"schema_version": 1, "models": [entry]})
        verify_weights(_parse_model(entry, staging, "user", str(staging / "model.json")))
        _fsync_tree(staging)
        os.rename(staging, final)
    return _parse_model(entry, final, "user", str(final / "model.json"))


# ---------------------------------------------------------------------------------------------- manage
def _user_spec(key: str) -> "ModelSpec":
    from MedSegAILib.zoo.registry import get_model_spec

    spec = get_model_spec(key)
    if spec.source != "user":
        raise ModelError(f"{spec.key} is a bundled model; only user models (fine-tuned or imported) can be "
                         "exported or deleted here.")
    return spec


def export_model(key: str, path: Union[str, os.PathLike]) -> Path:
    """Write user model ``key`` (``id`` or ``id@version``) as one zip file (``*.medsegai-model.zip``)."""
    spec = _user_spec(key)
    out = Path(path)
    if out.is_dir():
        out = out / f"{spec.id}-{spec.version}{EXPORT_SUFFIX}"
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for p in sorted(spec.folder.iterdir()):
                if p.is_file():
                    zf.write(p, p.name)
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _disk_error(exc, out.parent, "export the model") from None
    return out


def import_model(path: Union[str, os.PathLike], *, folder: Optional[Path] = None) -> "ModelSpec":
    """Install an exported model (zip or folder) into the user model folder, after checking its manifest entry and
    every weight checksum; refuses a model that is already installed."""
    from MedSegAILib.zoo.registry import _parse_model, _read_json, list_models, user_model_dir, validate_manifest, \
        verify_weights

    src = Path(path)
    if not src.exists():
        raise InputError(f"Not found: {src}.")
    folder = Path(folder) if folder is not None else user_model_dir()
    folder.mkdir(parents=True, exist_ok=True)
    with _staged(folder, "import", "import the model", create=False) as staging:
        if src.is_dir():
            shutil.copytree(src, staging)
        else:
            try:
                with zipfile.ZipFile(src) as zf:
                    for info in zf.infolist():
                        if "/" in info.filename.strip("/") or info.filename.startswith((".", "\\")) or \
                                ".." in info.filename:
                            raise ModelError(f"{src}: unexpected entry {info.filename!r}; not a MedSegAI model "
                                             "export.")
                    zf.extractall(staging)
            except zipfile.BadZipFile:
                raise ModelError(f"{src} is not a MedSegAI model export (not a zip file).") from None
        if not (staging / "model.json").is_file():
            raise ModelError(f"{src} holds no model.json; not a MedSegAI model export.")
        entry = _read_json(staging / "model.json")
        validate_manifest({"schema_version": 1, "models": [entry]})
        spec = _parse_model(entry, staging, "user", str(src))
        verify_weights(spec)
        if any(s.key == spec.key for s in list_models()):
            raise ModelError(f"{spec.key} is already installed; delete it first to replace it.")
        final = folder / f"{slug(spec.id)}-{spec.version}"
        if final.exists():
            raise ModelError(f"{final} already exists; delete it first.")
        _fsync_tree(staging)
        os.rename(staging, final)
    return _parse_model(entry, final, "user", str(final / "model.json"))


def delete_model(key: str) -> Path:
    """Remove user model ``key`` (its folder is renamed away first, so a half-deleted model is never listed)."""
    spec = _user_spec(key)
    trash = spec.folder.with_name(f".deleting-{spec.folder.name}-{uuid.uuid4().hex[:8]}")
    os.rename(spec.folder, trash)
    shutil.rmtree(trash, ignore_errors=True)
    return spec.folder
