"""Run directories shared by processes, damaged or hostile, and data files that are hostile.

- One process at a time: a second `train --out DIR` or `--resume DIR` is refused with one line
  while the first runs; the lock is the kernel's (flock), so a `kill -9` leaves no stale lock.
- A damaged checkpoint is skipped with a warning that names it and says why; when every one is
  damaged the run is refused and nothing in it is touched.
- Files of a run directory get the umask's permissions.
- A hostile `config.json`, CIFAR pickle or `--data synthetic:HUGE` is one line, exit 1.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rescompile.errors import UserError
from tests.harness import common
from tests.harness.common import DIGITS, SMALL, THIRTY_STEPS


def _umask_022() -> None:
    os.umask(0o022)


def cli(*args: str, env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess:
    """`rescompile ARGS` with the umask 022 the permission checks expect."""
    return common.cli(*args, env=env, timeout=timeout, preexec_fn=_umask_022)


def one_line(p: subprocess.CompletedProcess, text: str) -> None:
    assert p.returncode == 1, p.stderr
    assert "Traceback" not in p.stderr
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("error: "), p.stderr
    assert text in p.stderr, p.stderr


def snapshot(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.is_file()}


# -- one process at a time -----------------------------------------------------------------------


def test_a_held_run_directory_refuses_a_second_train_and_resume(tmp_path, env):
    from rescompile.files import DirectoryLock

    run = tmp_path / "run"
    run.mkdir()
    with DirectoryLock(run, "busy"):
        p = cli("train", *SMALL, "--steps", "2", "--out", str(run), env=env)
        one_line(p, f"error: {run} is in use by another rescompile process")
        (run / "config.json").write_text("{}")
        p = cli("train", "--resume", str(run), env=env)
        one_line(p, f"error: {run} is in use by another rescompile process")
    assert sorted(x.name for x in run.iterdir()) == ["config.json"]  # nothing else written


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    from rescompile.errors import UserError
    from rescompile.files import DirectoryLock

    code = (
        "import sys, time\nfrom rescompile.files import DirectoryLock\n"
        f"lock = DirectoryLock({str(tmp_path)!r}, 'busy')\nprint('held', flush=True)\n"
        "time.sleep(600)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(UserError, match="^busy$"):
            DirectoryLock(tmp_path, "busy")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    with DirectoryLock(tmp_path, "busy"):  # the kernel dropped it with the process
        pass
    assert list(tmp_path.iterdir()) == []  # and no lock file was ever made


def test_two_trains_on_one_directory(tmp_path, env):
    """The second process is refused while the first runs; the first completes intact."""
    run = tmp_path / "run"
    first = common.start(
        "train", *SMALL, "--steps", "400", "--eval-every", "400", "--out", str(run), env=env
    )
    try:
        deadline = time.monotonic() + 120
        while not (run / "metrics.jsonl").exists():
            assert first.poll() is None, first.communicate()[1]
            assert time.monotonic() < deadline
            time.sleep(0.02)
        p = cli("train", *SMALL, "--steps", "400", "--seed", "1", "--out", str(run), env=env)
        if first.poll() is None:  # still running (it takes seconds): refused for being in use
            one_line(p, "is in use by another rescompile process")
        else:  # pragma: no cover - a very fast machine: refused for holding a finished run
            one_line(p, "already holds a run")
        p = cli("train", "--resume", str(run), env=env)
        if first.poll() is None:
            one_line(p, "is in use by another rescompile process")
        assert first.wait(timeout=240) == 0, first.communicate()[1]
    finally:
        if first.poll() is None:
            first.kill()
    config = json.loads((run / "config.json").read_text())
    assert config["config"]["seed"] == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 400


# -- damaged checkpoints, file modes -------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, env) -> Path:
    run = tmp_path_factory.mktemp("runs") / "run"
    p = cli("train", *THIRTY_STEPS, "--out", str(run), env=env)
    assert p.returncode == 0, p.stderr
    return run


def test_run_files_get_the_umask_permissions(finished_run):
    for p in finished_run.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p.name  # umask 022, as any program's


def _copy(run: Path, to: Path) -> Path:
    import shutil

    shutil.copytree(run, to)
    return to


def test_a_truncated_latest_checkpoint_is_skipped_and_named(finished_run, tmp_path, env):
    run = _copy(finished_run, tmp_path / "run")
    (run / "summary.json").unlink()
    latest = run / "ckpt-000030.safetensors"
    latest.write_bytes(latest.read_bytes()[:100])
    p = cli("train", "--resume", str(run), env=env)
    assert p.returncode == 0, p.stderr
    warning = p.stderr.splitlines()[0]
    assert warning.startswith("warning: skipped the damaged checkpoint ckpt-000030 (")
    assert "truncated or corrupt: 100 bytes" in warning
    assert "resumed from ckpt-000020.safetensors (step 20)" in p.stderr
    from rescompile.harness.checkpoint import load_checkpoint

    _, meta = load_checkpoint(run)
    assert meta["state"]["step"] == 30  # redone from step 20 and saved again


@pytest.mark.parametrize("damage", ["tensors", "sidecars"])
def test_every_checkpoint_damaged_refuses_to_start_over(finished_run, tmp_path, env, damage):
    run = _copy(finished_run, tmp_path / "run")
    for p in run.glob("ckpt-*.safetensors" if damage == "tensors" else "ckpt-*.json"):
        p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])
    before = snapshot(run)
    p = cli("train", "--resume", str(run), env=env)
    one_line(p, f"error: no usable checkpoint in {run}: skipped ckpt-000030 (")
    assert "ckpt-000020 (" in p.stderr and "ckpt-000010 (" in p.stderr
    assert "Refusing to start the run over" in p.stderr
    assert snapshot(run) == before  # metrics, checkpoints, everything as it was


def test_a_checkpoint_with_a_hostile_state_is_skipped(finished_run, tmp_path, env):
    run = _copy(finished_run, tmp_path / "run")
    (run / "summary.json").unlink()
    sidecar = run / "ckpt-000030.json"
    meta = json.loads(sidecar.read_text())
    meta["state"]["step"] = "30; rm -rf /"
    sidecar.write_text(json.dumps(meta))
    p = cli("train", "--resume", str(run), env=env)
    assert p.returncode == 0, p.stderr
    assert p.stderr.startswith(
        "warning: skipped the damaged checkpoint ckpt-000030 (its sidecar "
        "has no integer state.step)"
    )


# -- hostile run directories and data ------------------------------------------------------------


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ('{"config": ' + _nested(100_000) + "}", "is unreadable: nested too deeply"),
        ('{"config": {"spec": "x", "batch_size": [1]}}', "config.batch_size is not int | None"),
        ('{"config": {"spec": "x", "lr": "0.1"}}', "config.lr is not float | None"),
        ('{"config": {"spec": "x", "steps": true}}', "config.steps is not int | None"),
        ('{"config": {"spec": "x", "overrides": [1]}}', "config.overrides is not list[str]"),
        ('{"config": []}', "is unreadable: no 'config' mapping"),
        ("[1, 2", "is unreadable: Expecting"),
        ('"\\ud800"', "is unreadable: no 'config' mapping"),
    ],
)
def test_a_hostile_config_json_is_one_line(tmp_path, env, config, message):
    from rescompile.harness.loop import train

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(config)
    with pytest.raises(UserError, match="unreadable") as info:
        train(resume=run)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert sorted(x.name for x in run.iterdir()) == ["config.json"]


def test_train_out_under_a_file_is_one_line(tmp_path, env):
    (tmp_path / "file").write_text("x")
    p = cli("train", *SMALL, "--steps", "2", "--out", str(tmp_path / "file" / "run"), env=env)
    one_line(p, f"error: cannot create the run directory {tmp_path / 'file' / 'run'}: Not a dir")
    p = cli("train", *SMALL, "--steps", "2", "--out", str(tmp_path / "file"), env=env)
    one_line(p, f"error: --out {tmp_path / 'file'}: exists and is not a directory")


def test_huge_synthetic_data_is_refused_before_allocating(tmp_path, env):
    out = tmp_path / "r"
    p = cli(
        "train",
        DIGITS,
        "--data",
        "synthetic:1000000x1000000x1",
        "--steps",
        "1",
        "--out",
        str(out),
        env=env,
        timeout=60,
    )
    one_line(p, "would need 12,000,000,000,000,000 bytes for 12,000 images of 1000000x1000000x1")
    assert not out.exists()  # the run directory made for it is gone again
    p = cli(
        "train",
        DIGITS,
        "--data",
        "synthetic:8x8x1:" + "9" * 30,
        "--steps",
        "1",
        "--out",
        str(out),
        env=env,
        timeout=60,
    )
    one_line(p, "classes; the limits are")


def _batch_pickle(data: bytes, labels: bytes) -> bytes:
    """A protocol-2 pickle of {b'data': <data>, b'labels': <labels>} from raw opcode bytes."""
    return b"}(U\x04data" + data + b"U\x06labels" + labels + b"u."


def _uint8_array(rows: int) -> bytes:
    import pickle

    return pickle.dumps(np.zeros((rows, 3072), np.uint8), protocol=2)[2:-1]  # no PROTO, STOP


HOSTILE = {
    "bytes_petabyte": (b"cbuiltins\nbytes\n(I1000000000000000\ntR.", "refusing bytes(1000000"),
    "ndarray_huge_shape": (
        b"cnumpy\nndarray\n((I1000000\nI1000000\nI1000000\ntU\x01BtR.",
        "CIFAR pickle",  # numpy refuses the size, or the allocation fails: either is named
    ),
    "ndarray_9gb_of_cifar_shape": (  # (N, 3072) uint8: would pass the shape check, lazily
        b"cnumpy\nndarray\n((I3000000\nI3072\ntU\x01BtR.",
        "refusing numpy.ndarray(...)",
    ),
    "reconstruct_with_a_huge_shape": (
        b"cnumpy.core.multiarray\n_reconstruct\n(cnumpy\nndarray\n(I1000000000000\ntU\x01btR.",
        "refusing an array reconstructed other than as numpy pickles one",
    ),
    "labels_10e30": (
        _batch_pickle(_uint8_array(2), b"(L" + str(10**30).encode() + b"L\nI1\nl"),
        "'labels' is not a list of integers",
    ),
    "labels_nested_200k": (
        _batch_pickle(_uint8_array(1), b"]" * 200_000 + b"a" * 199_999),
        "'labels' is not a list of integers",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_cifar_pickles_are_one_line(tmp_path, write_cifar, case):
    from rescompile.harness.data import DataError, load_cifar

    directory = write_cifar(10)
    payload, message = HOSTILE[case]
    (directory / "data_batch_1").write_bytes(payload)
    start = time.process_time()
    with pytest.raises(DataError) as info:
        load_cifar(directory)
    assert time.process_time() - start < 10  # nothing petabyte-sized was touched
    assert message in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_a_file_size_limit_mid_run_is_one_line(tmp_path, env):
    """`ulimit -f`: the first checkpoint (about 600 kB) cannot be written."""
    import resource

    def limit() -> None:
        os.umask(0o022)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (400_000, 400_000))

    run = tmp_path / "run"
    p = common.cli(
        "train",
        *SMALL,
        "--steps",
        "20",
        "--ckpt-every",
        "10",
        "--out",
        str(run),
        env=env,
        timeout=180,
        preexec_fn=limit,
    )
    one_line(p, f"error: cannot write the checkpoint of step 10 in {run}: File too large")
    assert not list(run.glob("ckpt-*")) and not list(run.glob(".*tmp"))  # no half-written file
    assert (run / "config.json").is_file()


def test_an_empty_out_is_refused(env):
    p = cli("train", *SMALL, "--steps", "2", "--out", "", env=env)
    one_line(p, "error: --out needs a directory name")


def test_a_fifo_in_place_of_a_checkpoint_is_skipped_not_waited_on(finished_run, tmp_path, env):
    run = _copy(finished_run, tmp_path / "run")
    (run / "summary.json").unlink()
    tensors = run / "ckpt-000030.safetensors"
    tensors.unlink()
    os.mkfifo(tensors)
    p = cli("train", "--resume", str(run), env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stderr.startswith(
        f"warning: skipped the damaged checkpoint ckpt-000030 ({tensors} is not a regular file)"
    )
