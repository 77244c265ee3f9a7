"""Ctrl-C that lands between training steps, never inside one.

A SIGINT raises :class:`KeyboardInterrupt` wherever the interpreter happens to be. Inside a
training step that can be after the forward pass updated the BatchNorm running statistics but
before the optimizer updated the weights (or after the update but before the step counter moved),
and a checkpoint saved then pairs a state with the wrong step: the resumed run is no longer the
uninterrupted run. :class:`DeferredInterrupt` holds a Ctrl-C that arrives inside a
:meth:`~DeferredInterrupt.critical` section until the section ends, and raises it there, where
the state and the step agree. A second Ctrl-C inside the section raises at once, and marks the
state as torn (:attr:`~DeferredInterrupt.torn`) so that nothing is saved from it: the last
checkpoint on disk stands, as after ``kill -9``.

Only the main thread receives signals; elsewhere (a notebook's worker thread, a process that
ignores SIGINT or installed its own handler) the guard does nothing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from types import FrameType, TracebackType

__all__ = ["DeferredInterrupt"]


class DeferredInterrupt:
    """Install with ``with guard:``; mark the steps with ``with guard.critical():``."""

    def __init__(self, notice: str | None = None) -> None:
        self.notice = notice  # printed to stderr when a Ctrl-C is held
        self.pending = False
        self.torn = False
        self.depth = 0
        self._previous: object = None
        self._installed = False

    def __enter__(self) -> DeferredInterrupt:
        if (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        ):
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)  # type: ignore[arg-type]
            self._installed = False

    def critical(self) -> _Critical:
        """A section a Ctrl-C does not interrupt (the first one is raised at its end)."""
        return _Critical(self)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.depth == 0:
            raise KeyboardInterrupt
        if self.pending:  # the second Ctrl-C: stop now, and save nothing from this state
            self.torn = True
            raise KeyboardInterrupt
        self.pending = True
        if self.notice:  # a raw write: the interrupted code may be inside a buffered one
            with contextlib.suppress(OSError):
                os.write(sys.stderr.fileno(), f"\n{self.notice}\n".encode())


class _Critical:
    def __init__(self, guard: DeferredInterrupt) -> None:
        self.guard = guard

    def __enter__(self) -> None:
        self.guard.depth += 1

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        guard = self.guard
        guard.depth -= 1
        if guard.depth == 0 and guard.pending and kind is None:
            guard.pending = False
            raise KeyboardInterrupt
