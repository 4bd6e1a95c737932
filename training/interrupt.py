"""Stopping a training run cleanly: Ctrl-C or SIGTERM (a cluster's preemption, `kill`)
finishes the step in flight, saves a checkpoint and exits, so `--resume auto` loses nothing.

A second Ctrl-C stops at once. A terminal sends Ctrl-C to the whole process group, so
worker processes ignore it and leave the stopping to the trainer. A batch system may send
SIGTERM to every process of the job: data-loading workers ignore it too (PyTorch stops
them itself), but the flow-target workers do not, because their pool must still be able to
terminate them if one of them dies; when they die of it mid-step, the trainer stops at the
last finished step instead (``Trainer._run_epoch``).
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


def ignore_ctrl_c() -> None:
    """Initializer of the flow-target worker processes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def ignore_stop_signals(_worker_id: int = 0) -> None:
    """``worker_init_fn`` of the DataLoader's worker processes."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
