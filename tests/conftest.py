from __future__ import annotations

import os
from pathlib import Path

import pytest


def pytest_configure(config):
    """`make test` runs one pytest-xdist worker per core: each worker then computes on one thread
    (its subprocesses too), so two workers never fight over the cores with spinning OpenMP or
    Eigen threads. A run without xdist keeps the frameworks' defaults."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_cpu_multi_thread_eigen" not in flags:
            os.environ["XLA_FLAGS"] = f"{flags} --xla_cpu_multi_thread_eigen=false".strip()


@pytest.fixture
def write_spec(tmp_path):
    """Write YAML text to a file in tmp_path and return its path."""

    def _write(text: str, name: str = "spec.yaml") -> Path:
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        return p

    return _write


@pytest.fixture(scope="module")
def torch_one_thread():
    """One torch intra-op thread for a module: on a shared 2-core machine OpenMP's spinning
    threads can make a deep, small-tensor network 100x slower when the cores are oversubscribed."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
