from __future__ import annotations

from pathlib import Path

import pytest


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
