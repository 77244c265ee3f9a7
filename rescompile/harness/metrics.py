"""The ``metrics.jsonl`` training log.

One JSON object per line, written and flushed as it happens:

- a training record per logged step:
  ``{"kind": "train", "step", "epoch", "loss", "train_error", "lr", "images_per_s", "time"}``
- an evaluation record per evaluation:
  ``{"kind": "eval", "step", "test_loss", "test_error", "time"}``

``step`` is the number of optimizer updates done when the record was written; errors are
fractions in [0, 1] (plots show percent); ``time`` is seconds since the Unix epoch.

The file is strict JSON (RFC 8259), readable by any parser: a non-finite number (the loss of a
diverged step) is written as the **string** ``"NaN"``, ``"Infinity"`` or ``"-Infinity"``, never
bare, and :func:`read_metrics` turns those strings back into floats. ``summary.json`` and
``config.json`` follow the same rule (:func:`strict_json`).

A run resumed from a checkpoint at step *k* opens the logger with ``resume_step=k``: records
with ``step > k`` (written after that checkpoint by the killed process) and any partially
written last line are dropped, so the file reads as one uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import numpy as np

from rescompile.errors import UserError
from rescompile.files import write_temp

__all__ = ["METRICS_FILE", "MetricsLogger", "dumps", "metrics_path", "read_metrics", "strict_json"]

METRICS_FILE = "metrics.jsonl"


def metrics_path(path: str | Path) -> Path:
    """``path`` itself if it names a ``.jsonl`` file, else ``path / metrics.jsonl``."""
    path = Path(path)
    return path if path.suffix == ".jsonl" else path / METRICS_FILE


def _to_json(value: Any) -> Any:
    # numpy scalars and arrays reach the logger straight from the backends.
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to metrics.jsonl")


NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def strict_json(value: Any) -> Any:
    """``value`` with every non-finite float replaced by its string (``"NaN"``, ``"Infinity"``,
    ``"-Infinity"``) and numpy scalars and arrays made plain, ready for strict JSON."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    elif isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(v) for v in value]
    return value


def dumps(value: Any, *, default: Any = str, **kw: Any) -> str:
    """Strict JSON text of ``value`` (see :func:`strict_json`); other objects via ``default``."""
    return json.dumps(strict_json(value), allow_nan=False, default=default, **kw)


def _decode(record: dict[str, Any]) -> dict[str, Any]:
    return {
        k: NONFINITE[v] if isinstance(v, str) and v in NONFINITE else v for k, v in record.items()
    }


def _parse(text: str, source: Path, *, strict: bool) -> list[dict[str, Any]]:
    """Parse JSON lines. A final line cut short by a crash is dropped; in the middle of the
    file a bad line raises ``ValueError`` when ``strict``, else ends the parse there."""
    lines = text.split("\n")
    records: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict) and "step" in record:
            records.append(_decode(record))
            continue
        if number == len(lines) or not strict:  # unterminated last line, or lenient
            break
        raise ValueError(f"{source}:{number}: not a metrics record: {line[:80]!r}")
    return records


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a run's ``metrics.jsonl`` (``path`` is the run directory or the file).

    A partially written last line is ignored; a malformed line elsewhere raises ``ValueError``
    naming the file and line.
    """
    file = metrics_path(path)
    return _parse(file.read_text(encoding="utf-8"), file, strict=True)


class MetricsLogger:
    """Append-only writer of ``metrics.jsonl``; each record is flushed as it is written.

    Args:
        path: the run directory (created if needed) or the ``.jsonl`` file.
        resume_step: ``None`` starts a new log, replacing any old file; an integer keeps the
            records with ``step <= resume_step`` and appends after them.
    """

    def __init__(self, path: str | Path, *, resume_step: int | None = None) -> None:
        self.path = metrics_path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept: list[dict[str, Any]] = []
        if resume_step is not None and self.path.exists():
            text = self.path.read_text(encoding="utf-8")
            kept = [r for r in _parse(text, self.path, strict=False) if r["step"] <= resume_step]
        self._rewrite(kept)
        self._file: IO[str] | None = self.path.open("a", encoding="utf-8")

    def _rewrite(self, records: list[dict[str, Any]]) -> None:
        """Replace the file with ``records`` atomically, so a crash here loses nothing."""
        text = "".join(dumps(r, default=_to_json) + "\n" for r in records)
        tmp = write_temp(self.path.parent, self.path.name, text.encode("utf-8"))
        try:
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def log(self, record: Mapping[str, Any]) -> None:
        """Write one record (it must have an integer ``step``) and flush it."""
        if self._file is None:
            raise ValueError(f"{self.path} is closed")
        if not isinstance(record.get("step"), int | np.integer):
            raise ValueError(f"a metrics record needs an integer 'step', got {record!r}")
        try:
            self._file.write(dumps(dict(record), default=_to_json) + "\n")
            self._file.flush()
        except OSError as e:  # a full disk, a file-size limit
            raise UserError(f"cannot write {self.path}: {e.strerror or e}") from None

    def log_train(
        self,
        step: int,
        *,
        epoch: float,
        loss: float,
        train_error: float,
        lr: float,
        images_per_s: float,
        **extra: Any,
    ) -> None:
        """Write a training record."""
        self.log(
            {
                "kind": "train",
                "step": step,
                "epoch": epoch,
                "loss": loss,
                "train_error": train_error,
                "lr": lr,
                "images_per_s": images_per_s,
                **extra,
                "time": round(time.time(), 3),
            }
        )

    def log_eval(self, step: int, *, test_loss: float, test_error: float, **extra: Any) -> None:
        """Write an evaluation record."""
        self.log(
            {
                "kind": "eval",
                "step": step,
                "test_loss": test_loss,
                "test_error": test_error,
                **extra,
                "time": round(time.time(), 3),
            }
        )

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
