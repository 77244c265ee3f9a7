"""What the harness tests share: the tiny digits net, and `rescompile` run as a user runs it.

The subprocess environment is the ``env`` fixture of ``conftest.py``; the helpers here are plain
functions and constants (a test module imports them).
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from rescompile.harness.loop import TrainConfig

ROOT = Path(__file__).resolve().parents[2]
DIGITS = str(ROOT / "specs" / "variants" / "digits-resnet20.yaml")
# digits ResNet-8: one block per stage (overrides as a TrainConfig or compile_spec takes them)
TINY = ["stages.0.depth=1", "stages.1.depth=1", "stages.2.depth=1"]


def set_args(overrides: list[str]) -> list[str]:
    """The overrides as command-line options: ``["--set", o1, "--set", o2, ...]``."""
    return [arg for override in overrides for arg in ("--set", override)]


# the tiny net on the digits data, 32 a batch, quiet: a test adds the steps, cadence and --out
SMALL = [DIGITS, *set_args(TINY), "--data", "digits", "--batch-size", "32", "--quiet"]
# ... 30 steps of it, evaluated and checkpointed every 10: a short complete run
THIRTY_STEPS = [*SMALL, "--steps", "30", "--eval-every", "10", "--ckpt-every", "10"]


def tiny_config(out: Path, **kw) -> TrainConfig:
    """A TrainConfig of the tiny net on the digits data, quiet, writing to ``out``; ``kw`` add
    or replace fields."""
    from rescompile.harness.loop import TrainConfig

    base = dict(spec=DIGITS, overrides=TINY, data="digits", out=str(out), quiet=True)
    return TrainConfig(**{**base, **kw})


def cli(
    *args: str, env: dict[str, str] | None, timeout: float = 600, **run_kw
) -> subprocess.CompletedProcess:
    """``rescompile ARGS`` in a fresh process from the repository root, its output captured.
    ``timeout`` is a hang check; ``env=None`` inherits this process's environment; ``run_kw``
    go to :func:`subprocess.run` (``preexec_fn=...``)."""
    return subprocess.run(
        [sys.executable, "-m", "rescompile", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=timeout,
        **run_kw,
    )


# `rescompile ARGS` with SIGINT at its default disposition: a process started from a shell's
# background job (`make test &`) inherits SIGINT ignored, and rescompile then rightly ignores
# Ctrl-C as every program does; the interrupt tests need it to arrive.
_WITH_SIGINT = (
    "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "sys.argv[0] = 'rescompile'; runpy.run_module('rescompile', run_name='__main__')"
)


def start(*args: str, env: dict[str, str], sigint: bool = False) -> subprocess.Popen:
    """``rescompile ARGS`` started in the background (stdout and stderr piped, text); with
    ``sigint=True`` it takes Ctrl-C (SIGINT) even when this process was started ignoring it."""
    how = ["-c", _WITH_SIGINT] if sigint else ["-m", "rescompile"]
    return subprocess.Popen(
        [sys.executable, *how, *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str, node: tuple[int, int] | None = None) -> list[str]:
    """torchrun on this machine: two processes, or with ``node=(rank, port)`` one process as
    node ``rank`` of a two-node job whose rendezvous is at ``port`` (as on two machines)."""
    where = ["--nproc_per_node=2", f"--master_port={free_port()}"]
    if node is not None:
        where = ["--nnodes=2", f"--node_rank={node[0]}", "--nproc_per_node=1"]
        where.append(f"--master_port={node[1]}")
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        *where,
        "--master_addr=127.0.0.1",
        "-m",
        "rescompile",
        *args,
    ]


def max_rel_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    """The largest difference of a model tensor, relative to that tensor's largest value."""
    keys = [k for k in a if not k.startswith("optim/") and not k.endswith("num_batches_tracked")]
    return max(float(np.max(np.abs(a[k] - b[k])) / (np.max(np.abs(b[k])) + 1e-12)) for k in keys)


def train_losses(run: Path) -> dict[int, float]:
    """The global-batch training loss of each logged step of a run (from its metrics.jsonl;
    the tests' short runs log every step; a step logged again after a resume: the last)."""
    from rescompile.harness.metrics import read_metrics

    return {r["step"]: r["loss"] for r in read_metrics(run) if r["kind"] == "train"}


def early_loss_gaps(a: Path, b: Path, steps: int = 3) -> list[float]:
    """The relative differences of two runs' training losses over their first ``steps`` steps.

    This is how a data-parallel run is compared with the single-process run of the same global
    batches, and why not by their final weights: the two sum in another order, so they differ
    by float32 rounding (~1e-7) until an activation within rounding of zero lands on the other
    side of a ReLU in one of them; from then on the runs follow different (equally good)
    trajectories, and the weights after tens of steps can differ by 10% (measured: a flax run
    with two devices against one, digits, 40 steps, on an AMD EPYC: 1e-6 up to step 8, 2e-3 at
    step 9, 0.15 at step 40; 7e-7 at step 40 on an Intel Xeon, where no such crossing
    happened). Step 1's loss comes from the same weights and the same batch: rounding only.
    A crossing moves the next few losses by 3e-5 to 5e-4 (measured, the run above). Feeding
    a rank the wrong examples, or BatchNorm statistics of half a batch, moves them by far more.
    """
    la, lb = train_losses(a), train_losses(b)
    return [abs(la[s] - lb[s]) / abs(lb[s]) for s in range(1, steps + 1)]


def assert_same_early_losses(a: Path, b: Path, steps: int = 3) -> None:
    """Step 1's loss to float32 rounding (1e-6: a mean of float32 losses, ~1e-7 each), the next
    steps' within 1e-3 (above what one ReLU crossing does: see :func:`early_loss_gaps`)."""
    gaps = early_loss_gaps(a, b, steps)
    assert gaps[0] <= 1e-6 and max(gaps) <= 1e-3, gaps
