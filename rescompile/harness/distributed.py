"""Who this process is in a multi-process run, for both launchers.

- **torchrun** (the torch backend): one process per device; ``RANK`` and ``WORLD_SIZE`` in the
  environment say who is who, and the runtime joins the process group itself.
- **jax.distributed** (the flax backend): one process per host, each using all of its local
  devices; every host runs the same ``rescompile train ... --backend flax`` with
  ``--coordinator HOST:PORT --num-processes N --process-id I`` (or ``--coordinator auto`` where
  ``jax.distributed.initialize`` detects them: SLURM, Open MPI, Cloud TPU, Kubernetes).
  :func:`initialize` must run before the run directory is chosen, because only process 0
  writes it; the CLI calls it, a script calls it before
  :func:`rescompile.harness.loop.train`.

Only rank 0 writes files (run directory, checkpoints, records); every rank reads a run it
resumes, so the run directory must be on a file system all hosts share.

Nothing here imports a framework: the jax side is ``rescompile.backends.flax.multihost``.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import socket
import sys
import time
from dataclasses import dataclass

from rescompile.errors import UserError

__all__ = [
    "DEFAULT_INIT_TIMEOUT",
    "Launch",
    "check_backend",
    "check_port_free",
    "current",
    "failed",
    "init_timeout",
    "initialize",
    "parse_coordinator",
    "wait_for_coordinator",
]

DEFAULT_INIT_TIMEOUT = 300  # seconds: jax's own default; hosts of a cluster job start minutes apart
TIMEOUT_VARIABLE = "RESCOMPILE_JAX_INIT_TIMEOUT"


@dataclass(frozen=True)
class Launch:
    """This process's place in the run: ``rank`` of ``world_size`` processes, started by
    ``launcher`` (``"torchrun"``, ``"jax"``, or ``None`` for a single process)."""

    rank: int = 0
    world_size: int = 1
    launcher: str | None = None


_jax_launch: Launch | None = None


def current() -> Launch:
    """This process's :class:`Launch`: jax.distributed's once :func:`initialize` ran, else
    torchrun's from the environment, else a single process."""
    if _jax_launch is not None:
        return _jax_launch
    world = _env_int("WORLD_SIZE", 1)
    if world > 1:
        return Launch(_env_int("RANK", 0), world, "torchrun")
    return Launch()


def check_backend(backend: str) -> None:
    """Refuse a launcher that does not start processes for ``backend``."""
    launch = current()
    if launch.launcher == "torchrun" and backend != "torch":
        raise UserError(
            f"torchrun starts one process per device for the torch backend; the {backend} "
            "backend uses every local device from a single process: run it without torchrun "
            "(several hosts: --coordinator HOST:PORT --num-processes N --process-id I)"
        )
    if launch.launcher == "jax" and backend != "flax":
        raise UserError(
            f"--coordinator/--num-processes/--process-id start a multi-host flax run "
            f"(jax.distributed); the {backend} backend runs on several processes under torchrun"
        )


def parse_coordinator(text: str) -> tuple[str, int]:
    """``(host, port)`` of ``HOST:PORT`` (``[IPv6]:PORT`` too), or a one-line error."""
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(
            f"--coordinator {text!r}: give HOST:PORT (process 0's address and a free port, "
            "e.g. 10.0.0.1:1234), or auto"
        )
    return host, int(port)


def init_timeout() -> int:
    """How long (s) a process waits for the others to join: $RESCOMPILE_JAX_INIT_TIMEOUT or
    :data:`DEFAULT_INIT_TIMEOUT`."""
    value = os.environ.get(TIMEOUT_VARIABLE)
    if value is None:
        return DEFAULT_INIT_TIMEOUT
    if not value.isdigit() or int(value) <= 0:
        raise UserError(f"{TIMEOUT_VARIABLE}={value!r}: give a positive number of seconds")
    return int(value)


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    timeout: int | None = None,
) -> Launch:
    """Join a multi-host flax run (``jax.distributed.initialize``) and return this process's
    :class:`Launch`. ``coordinator`` is process 0's ``HOST:PORT`` (default
    ``$JAX_COORDINATOR_ADDRESS``, as jax reads it) or ``"auto"``: jax detects what is not given
    from SLURM, Open MPI, Cloud TPU or Kubernetes. Every problem that can be seen before the
    processes meet is a one-line :class:`UserError`: a bad address, a process id out of range,
    a coordinator that does not answer within ``timeout`` seconds, processes started with
    different ``--num-processes``. Processes that do not all join within ``timeout`` seconds
    (more asked for than started) end the process with one line (``error: ...``, status 1)
    where jax would abort it with a C++ stack trace. Calling it again returns the same launch;
    called without arguments after the script called ``jax.distributed.initialize`` itself, it
    adopts that."""
    global _jax_launch
    if _jax_launch is not None:
        return _jax_launch
    if (coordinator, num_processes, process_id) == (None, None, None):
        joined = _multihost().joined()  # a script that called jax.distributed.initialize
        if joined is not None:
            _jax_launch = Launch(*joined, "jax")
            return _jax_launch
    if _env_int("WORLD_SIZE", 1) > 1:
        raise UserError(
            "this process was started by torchrun (WORLD_SIZE is set): --coordinator, "
            "--num-processes and --process-id are for the flax backend without torchrun"
        )
    if num_processes is not None and num_processes < 1:
        raise UserError(f"--num-processes must be at least 1, got {num_processes}")
    if process_id is not None and process_id < 0:
        raise UserError(f"--process-id must be 0 or more, got {process_id}")
    if num_processes is not None and process_id is not None and process_id >= num_processes:
        raise UserError(
            f"--process-id {process_id} is out of range for --num-processes {num_processes} "
            f"(ids 0 to {num_processes - 1})"
        )
    auto = coordinator == "auto"
    address = None if auto else (coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS"))
    if not auto and (address is None or num_processes is None or process_id is None):
        missing = [
            flag
            for flag, value in (
                ("--coordinator HOST:PORT", address),
                ("--num-processes N", num_processes),
                ("--process-id I", process_id),
            )
            if value is None
        ]
        raise UserError(
            f"a multi-host flax run needs {', '.join(missing)} on every host (the same "
            "coordinator and count everywhere, ids 0 to N-1), or --coordinator auto under "
            "SLURM, Open MPI or on a Cloud TPU"
        )
    if address is not None:
        parse_coordinator(address)
    timeout = init_timeout() if timeout is None else timeout
    rank, world = _multihost().initialize(address, num_processes, process_id, timeout)
    _jax_launch = Launch(rank, world, "jax")
    return _jax_launch


def _multihost():
    """``rescompile.backends.flax.multihost`` (a one-line error when jax or flax is missing)."""
    from rescompile.backends import load_backend

    load_backend("flax").training  # noqa: B018
    from rescompile.backends.flax import multihost

    return multihost


def failed(exc: BaseException) -> BaseException:
    """This process's part of a multi-host jax run failed with ``exc``: return the exception to
    raise (a collective that failed because another process is gone becomes a one-line
    :class:`UserError`), and let the process exit at once with status 1 (130 for Ctrl-C)
    instead of waiting up to jax's shutdown timeout (300 s) at exit for processes that will
    never get there. The others, waiting for this one in a collective, see it gone (gloo: at
    once; else jax's heartbeat timeout) and stop the same way. Outside such a run: ``exc``."""
    if _jax_launch is None or _jax_launch.world_size == 1:
        return exc
    from rescompile.backends.flax.multihost import lost_peer

    code = 130 if isinstance(exc, KeyboardInterrupt) else 1
    why = lost_peer(exc)
    if why is not None:
        exc = UserError(
            f"process {_jax_launch.rank} of {_jax_launch.world_size}: the run stopped because "
            f"another process is gone ({why}); that process's output says why"
        )

    def leave() -> None:  # registered last, so it runs before jax's own exit handler
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)

    atexit.register(leave)
    return exc


def wait_for_coordinator(address: str, timeout: float, *, poll: float = 0.5) -> None:
    """Wait until ``address`` (``HOST:PORT``) accepts TCP connections; after ``timeout``
    seconds, a one-line error (rather than jax's fatal abort)."""
    host, port = parse_coordinator(address)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=max(poll, 1.0)):
                return
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise UserError(
                    f"cannot reach the coordinator {address} within {timeout:g} s "
                    f"({exc.strerror or exc}): start process 0 there with the same "
                    f"--coordinator, or raise {TIMEOUT_VARIABLE}"
                ) from None
        time.sleep(poll)


def check_port_free(address: str) -> None:
    """Process 0 serves the coordinator at ``address``'s port: a one-line error if another
    program already listens there."""
    _, port = parse_coordinator(address)
    try:
        s = socket.socket(socket.AF_INET6)  # jax listens on [::]:PORT
    except OSError:  # no IPv6 here
        s = socket.socket(socket.AF_INET)
    with s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC: TIME_WAIT is free
        try:
            s.bind(("", port))
        except OSError as exc:
            raise UserError(
                f"--coordinator {address}: this is process 0, which serves the coordinator, but "
                f"port {port} is taken here ({exc.strerror or exc}); choose another port"
            ) from None


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    try:
        return default if value in (None, "") else int(value)
    except ValueError:
        raise UserError(f"{name}={value!r} is not a whole number") from None
