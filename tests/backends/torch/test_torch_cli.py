"""`rescompile build --backend torch [--check]` through the command line, as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from torch_backend_cases import ROOT, emitted

CIFAR20 = ROOT / "specs" / "paper" / "cifar-resnet20.yaml"


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [sys.executable, "-m", "rescompile", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    if "No such command" in r.stderr:
        pytest.skip(f"the CLI has no {args[0]!r} command yet")
    return r


def test_build_writes_the_emitted_source(tmp_path):
    out = tmp_path / "model.py"
    r = _cli("build", str(CIFAR20), "--backend", "torch", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert out.read_text() == emitted(CIFAR20)


def test_build_check_passes_and_fails(tmp_path):
    pytest.importorskip("torch")
    r = _cli("build", str(CIFAR20), "--backend", "torch", "-o", str(tmp_path / "m.py"), "--check")
    assert r.returncode == 0, r.stderr
    assert "FAIL" not in r.stderr and "PASS" in r.stderr


def test_export_onnx_from_the_command_line(tmp_path):
    onnx = pytest.importorskip("onnx")
    out = tmp_path / "r20.onnx"
    r = _cli("export", str(CIFAR20), "--format", "onnx", "-o", str(out))
    assert r.returncode == 0, r.stderr
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["input"]
