"""Fine-tuning (and training from scratch) of a task's network on user cases, through the one training loop.

:func:`finetune` is the single code path of the GUI's "Fine-tune" button, ``medsegai finetune`` and
``medsegai train``:

1. the model (the task's default or the one the user picked) and the task's :class:`TrainingAdapter` for it;
2. every case becomes network samples (:meth:`TrainingAdapter.prepare`) — cases that cannot be used stop the run
   with the case's name and the reason;
3. cases are split by patient (validation share, or k folds);
4. validation Dice of the starting network (*before*), then :func:`MedSegAILib.train.loop.train`: random patches
   with the task's augmentation, AdamW, a cosine learning-rate decay over the epochs or the time budget
   (whichever ends first), mixed precision on CUDA, early stopping, progress, cancel (a stopped run keeps its
   best epoch so far; the caller decides whether to publish it);
5. the result: a :class:`TrainingRun` with the best state of the trained network and its validation Dice
   (*after*); :attr:`TrainingRun.improved` tells whether it beats the starting network. Nothing is written here: :func:`MedSegAILib.finetune.publish.publish`
   writes the new model version.

Validation Dice is computed on the network's grid (the samples), per foreground class present in the truth or the
prediction, averaged over classes and samples.

Normalisation statistics: when fine-tuning, batch-norm layers keep fixed running statistics during training (a
batch of 2 patches would otherwise overwrite statistics learned from hundreds of cases): the base model's, or —
when re-estimating them once on the training cases (:func:`recalibrate_norms`, ``adapt_norm``) raises validation
Dice, as it does for another camera or count level — the re-estimated ones. Training from scratch updates them.

Out of memory on a GPU: the run restarts from the starting weights with half the batch, down to one; then on the
CPU; each fall-back is reported in :attr:`TrainingRun.messages`.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence, Union

import numpy as np

from MedSegAILib.engine.progress import CancelToken, Progress
from MedSegAILib.errors import InputError, ModelError
from MedSegAILib.finetune.adapter import Sample, TrainingAdapter, crop_or_pad
from MedSegAILib.finetune.data import Case, kfold_by_patient, split_by_patient
from MedSegAILib.train.loop import EpochRecord

if TYPE_CHECKING:
    import torch

    from MedSegAILib.zoo.registry import ModelSpec


@dataclass
class FinetuneOptions:
    """What the user sets (GUI "Fine-tune" section, ``medsegai finetune/train`` options)."""

    epochs: int = 20  #: maximum number of epochs
    minutes: Optional[float] = None  #: time budget (training stops at the first of epochs / minutes)
    lr: Optional[float] = None  #: learning rate (None: 3e-4 to fine-tune, 1e-3 from scratch)
    val_share: float = 0.2  #: share of patients kept for validation (0: no validation)
    folds: int = 0  #: k-fold cross-validation by patient (0/1: a single split by ``val_share``)
    augment: bool = True
    batch: Optional[int] = None  #: None: the adapter's default for the device
    patience: Optional[int] = 5  #: early stopping after this many epochs without improvement
    steps_per_epoch: Optional[int] = None  #: None: one pass over the training samples (at least 8 batches)
    device: str = "auto"
    seed: int = 0
    from_scratch: bool = False  #: re-initialise the network instead of starting from the model's weights
    amp: bool = True  #: mixed precision on CUDA
    keep_if_worse: bool = False  #: publish even when validation Dice did not improve
    #: fine-tuning a batch-norm network: first re-estimate its normalisation statistics on the training cases and
    #: keep them when validation Dice improves (adapts to another scanner/protocol at no training cost)
    adapt_norm: bool = True

    def validate(self) -> "FinetuneOptions":
        if self.epochs < 1:
            raise InputError(f"Epochs must be at least 1; got {self.epochs}.")
        if self.minutes is not None and self.minutes <= 0:
            raise InputError(f"The time budget must be positive; got {self.minutes} minutes.")
        if self.lr is not None and not (0 < self.lr < 1):
            raise InputError(f"The learning rate must be in (0, 1); got {self.lr}.")
        if self.batch is not None and self.batch < 1:
            raise InputError(f"The batch size must be at least 1; got {self.batch}.")
        if self.folds < 0:
            raise InputError(f"Folds must be 0 (no cross-validation) or at least 2; got {self.folds}.")
        return self

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class TrainingRun:
    """The outcome of :func:`finetune` (nothing written yet)."""

    task_id: str
    base: "ModelSpec"
    network: str
    options: FinetuneOptions
    state: Optional[dict[str, Any]]  #: best state dict of :attr:`network` (CPU tensors); None = stopped before one
    dice_before: Optional[float]  #: validation Dice of the starting network (None without validation)
    dice_after: Optional[float]  #: validation Dice of :attr:`state`
    history: list[EpochRecord] = field(default_factory=list)
    n_cases: int = 0
    n_patients: int = 0
    n_train: int = 0  #: training cases of the final run
    n_val: int = 0
    stopped_by: str = "epochs"
    best_epoch: int = -1
    seconds: float = 0.0
    device: str = "cpu"
    batch: int = 1
    messages: list[str] = field(default_factory=list)
    folds: list[dict[str, Any]] = field(default_factory=list)  #: per fold: before, after, best_epoch, n_val
    correction_dice: Optional[float] = None  #: mean Dice(original output, corrected mask) when originals were given
    case_names: list[str] = field(default_factory=list)

    @property
    def improved(self) -> bool:
        """A state exists and (without validation) or (its validation Dice beats the starting network's)."""
        if self.state is None:
            return False
        if self.dice_before is None or self.dice_after is None:
            return True
        return self.dice_after > self.dice_before

    def summary(self) -> str:
        def f(v: Optional[float]) -> str:
            return "n/a" if v is None else f"{v:.3f}"

        what = "trained" if self.options.from_scratch else f"fine-tuned from {self.base.key}"
        cv = f" ({len(self.folds)}-fold cross-validation by patient)" if self.folds else ""
        return (f"{self.network} {what} on {self.n_cases} case(s) / {self.n_patients} patient(s): validation Dice "
                f"{f(self.dice_before)} -> {f(self.dice_after)}{cv}; {len(self.history)} epoch(s), "
                f"{self.seconds:.0f} s on {self.device}, stopped by {self.stopped_by}")


# ---------------------------------------------------------------------------------------------- samples
def prepare_samples(adapter: TrainingAdapter, cases: Sequence[Case], progress: Progress,
                    cancel: CancelToken) -> list[Sample]:
    out: list[Sample] = []
    for n, case in enumerate(cases):
        cancel.check()
        progress(n / max(len(cases), 1), f"preparing {case.name}")
        samples = adapter.prepare(case.inputs, case.labels, case.name)
        if not samples:
            raise InputError(f"{case.name}: no training sample could be made from this case (the structure lies "
                             "outside what the network sees).")
        for s in samples:
            s.case, s.patient = case.name, case.patient
        out.extend(samples)
    return out


def _whole_input(adapter: TrainingAdapter, s: Sample, device: "torch.device") -> "torch.Tensor":
    """A whole sample's input as a batch of one, padded at the high end of each axis to the network's divisor
    (with the adapter's pad value); the sample's own voxels are the first ``s.y.shape`` of the output."""
    import torch

    pads = [(0, int(math.ceil(n / adapter.divisor) * adapter.divisor) - n) for n in s.y.shape]
    x = np.pad(s.x, [(0, 0)] + pads, constant_values=adapter.pad_value) if any(p[1] for p in pads) else s.x
    return torch.from_numpy(np.ascontiguousarray(x[None])).to(device)


def validation_dice(adapter: TrainingAdapter, net: "torch.nn.Module", samples: Sequence[Sample],
                    device: "torch.device") -> float:
    """Mean Dice over (sample, foreground class) pairs where the class is in the truth or the prediction; each
    sample whole (padded to the network's divisor), network grid."""
    import torch

    from MedSegAILib.metrics import dice

    was_training = net.training
    net.eval()
    scores: list[float] = []
    with torch.no_grad():
        for s in samples:
            pred = adapter.predict(adapter.forward(net, _whole_input(adapter, s, device)))[0].cpu().numpy()
            pred = pred[tuple(slice(0, n) for n in s.y.shape)]
            for c in adapter.foreground_channels():
                a, b = pred == c, s.y == c
                if a.any() or b.any():
                    scores.append(dice(a, b))
    net.train(was_training)
    return float(np.mean(scores)) if scores else 0.0


def batches(adapter: TrainingAdapter, samples: Sequence[Sample], batch: int, steps: int, rng: np.random.Generator,
            augment: bool):
    """``steps`` batches of random patches (``adapter.patch``) of random training samples, augmented; a share
    ``adapter.foreground_crop`` of the patches contains a random labelled voxel."""
    import torch

    for _ in range(steps):
        xs, ys = [], []
        for i in rng.integers(0, len(samples), batch):
            s = samples[int(i)]
            around = None
            if adapter.patch and rng.random() < adapter.foreground_crop:
                fg = np.flatnonzero(s.y)
                if fg.size:
                    around = np.unravel_index(int(fg[rng.integers(0, fg.size)]), s.y.shape)
            x, y = crop_or_pad(s.x, s.y, adapter.patch or s.y.shape, rng, adapter.pad_value, around)
            if augment:
                x, y = adapter.augment(x, y, rng)
            xs.append(np.ascontiguousarray(x, np.float32))
            ys.append(np.ascontiguousarray(y, np.int64))
        yield torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))


def _batch_norms(net: "torch.nn.Module") -> list[Any]:
    import torch

    return [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def _trainee(adapter: TrainingAdapter, net: "torch.nn.Module", freeze_norm: bool) -> "torch.nn.Module":
    """``net`` behind the adapter's forward (``.net`` is the network), with batch-norm statistics kept fixed in
    training mode when ``freeze_norm``."""
    import torch

    class Trainee(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x):  # noqa: ANN001, ANN202
            return adapter.forward(self.net, x)

        def train(self, mode: bool = True):  # noqa: ANN202
            super().train(mode)
            if freeze_norm:
                for m in _batch_norms(self.net):
                    m.eval()
            return self

    return Trainee()


def recalibrate_norms(adapter: TrainingAdapter, net: "torch.nn.Module", samples: Sequence[Sample],
                      device: "torch.device") -> None:
    """Re-estimate batch-norm running statistics on ``samples`` (each whole, as validation sees it): cumulative
    means over all samples, no gradient, weights untouched — the statistics of the user's scanner/protocol
    instead of the training data's."""
    import torch

    norms = _batch_norms(net)
    saved = [(m.momentum, m.training) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
        m.train()
    try:
        with torch.no_grad():
            for s in samples:
                adapter.forward(net, _whole_input(adapter, s, device))
    finally:
        for m, (momentum, training) in zip(norms, saved):
            m.momentum = momentum
            m.train(training)


class _CosineLR:
    """``lr0 x (0.05 + 0.95 x 0.5 (1 + cos(pi f)))`` with ``f`` the larger of the epoch fraction and the time
    fraction, updated before every batch (so a time budget and an epoch count both end at 5 % of ``lr0``)."""

    def __init__(self, optimizer: Any, lr0: float, epochs: int, steps_per_epoch: int, budget_s: Optional[float]):
        self.opt, self.lr0, self.total, self.budget = optimizer, lr0, max(epochs * steps_per_epoch, 1), budget_s
        self.step_n, self.t0 = 0, time.monotonic()

    def __call__(self, source):  # noqa: ANN001, ANN204
        for b in source:
            f = self.step_n / self.total
            if self.budget:
                f = max(f, (time.monotonic() - self.t0) / self.budget)
            for g in self.opt.param_groups:
                g["lr"] = self.lr0 * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(f, 1.0))))
            self.step_n += 1
            yield b


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


# ---------------------------------------------------------------------------------------------- one run
def _train_once(adapter: TrainingAdapter, start_state: dict[str, Any], build: Callable[[], "torch.nn.Module"],
                train_s: Sequence[Sample], val_s: Sequence[Sample], opts: FinetuneOptions, device: "torch.device",
                batch: int, epochs: int, budget_s: Optional[float], progress: Progress, cancel: CancelToken,
                on_epoch: Optional[Callable[[EpochRecord], None]], log: Callable[[str], None],
                use_val: bool) -> tuple[Any, Optional[float], Optional[float]]:
    """One training run from ``start_state``; returns ``(loop result, dice before, dice after)``."""
    import torch

    from MedSegAILib.train.loop import train

    torch.manual_seed(opts.seed)
    net = build()
    net.load_state_dict(start_state)
    net.to(device)
    trainee = _trainee(adapter, net, freeze_norm=not opts.from_scratch)
    rng = np.random.default_rng(opts.seed)
    before = validation_dice(adapter, net, val_s, device) if use_val and val_s else None
    start: Optional[tuple[float, dict[str, Any]]] = None  #: (validation Dice, state) of an adapted start
    if before is not None:
        log(f"validation Dice before training: {before:.4f} ({len(val_s)} samples)")
        if opts.adapt_norm and not opts.from_scratch and _batch_norms(net):
            kept = copy.deepcopy(net.state_dict())
            recalibrate_norms(adapter, net, train_s, device)
            adapted = validation_dice(adapter, net, val_s, device)
            if adapted > before:
                start = (adapted, copy.deepcopy(net.state_dict()))
                log(f"normalisation statistics re-estimated on the training cases: validation Dice {before:.4f} -> "
                    f"{adapted:.4f}; training starts from there")
            else:
                net.load_state_dict(kept)
                log(f"re-estimated normalisation statistics did not help ({adapted:.4f}); kept the model's own")
    steps = opts.steps_per_epoch or max(8, math.ceil(len(train_s) / batch))
    lr0 = opts.lr or (1e-3 if opts.from_scratch else 3e-4)
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=lr0, weight_decay=1e-5)
    sched = _CosineLR(optimizer, lr0, epochs, steps, budget_s)
    metric = (lambda m: validation_dice(adapter, m.net, val_s, device)) if use_val and val_s else None
    res = train(trainee, lambda: sched(batches(adapter, train_s, batch, steps, rng, opts.augment)), adapter.loss,
                optimizer, val_metric=metric, epochs=epochs, time_budget_s=budget_s, device=device,
                progress=progress, cancel=cancel, log=log, grad_clip=5.0, amp=opts.amp,
                patience=opts.patience if metric is not None else None,
                on_epoch=on_epoch,
                return_on_cancel=True)
    if res.best_state is not None:
        res.best_state = {k[len("net."):]: v for k, v in res.best_state.items() if k.startswith("net.")}
    if start is not None and (res.best_state is None or res.best_metric < start[0]):
        log(f"no trained epoch beat the re-estimated statistics alone ({start[0]:.4f}); those are the result")
        res.best_metric = start[0]
        res.best_state = {k: v.detach().cpu().clone() for k, v in start[1].items()}
        res.best_epoch = -1
    after = res.best_metric if (metric is not None and res.best_state is not None) else None
    return res, before, after


def _with_fallback(run: Callable[[Any, int], Any], device: "torch.device", batch: int,
                   messages: list[str], log: Callable[[str], None]) -> tuple[Any, "torch.device", int]:
    """``run(device, batch)``, halving the batch on GPU out-of-memory, then moving to the CPU."""
    import torch

    while True:
        try:
            return run(device, batch), device, batch
        except RuntimeError as exc:  # torch.cuda.OutOfMemoryError is one
            if device.type == "cpu" or not _is_oom(exc):
                raise
            if device.type == "cuda":
                torch.cuda.empty_cache()
            if batch > 1:
                msg = f"{device.type.upper()} out of memory with batch {batch}; restarting with batch {batch // 2}."
                batch //= 2
            else:
                msg = f"{device.type.upper()} out of memory even with batch 1; restarting on the CPU (slower)."
                device = torch.device("cpu")
            messages.append(msg)
            log(msg)


# ---------------------------------------------------------------------------------------------- public
def finetune(
    task_id: str,
    cases: Sequence[Case],
    *,
    model: Union[None, str, "ModelSpec"] = None,
    options: Optional[FinetuneOptions] = None,
    progress: Union[None, Progress, Callable[[float, str], None]] = None,
    cancel: Optional[CancelToken] = None,
    on_epoch: Optional[Callable[[EpochRecord], None]] = None,
    log: Optional[Callable[[str], None]] = None,
) -> TrainingRun:
    """Fine-tune (or, with ``options.from_scratch``, train) the task's network on ``cases``; see the module
    docstring. ``model``: id, ``id@version`` or spec (None: the task's default). Never writes anything."""
    import torch

    from MedSegAILib import nets
    from MedSegAILib.engine.device import select_device
    from MedSegAILib.tasks.registry import get_task
    from MedSegAILib.zoo.registry import get_model_spec, load_model

    t0 = time.monotonic()
    opts = (options or FinetuneOptions()).validate()
    progress = progress if isinstance(progress, Progress) else Progress(progress)
    cancel = cancel or CancelToken()
    log = log or (lambda s: None)
    task = get_task(task_id)
    if not cases:
        raise InputError("No training cases were given.")
    spec = model if model is not None and not isinstance(model, str) else get_model_spec(
        model or (task.default_model or ""), task_id)
    if spec.task != task_id:
        raise ModelError(f"Model {spec.key} is for task {spec.task!r}, not {task_id!r}.")
    adapter = task.training_adapter(spec)
    if adapter.network not in spec.networks:
        raise ModelError(f"Model {spec.key} has no network {adapter.network!r} to train.")
    device, device_msg = select_device(opts.device)
    messages: list[str] = [device_msg] if device_msg else []
    for c in cases:
        messages.extend(c.notes)
    net_spec = spec.networks[adapter.network]

    def build() -> "torch.nn.Module":
        return nets.build(net_spec.architecture, **net_spec.hyperparameters)

    if opts.from_scratch:
        torch.manual_seed(opts.seed)
        start_state = copy.deepcopy(build().state_dict())
    else:
        start_state = copy.deepcopy(load_model(spec, "cpu").networks[adapter.network].state_dict())

    samples = prepare_samples(adapter, cases, progress.sub(0.0, 0.1), cancel)
    patients = sorted({c.patient for c in cases})
    batch = opts.batch or (adapter.batch_gpu if device.type == "cuda" else adapter.batch_cpu)
    budget = opts.minutes * 60.0 if opts.minutes else None
    run = TrainingRun(task_id, spec, adapter.network, opts, None, None, None, n_cases=len(cases),
                      n_patients=len(patients), device=str(device), messages=messages,
                      case_names=[c.name for c in cases])
    originals = [c for c in cases if c.original is not None]
    if originals:
        from MedSegAILib.metrics import dice

        run.correction_dice = float(np.mean([dice(c.original.array > 0, c.labels.array > 0) for c in originals]))

    def of(cs: Sequence[Case]) -> list[Sample]:
        names = {c.name for c in cs}
        return [s for s in samples if s.case in names]

    def once(train_c: Sequence[Case], val_c: Sequence[Case], epochs: int, budget_s: Optional[float], prog: Progress,
             use_val: bool, cb: Optional[Callable[[EpochRecord], None]]):
        def go(dev: "torch.device", b: int):
            return _train_once(adapter, start_state, build, of(train_c), of(val_c), opts, dev, b, epochs, budget_s,
                               prog, cancel, cb, log, use_val)

        (res, before, after), dev, b = _with_fallback(go, device, batch, messages, log)
        return res, before, after, dev, b

    if opts.folds >= 2:
        splits = kfold_by_patient(cases, opts.folds, opts.seed)
        share = budget / (opts.folds + 1) if budget else None
        best_epochs = []
        for f, (tr, va) in enumerate(splits):
            log(f"fold {f + 1}/{opts.folds}: {len(tr)} training / {len(va)} validation case(s)")
            res, before, after, _, _ = once(tr, va, opts.epochs, share, progress.sub(0.1 + 0.8 * f / (opts.folds + 1),
                                            0.1 + 0.8 * (f + 1) / (opts.folds + 1)), True, None)
            run.folds.append({"fold": f + 1, "n_train": len(tr), "n_val": len(va), "dice_before": before,
                              "dice_after": after if after is not None else before,
                              "best_epoch": res.best_epoch, "epochs": len(res.history), "stopped_by": res.stopped_by})
            best_epochs.append(max(res.best_epoch + 1, 1))
            if res.stopped_by == "cancel":
                run.stopped_by = "cancel"
                break
        if run.stopped_by != "cancel":
            final_epochs = int(np.median(best_epochs))
            log(f"final model: all {len(cases)} cases, {final_epochs} epoch(s) (median best epoch of the folds)")
            res, _, _, dev, b = once(list(cases), [], final_epochs, share, progress.sub(0.9 - 0.8 / (opts.folds + 1),
                                     1.0), False, on_epoch)
            run.state, run.history, run.best_epoch = res.best_state, res.history, res.best_epoch
            run.stopped_by, run.device, run.batch = res.stopped_by, str(dev), b
        befores = [f["dice_before"] for f in run.folds if f["dice_before"] is not None]
        afters = [f["dice_after"] for f in run.folds if f["dice_after"] is not None]
        run.dice_before = float(np.mean(befores)) if befores else None
        run.dice_after = float(np.mean(afters)) if afters else None
        run.n_train, run.n_val = len(cases), 0
    else:
        tr, va = split_by_patient(cases, opts.val_share, opts.seed)
        run.n_train, run.n_val = len(tr), len(va)
        log(f"{len(tr)} training / {len(va)} validation case(s) ({len(of(tr))} / {len(of(va))} samples), batch "
            f"{batch} on {device}")
        res, before, after, dev, b = once(tr, va, opts.epochs, budget, progress.sub(0.1, 1.0), bool(va), on_epoch)
        run.state, run.history, run.best_epoch = res.best_state, res.history, res.best_epoch
        run.stopped_by, run.device, run.batch = res.stopped_by, str(dev), b
        run.dice_before, run.dice_after = before, after
    if run.state is not None and not run.improved:
        run.messages.append(f"No epoch improved on the starting model's validation Dice ({run.dice_before:.3f}); the "
                            f"best epoch reached {run.dice_after:.3f}. The new version is not published unless asked "
                            "for (keep it anyway).")
    run.seconds = time.monotonic() - t0
    progress(1.0, run.summary())
    return run
