"""Choosing the compute device: ``auto | cuda | mps | cpu`` with a sentence saying what was chosen and why."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from MedSegAILib.errors import DeviceError

if TYPE_CHECKING:
    import torch

DEVICE_CHOICES = ("auto", "cuda", "mps", "cpu")


def _mps_available(torch_mod) -> bool:  # noqa: ANN001
    mps = getattr(torch_mod.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def select_device(choice: str = "auto") -> tuple["torch.device", str]:
    """Return ``(device, message)``. ``auto`` picks CUDA, then Apple MPS, then the CPU.

    An explicit ``cuda``/``mps`` that is not available raises :class:`DeviceError` rather than silently
    running somewhere else. ``cuda:1`` selects a GPU by index.
    """
    import torch

    choice = (choice or "auto").strip().lower()
    kind = choice.split(":")[0]
    if kind not in DEVICE_CHOICES:
        raise DeviceError(f"Unknown device {choice!r}; choose one of {', '.join(DEVICE_CHOICES)} (or cuda:N).")
    if kind == "auto":
        if torch.cuda.is_available():
            return select_device("cuda")
        if _mps_available(torch):
            return select_device("mps")
        return select_device("cpu")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                "A CUDA GPU was requested but none is usable (no NVIDIA driver, no GPU, or a CPU-only PyTorch). "
                "Choose device 'auto' or 'cpu', or install a CUDA build of PyTorch (in Slicer: the PyTorch extension)."
            )
        dev = torch.device(choice if ":" in choice else "cuda:0")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"GPU {dev.index} was requested but only {torch.cuda.device_count()} GPU(s) exist.")
        props = torch.cuda.get_device_properties(dev)
        return dev, f"Using CUDA GPU {dev.index}: {props.name} ({props.total_memory / 2**30:.0f} GiB)."
    if kind == "mps":
        if not _mps_available(torch):
            raise DeviceError("Apple MPS was requested but is not available on this machine; choose 'auto' or 'cpu'.")
        return torch.device("mps"), "Using the Apple GPU (MPS)."
    threads = torch.get_num_threads()
    return torch.device("cpu"), f"Using the CPU ({threads} thread{'s' if threads != 1 else ''}; no GPU selected)."


def available_memory_bytes(device: "torch.device") -> int:
    """Free memory on ``device`` (CUDA: free VRAM; otherwise available host RAM)."""
    import torch

    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30  # unknown platform: assume a modest 8 GiB
