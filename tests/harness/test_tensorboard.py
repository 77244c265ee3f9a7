"""`rescompile train --tensorboard`: event files both backends write, read back record by record.

The reader here is independent of the writer: it parses the TFRecord framing (length, masked
CRC-32C of the length, payload, masked CRC of the payload) itself and decodes each payload with
the ``Event`` protocol buffer; the expected values are the run's own ``metrics.jsonl``.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from rescompile.harness.loop import TrainConfig, train
from rescompile.harness.metrics import read_metrics
from tests.harness.common import DIGITS, TINY, tiny_config

event_pb2 = pytest.importorskip("tensorboardX.proto.event_pb2")


def _events(path: Path) -> list:
    data, out, at = path.read_bytes(), [], 0
    while at < len(data):
        (length,) = struct.unpack_from("<Q", data, at)
        at += 12  # the length and its CRC
        out.append(event_pb2.Event.FromString(data[at : at + length]))
        at += length + 4  # the payload and its CRC
    return out


def _scalars(run: Path) -> dict[str, dict[int, float]]:
    """tag -> step -> value, as TensorBoard shows it: files in order, and a purge marker (a
    SessionLog START at step T) hiding the earlier files' events at steps >= T."""
    series: dict[str, dict[int, float]] = {}
    for file in sorted((run / "tensorboard").iterdir(), key=lambda p: p.stat().st_mtime_ns):
        for event in _events(file):
            if event.HasField("session_log") and event.session_log.status == 1:  # START
                for points in series.values():
                    for step in [s for s in points if s >= event.step]:
                        del points[step]
            for value in event.summary.value:
                series.setdefault(value.tag, {})[event.step] = value.simple_value
    return series


def _expected(run: Path) -> dict[str, dict[int, float]]:
    records = read_metrics(run)
    pairs = {
        "train/loss": ("train", "loss"),
        "train/error": ("train", "train_error"),
        "train/lr": ("train", "lr"),
        "test/loss": ("eval", "test_loss"),
        "test/error": ("eval", "test_error"),
    }
    return {
        tag: {r["step"]: float(np.float32(r[key])) for r in records if r["kind"] == kind}
        for tag, (kind, key) in pairs.items()
    }


class _Crash(RuntimeError):
    """A crash: nothing is saved, the checkpoint of step 8 stands."""


@pytest.mark.parametrize("backend", ["torch", "flax"])
def test_tensorboard_events_hold_the_logged_records_across_a_resume(tmp_path, backend):
    run = tmp_path / "run"
    config = tiny_config(
        run,
        backend=backend,
        batch_size=32,
        steps=12,
        log_every=2,
        eval_every=4,
        ckpt_every=4,
        tensorboard=True,
    )

    def stop(step: int) -> None:
        if step == 10:  # logged step 10, then crashed: the resumed run writes it again
            raise _Crash

    with pytest.raises(_Crash):
        train(config, on_step=stop)
    train(resume=run)
    got, want = _scalars(run), _expected(run)
    assert sorted(want["train/loss"]) == [2, 4, 6, 8, 10, 12]
    assert sorted(want["test/error"]) == [4, 8, 12]
    for tag, points in want.items():
        assert got[tag] == points, tag
    first, second = sorted((run / "tensorboard").iterdir(), key=lambda p: p.stat().st_mtime_ns)
    # the crashed session had logged step 10; the resumed one (from step 8) hides it for
    # TensorBoard with a purge marker at step 9 before writing steps 10 and 12 again
    assert any(
        v.tag == "train/loss" for e in _events(first) if e.step == 10 for v in e.summary.value
    )
    starts = [e.step for e in _events(second) if e.HasField("session_log")]
    assert starts == [9]


def test_without_tensorboardx_the_flag_is_a_clear_error(monkeypatch, tmp_path):
    from rescompile.errors import UserError

    monkeypatch.setitem(__import__("sys").modules, "tensorboardX", None)  # not installed
    config = TrainConfig(spec=DIGITS, overrides=TINY, out=str(tmp_path / "r"), tensorboard=True)
    with pytest.raises(UserError, match=r"pip install 'rescompile\[tensorboard\]'"):
        train(config)
    assert not (tmp_path / "r").exists()  # refused before anything was written


def test_sessions_opened_within_one_second_keep_their_own_files(tmp_path):
    """tensorboardX names an event file by the second it was opened; a session resumed within
    that second must not truncate the first one's file."""
    from rescompile.harness.tensorboard import TensorBoardWriter

    for step, resume in ((1, None), (2, 1), (3, 2)):  # well within a second of each other
        writer = TensorBoardWriter(tmp_path, resume_step=resume)
        writer.log_eval(step, test_loss=float(step), test_error=0.5)
        writer.close()
    assert len(list((tmp_path / "tensorboard").iterdir())) == 3
    assert _scalars(tmp_path)["test/loss"] == {1: 1.0, 2: 2.0, 3: 3.0}
