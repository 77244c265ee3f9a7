"""Multi-host JAX for the flax backend: ``jax.distributed.initialize``, checked.

Called through :func:`rescompile.harness.distributed.initialize`, before jax's backends exist.
jax itself turns most rendezvous failures into a fatal abort with a C++ stack trace after its
``initialization_timeout``; the checks here come first, so the common mistakes end in one line:

- process 0 checks that the coordinator's port is free (it serves the coordinator there);
- every other process waits for the coordinator's port to accept connections, up to the
  timeout (process 0 not started, a wrong address, a firewall);
- once joined, the processes exchange their ``--num-processes`` and refuse a mismatch.

A process that never arrives (a count larger than the processes started) keeps the others in
jax's join, in C++, where no Python exception reaches them, until jax aborts them at its
``initialization_timeout``; so jax is given the timeout plus :data:`JAX_DEADLINE_MARGIN_S`, and
at the timeout a timer thread prints one line (``error: process I of N: not all N processes
joined ...``) and ends the process with status 1. What remains to jax is a process whose id is
past process 0's count (process 0 started with a smaller ``--num-processes``): the coordinator
refuses it at once and jax aborts it with a C++ stack trace. A process lost mid-run makes the
others' next collective fail: :func:`lost_peer` recognises that, so the CLI says it in one line
(:func:`rescompile.harness.distributed.failed`).

On CPUs the cross-process collectives are gloo's (``jax_cpu_collectives_implementation``,
jax 0.10.2's default; set here when a configuration turned it off).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from rescompile.errors import UserError

__all__ = ["all_gather_json", "initialize", "joined", "lost_peer"]

PEER_LOST = ("Gloo", "NCCL", "Connection closed", "Connection reset", "connection reset")
NOTICE_AFTER_S = 10.0  # say what is being waited for when joining takes longer than this
JAX_DEADLINE_MARGIN_S = 60  # jax's own join deadline is this long after ours (see initialize)


def initialize(
    address: str | None, num_processes: int | None, process_id: int | None, timeout: int
) -> tuple[int, int]:
    """Join the run; ``(process index, process count)``. ``address`` ``None``: jax detects the
    settings not given (SLURM, Open MPI, Cloud TPU, Kubernetes)."""
    import jax

    from rescompile.harness.distributed import (
        TIMEOUT_VARIABLE,
        check_port_free,
        wait_for_coordinator,
    )

    if (joined_already := joined()) is not None:
        return joined_already
    if jax.config.jax_cpu_collectives_implementation is None:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if address is not None and process_id == 0:
        check_port_free(address)
    elif address is not None:
        wait_for_coordinator(address, timeout)

    who = "" if process_id is None else f"process {process_id} of {num_processes}: "
    notice = threading.Timer(
        min(NOTICE_AFTER_S, timeout / 2),
        lambda: print(
            f"{who}waiting for the other processes to join at {address or 'the coordinator'} "
            f"(up to {timeout} s)",
            file=sys.stderr,
            flush=True,
        ),
    )
    notice.daemon = True
    notice.start()
    if num_processes is None:
        missing = (
            f"the processes of the job did not all join at the coordinator within {timeout} s: "
            "start every one"
        )
    else:
        missing = (
            f"not all {num_processes} processes joined at {address} within {timeout} s: start "
            f"every one (--process-id 0 to {num_processes - 1}) with the same --coordinator and "
            f"--num-processes"
        )
    disarm = _exit_after(
        timeout, f"{who}{missing}, or raise {TIMEOUT_VARIABLE} if they start later"
    )
    try:
        # jax's own deadline comes later: at it, jax aborts the process with a C++ stack trace
        jax.distributed.initialize(
            address,
            num_processes,
            process_id,
            initialization_timeout=timeout + JAX_DEADLINE_MARGIN_S,
        )
    except (ValueError, TypeError) as exc:
        if address is None:  # jax found no cluster to read the settings from
            raise UserError(
                "--coordinator auto: jax found no SLURM, Open MPI, Cloud TPU or Kubernetes job "
                f"to read the settings from ({_first_line(exc)}); give --coordinator HOST:PORT "
                "--num-processes N --process-id I"
            ) from None
        raise UserError(f"jax.distributed.initialize: {_first_line(exc)}") from None
    except RuntimeError as exc:
        raise UserError(f"jax.distributed.initialize failed: {_first_line(exc)}") from None
    finally:
        disarm()
        notice.cancel()

    rank, world = jax.process_index(), jax.process_count()
    _check_counts(world if num_processes is None else num_processes, world)
    return rank, world


def _exit_after(seconds: float, line: str) -> Callable[[], None]:
    """Print ``error: line`` and end the process (status 1) after ``seconds``, unless the
    function returned is called first. jax.distributed.initialize waits in C++, where no
    exception reaches it, and aborts the process with a fatal C++ log at its own deadline."""
    lock = threading.Lock()
    disarmed = False

    def expire() -> None:
        with lock:
            if disarmed:
                return
            with contextlib.suppress(Exception):
                sys.stdout.flush()
            print(f"error: {line}", file=sys.stderr, flush=True)
            os._exit(1)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()

    def disarm() -> None:
        nonlocal disarmed
        with lock:  # an expiry already under way ends the process first
            disarmed = True
        timer.cancel()

    return disarm


def joined() -> tuple[int, int] | None:
    """``(process index, process count)`` when this process already called
    ``jax.distributed.initialize`` (a script that did so itself), else ``None``."""
    import jax

    if not jax.distributed.is_initialized():
        return None
    return jax.process_index(), jax.process_count()


def _check_counts(requested: int, world: int) -> None:
    """Every process was started with the same process count (the coordinator's rules: a
    process asking for more processes than process 0 still joins)."""
    from jax.experimental import multihost_utils

    with _stdout_to_stderr():  # gloo announces its first connection on stdout
        gathered = multihost_utils.process_allgather(np.int64(requested))
    counts = np.asarray(gathered).reshape(-1)
    if (counts != world).any():
        import jax

        said = ", ".join(f"{int(n)} (process {i})" for i, n in enumerate(counts))
        jax.distributed.shutdown()
        raise UserError(
            f"the processes were started with different --num-processes: {said}; give every "
            "host the same count"
        )


def all_gather_json(value: Any) -> list[Any]:
    """Every process's ``value`` (JSON), in process order: its UTF-8 text all-gathered as bytes,
    the lengths first, then the texts padded to the longest (rounded up to a power of two, so
    that the gathers of a run compile few programs). A collective: every process calls it."""
    from jax.experimental import multihost_utils

    data = np.frombuffer(json.dumps(value).encode(), np.uint8)
    lengths = np.asarray(multihost_utils.process_allgather(np.int64(len(data)))).reshape(-1)
    width = 1 << max(6, int(lengths.max() - 1).bit_length())
    padded = np.zeros(width, np.uint8)
    padded[: len(data)] = data
    texts = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(lengths), width)
    return [json.loads(bytes(t[:n]).decode()) for t, n in zip(texts, lengths, strict=True)]


def lost_peer(exc: BaseException) -> str | None:
    """What a failed cross-process collective says (``"UNKNOWN: Gloo AllGather failed: ...
    Connection closed by peer"``: a ``JaxRuntimeError``, or a ``ValueError`` when it fails inside
    jax's own checks), or ``None`` for any other exception."""
    text = _first_line(exc)
    if isinstance(exc, ValueError | RuntimeError) and any(m in text for m in PEER_LOST):
        return text
    return None


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Send what native code prints to file descriptor 1 to 2 instead: a command's standard
    output stays its own."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
