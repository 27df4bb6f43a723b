"""A small, generic supervised training loop (any task).

:func:`train` runs epochs of ``(inputs, targets)`` batches through ``model`` with ``loss_fn`` and
``optimizer``, evaluates ``val_metric`` (higher is better) after each epoch, keeps a copy of the best
weights (checkpoint-on-best-validation-metric), honours a wall-clock budget, a :class:`CancelToken` and a
:class:`Progress`, and returns a :class:`TrainResult` with the per-epoch history.

Datasets can be any iterables that yield ``(x, y)`` batches of tensors (or anything the loss accepts);
they are re-iterated every epoch, so a re-shuffling generator function (``lambda: make_batches(...)``)
may be passed instead of an iterable.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Union

from MedSegAILib.engine.progress import CancelToken, Progress

BatchSource = Union[Iterable[Any], Callable[[], Iterable[Any]]]


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    val_metric: Optional[float]
    lr: float
    seconds: float  #: wall time since the start of training
    steps: int


@dataclass
class TrainResult:
    best_metric: float
    best_epoch: int
    history: list[EpochRecord] = field(default_factory=list)
    stopped_by: str = "epochs"  #: "epochs", "time", "early stop" or "cancel"
    best_state: Optional[dict[str, Any]] = None  #: state dict of the best epoch (CPU tensors)

    def history_dicts(self) -> list[dict[str, Any]]:
        return [r.__dict__.copy() for r in self.history]


def _iterate(source: BatchSource) -> Iterable[Any]:
    return source() if callable(source) else source


def _to_device(obj: Any, device: Any) -> Any:
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    return obj


def train(
    model: "Any",
    train_data: BatchSource,
    loss_fn: Callable[[Any, Any], Any],
    optimizer: "Any",
    *,
    val_metric: Optional[Callable[["Any"], float]] = None,
    epochs: int = 10,
    time_budget_s: Optional[float] = None,
    device: Any = "cpu",
    scheduler: Optional[Any] = None,
    progress: Optional[Progress] = None,
    cancel: Optional[CancelToken] = None,
    checkpoint_path: Optional[Union[str, Path]] = None,
    log: Optional[Callable[[str], None]] = None,
    grad_clip: Optional[float] = None,
    amp: bool = False,
    patience: Optional[int] = None,
    baseline: Optional[float] = None,
    on_epoch: Optional[Callable[[EpochRecord], None]] = None,
    return_on_cancel: bool = False,
) -> TrainResult:
    """Train ``model`` and return the history; the model ends up holding the **best** weights.

    Parameters
    ----------
    train_data: iterable of ``(inputs, targets)`` batches, or a zero-argument callable returning one
        (called once per epoch, e.g. to reshuffle).
    loss_fn: ``loss_fn(outputs, targets) -> scalar tensor``.
    val_metric: ``val_metric(model) -> float`` (higher is better), evaluated after each epoch with the model
        in eval mode and gradients off. Without it the last epoch is kept.
    epochs: maximum number of epochs.
    time_budget_s: stop after the epoch during which this much wall time has passed; a running epoch is also
        cut short (at a batch boundary) once the budget is exceeded by more than 10 %.
    scheduler: stepped once per *epoch* (after validation) when given.
    checkpoint_path: when given, the best state dict is also written there (``torch.save``) each time the
        metric improves.
    cancel: checked before every batch; raises :class:`MedSegAILib.errors.Cancelled` — or, with
        ``return_on_cancel``, ends training there and returns (``stopped_by == "cancel"``) with the best state so far.
    amp: mixed precision (float16 autocast + gradient scaling) when ``device`` is CUDA; ignored elsewhere.
    patience: early stopping — stop after this many epochs without a better validation metric.
    baseline: the metric to beat (e.g. the model's score before fine-tuning); epochs that do not beat it are never
        kept, so ``best_state`` stays None when training never improves on it.
    on_epoch: called with each :class:`EpochRecord` as it is made (live plots).
    """
    from MedSegAILib.errors import Cancelled

    import torch

    cancel = cancel or CancelToken()
    progress = progress or Progress()
    log = log or (lambda s: None)
    device = torch.device(device)
    model.to(device)
    start = time.monotonic()
    result = TrainResult(best_metric=-math.inf if baseline is None else float(baseline), best_epoch=-1)
    steps_total = 0
    use_amp = bool(amp) and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if use_amp else None
    since_best = 0

    def over_budget(factor: float = 1.0) -> bool:
        return time_budget_s is not None and time.monotonic() - start > factor * time_budget_s

    for epoch in range(epochs):
        model.train()
        running, n = 0.0, 0
        try:
            cancel.check()
            for batch in _iterate(train_data):
                cancel.check()
                inputs, targets = _to_device(batch[0], device), _to_device(batch[1], device)
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
                    outputs = model(inputs)
                    loss = loss_fn(outputs, targets)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    if grad_clip:
                        scaler.unscale_(optimizer)
                        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    if grad_clip:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                    optimizer.step()
                running += float(loss.detach())
                n += 1
                steps_total += 1
                if over_budget(1.1):
                    break
        except Cancelled:
            if not return_on_cancel:
                raise
            result.stopped_by = "cancel"
            break
        metric: Optional[float] = None
        if val_metric is not None:
            model.eval()
            with torch.no_grad():
                metric = float(val_metric(model))
        score = metric if metric is not None else float(epoch)
        if not math.isfinite(running):
            score = -math.inf  # a diverged epoch is never kept
        if score > result.best_metric:
            since_best = 0
            result.best_metric, result.best_epoch = score, epoch
            result.best_state = {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}
            if checkpoint_path is not None:
                torch.save(result.best_state, str(checkpoint_path))
        lr = float(optimizer.param_groups[0]["lr"])
        rec = EpochRecord(epoch, running / max(n, 1), metric, lr, time.monotonic() - start, steps_total)
        result.history.append(rec)
        if on_epoch is not None:
            on_epoch(rec)
        if score <= result.best_metric and result.best_epoch != epoch:
            since_best += 1
        log(f"epoch {epoch:3d}  loss {rec.train_loss:.4f}  val {metric if metric is None else round(metric, 4)}  "
            f"lr {lr:.2e}  t {rec.seconds:.0f}s")
        if time_budget_s is not None:
            frac = max((epoch + 1) / epochs, (time.monotonic() - start) / time_budget_s)
        else:
            frac = (epoch + 1) / epochs
        progress(min(frac, 1.0), f"epoch {epoch + 1}: loss {rec.train_loss:.4f}"
                 + (f", validation {metric:.4f}" if metric is not None else ""))
        if scheduler is not None:
            scheduler.step()
        if over_budget():
            result.stopped_by = "time"
            break
        if patience is not None and val_metric is not None and since_best >= patience:
            result.stopped_by = "early stop"
            break
    if result.best_state is not None:
        model.load_state_dict(copy.deepcopy(result.best_state))
    return result
