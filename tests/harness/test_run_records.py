"""What a run writes and says: strict JSON records (a NaN is the string "NaN", never bare), the
default cadence of a short run, and log lines that carry images/s, elapsed time and ETA when
standard error is not a terminal."""

from __future__ import annotations

import json
import math
import re

import pytest

from rescompile.harness.metrics import MetricsLogger, read_metrics
from tests.harness.common import DIGITS, TINY, cli, set_args


def strict_loads(text: str):
    """RFC 8259 JSON: NaN, Infinity and -Infinity are not JSON (Python's json accepts them)."""

    def refuse(constant: str):
        raise ValueError(f"bare {constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_non_finite_numbers_are_written_as_strings_and_read_back(tmp_path):
    with MetricsLogger(tmp_path) as log:
        log.log_train(1, epoch=0.1, loss=math.nan, train_error=math.nan, lr=0.1, images_per_s=0.0)
        log.log_train(2, epoch=0.2, loss=math.inf, train_error=0.5, lr=0.1, images_per_s=1.0)
        log.log_eval(2, test_loss=-math.inf, test_error=0.25)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    raw = [strict_loads(line) for line in lines]
    assert raw[0]["loss"] == "NaN" and raw[1]["loss"] == "Infinity"
    assert raw[2]["test_loss"] == "-Infinity" and raw[2]["test_error"] == 0.25
    back = read_metrics(tmp_path)
    assert math.isnan(back[0]["loss"]) and math.isnan(back[0]["train_error"])
    assert back[1]["loss"] == math.inf and back[2]["test_loss"] == -math.inf
    assert back[1]["kind"] == "train"  # other strings are left alone


def test_summary_and_config_are_strict_json(tmp_path):
    import numpy as np

    from rescompile.harness.records import write_json

    write_json(
        tmp_path / "s.json",
        {"value": float("nan"), "x": [np.float32("inf"), 1.5], "n": np.int64(3), "path": tmp_path},
    )
    data = strict_loads((tmp_path / "s.json").read_text())
    assert data == {"value": "NaN", "x": ["Infinity", 1.5], "n": 3, "path": str(tmp_path)}


@pytest.mark.parametrize(("steps", "every"), [(5, 10), (50, 10), (200, 10), (1000, 20)])
def test_default_cadence_of_short_runs(steps, every):
    """At most 50 evaluations (and checkpoints) per run, at least 10 steps apart: a 50-step run
    evaluates 5 times (it did so every step, 1.9-2.6x the wall time)."""
    from rescompile.compiler import compile_spec
    from rescompile.harness.config import TrainConfig, make_plan
    from rescompile.harness.data import load_dataset

    graph = compile_spec(DIGITS, TINY)[1]
    p = make_plan(TrainConfig(spec=DIGITS, steps=steps), graph, load_dataset("digits"), 1)
    assert (p.eval_every, p.ckpt_every) == (every, every)
    assert p.log_every <= p.eval_every


def test_a_short_run_without_a_terminal_logs_pace_and_evaluates_every_ten_steps(tmp_path, env):
    run = tmp_path / "run"
    # not --quiet: the log lines are what is checked
    train = [DIGITS, *set_args(TINY), "--data", "digits", "--batch-size", "32", "--steps", "25"]
    p = cli("train", *train, "--out", str(run), env=env)
    assert p.returncode == 0, p.stderr
    lines = [line for line in p.stderr.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in lines] == ["10/25", "20/25", "25/25"]
    pace = re.compile(r".*  [\d,]+ img/s  elapsed \d+:\d\d  ETA \d+:\d\d$")
    assert all(pace.fullmatch(line) for line in lines), lines
    assert [r["step"] for r in read_metrics(run) if r["kind"] == "eval"] == [10, 20, 25]
    assert sorted(x.name for x in run.glob("ckpt-*.safetensors")) == [
        "ckpt-000010.safetensors",
        "ckpt-000020.safetensors",
        "ckpt-000025.safetensors",
    ]
    strict_loads((run / "summary.json").read_text())
    for line in (run / "metrics.jsonl").read_text().splitlines():
        strict_loads(line)
