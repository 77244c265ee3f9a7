"""benchmarks/gpu_suite.sh stays runnable: its steps, tiny, on the CPU (``--smoke``).

A GPU is lent to few sessions, and each has minutes of it: the suite must work the first time.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from spec_cases import ROOT

pytest.importorskip("torch")
pytest.importorskip("flax")

SUITE = ROOT / "benchmarks" / "gpu_suite.sh"


def _suite(tmp_path, *steps: str) -> tuple[str, list[dict]]:
    out = tmp_path / "out"
    env = {
        **os.environ,
        "OUT": str(out),
        "PYTHON": sys.executable,
        "RUNS": str(tmp_path / "runs"),
        "OMP_NUM_THREADS": "1",
        "RESCOMPILE_JAX_CACHE": str(tmp_path / "jax-cache"),
    }
    r = subprocess.run(
        ["bash", str(SUITE), "--smoke", *steps],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=1800,
    )  # a hang check
    log = (out / "suite.log").read_text()
    assert r.returncode == 0, r.stdout + r.stderr
    train = out / "train.jsonl"
    lines = train.read_text().splitlines() if train.exists() else []
    summaries = [json.loads(line) for line in lines]
    return log, summaries


def test_smoke_training_steps(tmp_path):
    """The harness's training runs through the suite, both backends (every step: -m slow)."""
    log, summaries = _suite(tmp_path, "r20")
    assert re.findall(r"=== (\S+): exit (\d+)", log) == [("r20-torch", "0"), ("r20-flax", "0")]
    assert [(s["name"], s["backend"], s["status"]) for s in summaries] == [
        ("r20-torch", "torch", "completed"),
        ("r20-flax", "flax", "completed"),
    ]
    assert all(s["images_per_s"] > 0 and s["first_step_s"] > 0 for s in summaries)
    assert not (tmp_path / "runs").exists()  # run directories are not left behind


def test_budget_skips_what_does_not_fit(tmp_path):
    log, summaries = _suite(tmp_path, "--budget", "10", "r20")
    assert "r20-torch: skipped" in log and "r20-flax: skipped" in log and not summaries


@pytest.mark.slow
def test_smoke_every_step(tmp_path):
    log, summaries = _suite(tmp_path)
    exits = dict(re.findall(r"=== (\S+): exit (\d+)", log))
    torchvision = exits.pop("torchvision")  # needs torchvision, which the project venv lacks
    assert torchvision in ("0", "1") and set(exits.values()) == {"0"}, log
    assert {s["name"] for s in summaries} == {
        "r50-torch",
        "cifar20-64k",
        "r50-flax",
        "r20-torch",
        "r20-flax",
    }
    assert (tmp_path / "out" / "cifar20-64k-metrics.jsonl").exists()
