"""TensorBoard event files for a run (``rescompile train --tensorboard``), from either backend.

The records of ``metrics.jsonl`` are also written as scalars to ``RUN/tensorboard/`` with
tensorboardX (the optional extra ``rescompile[tensorboard]``; it needs neither TensorFlow nor
PyTorch), so ``tensorboard --logdir runs`` shows every run next to each other:
``train/loss``, ``train/error``, ``train/lr``, ``train/images_per_s`` at each logged step and
``test/loss``, ``test/error`` at each evaluation, by step. Errors are fractions, as in the log.

A resumed run's writer starts with TensorBoard's purge marker at the step after its checkpoint,
so the events the interrupted process wrote past that checkpoint are hidden, as the resumed
``metrics.jsonl`` drops them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rescompile.errors import UserError

__all__ = ["TENSORBOARD_DIR", "TensorBoardWriter", "Tee", "require_tensorboard"]

TENSORBOARD_DIR = "tensorboard"


def require_tensorboard() -> None:
    """Fail early, with the fix, when tensorboardX is not installed."""
    try:
        import tensorboardX  # noqa: F401
    except ImportError:
        raise UserError(
            "--tensorboard needs tensorboardX: pip install 'rescompile[tensorboard]'"
        ) from None


class TensorBoardWriter:
    """Writes the training log's records as TensorBoard scalars (rank 0 only)."""

    def __init__(self, run_dir: str | Path, *, resume_step: int | None = None) -> None:
        require_tensorboard()
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(
            str(Path(run_dir) / TENSORBOARD_DIR),
            purge_step=None if resume_step is None else resume_step + 1,
            flush_secs=30,
            # tensorboardX names a file by the second it was opened: a resume within the same
            # second would truncate the interrupted session's file; nanoseconds keep them apart
            # (and in order: TensorBoard reads a directory's files sorted by name)
            filename_suffix=f".{time.time_ns()}",
        )

    def log_train(
        self,
        step: int,
        *,
        loss: float,
        train_error: float,
        lr: float,
        images_per_s: float,
        **_: Any,
    ) -> None:
        for tag, value in (
            ("train/loss", loss),
            ("train/error", train_error),
            ("train/lr", lr),
            ("train/images_per_s", images_per_s),
        ):
            self.writer.add_scalar(tag, float(value), step)

    def log_eval(self, step: int, *, test_loss: float, test_error: float, **extra: Any) -> None:
        self.writer.add_scalar("test/loss", float(test_loss), step)
        self.writer.add_scalar("test/error", float(test_error), step)
        for key in ("ema_test_loss", "ema_test_error"):  # a recipe's weight average
            if key in extra:
                self.writer.add_scalar(
                    f"test/{key.replace('_test_', '_')}", float(extra[key]), step
                )

    def close(self) -> None:
        self.writer.close()


class Tee:
    """A logger that hands every record to several (``metrics.jsonl`` and TensorBoard)."""

    def __init__(self, *loggers: Any) -> None:
        self.loggers = loggers

    def log_train(self, step: int, **fields: Any) -> None:
        for logger in self.loggers:
            logger.log_train(step, **fields)

    def log_eval(self, step: int, **fields: Any) -> None:
        for logger in self.loggers:
            logger.log_eval(step, **fields)

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()
