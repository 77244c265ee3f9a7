"""What a run shows while it trains: a progress bar on a terminal, plain lines in a log.

On a terminal (stderr is a TTY) a rich progress bar shows the step, the last logged window's
loss, error, learning rate and images/s, and the time left; each evaluation prints a line above
it. Without a terminal (a batch job's log, ``nohup``, CI) there is no bar, and each evaluation
line carries the images/s, the time elapsed in this session and the estimated time left itself.
Only rank 0 reports; ``quiet`` silences everything but errors.
"""

from __future__ import annotations

import math
import sys
import time

__all__ = ["Reporter", "hms"]


def hms(seconds: float) -> str:
    """``1:02:03`` or ``2:03``."""
    m, sec = divmod(int(round(max(seconds, 0.0))), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


class Reporter:
    """A rich progress bar on a terminal; a line per evaluation otherwise; silence with quiet."""

    def __init__(
        self, total: int, start: int, *, quiet: bool, enabled: bool, session_start: float
    ) -> None:
        self.total = total
        self.quiet = quiet or not enabled
        self.session_start = session_start
        self.loop_start, self.loop_start_step = time.perf_counter(), start
        self.last_ips = 0.0
        self.bar = None
        if self.quiet:
            return
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(
                TextColumn("[bold]train"),
                BarColumn(bar_width=24),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self.task = self.bar.add_task("train", total=total, completed=start, info="")
            self.bar.start()

    def say(self, text: str) -> None:
        """A line above the progress bar (or on stderr)."""
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.console.print(text, highlight=False)
        else:
            print(text, file=sys.stderr, flush=True)

    def start_loop(self, step: int) -> None:
        """The training loop starts (or resumes) at ``step``: the ETA counts from here."""
        self.loop_start, self.loop_start_step = time.perf_counter(), step

    def advance(self, step: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=step)

    def window(self, step: int, *, loss: float, error: float, lr: float, ips: float) -> None:
        """A logged window of training steps: the bar shows its figures."""
        self.last_ips = ips or self.last_ips
        if self.bar is not None:
            info = f"loss {loss:.3f}  err {100 * error:5.1f}%  lr {lr:.3g}  {ips:,.0f} img/s"
            self.bar.update(self.task, completed=step, info=info)

    def evaluation(
        self, step: int, *, train_error: float, test_error: float, test_loss: float, lr: float
    ) -> None:
        """The line of one evaluation."""
        width = len(str(self.total))
        shown = "  n/a " if math.isnan(train_error) else f"{100 * train_error:5.1f}%"
        self.say(
            f"step {step:>{width}}/{self.total}  train err {shown}  "
            f"test err {100 * test_error:5.1f}%  test loss {test_loss:.3f}  lr {lr:.3g}  "
            f"{self.pace(step)}"
        )

    def pace(self, step: int) -> str:
        """Training images/s (of the last logged window), time elapsed in this session and the
        estimated time left (at this session's pace so far, evaluations and checkpoints
        included): what the progress bar shows on a terminal, for logs without one."""
        now = time.perf_counter()
        elapsed = now - self.session_start
        done = step - self.loop_start_step
        left = (self.total - step) * (now - self.loop_start) / done if done > 0 else 0.0
        return f"{self.last_ips:,.0f} img/s  elapsed {hms(elapsed)}  ETA {hms(left)}"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
