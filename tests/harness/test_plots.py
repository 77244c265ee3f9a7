"""Training curves."""

from __future__ import annotations

from pathlib import Path

import pytest

from rescompile.harness.metrics import MetricsLogger
from rescompile.harness.plots import plot_curves

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _fake_run(run: Path, final_error: float) -> Path:
    with MetricsLogger(run) as log:
        for step in range(0, 6001, 500):
            err = final_error + (0.9 - final_error) / (1 + step / 500)
            log.log_train(
                step, epoch=step / 390, loss=err, train_error=err * 0.8, lr=0.1, images_per_s=1.0
            )
            if step % 1000 == 0:
                log.log_eval(step, test_loss=err, test_error=err)
    return run


def test_plot_writes_a_png(tmp_path: Path) -> None:
    runs = [_fake_run(tmp_path / "resnet20", 0.08), _fake_run(tmp_path / "plain20", 0.1)]
    out = plot_curves(runs, tmp_path / "figs" / "curves.png")
    data = out.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 5_000


def test_plot_accepts_records_and_labels(tmp_path: Path) -> None:
    records = [
        {"kind": "train", "step": 0, "train_error": 0.9},
        {"kind": "eval", "step": 10, "test_error": 0.5},
    ]
    out = plot_curves(records, tmp_path / "one.png", labels=["mine"], title="digits")
    assert out.read_bytes().startswith(PNG_SIGNATURE)
    with pytest.raises(ValueError, match="2 labels for 1 runs"):
        plot_curves([records], tmp_path / "x.png", labels=["a", "b"])
