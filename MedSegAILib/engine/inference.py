"""Sliding-window inference with Gaussian blending, batching, AMP on CUDA, a memory guard, progress and cancel.

Memory guard, in order:

1. Before running, the output accumulators are sized and compared with the free memory of the host; a volume
   whose probabilities cannot fit raises a clear error instead of swapping the machine to death.
2. On CUDA, the batch size is capped so that an estimate of the activations fits in the free VRAM.
3. On an out-of-memory error the batch is halved, then the patch is halved (while it stays a multiple of
   ``patch_multiple``), then the run moves to the CPU. Each step adds a message to ``ctx.messages``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Optional, Sequence

import numpy as np

from MedSegAILib.engine.device import available_memory_bytes
from MedSegAILib.engine.progress import Progress
from MedSegAILib.errors import DeviceError, InputError

if TYPE_CHECKING:
    import torch

    from MedSegAILib.tasks.base import RunContext


def gaussian_importance(patch_size: Sequence[int], sigma_scale: float = 0.125) -> np.ndarray:
    """Separable Gaussian weight map (peak 1 at the patch centre, never below 1e-3 at the borders)."""
    w = np.ones((), dtype=np.float64)
    for n in patch_size:
        x = np.arange(n, dtype=np.float64) - (n - 1) / 2.0
        sigma = max(n * sigma_scale, 1e-6)
        g = np.exp(-0.5 * (x / sigma) ** 2)
        w = np.multiply.outer(w, g)
    w = w / w.max()
    return np.maximum(w, 1e-3).astype(np.float32)


def window_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Start indices covering ``[0, size)`` with windows of ``patch`` and the given fractional overlap."""
    if size <= patch:
        return [0]
    step = max(1, int(math.floor(patch * (1.0 - overlap))))
    starts = list(range(0, size - patch + 1, step))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return starts


def _windows(shape: Sequence[int], patch: Sequence[int], overlap: float) -> list[tuple[slice, ...]]:
    grids = [window_starts(s, p, overlap) for s, p in zip(shape, patch)]
    out = []
    for a in grids[0]:
        for b in grids[1]:
            for c in grids[2]:
                out.append((slice(a, a + patch[0]), slice(b, b + patch[1]), slice(c, c + patch[2])))
    return out


def _batches(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _is_oom(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, getattr(torch, "OutOfMemoryError", ())):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "mps backend out of memory" in text)


@dataclass
class _Attempt:
    device: "torch.device"
    batch_size: int
    patch: tuple[int, int, int]


def sliding_window_inference(
    network: "torch.nn.Module",
    image: np.ndarray,
    patch_size: Sequence[int],
    *,
    ctx: "RunContext",
    overlap: float = 0.5,
    batch_size: int = 2,
    activation: Optional[str] = "softmax",
    progress: Optional[Progress] = None,
    pad_value: float = 0.0,
    patch_multiple: int = 8,
    sigma_scale: float = 0.125,
) -> np.ndarray:
    """Run ``network`` over ``image`` (float32 ``(C, D, H, W)``) window by window.

    Returns float32 ``(K, D, H, W)`` on the CPU: probabilities (``activation="softmax"`` over channels or
    ``"sigmoid"``) or raw outputs (``activation=None``), Gaussian-weighted averages of overlapping windows.
    Images smaller than the patch are padded with ``pad_value`` and cropped back.
    """
    import torch

    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 4:
        raise InputError(f"sliding_window_inference expects (C, D, H, W); got shape {image.shape}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError("overlap must be in [0, 1)")
    if activation not in ("softmax", "sigmoid", None):
        raise ValueError("activation must be 'softmax', 'sigmoid' or None")
    progress = progress or ctx.progress
    patch = tuple(int(p) for p in patch_size)
    spatial = image.shape[1:]

    # ---- pad to at least one patch
    pads = [(0, max(0, p - s)) for s, p in zip(spatial, patch)]
    if any(b for _, b in pads):
        image = np.pad(image, [(0, 0)] + pads, mode="constant", constant_values=pad_value)
    padded_shape = image.shape[1:]

    # ---- host memory guard: out accumulators (K unknown until first forward: assume <= 16 channels) + weights
    host_need = (16 + 1) * int(np.prod(padded_shape)) * 4 + image.nbytes
    host_free = available_memory_bytes(torch.device("cpu"))
    limit = ctx.memory_limit_bytes
    if limit is not None:
        host_free = min(host_free, limit)
    if host_need > 0.9 * host_free:
        raise InputError(
            f"The image grid {tuple(spatial)} is too large for the available memory "
            f"(needs about {host_need / 2**30:.1f} GiB, {host_free / 2**30:.1f} GiB free). "
            "Crop the volume to the region of interest (e.g. with Crop Volume) and try again."
        )

    attempt = _Attempt(ctx.device, max(1, int(batch_size)), patch)
    if attempt.device.type == "cuda":
        attempt.batch_size = _cap_batch_for_vram(network, image.shape[0], attempt, ctx)

    while True:
        try:
            out = _run(network, image, attempt, overlap, activation, progress, ctx, sigma_scale)
            break
        except Exception as exc:  # noqa: BLE001 - only OOM is handled here
            if not _is_oom(exc):
                raise
            if attempt.device.type == "cuda":
                torch.cuda.empty_cache()
            if attempt.batch_size > 1:
                attempt.batch_size //= 2
                ctx.messages.append(f"Out of memory on {attempt.device}: retrying with batch size {attempt.batch_size}.")
                continue
            smaller = tuple(p // 2 for p in attempt.patch)
            if all(p % patch_multiple == 0 and p >= patch_multiple for p in smaller):
                attempt.patch = smaller  # type: ignore[assignment]
                ctx.messages.append(f"Out of memory on {attempt.device}: retrying with smaller tiles {smaller}.")
                continue
            if attempt.device.type != "cpu":
                ctx.messages.append(f"Out of memory on {attempt.device} even with the smallest tiles: "
                                    "continuing on the CPU (slower).")
                attempt = _Attempt(torch.device("cpu"), max(1, int(batch_size)), patch)
                network.to(attempt.device)
                continue
            raise DeviceError(
                "Out of memory on the CPU even with the smallest tiles. Close other programs or crop the volume."
            ) from None

    crop = tuple(slice(0, s) for s in spatial)
    return np.ascontiguousarray(out[(slice(None),) + crop])


def _cap_batch_for_vram(network: "torch.nn.Module", channels: int, attempt: _Attempt, ctx: "RunContext") -> int:
    """Probe one window's peak VRAM and keep the batch within 80 % of the free memory."""
    import torch

    dev = attempt.device
    try:
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
        x = torch.zeros((1, channels) + attempt.patch, device=dev)
        with torch.inference_mode(), torch.autocast("cuda", enabled=ctx.amp):
            network(x)
        per_sample = max(torch.cuda.max_memory_allocated(dev) - base, 1)
        del x
        free = available_memory_bytes(dev)
        if ctx.memory_limit_bytes is not None:
            free = min(free, ctx.memory_limit_bytes)
        cap = max(1, int(0.8 * free // per_sample))
        if cap < attempt.batch_size:
            ctx.messages.append(f"GPU memory: batch size limited to {cap} (about {per_sample / 2**20:.0f} MiB a window).")
        return min(attempt.batch_size, cap)
    except Exception as exc:  # noqa: BLE001
        if _is_oom(exc):
            torch.cuda.empty_cache()
            return 1
        raise


def _run(
    network: "torch.nn.Module",
    image: np.ndarray,
    attempt: _Attempt,
    overlap: float,
    activation: Optional[str],
    progress: Progress,
    ctx: "RunContext",
    sigma_scale: float,
) -> np.ndarray:
    import torch

    dev = attempt.device
    patch = attempt.patch
    windows = _windows(image.shape[1:], patch, overlap)
    weight = gaussian_importance(patch, sigma_scale)
    weight_t = torch.from_numpy(weight).to(dev)
    acc: Optional[np.ndarray] = None
    norm = np.zeros(image.shape[1:], dtype=np.float32)
    use_amp = dev.type == "cuda" and ctx.amp
    n_batches = math.ceil(len(windows) / attempt.batch_size)
    network.eval()
    for b, batch in enumerate(_batches(windows, attempt.batch_size)):
        ctx.cancel.check()
        x = torch.from_numpy(np.stack([image[(slice(None),) + w] for w in batch])).to(dev)
        t0 = time.perf_counter()
        with torch.inference_mode(), torch.autocast(dev.type, enabled=use_amp):
            y = network(x)
            y = y.float()
            if activation == "softmax":
                y = torch.softmax(y, dim=1)
            elif activation == "sigmoid":
                y = torch.sigmoid(y)
            y = (y * weight_t).cpu().numpy()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        ctx.add_time("network_forward", time.perf_counter() - t0)
        if acc is None:
            acc = np.zeros((y.shape[1],) + image.shape[1:], dtype=np.float32)
        for yi, w in zip(y, batch):
            acc[(slice(None),) + w] += yi
            norm[w] += weight
        progress((b + 1) / n_batches, f"Inference: window batch {b + 1}/{n_batches}")
    assert acc is not None
    return acc / norm[np.newaxis]
