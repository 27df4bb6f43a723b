"""Progress reporting and cooperative cancellation.

Every long step takes a :class:`Progress` and a :class:`CancelToken`. Work loops call
``cancel.check()`` at least once a second (each sliding-window batch, each training step), which raises
:class:`MedSegAILib.errors.Cancelled`; callers then discard partial results, so nothing half-written
ever reaches the scene or the disk.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Optional

from MedSegAILib.errors import Cancelled

ProgressCallback = Callable[[float, str], None]


class CancelToken:
    """A thread-safe flag that a GUI button, a signal handler or a test sets to stop the work."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.requested_at: Optional[float] = None

    def cancel(self) -> None:
        if not self._event.is_set():
            self.requested_at = time.monotonic()
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        """Raise :class:`Cancelled` if cancellation was requested."""
        if self._event.is_set():
            raise Cancelled()


class Progress:
    """Reports a fraction in [0, 1] and a short text to a callback; can be split into sub-ranges.

    >>> p = Progress(lambda f, t: print(round(f, 2), t))
    >>> sub = p.sub(0.5, 1.0)        # the second half of the work
    >>> sub(0.5, "halfway there")    # reported as 0.75
    0.75 halfway there
    """

    def __init__(self, callback: Optional[ProgressCallback] = None, start: float = 0.0, end: float = 1.0,
                 prefix: str = ""):
        self._callback = callback
        self._start = start
        self._end = end
        self._prefix = prefix  #: put before every text (e.g. "Case 2/5: ")
        self.last_fraction = start
        self.last_text = ""

    def __call__(self, fraction: float, text: str = "") -> None:
        fraction = min(max(float(fraction), 0.0), 1.0)
        absolute = self._start + (self._end - self._start) * fraction
        self.last_fraction, self.last_text = absolute, text
        if self._callback is not None:
            self._callback(absolute, self._prefix + text)

    def sub(self, start: float, end: float, prefix: str = "") -> "Progress":
        """A child reporter that maps its own [0, 1] onto [start, end] of this one (its texts after ``prefix``)."""
        span = self._end - self._start
        return Progress(self._callback, self._start + span * start, self._start + span * end, self._prefix + prefix)


def null_progress() -> Progress:
    return Progress(None)
