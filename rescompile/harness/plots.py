"""Training curves in the style of He et al. (2016), Figure 6.

Error (%) against iterations, one colour per run: training error dashed, test error solid and
bold. matplotlib is imported only when a plot is drawn, and drawing uses the Agg canvas directly,
so it works headless and never changes the process-wide matplotlib backend.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rescompile.harness.metrics import read_metrics

__all__ = ["FORMATS", "image_format", "plot_curves"]

Run = str | Path | Sequence[Mapping[str, Any]]


def _series(records: Sequence[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
    points = sorted((r["step"], 100.0 * r[key]) for r in records if r.get(key) is not None)
    return [s for s, _ in points], [e for _, e in points]


def plot_curves(
    runs: Run | Sequence[Run],
    out_png: str | Path,
    labels: Sequence[str] | None = None,
    *,
    title: str | None = None,
    ylim: tuple[float, float] | None = None,
) -> Path:
    """Draw training (dashed) and test (solid) error of one or more runs into ``out_png``.

    Args:
        runs: a run directory, a ``metrics.jsonl`` path, a list of metric records (as
            :func:`rescompile.harness.metrics.read_metrics` returns), or a list of these.
        out_png: the image to write (PNG, SVG or PDF, by its suffix), atomically; its parent
            directory is created.
        labels: one legend label per run; defaults to the run directory names.
        title: an optional title.
        ylim: the error range in percent; defaults to 0 up to a margin above the highest point.

    Returns:
        The path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import ScalarFormatter

    out = Path(out_png)
    fmt = image_format(out)
    run_list = _as_run_list(runs)
    if not run_list:
        raise ValueError("no runs to plot")
    if labels is not None and len(labels) != len(run_list):
        raise ValueError(f"{len(labels)} labels for {len(run_list)} runs")
    names = (
        list(labels)
        if labels is not None
        else [_default_label(r, i) for i, r in enumerate(run_list)]
    )

    fig = Figure(figsize=(6.4, 4.2), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colors = [f"C{i % 10}" for i in range(len(run_list))]
    highest = 0.0
    for run, name, color in zip(run_list, names, colors, strict=True):
        records = read_metrics(run) if isinstance(run, str | Path) else run
        train_steps, train_err = _series(records, "train_error")
        test_steps, test_err = _series(records, "test_error")
        if train_steps:
            ax.plot(train_steps, train_err, "--", color=color, linewidth=1.0, alpha=0.8)
        if test_steps:
            ax.plot(test_steps, test_err, "-", color=color, linewidth=2.0, label=name)
        elif train_steps:
            ax.plot([], [], "-", color=color, linewidth=2.0, label=name)
        highest = max([highest, *train_err, *test_err])

    ax.set_xlabel("iter.")
    ax.set_ylabel("error (%)")
    ax.set_ylim(*(ylim or (0.0, min(100.0, highest * 1.1) or 1.0)))
    ax.set_xlim(left=0)
    formatter = ScalarFormatter(useMathText=True)
    formatter.set_powerlimits((0, 3))  # "x10^4" on the axis, as in the paper
    ax.xaxis.set_major_formatter(formatter)
    ax.grid(True, linewidth=0.4, alpha=0.5)
    if title:
        ax.set_title(title)
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        legend = ax.legend(loc="upper right", frameon=True)
        legend.set_title("dashed: train, bold: test", prop={"size": "small"})
    fig.tight_layout()

    from rescompile.files import write_file

    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt)
    return write_file(out, buffer.getvalue(), parents=True)


FORMATS = ("png", "svg", "pdf")


def image_format(path: str | Path) -> str:
    """The image format a file name asks for (its suffix): png, svg or pdf."""
    fmt = Path(path).suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise ValueError(
            f"cannot tell the image format of {str(path)!r}: name it .png, .svg or .pdf"
        )
    return fmt


def _as_run_list(runs: Run | Sequence[Run]) -> list[Run]:
    if isinstance(runs, str | Path):
        return [runs]
    items = list(runs)
    if items and isinstance(items[0], Mapping):  # a single run's records
        return [items]  # type: ignore[list-item]
    return items  # type: ignore[return-value]


def _default_label(run: Run, index: int) -> str:
    if isinstance(run, str | Path):
        path = Path(run)
        return (path.parent if path.suffix == ".jsonl" else path).name or str(path)
    return f"run {index + 1}"
