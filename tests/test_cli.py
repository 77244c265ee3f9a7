"""The command line as a user runs it: separate processes, exit codes, no tracebacks."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

import pytest
from spec_cases import ROOT

R50 = str(ROOT / "specs" / "paper" / "resnet50.yaml")
TV50 = str(ROOT / "specs" / "torchvision" / "resnet50.yaml")


def run(*args: str, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rescompile", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,  # a hang check: these take about a second
    )


def test_validate_ok():
    p = run("validate", R50)
    assert p.returncode == 0 and "ok (resnet50, 16 blocks" in p.stdout


def test_bad_spec_exit_1_no_traceback(write_spec):
    bad = write_spec(
        "name: x\ninput: {size: 32}\nnum_classes: 10\nstem: cifar\nblock: basic\n"
        "stages: [{depth: 1, width: 16, strid: 1}]\n"
    )
    p = run("report", str(bad))
    assert p.returncode == 1
    assert "Traceback" not in p.stderr
    assert f"{bad}:6:32: stages.0.strid: unknown field 'strid'; did you mean 'stride'?" in p.stderr


def test_report_json_totals_and_convention():
    p = run("report", TV50, "--format", "json", "--depth", "block")
    doc = json.loads(p.stdout)
    assert doc["totals"]["params"] == 25_557_032
    assert "multiply-adds of conv and fc only" in doc["convention"]
    assert sum(r["macs"] for r in doc["rows"]) == doc["totals"]["macs"]
    assert [r["name"] for r in doc["rows"]][:3] == ["stem", "layer1.0", "layer1.1"]


def test_report_csv_layer_and_input_size():
    p = run("report", TV50, "--format", "csv", "--depth", "layer", "--input", "160x192")
    rows = list(csv.DictReader(io.StringIO(p.stdout)))
    by_name = {r["name"]: r for r in rows}
    assert by_name["conv1"]["output"] == "64x80x96"
    assert by_name["layer4.2.add"]["output"] == "2048x5x6"
    assert int(by_name["total"]["params"]) == 25_557_032


def test_report_table_and_markdown():
    p = run("report", R50)
    assert p.returncode == 0 and "conv5_x" in p.stdout and "3,857,973,248" in p.stdout
    p = run("report", R50, "--format", "markdown")
    assert p.stdout.startswith("# resnet50") and "| **total** |" in p.stdout


def test_diff_shows_where_231m_macs_come_from():
    p = run("diff", R50, TV50)
    assert p.returncode == 0
    assert "+231,211,008" in p.stdout
    assert p.stdout.count("+77,070,336") == 3  # layer2, layer3, layer4


def test_check_single_and_all():
    p = run("check", R50)
    assert p.returncode == 0
    assert "NOTE  multiply-adds" in p.stdout and "does not follow from rounding" in p.stdout
    p = run("check", "--all")
    assert p.returncode == 0 and "FAIL" not in p.stdout
    assert p.stdout.count("PASS") > 100


def test_check_fails_when_spec_departs_from_paper():
    p = run(
        "check",
        str(ROOT / "specs" / "paper" / "cifar-resnet20.yaml"),
        "--set",
        "stages.2.width=128",
    )
    assert p.returncode == 1
    assert "FAIL  parameters (trainable)" in p.stdout
    assert "FAIL  conv4_x output channels" in p.stdout


def test_ir_json_and_dot():
    p = run("ir", TV50, "--format", "json")
    doc = json.loads(p.stdout)
    names = [n["name"] for n in doc["nodes"]]
    assert "layer1.0.downsample.0" in names and names[-1] == "fc"
    assert doc["nodes"][1]["src"].endswith("resnet50.yaml:6:7")  # `stem: imagenet`
    p = run("ir", TV50, "--format", "dot")
    assert p.stdout.startswith('digraph "resnet50"') and "64x56x56" in p.stdout


def test_usage_errors():
    assert run("check").returncode == 1
    assert run("report", R50, "--input", "abc").returncode == 1
    assert run("nosuchcommand").returncode == 2


HEAVY = ("torch", "jax", "flax")


@pytest.mark.parametrize(
    "argv", [["validate", R50], ["report", R50, "--depth", "layer"], ["check", R50]]
)
def test_core_commands_never_import_frameworks(argv):
    code = (
        "import sys, runpy\n"
        f"sys.argv = ['rescompile', *{argv!r}]\n"
        "try:\n    runpy.run_module('rescompile', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        f"print('HEAVY', sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert "HEAVY []" in p.stdout, p.stdout + p.stderr


def test_import_rescompile_is_light():
    code = (
        "import sys, rescompile, rescompile.cli\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.stdout.strip() == "[]"
