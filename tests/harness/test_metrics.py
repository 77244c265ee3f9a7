"""metrics.jsonl: writing, resuming after a kill, and reading a torn last line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rescompile.harness.metrics import METRICS_FILE, MetricsLogger, read_metrics


def _log_run(run: Path, steps: range, *, resume_step: int | None = None) -> None:
    with MetricsLogger(run, resume_step=resume_step) as log:
        for step in steps:
            log.log_train(
                step, epoch=step / 10, loss=1.0 / step, train_error=0.5, lr=0.1, images_per_s=1e3
            )
            if step % 20 == 0:
                log.log_eval(step, test_loss=0.9, test_error=0.4)


def test_records_round_trip(tmp_path: Path) -> None:
    _log_run(tmp_path, range(10, 41, 10))
    records = read_metrics(tmp_path)
    assert [(r["kind"], r["step"]) for r in records] == [
        ("train", 10), ("train", 20), ("eval", 20), ("train", 30), ("train", 40), ("eval", 40),
    ]  # fmt: skip
    first = records[0]
    assert {"epoch", "loss", "train_error", "lr", "images_per_s", "time"} <= set(first)
    assert first["loss"] == pytest.approx(0.1)
    assert records[2]["test_error"] == 0.4
    assert read_metrics(tmp_path / METRICS_FILE) == records


def test_each_record_is_flushed_immediately(tmp_path: Path) -> None:
    log = MetricsLogger(tmp_path)
    log.log_eval(np.int64(5), test_loss=np.float32(0.25), test_error=np.float64(0.5))
    (record,) = read_metrics(tmp_path)  # readable while the logger is still open
    record.pop("time")
    assert record == {"kind": "eval", "step": 5, "test_loss": 0.25, "test_error": 0.5}
    log.close()
    with pytest.raises(ValueError, match="closed"):
        log.log({"step": 6})


def test_resume_truncates_records_after_the_checkpoint(tmp_path: Path) -> None:
    _log_run(tmp_path, range(10, 61, 10))  # the killed run got to step 60
    _log_run(tmp_path, range(40, 51, 10), resume_step=30)  # resumed from the step-30 checkpoint
    steps = [(r["kind"], r["step"]) for r in read_metrics(tmp_path)]
    assert steps == [
        ("train", 10), ("train", 20), ("eval", 20), ("train", 30), ("train", 40), ("eval", 40),
        ("train", 50),
    ]  # fmt: skip


def test_partial_last_line_is_ignored_and_repaired_on_resume(tmp_path: Path) -> None:
    _log_run(tmp_path, range(10, 31, 10))
    file = tmp_path / METRICS_FILE
    with file.open("a") as out:
        out.write('{"kind": "train", "step": 40, "los')  # killed mid-write
    assert [r["step"] for r in read_metrics(tmp_path)] == [10, 20, 20, 30]
    _log_run(tmp_path, range(40, 41), resume_step=30)
    assert [r["step"] for r in read_metrics(tmp_path)] == [10, 20, 20, 30, 40, 40]
    assert file.read_text().endswith("\n")


def test_corrupt_line_in_the_middle_is_an_error(tmp_path: Path) -> None:
    file = tmp_path / METRICS_FILE
    file.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a metrics record"):
        read_metrics(file)


def test_new_run_replaces_an_old_log(tmp_path: Path) -> None:
    _log_run(tmp_path, range(10, 31, 10))
    _log_run(tmp_path, range(1, 3))
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]


def test_record_needs_an_integer_step(tmp_path: Path) -> None:
    with MetricsLogger(tmp_path / "m.jsonl") as log, pytest.raises(ValueError, match="step"):
        log.log({"loss": 1.0})
