"""The portable checkpoint: round trip, atomic commits, corruption and compatibility errors."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rescompile.harness import checkpoint as ckpt
from rescompile.harness.checkpoint import (
    LATEST_FILE,
    CheckpointError,
    check_compatible,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    split_optimizer,
)

SPEC = {"name": "tiny", "stages": [{"depth": 1, "width": 4}]}


def _tensors(step: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(step)
    return {
        "conv1.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "bn1.running_mean": rng.standard_normal(4).astype(np.float32),
        "bn1.num_batches_tracked": np.array(step, dtype=np.int64),
        "fc.weight": rng.standard_normal((10, 4)).astype(np.float32),
        "optim/conv1.weight.momentum": np.zeros((4, 3, 3, 3), np.float32),
    }


def _save(run: Path, step: int, **kwargs: Any) -> Path:
    state = {
        "step": step,
        "epoch": step // 10,
        "seed": 0,
        "optimizer": {"lr": 0.1, "momentum": 0.9},
    }
    return save_checkpoint(run, _tensors(step), SPEC, "sha256:abc", state, **kwargs)


def _assert_tensors_equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
        np.testing.assert_array_equal(a[name], b[name])


def test_round_trip(tmp_path: Path) -> None:
    path = _save(tmp_path, 123)
    assert path == tmp_path / "ckpt-000123.safetensors"
    assert (tmp_path / "ckpt-000123.json").is_file()
    assert (tmp_path / LATEST_FILE).read_text().strip() == "ckpt-000123"
    tensors, meta = load_checkpoint(path)
    _assert_tensors_equal(tensors, _tensors(123))
    assert meta["spec"] == SPEC and meta["spec_hash"] == "sha256:abc"
    assert meta["state"]["step"] == 123 and meta["state"]["optimizer"]["momentum"] == 0.9
    # The run directory, the sidecar and the stem all name the same checkpoint.
    for alias in (tmp_path, tmp_path / "ckpt-000123.json", tmp_path / "ckpt-000123"):
        _assert_tensors_equal(load_checkpoint(alias)[0], tensors)
    model, optim = split_optimizer(tensors)
    assert "fc.weight" in model and list(optim) == ["conv1.weight.momentum"]


def test_named_checkpoint_has_no_pointer(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "best.safetensors", _tensors(1), SPEC, "h", {"step": 1})
    assert path.name == "best.safetensors" and (tmp_path / "best.json").is_file()
    assert not (tmp_path / LATEST_FILE).exists()
    assert load_checkpoint(path)[1]["state"] == {"step": 1}


def test_keeps_the_last_k(tmp_path: Path) -> None:
    for step in (10, 20, 30, 40, 50):
        _save(tmp_path, step, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        "ckpt-000040.safetensors",
        "ckpt-000050.safetensors",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ckpt-000040.json", "ckpt-000040.safetensors",
        "ckpt-000050.json", "ckpt-000050.safetensors", "latest",
    ]  # fmt: skip
    assert latest_checkpoint(tmp_path) == tmp_path / "ckpt-000050.safetensors"


class SimulatedCrash(BaseException):
    """The process dies: nothing after this point runs."""


def _crash_on_replace(monkeypatch: pytest.MonkeyPatch, call: int) -> None:
    """Make the ``call``-th ``os.replace`` inside save_checkpoint kill the 'process'."""
    real_replace = os.replace
    calls = {"n": 0}

    def replace(src: Any, dst: Any) -> None:
        calls["n"] += 1
        if calls["n"] == call:
            raise SimulatedCrash(dst)
        real_replace(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", replace)


@pytest.mark.parametrize(
    "call", [1, 2, 3], ids=["before-tensors", "before-sidecar", "before-pointer"]
)
def test_crash_during_save_leaves_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, call: int
) -> None:
    _save(tmp_path, 100)
    with monkeypatch.context() as patch:
        _crash_on_replace(patch, call)
        with pytest.raises(SimulatedCrash):
            _save(tmp_path, 200)
    assert latest_checkpoint(tmp_path) == tmp_path / "ckpt-000100.safetensors"
    tensors, meta = load_checkpoint(tmp_path)
    _assert_tensors_equal(tensors, _tensors(100))
    assert meta["state"]["step"] == 100
    # The next successful save works and clears whatever the crash left behind.
    _save(tmp_path, 300)
    assert latest_checkpoint(tmp_path) == tmp_path / "ckpt-000300.safetensors"
    leftovers = {p.name for p in tmp_path.iterdir()} - {LATEST_FILE}
    assert all(
        name.startswith(("ckpt-000100.", "ckpt-000200.", "ckpt-000300.")) for name in leftovers
    )
    if call < 3:  # an uncommitted ckpt-000200 is garbage and must be gone
        assert not any(name.startswith("ckpt-000200") for name in leftovers)


def test_crash_while_overwriting_the_same_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _save(tmp_path, 100)
    _save(tmp_path, 200)
    with monkeypatch.context() as patch:
        _crash_on_replace(patch, 2)  # new tensors are in place, the sidecar is not
        with pytest.raises(SimulatedCrash):
            save_checkpoint(tmp_path, _tensors(999), SPEC, "sha256:abc", {"step": 200})
    # ckpt-000200 is no longer a consistent pair, so the pointer falls back to step 100.
    assert latest_checkpoint(tmp_path) == tmp_path / "ckpt-000100.safetensors"
    _assert_tensors_equal(load_checkpoint(tmp_path)[0], _tensors(100))


def test_leftovers_of_a_killed_save_are_ignored_then_removed(tmp_path: Path) -> None:
    _save(tmp_path, 100)
    (tmp_path / "ckpt-000200.safetensors").write_bytes(b"half a file")
    (tmp_path / ".ckpt-000200.json.x1y2.tmp").write_bytes(b"{")
    (tmp_path / ".latest.z3.tmp").write_bytes(b"ckpt-0002")
    assert latest_checkpoint(tmp_path) == tmp_path / "ckpt-000100.safetensors"
    with pytest.raises(CheckpointError, match=r"ckpt-000200.json is missing: .* not a complete"):
        load_checkpoint(tmp_path / "ckpt-000200.safetensors")
    _save(tmp_path, 150)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ckpt-000100.json", "ckpt-000100.safetensors",
        "ckpt-000150.json", "ckpt-000150.safetensors", "latest",
    ]  # fmt: skip


_KILL_CHILD = """
import sys
import numpy as np
from rescompile.harness.checkpoint import save_checkpoint
run = sys.argv[1]
for step in range(1, 100_000):
    x = np.full((256, 1024), step, dtype=np.float32)  # 1 MiB, content identifies the step
    save_checkpoint(run, {"w": x}, {}, "h", {"step": step}, keep=2)
"""


@pytest.mark.parametrize("delay", [0.05, 0.2])
def test_sigkill_during_saves_never_loses_the_last_good_checkpoint(
    tmp_path: Path, delay: float
) -> None:
    import signal
    import subprocess
    import sys
    import time

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    child = subprocess.Popen([sys.executable, "-c", _KILL_CHILD, str(tmp_path)], env=env)
    try:
        deadline = time.monotonic() + 20
        while latest_checkpoint(tmp_path) is None and child.poll() is None:
            assert time.monotonic() < deadline, "the child never saved a checkpoint"
            time.sleep(0.01)
        time.sleep(delay)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL, "the child finished or failed before the kill"
    tensors, meta = load_checkpoint(tmp_path)
    step = meta["state"]["step"]
    assert step >= 1
    assert (tensors["w"] == step).all()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: b[: len(b) - 100], "is truncated or corrupt"),
        (lambda b: b[:200] + bytes([b[200] ^ 0xFF]) + b[201:], "SHA-256 differs"),
    ],
    ids=["truncated", "bit-flip"],
)
def test_damaged_tensor_file(
    tmp_path: Path, damage: Callable[[bytes], bytes], message: str
) -> None:
    path = _save(tmp_path, 7)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_invalid_safetensors_with_matching_sidecar(tmp_path: Path) -> None:
    import hashlib

    path = _save(tmp_path, 7)
    garbage = b"\xff" * 64
    path.write_bytes(garbage)
    sidecar = path.with_suffix(".json")
    meta = json.loads(sidecar.read_text())
    meta.update(bytes=len(garbage), sha256=hashlib.sha256(garbage).hexdigest())
    sidecar.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_checkpoint(path)


def test_damaged_or_foreign_sidecar(tmp_path: Path) -> None:
    path = _save(tmp_path, 7)
    sidecar = path.with_suffix(".json")
    sidecar.write_text('{"format": "rescompile-checkpoint", "vers')
    with pytest.raises(CheckpointError, match="ckpt-000007.json is corrupt"):
        load_checkpoint(path)
    sidecar.write_text('{"format": "something-else"}')
    with pytest.raises(CheckpointError, match="not a rescompile checkpoint sidecar"):
        load_checkpoint(path)
    sidecar.write_text('{"format": "rescompile-checkpoint", "version": 99}')
    with pytest.raises(CheckpointError, match="format version 99"):
        load_checkpoint(path)
    assert latest_checkpoint(tmp_path) is None


def test_empty_run_dir_and_spec_hash_check(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path) is None
    assert latest_checkpoint(tmp_path / "missing") is None
    with pytest.raises(CheckpointError, match="no complete checkpoint in"):
        load_checkpoint(tmp_path)
    _save(tmp_path, 1)
    assert load_checkpoint(tmp_path, spec_hash="sha256:abc")[1]["state"]["step"] == 1
    with pytest.raises(
        CheckpointError, match="written for spec hash sha256:abc, but this spec hashes to x"
    ):
        load_checkpoint(tmp_path, spec_hash="x")


def test_save_needs_a_step_in_a_run_dir(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"state\['step'\]"):
        save_checkpoint(tmp_path, _tensors(1), SPEC, "h", {"epoch": 1})
    assert list(tmp_path.iterdir()) == []


EXPECTED = {
    "conv1.weight": (4, 3, 3, 3),
    "bn1.running_mean": (4,),
    "bn1.num_batches_tracked": (),
    "fc.weight": (10, 4),
}


def test_compatible_checkpoint_passes() -> None:
    check_compatible(_tensors(1), EXPECTED)  # optimizer entries are not model tensors


def test_mismatch_names_the_first_tensor_in_model_order() -> None:
    tensors = _tensors(1)
    tensors["bn1.running_mean"] = np.zeros(8, np.float32)
    tensors["fc.weight"] = np.zeros((100, 4), np.float32)
    del tensors["bn1.num_batches_tracked"]
    tensors["zz.extra"] = np.zeros(1)
    with pytest.raises(CheckpointError) as info:
        check_compatible(tensors, EXPECTED)
    assert str(info.value) == (
        "checkpoint does not fit the model: bn1.running_mean has shape (8) in the checkpoint, "
        "the model expects (4) (and 3 more mismatches)"
    )


def test_missing_and_unexpected_tensors() -> None:
    tensors = _tensors(1)
    del tensors["fc.weight"]
    with pytest.raises(
        CheckpointError, match=r"fc.weight \(10, 4\) is missing from the checkpoint$"
    ):
        check_compatible(tensors, EXPECTED)
    tensors = {**_tensors(1), "layer9.b": np.zeros(1), "layer9.a": np.zeros(1)}
    with pytest.raises(
        CheckpointError,
        match=r"layer9.a is in the checkpoint but not in the model \(and 1 more mismatch\)",
    ):
        check_compatible(tensors, EXPECTED)
    with pytest.raises(CheckpointError, match="optim/conv1.weight.momentum is in the checkpoint"):
        check_compatible(_tensors(1), EXPECTED, ignore_prefix=None)
