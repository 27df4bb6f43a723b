"""Errors that MedSegAI raises on purpose.

Every error a user can meet carries a message that says what is wrong *and* what to do about it.
Front ends (CLI, batch script, Slicer widgets) catch :class:`MedSegAIError` and show ``str(error)``
verbatim; anything else is a bug and is shown with its traceback.
"""

from __future__ import annotations


class MedSegAIError(Exception):
    """Base class of every deliberate, user-facing MedSegAI error."""


class InputError(MedSegAIError, ValueError):
    """The input image is not something the task can work on (wrong dimensionality, NaN, constant...)."""


class ModelError(MedSegAIError):
    """A model cannot be found, its weight file is corrupt, its checksum or tensor shapes do not match."""


class DeviceError(MedSegAIError):
    """The requested compute device (CUDA, MPS) is not available or ran out of memory on every fallback."""


class OutputError(MedSegAIError, OSError):
    """Results cannot be written where the user asked (unwritable folder, existing file, full disk...)."""


class Cancelled(MedSegAIError):
    """The user cancelled the run. Nothing half-written is left behind."""

    def __init__(self, message: str = "Cancelled by the user; nothing was written."):
        super().__init__(message)
