"""The project's own sources are what `make lint` accepts: ruff check and ruff format --check."""

from __future__ import annotations

import subprocess
import sys

import pytest
from spec_cases import ROOT

pytest.importorskip("ruff")


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=" ".join)
def test_sources_are_ruff_clean(command):
    r = subprocess.run(
        [sys.executable, "-m", "ruff", *command, "--no-cache", "."],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
