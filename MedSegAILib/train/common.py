"""Pieces shared by the training recipes: a time-based cosine learning-rate schedule, a file+stdout logger and
float32 safetensors writing."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Union


class CosineByTime:
    """Learning rate ``lr0 * (0.02 + 0.98 * 0.5 (1 + cos(pi t / T)))`` by elapsed wall time ``t`` (``T`` = budget),
    times a linear warm-up ``min(1, 0.1 + t / warmup_s)``; :meth:`step` applies it to every parameter group
    (times the group's optional ``"lr_scale"`` entry, e.g. a faster rate for loss-weighting parameters).

    By wall time rather than by step so that a recipe with a time budget decays to 2 % of ``lr0`` exactly when
    its budget ends, whatever the machine's speed."""

    def __init__(self, optimizer: Any, lr0: float, budget_s: float, warmup_s: float = 20.0):
        self.opt, self.lr0, self.budget, self.warm = optimizer, lr0, budget_s, warmup_s
        self.t0 = time.monotonic()

    def lr(self) -> float:
        t = time.monotonic() - self.t0
        f = min(t / self.budget, 1.0)
        base = self.lr0 * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * f)))
        return base * (min(1.0, 0.1 + t / self.warm) if self.warm > 0 else 1.0)

    def step(self) -> None:
        for g in self.opt.param_groups:
            g["lr"] = self.lr() * float(g.get("lr_scale", 1.0))


def stepping(batches: Iterable[Any], sched: CosineByTime) -> Iterator[Any]:
    """Yield ``batches`` unchanged, updating the learning rate before each one (per-step schedule inside
    :func:`MedSegAILib.train.loop.train`, whose own ``scheduler`` is stepped per epoch)."""
    for b in batches:
        sched.step()
        yield b


def file_logger(path: Union[str, Path], t_start: float) -> Callable[[str], None]:
    """A ``log(line)`` that prefixes the elapsed time, prints and appends to ``path`` (flushed every line)."""
    f = open(path, "a")

    def log(s: str) -> None:
        line = f"[{time.monotonic() - t_start:7.1f}s] {s}"
        print(line, flush=True)
        f.write(line + "\n")
        f.flush()

    return log


def save_state(module: Any, path: Union[str, Path]) -> None:
    """Write a module's state dict as safetensors (contiguous, detached tensors)."""
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous() for k, v in module.state_dict().items()}, str(path))
