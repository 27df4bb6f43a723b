"""Run one long job in a Python worker thread and hand its progress and outcome to the GUI by polling.

Pure Python (no Qt, no slicer): the worker thread never touches Qt. It only stores the latest
``(fraction, text)`` into a lock-protected slot; the GUI polls :meth:`BackgroundRun.takeProgress` and
:attr:`BackgroundRun.done` from a ``qt.QTimer`` on the main thread. torch releases the GIL in its kernels, so
the GUI stays responsive while the network runs.
"""

from __future__ import annotations

import threading
import time
import traceback
from typing import Any, Callable, Optional

from MedSegAILib.engine.progress import CancelToken


class ProgressSlot:
    """Thread-safe holder of the latest progress report; older reports are simply overwritten."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._value: tuple[float, str] = (0.0, "")
        self._serial = 0
        self._taken = 0

    def set(self, fraction: float, text: str = "") -> None:
        with self._lock:
            self._value = (float(fraction), str(text))
            self._serial += 1

    def take(self) -> Optional[tuple[float, str]]:
        """The latest report if it changed since the previous ``take``, else None."""
        with self._lock:
            if self._serial == self._taken:
                return None
            self._taken = self._serial
            return self._value


class BackgroundRun:
    """``target(progress, cancelToken) -> result`` in a daemon thread.

    After :attr:`done` turns true, exactly one of :attr:`result` / :attr:`error` is meaningful;
    :attr:`errorTraceback` holds the formatted traceback of an unexpected exception.
    """

    def __init__(self, target: Callable[[Callable[[float, str], None], CancelToken], Any], name: str = "MedSegAI"):
        self._target = target
        self.cancelToken = CancelToken()
        self.progressSlot = ProgressSlot()
        self.result: Any = None
        self.error: Optional[BaseException] = None
        self.errorTraceback: str = ""
        self.startTime: Optional[float] = None
        self.endTime: Optional[float] = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._main, name=f"{name} worker", daemon=True)

    def _main(self) -> None:
        try:
            self.result = self._target(self.progressSlot.set, self.cancelToken)
        except BaseException as exc:  # noqa: BLE001 - everything is handed to the GUI thread
            self.error = exc
            self.errorTraceback = traceback.format_exc()
        finally:
            self.endTime = time.monotonic()
            self._done.set()

    def start(self) -> "BackgroundRun":
        self.startTime = time.monotonic()
        self._thread.start()
        return self

    def cancel(self) -> None:
        self.cancelToken.cancel()

    @property
    def cancelRequested(self) -> bool:
        return self.cancelToken.cancelled

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def elapsedSeconds(self) -> float:
        if self.startTime is None:
            return 0.0
        return (self.endTime if self.endTime is not None else time.monotonic()) - self.startTime

    def takeProgress(self) -> Optional[tuple[float, str]]:
        return self.progressSlot.take()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until done (scripting and tests only, never on the GUI thread); True when done."""
        return self._done.wait(timeout)
