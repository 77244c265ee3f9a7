"""`rescompile train --resume RUN --steps N`: a run made longer (torch, digits ResNet-8).

Expected rates come from the recipes' published definitions (He et al.: lr 0.1 divided by 10 at
half and three quarters of the run; the "fast" recipe: linear warm-up then half a cosine to 0),
written out here, not from the schedule code under test.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from rescompile.errors import UserError
from rescompile.harness.checkpoint import load_checkpoint
from rescompile.harness.loop import TrainConfig, train
from rescompile.harness.metrics import read_metrics
from tests.clirun import run_cli
from tests.harness.common import DIGITS, tiny_config

pytest.importorskip("torch")


def _config(out: Path, **kw) -> TrainConfig:
    base = dict(batch_size=32, steps=20, eval_every=10, backend="torch")
    return tiny_config(out, **{**base, **kw})


def _lrs(run: Path) -> dict[int, float]:
    """step -> the rate of the update that reached it (train records, logged every step)."""
    return {r["step"]: r["lr"] for r in read_metrics(run) if r["kind"] == "train"}


class _Stop(KeyboardInterrupt):
    pass


def test_a_step_decay_run_extended_continues_at_its_last_rate_and_replays_on_resume(tmp_path):
    a = tmp_path / "a"
    train(_config(a, log_every=1))
    before = read_metrics(a)
    summary = train(resume=a, steps=40)
    assert summary["steps"] == 40
    after = read_metrics(a)
    assert [r for r in after if r["step"] <= 20] == before  # the first 20 steps untouched
    lrs = _lrs(a)
    # paper-cifar over 20 steps: 0.1, /10 at step 10 and at step 15; then the last rate on
    assert lrs[10] == pytest.approx(0.1) and lrs[11] == pytest.approx(0.01)
    assert lrs[16] == pytest.approx(0.001)
    assert all(lrs[k] == pytest.approx(0.001) for k in range(21, 41))
    tensors_a, meta = load_checkpoint(a)
    assert meta["state"]["step"] == 40
    saved = json.loads((a / "config.json").read_text())
    assert saved["config"]["extensions"] == [{"from_step": 20, "steps": 40, "reschedule": False}]
    assert saved["plan"]["total_steps"] == 40

    # the same extension, interrupted at step 27 and resumed without --steps: config.json
    # replays it, and the run ends bitwise where the uninterrupted extension ended
    b = tmp_path / "b"
    train(_config(b, log_every=1))

    def stop(step: int) -> None:
        if step == 27:
            raise _Stop

    with pytest.raises(_Stop):
        train(resume=b, steps=40, on_step=stop)
    assert load_checkpoint(b)[1]["state"]["step"] == 27
    train(resume=b)
    tensors_b, _ = load_checkpoint(b)
    assert [k for k in tensors_a if not np.array_equal(tensors_a[k], tensors_b[k])] == []
    assert _lrs(b) == lrs


def test_a_cosine_run_is_extended_only_with_reschedule(tmp_path):
    run = tmp_path / "fast"
    train(_config(run, recipe="fast", log_every=1))
    config_before = (run / "config.json").read_text()
    with pytest.raises(UserError, match="add --reschedule"):
        train(resume=run, steps=40)
    assert (run / "config.json").read_text() == config_before  # nothing recorded
    with pytest.raises(UserError, match="extended, not shortened"):
        train(resume=run, steps=15)

    train(resume=run, steps=40, reschedule=True)
    lrs = _lrs(run)
    # "fast" over 40 steps: 1 of 30 epochs of warm-up -> round(40 / 30) = 1 step, then half a
    # cosine from 0.1 to 0 over the remaining 39; step k's record has the rate of update k - 1
    for k in (21, 30, 40):
        expected = 0.05 * (1 + math.cos(math.pi * (k - 1 - 1) / 39))
        assert lrs[k] == pytest.approx(expected, rel=1e-12)
    # the 20 steps already taken kept their rates: the 20-step cosine (warm-up max(1, 20/30))
    assert lrs[20] == pytest.approx(0.05 * (1 + math.cos(math.pi * (19 - 1) / 19)), rel=1e-12)
    assert lrs[20] < 0.01 < lrs[21]  # the rate jumps where the new plan starts


def test_the_command_line_extends_and_explains(tmp_path):
    run = tmp_path / "r"
    train(_config(run, recipe="fast", steps=6, eval_every=6))
    r = run_cli("train", "--resume", str(run), "--steps", "10", "--quiet")
    assert r.code == 1 and "add --reschedule" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("train", "--resume", str(run), "--steps", "10", "--reschedule", "--quiet")
    assert r.code == 0, r.stderr
    assert load_checkpoint(run)[1]["state"]["step"] == 10
    r = run_cli("train", DIGITS, "--data", "digits", "--reschedule")
    assert r.code == 1 and "use it with --resume" in r.stderr
    r = run_cli("train", "--resume", str(run), "--lr", "0.5")
    assert r.code == 1 and "drop --lr" in r.stderr


def test_a_damaged_recorded_recipe_or_extension_is_a_clear_error(tmp_path):
    run = tmp_path / "r"
    train(_config(run, steps=6, eval_every=6))
    original = json.loads((run / "config.json").read_text())
    for where, value, message in (
        ("schedule", "zigzag", "plan.recipe.schedule is unreadable"),
        ("lr", "fast", "plan.recipe.lr is unreadable"),
        ("augmentation", "zoom", "plan.recipe is unreadable: .*augmentation is one of"),
        ("extensions", [{"from_step": 6, "steps": "x"}], "malformed entry"),
    ):
        damaged = json.loads(json.dumps(original))
        if where == "extensions":
            damaged["config"]["extensions"] = value
        else:
            damaged["plan"]["recipe"][where] = value
        (run / "config.json").write_text(json.dumps(damaged))
        with pytest.raises(UserError, match=message):
            train(resume=run, steps=10)
