"""Files and options the command line reads, beyond the tests/bad_specs corpus: named pipes,
symbolic-link loops, empty paths, standard input, option words, settings that do nothing, and
sizes that must be refused before anything is allocated."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from clirun import run_cli
from spec_cases import ROOT

C20 = str(ROOT / "specs" / "paper" / "cifar-resnet20.yaml")


def _one_line_error(r, text: str) -> None:
    assert r.code == 1, r.stdout
    r.assert_clean()
    assert text in r.stderr, r.stderr


def test_a_fifo_nobody_writes_to_is_an_error_not_a_hang(tmp_path, monkeypatch):
    from rescompile.spec import yamlsafe

    monkeypatch.setattr(yamlsafe, "FIFO_WAIT_S", 0.3)
    fifo = tmp_path / "spec.yaml"
    os.mkfifo(fifo)
    start = time.monotonic()
    r = run_cli("validate", str(fifo))
    assert time.monotonic() - start < 10  # a hang check: the wait is 0.3 s
    assert r.code == 1
    assert r.stderr == f"{fifo}:1:1: is a FIFO and nothing was written to it for 0.3 s\n1 error\n"


def test_a_fifo_with_a_writer_is_read(tmp_path):
    import threading

    fifo = tmp_path / "spec.yaml"
    os.mkfifo(fifo)
    text = (ROOT / "specs" / "paper" / "cifar-resnet20.yaml").read_bytes()

    def writer():
        time.sleep(0.2)  # the reader is already waiting
        with open(fifo, "wb") as f:
            f.write(text)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    r = run_cli("validate", str(fifo))
    t.join(timeout=10)
    assert r.code == 0 and "ok (cifar-resnet20" in r.stdout, r.stderr


def test_symlink_loops_are_one_line(tmp_path):
    (tmp_path / "a.yaml").symlink_to(tmp_path / "b.yaml")
    (tmp_path / "b.yaml").symlink_to(tmp_path / "a.yaml")
    r = run_cli("validate", str(tmp_path / "a.yaml"))
    a = tmp_path / "a.yaml"
    assert r.code == 1
    assert r.stderr == f"'{a}': not a usable path: a loop of symbolic links\n1 error\n"
    spec = tmp_path / "spec.yaml"
    spec.write_text("extends: a.yaml\nname: net\n")
    r = run_cli("validate", str(spec))
    assert r.stderr.startswith(f"{spec}:1:10: extends: cannot use 'a.yaml' as a path: ")
    _one_line_error(r, "a loop of symbolic links")


def test_an_empty_spec_path(tmp_path):
    r = run_cli("validate", "")
    assert r.code == 1 and r.stderr == "'': an empty path; give a spec file\n1 error\n"


def test_a_spec_on_standard_input():
    text = (ROOT / "specs" / "paper" / "cifar-resnet20.yaml").read_text()

    def cli(*args: str, stdin: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "rescompile", *args],
            input=stdin,
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
        )

    p = cli("report", "-", "--format", "csv", stdin=text)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[-1].startswith("total,,,10,269722,")  # the paper's 0.27M
    p = cli("validate", "-", "--set", "stages.0.strid=1", stdin=text)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert p.stderr.startswith("--set stages.0.strid=1:1:16: stages.0.strid: unknown field")
    p = cli("validate", "-", stdin="name: [\n")
    assert p.returncode == 1 and p.stderr.startswith("<stdin>:2:1: invalid YAML")
    p = cli("validate", "-", stdin="extends: base.yaml\nname: x\n")
    assert p.returncode == 1 and "extends needs a file" in p.stderr


@pytest.mark.parametrize(
    ("size", "message"),
    [
        ("0", "--input 0:1:9: input.size: Input should be greater than or equal to 1"),
        ("abc", "error: --input expects SIZE or HxW (e.g. 224 or 160x192), got 'abc'"),
        ("1" * 40, "error: --input " + "1" * 40 + ": sizes are at most 65536"),
        ("70000", "--input 70000:1:9: input.size: Input should be less than or equal to 65536"),
    ],
)
def test_input_option_errors_name_the_option(size, message):
    r = run_cli("report", C20, "--input", size)
    _one_line_error(r, message)
    assert "--set" not in r.stderr


def test_input_with_leading_zeros_is_a_number():
    r = run_cli("report", C20, "--input", "0032", "--format", "json")
    assert r.code == 0, r.stderr
    assert '"input": [\n    3,\n    32,\n    32\n  ]' in r.stdout


def test_stride_on_with_basic_blocks_warns_where_it_is_written(write_spec):
    spec = write_spec(
        "name: net\ninput: {size: 32}\nnum_classes: 10\nstem: cifar\nblock: basic\n"
        "stride_on: 3x3\nstages:\n  - {depth: 1, width: 16}\n"
        "  - {depth: 1, width: 32, stride: 2, stride_on: 1x1}\n"
        "  - {depth: 1, width: 64, stride: 2, stride_on: 1x1, block: bottleneck}\n"
    )
    r = run_cli("validate", str(spec))
    assert r.code == 0
    r.assert_clean()
    # the model-wide setting is used by the bottleneck stage: only stage 1's is pointless
    assert r.stderr == (
        f"warning: {spec}:9:49: stages.1.stride_on: has no effect: stride_on places a "
        "bottleneck's stride (on its 1x1 or its 3x3 conv), and basic blocks always stride "
        "their first 3x3 conv\n"
    )
    r = run_cli("validate", C20, "--set", "stride_on=3x3")
    assert r.code == 0 and r.stderr.startswith("warning: --set stride_on=3x3:1:11: stride_on:")
    r = run_cli("validate", str(ROOT / "specs" / "torchvision" / "resnet50.yaml"))
    assert r.code == 0 and r.stderr == ""


def test_build_check_refuses_an_absurd_model_before_allocating(write_spec, tmp_path):
    import rescompile.cli

    spec = write_spec(
        "name: huge\ninput: {size: 32}\nnum_classes: 10\nstem: cifar\n"
        "block: {kind: bottleneck, expansion: 64}\nstages: [{depth: 1, width: 65536}]\n"
    )
    assert run_cli("validate", str(spec)).code == 0  # a valid spec: only running it is absurd
    out = tmp_path / "huge.py"
    r = run_cli("build", str(spec), "--check", "-o", str(out))
    _one_line_error(r, "error: --check would run huge (592,766,369,802 parameters")
    assert "more than the 16 GiB it allows" in r.stderr
    assert not out.exists()
    assert rescompile.cli.MAX_CHECK_BYTES == 16 << 30


def test_process_substitution_is_read():
    """`rescompile validate <(cat spec.yaml)`: the spec path is /dev/fd/N, an anonymous pipe."""
    read, write = os.pipe()
    os.write(write, (ROOT / "specs" / "paper" / "cifar-resnet20.yaml").read_bytes())
    os.close(write)
    try:
        p = subprocess.run(
            [sys.executable, "-m", "rescompile", "validate", f"/dev/fd/{read}"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
            pass_fds=(read,),
        )
    finally:
        os.close(read)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith(f"/dev/fd/{read}: ok (cifar-resnet20, 9 blocks")
