"""The hostile-input corpus: `rescompile validate` on each tests/bad_specs/NAME.yaml.

Each case is ``NAME.yaml`` (its first line says what it attacks), optionally ``NAME.args``
(extra command-line arguments, a JSON list of strings), and ``NAME.expected``: the exact stderr.
Every case exits with status 1, within a time bound, without a traceback and without writing a
file. Paths in the expected text are relative to the repository root (the tests run there);
``{ROOT}`` stands for its absolute path. Files under ``_support/`` are bases that cases extend,
not cases.

After an intended change of wording, regenerate the expected files and review the diff:

    RESCOMPILE_REGEN_BAD_SPECS=1 .venv/bin/python -m pytest tests/test_bad_specs.py
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from clirun import run_cli
from spec_cases import ROOT

CORPUS = ROOT / "tests" / "bad_specs"
CASES = sorted(p for p in CORPUS.glob("*.yaml"))
REGEN = os.environ.get("RESCOMPILE_REGEN_BAD_SPECS") == "1"
# A hang check, over an order of magnitude above the slowest case (alias_billion_laughs: 0.4 s of
# CPU on a 2-core Xeon, idle; the others take under 0.03 s). Unbounded alias expansion, nesting
# or extends chains would run for minutes or exhaust memory, so they still fail it.
CPU_LIMIT_S = 10.0


@pytest.fixture
def at_root(monkeypatch):
    monkeypatch.chdir(ROOT)


def _snapshot() -> dict[str, float]:
    return {str(p): p.stat().st_mtime for p in CORPUS.rglob("*") if p.suffix != ".expected"}


def _validate(path: Path, *extra: str):
    rel = path.relative_to(ROOT)
    return run_cli("validate", str(rel), *extra)


def test_corpus_is_complete():
    names = {p.stem for p in CASES}
    assert len(names) >= 60
    for p in CORPUS.glob("*.expected"):
        assert p.stem in names, f"{p.name} has no {p.stem}.yaml"
    for p in CORPUS.glob("*.args"):
        assert p.stem in names, f"{p.name} has no {p.stem}.yaml"


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_bad_spec(path, at_root):
    args_file = path.with_suffix(".args")
    extra = json.loads(args_file.read_text()) if args_file.exists() else []
    before = _snapshot()
    r = _validate(path, *extra)
    assert _snapshot() == before, "validate wrote or changed a file"
    got = r.stderr.replace(str(ROOT), "{ROOT}")
    expected_file = path.with_suffix(".expected")
    if REGEN:
        expected_file.write_text(got)
    assert r.code == 1, r.stdout
    assert r.stdout == ""
    r.assert_clean()
    assert r.cpu_seconds < CPU_LIMIT_S, f"{r.cpu_seconds:.2f} s of CPU: a hang?"
    assert expected_file.exists(), f"no {expected_file.name}; run with RESCOMPILE_REGEN_BAD_SPECS=1"
    assert got == expected_file.read_text()


def test_one_million_blocks_is_never_lowered(at_root, monkeypatch):
    import rescompile.compiler

    def boom(*a, **k):  # pragma: no cover - the point is that it is not reached
        raise AssertionError("lowered a spec that validation should have rejected")

    monkeypatch.setattr(rescompile.compiler, "lower", boom)
    r = _validate(CORPUS / "depth_one_million.yaml")
    assert r.code == 1 and "less than or equal to 2000, got 1000000" in r.stderr
    assert r.cpu_seconds < 0.5


def test_100_mb_file_is_refused_unread(tmp_path, monkeypatch):
    big = tmp_path / "big.yaml"
    with big.open("wb") as f:
        f.write(b"name: net\n# ")
        f.truncate(100 * 2**20)  # sparse: 100 MB on paper, nothing on disk
    assert big.stat().st_size == 100 * 2**20
    opened = []
    real_open = Path.open
    monkeypatch.setattr(
        Path, "open", lambda self, *a, **k: opened.append(self) or real_open(self, *a, **k)
    )
    r = run_cli("validate", str(big))
    assert r.code == 1 and opened == []
    assert r.stderr == (
        f"{big}:1:1: file is larger than 1048576 bytes; refusing to parse it\n1 error\n"
    )
    assert r.cpu_seconds < 0.5


def test_a_dense_100_mb_file_is_refused_fast(tmp_path):
    big = tmp_path / "dense.yaml"
    line = b"- {depth: 1, width: 16}\n"
    with big.open("wb") as f:
        f.write(b"name: net\nstages:\n")
        chunk = line * (2**20 // len(line))
        for _ in range(100):
            f.write(chunk)
    r = run_cli("validate", str(big))
    assert r.code == 1 and "refusing to parse it" in r.stderr and r.cpu_seconds < 0.5


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
def test_endless_devices_are_read_bounded(device):
    if not os.path.exists(device):
        pytest.skip(f"no {device}")
    r = run_cli("validate", device)
    assert r.code == 1 and r.cpu_seconds < 1.0
    assert (
        r.stderr
        == f"{device}:1:1: file is larger than 1048576 bytes; refusing to parse it\n1 error\n"
    )


def test_fifo_is_read_bounded(tmp_path):
    import threading

    fifo = tmp_path / "spec.yaml"
    os.mkfifo(fifo)
    assert stat.S_ISFIFO(fifo.stat().st_mode)

    def writer():
        with open(fifo, "wb") as f:
            try:
                f.write(b"# " + b"x" * (2 * 2**20))
            except BrokenPipeError:
                pass

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    r = run_cli("validate", str(fifo))
    t.join(timeout=5)
    assert r.code == 1 and "refusing to parse it" in r.stderr


def test_extends_chain_too_long(tmp_path):
    for i in range(20):
        (tmp_path / f"s{i}.yaml").write_text(f"extends: s{i + 1}.yaml\nname: s{i}\n")
    r = run_cli("validate", str(tmp_path / "s0.yaml"))
    assert r.code == 1
    assert r.stderr == (
        f"{tmp_path / 's15.yaml'}:1:10: extends: extends chain longer than 16\n1 error\n"
    )


def test_extends_through_a_symlink_out_of_bounds(tmp_path):
    inside = tmp_path / "a" / "b"
    inside.mkdir(parents=True)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "base.yaml").write_text("name: base\n")
    (inside / "link.yaml").symlink_to(outside / "base.yaml")
    spec = inside / "spec.yaml"
    spec.write_text("extends: link.yaml\nname: net\n")
    from rescompile.errors import SpecError
    from rescompile.spec.load import load_spec

    with pytest.raises(SpecError, match="resolves outside the allowed spec directories"):
        load_spec(spec, roots=[tmp_path / "a"])


def test_missing_spec_and_directory(tmp_path):
    r = run_cli("validate", str(tmp_path / "nope.yaml"))
    assert r.code == 1 and r.stderr == f"{tmp_path / 'nope.yaml'}: no such file\n1 error\n"
    r = run_cli("validate", str(tmp_path))
    assert r.code == 1 and r.stderr == (
        f"{tmp_path}: is a directory, expected a YAML file\n1 error\n"
    )
