"""What the command line prints, at the widths people's terminals have.

A number is never cut: `report` and `diff` split their columns over several tables on a narrow
terminal rather than print `25,557,0…`. Piped output follows $COLUMNS (160 without it), colour
never splits a number, help fits 80 columns, and the small conveniences (--version,
completion, report -o, right-aligned Markdown numbers) work.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from clirun import run_cli
from spec_cases import ROOT

R50 = str(ROOT / "specs" / "paper" / "resnet50.yaml")
TV50 = str(ROOT / "specs" / "torchvision" / "resnet50.yaml")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def run(*args: str, columns: int | None = None, **env: str) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "FORCE_COLOR", "NO_COLOR")}
    if columns is not None:
        e["COLUMNS"] = str(columns)
    e.update(env)
    return subprocess.run(
        [sys.executable, "-m", "rescompile", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=e,
        timeout=60,
    )


def _numbers(spec: str, depth: str) -> list[str]:
    """Every figure of the report, formatted as the table prints it (from the JSON report)."""
    doc = json.loads(run("report", spec, "--format", "json", "--depth", depth).stdout)
    rows = [*doc["rows"], doc["totals"]]
    return [f"{r[k]:,}" for r in rows for k in ("params", "macs", "flops", "act")]


def _cells(text: str) -> set[str]:
    return {c.strip() for line in text.splitlines() for c in re.split(r"[│┃]", line)}


@pytest.mark.parametrize("columns", [40, 60, 80, 100, 160])
@pytest.mark.parametrize("depth", ["stage", "block"])
def test_report_prints_every_number_whole(columns, depth):
    p = run("report", TV50, "--depth", depth, columns=columns)
    assert p.returncode == 0, p.stderr
    assert "…" not in p.stdout
    assert max(len(line) for line in p.stdout.splitlines()) <= columns
    cells = _cells(p.stdout)
    missing = [n for n in _numbers(TV50, depth) if n not in cells]
    assert missing == []
    if columns == 80:
        assert "25,557,032" in cells and "4,089,184,256" in cells


@pytest.mark.parametrize("columns", [40, 60, 80, 160])
def test_diff_prints_every_number_whole(columns):
    p = run("diff", R50, TV50, columns=columns)
    assert p.returncode == 0, p.stderr
    assert "…" not in p.stdout
    assert max(len(line) for line in p.stdout.splitlines()) <= columns
    cells = _cells(p.stdout)
    assert "+231,211,008" in cells and "+77,070,336" in cells  # the README's figure
    assert p.stdout.count("+77,070,336") == 3  # layer2, layer3, layer4
    assert {"3,857,973,248", "4,089,184,256", "25,557,032"} <= cells


def test_piped_output_follows_columns_and_is_wide_without_it():
    wide = run("report", TV50, "--depth", "layer")
    assert max(len(line) for line in wide.stdout.splitlines()) > 100  # 160: one wide table
    assert wide.stdout.count("┏") == 1
    narrow = run("report", TV50, "--depth", "layer", columns=100)
    assert max(len(line) for line in narrow.stdout.splitlines()) <= 100


def test_colour_never_splits_a_number():
    p = run("report", R50, columns=200, FORCE_COLOR="1")
    assert p.returncode == 0
    summary = p.stdout.splitlines()[-1]
    assert "MACs 3.858G · FLOPs 7.716G · params 25.557M (+53,120 BN buffers)" in summary
    assert not ANSI.search(summary)


def test_version():
    from rescompile import __version__

    p = run("--version")
    assert p.returncode == 0 and p.stdout == f"rescompile {__version__}\n"


def test_completion_offers_the_backends():
    script = os.path.join(os.path.dirname(sys.executable), "rescompile")  # the entry point
    if not os.path.exists(script):
        pytest.skip("the rescompile script is not installed next to this Python")
    env = dict(
        os.environ,
        _RESCOMPILE_COMPLETE="complete_bash",
        COMP_WORDS="rescompile build spec.yaml --backend ",
        COMP_CWORD="4",
    )
    p = subprocess.run([script], capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 0 and p.stdout.split() == ["torch", "flax"]
    p = run("--help")
    assert "--install-completion" in p.stdout


@pytest.mark.parametrize(
    "command",
    [
        "",
        "validate",
        "report",
        "diff",
        "check",
        "build",
        "export",
        "weights",
        "eval",
        "graph",
        "schema",
        "train",
        "plot",
    ],
)
def test_help_fits_80_columns(command):
    p = run(*filter(None, [command]), "--help", columns=80)
    assert p.returncode == 0
    assert max(len(line) for line in p.stdout.splitlines()) <= 80
    assert "…" not in p.stdout and "╭" not in p.stdout


def test_report_o_writes_the_table_as_plain_text(tmp_path):
    out = tmp_path / "report.txt"
    r = run_cli("report", TV50, "-o", str(out))
    assert r.code == 0 and r.stdout == "" and r.stderr == f"wrote {out}\n"
    text = out.read_text()
    assert not ANSI.search(text) and "25,557,032" in text and "conv5_x" in text
    out = tmp_path / "report.md"
    r = run_cli("report", TV50, "--format", "markdown", "-o", str(out))
    assert r.code == 0 and out.read_text().startswith("# resnet50")


def test_markdown_tables_right_align_numbers():
    r = run_cli("report", TV50, "--format", "markdown")
    lines = r.stdout.splitlines()
    head = lines.index("| name | kind | output | params | MACs | FLOPs | act |")
    assert lines[head + 1] == "|---|---|---:|---:|---:|---:|---:|"


def test_a_tiny_terminal_wraps_numbers_rather_than_cutting_them():
    p = run("report", str(ROOT / "specs" / "paper" / "cifar-resnet20.yaml"), columns=20)
    assert p.returncode == 0
    assert "…" not in p.stdout
    assert max(len(line) for line in p.stdout.splitlines()) <= 20
    # the MACs total 40,551,040 is folded over two lines of its cell, all of its digits shown
    assert "│ total  │ 40,551, │\n│        │     040 │" in p.stdout
