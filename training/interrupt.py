"""Stopping a training run cleanly: Ctrl-C or SIGTERM (a cluster's preemption, `kill`)
finishes the step in flight, saves a checkpoint and exits, so `--resume auto` loses nothing.

A second Ctrl-C stops at once. Worker processes (data loading, flow targets) ignore both
signals: a terminal sends Ctrl-C to the whole process group, a batch system SIGTERM to every
process of the job, and a worker that died of it would break the step the main process is
finishing. The main process shuts its workers down.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignal:
    """Context manager: while active, SIGINT/SIGTERM only set ``received`` (the main thread
    only; elsewhere it does nothing)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: the user means now
        self.received = signum

    @property
    def name(self) -> str | None:
        return signal.Signals(self.received).name if self.received is not None else None

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by a signal: 128 + its number."""
        return 128 + int(self.received or 0)


def ignore_interrupts(*_worker_id: object) -> None:
    """Initializer of worker processes (DataLoader's ``worker_init_fn`` takes an id)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
