"""Multi-host JAX for the flax backend (jax.distributed.initialize), with two processes on this
machine standing in for two hosts: one CPU device each, a localhost coordinator on a free port,
gloo for the cross-process collectives.

The default suite checks the launch: the options' one-line errors, two processes joining,
mismatched process counts refused on both, and a process that never joins reported in one line.
The slow test trains: two processes equal the single-process run of the same global batch, only
process 0 writes, kill -9 and --resume.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rescompile.errors import UserError
from rescompile.harness import distributed
from rescompile.harness.checkpoint import latest_checkpoint, load_checkpoint
from rescompile.harness.metrics import read_metrics
from tests.harness.common import (
    DIGITS,
    ROOT,
    SMALL,
    TINY,
    assert_same_early_losses,
    free_port,
    max_rel_diff,
    set_args,
    start,
)

HANG = 600  # s: a hang check, an order of magnitude above a normal run on a busy machine


@pytest.fixture(scope="module")
def env(env) -> dict[str, str]:
    """The harness's subprocess environment (conftest.py) with one CPU device per process and
    no variables of a cluster jax detects."""
    clusters = ("SLURM_", "OMPI_", "PMIX_", "TPU_", "KUBERNETES_", "JAX_")
    e = {k: v for k, v in env.items() if not k.startswith(clusters)}
    flags = e.get("XLA_FLAGS", "").replace("--xla_force_host_platform_device_count=2", "")
    e["XLA_FLAGS"] = flags.strip()
    return e


def _host(i: int, port: int, n: int = 2) -> list[str]:
    """The options host ``i`` of ``n`` types (README): process 0 serves the coordinator."""
    return ["--coordinator", f"127.0.0.1:{port}", "--num-processes", str(n), "--process-id", str(i)]


def _finish(procs: list[subprocess.Popen], timeout: float = HANG) -> list[tuple[int, str, str]]:
    """Wait for every process (a hang check); ``(exit status, stdout, stderr)`` of each."""
    out = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=timeout)
            out.append((p.returncode, stdout, stderr))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    return out


# -- the launch (default suite) ------------------------------------------------------------------


def test_launch_options_are_checked_before_any_process_starts(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("JAX_COORDINATOR_ADDRESS", raising=False)
    cases = [
        (("127.0.0.1:1234", 2, 2), "--process-id 2 is out of range for --num-processes 2"),
        (("127.0.0.1:1234", 2, -1), "--process-id must be 0 or more"),
        (("127.0.0.1:1234", 0, 0), "--num-processes must be at least 1"),
        ((None, 2, 1), "needs --coordinator HOST:PORT on every host"),
        (("127.0.0.1:1234", None, 1), "needs --num-processes N on every host"),
        (("10.0.0.1", 2, 1), "give HOST:PORT"),
        (("10.0.0.1:http", 2, 1), "give HOST:PORT"),
        (("10.0.0.1:70000", 2, 1), "give HOST:PORT"),
    ]
    for args, message in cases:
        with pytest.raises(UserError, match=message):
            distributed.initialize(*args)
    # jax's own variable stands in for --coordinator: here it is malformed, which proves it read
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "nowhere")
    with pytest.raises(UserError, match="'nowhere': give HOST:PORT"):
        distributed.initialize(None, 2, 1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match="started by torchrun"):
        distributed.initialize("127.0.0.1:1234", 2, 1)
    assert distributed.current() == distributed.Launch(0, 2, "torchrun")
    with pytest.raises(UserError, match="torchrun starts one process per device"):
        distributed.check_backend("flax")
    distributed.check_backend("torch")
    monkeypatch.delenv("WORLD_SIZE")
    assert distributed.current() == distributed.Launch(0, 1, None)
    monkeypatch.setattr(distributed, "_jax_launch", distributed.Launch(1, 2, "jax"))
    with pytest.raises(UserError, match="the torch backend runs on several processes under"):
        distributed.check_backend("torch")
    distributed.check_backend("flax")


def test_process_0_needs_the_coordinator_port_free():
    with socket.socket() as taken:
        taken.bind(("", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(UserError, match=f"port {port} is taken here"):
            distributed.check_port_free(f"127.0.0.1:{port}")
    distributed.check_port_free(f"127.0.0.1:{port}")  # free again


def test_cli_launch_errors_are_one_line(tmp_path, env):
    port = free_port()
    train = ["train", *SMALL, "--steps", "2", "--out", str(tmp_path / "run")]
    quick = {**env, distributed.TIMEOUT_VARIABLE: "1"}
    runs = {
        "torch": start(*train, *_host(1, port), env=quick),
        "range": start(*train, "--backend", "flax", *_host(2, port), env=quick),
        # process 1 with no process 0 anywhere: a bounded wait, then one line (not jax's abort)
        "alone": start(*train, "--backend", "flax", *_host(1, port), env=quick),
        "auto": start(*train, "--backend", "flax", "--coordinator", "auto", env=quick),
    }
    results = dict(zip(runs, _finish(list(runs.values())), strict=True))
    expected = {
        "torch": "start a multi-host flax run: add --backend flax",
        "range": "--process-id 2 is out of range for --num-processes 2 (ids 0 to 1)",
        "alone": f"cannot reach the coordinator 127.0.0.1:{port} within 1 s",
        "auto": "--coordinator auto: jax found no SLURM, Open MPI, Cloud TPU or Kubernetes job",
    }
    for name, (code, _, err) in results.items():
        assert code == 1, (name, err)
        assert err.startswith("error: ") and err.count("\n") == 1, (name, err)
        assert expected[name] in err, (name, err)
    assert not (tmp_path / "run").exists()


def test_a_process_that_never_joins_stops_the_others_in_one_line(tmp_path, env):
    """Two processes started for a run of three: jax waits for the third in C++ and, at its
    deadline, aborts each with a C++ stack trace; instead, at $RESCOMPILE_JAX_INIT_TIMEOUT,
    each says in one line that not every process joined, and exits with status 1."""
    port = free_port()
    train = ["train", *SMALL, "--backend", "flax", "--steps", "2", "--out", str(tmp_path / "run")]
    began = time.monotonic()
    quick = {**env, distributed.TIMEOUT_VARIABLE: "3"}
    results = _finish([start(*train, *_host(i, port, 3), env=quick) for i in (0, 1)])
    assert time.monotonic() - began >= 3  # each waited the timeout for the third
    for i, (code, out, err) in enumerate(results):
        assert code == 1 and out == "", err
        assert [line for line in err.splitlines() if line.startswith("error")] == [
            f"error: process {i} of 3: not all 3 processes joined at 127.0.0.1:{port} within "
            "3 s: start every one (--process-id 0 to 2) with the same --coordinator and "
            "--num-processes, or raise RESCOMPILE_JAX_INIT_TIMEOUT if they start later"
        ], err
        assert "Check failure" not in err and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()


_JOIN = (
    "import sys\n"
    "from rescompile.harness import distributed\n"
    "from rescompile.errors import UserError\n"
    "address, n, i = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])\n"
    "try:\n"
    "    launch = distributed.initialize(address, n, i)\n"
    "except UserError as e:\n"
    "    sys.exit(f'error: {e}')\n"
    "print(launch.rank, launch.world_size, launch.launcher)\n"
)


def _join(port: int, counts: tuple[int, int], env: dict[str, str]) -> list[tuple[int, str, str]]:
    return _finish(
        [
            subprocess.Popen(
                [sys.executable, "-c", _JOIN, f"127.0.0.1:{port}", str(n), str(i)],
                cwd=ROOT,
                env={**env, distributed.TIMEOUT_VARIABLE: "60"},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i, n in enumerate(counts)
        ]
    )


def test_two_processes_join_and_refuse_mismatched_counts(env):
    joined = _join(free_port(), (2, 2), env)
    assert [(code, out) for code, out, _ in joined] == [(0, "0 2 jax\n"), (0, "1 2 jax\n")], [
        err for *_, err in joined
    ]

    # process 1 believes in 3 processes: jax lets it join process 0's 2, the check refuses
    # both, each with the same line
    refused = _join(free_port(), (2, 3), env)
    line = (
        "error: the processes were started with different --num-processes: 2 (process 0), "
        "3 (process 1); give every host the same count"
    )
    for code, out, err in refused:
        assert code == 1 and out == "", err
        assert [s for s in err.splitlines() if s.startswith("error")] == [line], err
        assert "Traceback" not in err


def test_a_process_that_fails_stops_the_other_in_one_line(tmp_path, env):
    """Host 1 lacks the data: it says so and exits at once (not after jax's 300 s shutdown
    barrier); host 0, waiting for it in a collective, stops with one line too."""
    port = free_port()
    train = ["train", DIGITS, *set_args(TINY), "--batch-size", "32", "--quiet", "--backend", "flax"]
    train += ["--steps", "2", "--out", str(tmp_path / "run")]
    missing = str(tmp_path / "no-cifar")
    procs = [
        start(*train, "--data", "digits", *_host(0, port), env=env),
        start(*train, "--data", f"cifar10:{missing}", *_host(1, port), env=env),
    ]
    began = time.monotonic()
    (code0, _, err0), (code1, _, err1) = _finish(procs, timeout=120)
    assert time.monotonic() - began < 120  # a hang check: both stop within seconds
    assert code1 == 1 and f"error: cifar10: {missing} does not exist" in err1, err1
    assert code0 == 1, err0
    errors = [line for line in err0.splitlines() if line.startswith("error")]
    assert errors == [line for line in err0.splitlines() if not line.startswith("[Gloo]")], err0
    assert len(errors) == 1 and "another process is gone" in errors[0], err0
    # process 0 may have begun the run (config.json): no step of it was completed
    assert not list((tmp_path / "run").glob("ckpt-*")) + list((tmp_path / "run").glob("summ*"))


_SCRIPT = (
    "import sys, jax\n"
    "from rescompile.backends import flax as fb\n"
    "from rescompile.compiler import compile_spec\n"
    "from rescompile.errors import UserError\n"
    "from rescompile.harness import distributed\n"
    "from rescompile.harness.runtime import RuntimeOptions, make_runtime\n"
    "jax.distributed.initialize(sys.argv[1], 2, int(sys.argv[2]), initialization_timeout=60)\n"
    f"g = compile_spec({DIGITS!r}, {TINY!r})[1]\n"
    "try:\n"
    "    make_runtime('flax', g, fb.emit(g), RuntimeOptions())\n"
    "except UserError as e:\n"
    "    print('refused:', e)\n"
    "launch = distributed.initialize()\n"
    "rt = make_runtime('flax', g, fb.emit(g), RuntimeOptions())\n"
    "print(launch.launcher, rt.rank, rt.world_size, rt.device)\n"
)


def test_a_script_that_joined_jax_itself_is_told_then_adopted(env):
    """The driver decides which process writes before the runtime exists: a script that called
    jax.distributed.initialize alone is refused by the runtime (every process would write);
    distributed.initialize() without arguments adopts jax's processes."""
    port = free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _SCRIPT, f"127.0.0.1:{port}", str(i)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in (0, 1)
    ]
    for i, (code, out, err) in enumerate(_finish(procs)):
        assert code == 0, err[-3000:]
        refused, adopted = [line for line in out.splitlines() if not line.startswith("[Gloo]")]
        assert refused == (
            f"refused: jax runs as process {i} of 2, but the run was planned as process 0 of 1: "
            "join a multi-host run with rescompile.harness.distributed.initialize() (the CLI's "
            "--coordinator), not jax.distributed.initialize() alone"
        )
        assert adopted == f"jax {i} 2 cpu x2 (cpu) over 2 processes"


# -- training (slow: four runs of a small net, about 2 minutes on two busy cores) ----------------

RUN = ["train", *SMALL, "--backend", "flax", "--steps", "40", "--eval-every", "10"]
RUN += ["--ckpt-every", "10"]


def _has_checkpoint(run: Path, step: int) -> bool:
    latest = latest_checkpoint(run) if run.is_dir() else None
    return latest is not None and latest.name >= f"ckpt-{step:06d}.safetensors"


def _max_rel_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    """:func:`max_rel_diff` of two checkpoints that hold the same tensors."""
    assert sorted(a) == sorted(b)
    return max_rel_diff(a, b)


@pytest.mark.slow
def test_two_hosts_train_like_one_process_and_resume(tmp_path, env):
    """Two processes of one CPU device each train the single-process run of the same global
    batch; only process 0 writes; both killed with SIGKILL, both resumed, the run ends where an
    uninterrupted one does."""
    single, two_dev, run = tmp_path / "single", tmp_path / "two-devices", tmp_path / "two-hosts"
    two = {**env, "XLA_FLAGS": f"{env['XLA_FLAGS']} --xla_force_host_platform_device_count=2"}
    references = [
        start(*RUN, "--out", str(single), env=env),
        start(*RUN, "--out", str(two_dev), env=two),
    ]
    # process 1 is given another --out: it must not even create it (rank 0 writes the run)
    port = free_port()
    hosts = [
        start(*RUN, "--out", str(run), *_host(0, port), env=env),
        start(*RUN, "--out", str(tmp_path / "not-written"), *_host(1, port), env=env),
    ]
    deadline = time.monotonic() + HANG
    while not _has_checkpoint(run, 10):
        for h in hosts:
            assert h.poll() is None, h.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.01)
    for h in hosts:
        h.send_signal(signal.SIGKILL)
    for h in hosts:
        h.communicate()
        assert h.returncode == -signal.SIGKILL
    assert not (run / "summary.json").exists()  # it really died mid-run
    assert not (tmp_path / "not-written").exists()

    port = free_port()  # every process reads the run it resumes
    resumed = [start("train", "--resume", str(run), *_host(i, port), env=env) for i in (0, 1)]
    for code, _, err in _finish(resumed):
        assert code == 0, err[-3000:]
    for code, _, err in _finish(references):
        assert code == 0, err[-3000:]

    s = json.loads((run / "summary.json").read_text())
    assert s["status"] == "completed" and s["world_size"] == 2
    assert s["device"] == "cpu x2 (cpu) over 2 processes"
    assert s["settings"]["processes"] == 2 and s["settings"]["devices"] == 2
    assert [r["step"] for r in read_metrics(run) if r["kind"] == "eval"] == [10, 20, 30, 40]
    tensors, meta = load_checkpoint(run)
    assert meta["state"]["step"] == 40 and meta["state"]["world_size"] == 2
    assert sorted(q.name for q in tmp_path.iterdir()) == ["single", "two-devices", "two-hosts"]

    # The same XLA program as one process with two devices: each device computes its half of
    # the batch and the partial sums (gradients, BatchNorm moments, losses) of two devices are
    # added, by gloo here, in process there: a + b either way (measured: bitwise equal). The
    # bound leaves room for a collective that rounds once more.
    assert _max_rel_diff(tensors, load_checkpoint(two_dev)[0]) <= 1e-6
    # One device sums the whole batch in another order: the losses of the first steps agree
    # (tests/harness/common.py, early_loss_gaps, says why the final weights need not)
    assert_same_early_losses(run, single)


@pytest.mark.slow
def test_two_hosts_stream_an_image_folder_like_one_process(tmp_path, env):
    """Streamed data: each process decodes only its share of every training batch and of every
    evaluation batch; the run is the single-process run with two devices, and counts the
    unreadable files both processes met as that run does."""
    from tests.harness.test_image_data import FIT, make_corrupt_folder, named_unreadable

    folder, corrupt = make_corrupt_folder(tmp_path / "data")
    args = ["train", DIGITS, *set_args(FIT), "--backend", "flax"]
    args += ["--data", f"imagefolder:{folder}", "--batch-size", "8", "--steps", "6", "--quiet"]
    e = {**env, "RESCOMPILE_DATA_WORKERS": "0"}
    two = {**e, "XLA_FLAGS": f"{e['XLA_FLAGS']} --xla_force_host_platform_device_count=2"}
    port = free_port()
    procs = [
        start(*args, "--out", str(tmp_path / "two-devices"), env=two),
        *(
            start(*args, "--out", str(tmp_path / "two-hosts"), *_host(i, port), env=e)
            for i in (0, 1)
        ),
    ]
    finished = _finish(procs)
    for code, _, err in finished:
        assert code == 0, err[-3000:]
    hosts, devices = (
        json.loads((tmp_path / r / "summary.json").read_text())
        for r in ("two-hosts", "two-devices")
    )
    assert hosts["world_size"] == 2 and devices["world_size"] == 1
    # the evaluation sums each process's share of the 9 validation images (padded to 10)
    for key in ("final_test_error", "final_test_loss", "final_train_error"):
        assert hosts[key] == pytest.approx(devices[key], rel=1e-6, abs=1e-7), key
    (a, meta_a), (b, meta_b) = (load_checkpoint(tmp_path / r) for r in ("two-hosts", "two-devices"))
    assert _max_rel_diff(a, b) <= 1e-6  # as above: the same program, two-way sums
    # unreadable files: each process names those it meets first, with its id; process 1 alone
    # meets one of the three (make_corrupt_folder); the run counts all three, as one process
    # does, and the checkpoint (step 6, before the final evaluation) keeps those the one
    # process met in the same batches
    named = [
        named_unreadable(err, f"process {i} of 2: ") for i, (_, _, err) in enumerate(finished[1:])
    ]
    assert sorted(set(named[0] + named[1])) == corrupt
    assert "004b.jpg" in named[1] and "004b.jpg" not in named[0]
    assert hosts["skipped_images"] == devices["skipped_images"] == len(corrupt)
    unreadable = meta_a["state"]["data"]["unreadable"]
    assert sorted(unreadable) == sorted(meta_b["state"]["data"]["unreadable"])
