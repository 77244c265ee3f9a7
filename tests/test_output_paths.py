"""Files the command line writes: -o paths that are not plain files, planted links, full disks.

Every writing command goes through rescompile.files: the target must be (or become) a regular
file; a device, FIFO, directory or symbolic link there is refused with a one-line error naming
it; nothing outside the requested path is touched; ``-o -`` is standard output; I/O failures
are one line and exit 1; new files get the umask's permissions.
"""

from __future__ import annotations

import errno
import os
import resource
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from clirun import run_cli
from spec_cases import ROOT

C20 = str(ROOT / "specs" / "paper" / "cifar-resnet20.yaml")

# Each writing command, as argv before "-o PATH" (fast ones: no framework is imported).
WRITERS = {
    "build": ["build", C20, "--backend", "torch"],
    "schema": ["schema"],
    "graph": ["graph", C20, "--format", "dot"],
    "report": ["report", C20, "--format", "json"],
    "report-table": ["report", C20],
}


def _write(kind: str, target: str | Path):
    return run_cli(*WRITERS[kind], "-o", str(target))


def _refused(r, *fragments: str) -> None:
    assert r.code == 1, r.stderr
    r.assert_clean()
    assert len(r.stderr_lines()) == 1, r.stderr
    for f in fragments:
        assert f in r.stderr, r.stderr


def _tree(d: Path) -> dict[str, tuple[int, bytes | str | None]]:
    """Every entry under ``d`` with its type and contents (or link target)."""
    out: dict[str, tuple[int, bytes | str | None]] = {}
    for p in sorted(d.rglob("*")):
        st = p.lstat()
        if stat.S_ISLNK(st.st_mode):
            body: bytes | str | None = os.readlink(p)
        elif stat.S_ISREG(st.st_mode):
            body = p.read_bytes()
        else:
            body = None
        out[str(p.relative_to(d))] = (stat.S_IFMT(st.st_mode), body)
    return out


@pytest.mark.parametrize("kind", WRITERS)
def test_regular_file_is_replaced_atomically_with_umask_mode(kind, tmp_path):
    out = tmp_path / "out.txt"
    out.write_text("old")
    old = os.umask(0o027)
    try:
        r = _write(kind, out)
        r2 = _write(kind, tmp_path / "new.txt")
    finally:
        os.umask(old)
    assert r.code == 0 and r.stderr == f"wrote {out}\n", r.stderr
    assert out.read_text() != "old" and out.stat().st_size > 100
    assert r2.code == 0
    # the umask decides, as for any file a program creates (mkstemp alone would give 0600)
    assert stat.S_IMODE((tmp_path / "new.txt").stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.txt", "out.txt"]  # no leftovers


@pytest.mark.parametrize("kind", WRITERS)
def test_dash_means_standard_output(kind, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = _write(kind, "-")
    assert r.code == 0 and r.stderr == "" and len(r.stdout) > 100
    assert list(tmp_path.iterdir()) == []  # no file named "-"


@pytest.mark.parametrize("kind", WRITERS)
def test_fifo_target_is_refused_without_blocking(kind, tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    r = _write(kind, fifo)
    _refused(r, f"cannot write {fifo}: it is a FIFO, not a regular file; -o - writes to standard")
    assert stat.S_ISFIFO(fifo.lstat().st_mode)


@pytest.mark.parametrize("kind", ["build", "schema", "graph"])
def test_device_target_is_refused_and_left_a_device(kind, tmp_path):
    dev = tmp_path / "devnull"
    try:
        os.mknod(dev, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # a private /dev/null node
    except PermissionError:
        pytest.skip("creating a device node needs root")
    r = _write(kind, dev)
    _refused(r, f"cannot write {dev}: it is a character device, not a regular file")
    assert stat.S_ISCHR(dev.lstat().st_mode)


@pytest.mark.parametrize("kind", ["build", "schema", "report"])
def test_symlink_target_is_refused_and_its_file_untouched(kind, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    link = tmp_path / "model.py"
    link.symlink_to(victim)
    before = _tree(tmp_path)
    r = _write(kind, link)
    _refused(r, f"cannot write {link}: it is a symbolic link (to {victim})")
    assert _tree(tmp_path) == before
    dangling = tmp_path / "dangling.py"
    dangling.symlink_to(tmp_path / "nowhere" / "x.py")
    r = _write(kind, dangling)
    _refused(r, "it is a symbolic link")
    assert not (tmp_path / "nowhere").exists()


def test_planted_temporary_links_are_not_followed(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    for name in (".model.py.tmp", ".model.py", "model.py.tmp", ".model.py.XXXX.tmp"):
        (tmp_path / name).symlink_to(victim)
    r = _write("build", tmp_path / "model.py")
    assert r.code == 0, r.stderr
    assert victim.read_text() == "precious"
    model = tmp_path / "model.py"
    assert stat.S_ISREG(model.lstat().st_mode) and "class" in model.read_text()


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("", "cannot write to an empty file name"),
        (".", "cannot write .: it names a directory, not a file"),
        ("..", "cannot write ..: it names a directory, not a file"),
        ("sub/", "cannot write sub/: it names a directory, not a file"),
        ("adir", "cannot write adir: it is a directory, not a regular file"),
        ("afile/x.py", "cannot write afile/x.py: Not a directory"),
        ("missing/x.py", "cannot write missing/x.py: No such file or directory"),
    ],
)
@pytest.mark.parametrize("kind", ["build", "schema", "report-table"])
def test_unusable_paths_are_one_line_errors(kind, target, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("x")
    before = _tree(tmp_path)
    r = _write(kind, target)
    _refused(r, f"error: {message}")
    assert _tree(tmp_path) == before


def test_a_full_disk_is_one_line_and_leaves_no_temporary(tmp_path, monkeypatch):
    import rescompile.files

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(rescompile.files.os, "fsync", full)
    out = tmp_path / "model.py"
    out.write_text("old")
    r = _write("build", out)
    _refused(r, f"error: cannot write {out}: No space left on device")
    assert out.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.py"]


def _limited_file_size(limit: int):
    def setup():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return setup


def test_file_size_limit_is_one_line(tmp_path):
    """`ulimit -f`: the kernel refuses the write with EFBIG; the old file survives."""
    out = tmp_path / "model.py"
    out.write_text("old")
    p = subprocess.run(
        [sys.executable, "-m", "rescompile", "build", C20, "-o", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        preexec_fn=_limited_file_size(512),
        timeout=60,
    )
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert p.stderr == f"error: cannot write {out}: File too large\n"
    assert out.read_text() == "old"
    assert [x.name for x in tmp_path.iterdir()] == ["model.py"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root is never denied")
def test_no_permission_is_one_line(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    r = _write("build", ro / "model.py")
    _refused(r, f"cannot write {ro / 'model.py'}: Permission denied")


def test_export_refuses_bad_targets_before_exporting(tmp_path, monkeypatch):
    import rescompile.cli

    def boom(name):  # the export must not even start
        raise AssertionError("load_backend reached")

    monkeypatch.setattr(rescompile.cli, "load_backend", boom)
    fifo = tmp_path / "m.onnx"
    os.mkfifo(fifo)
    r = run_cli("export", C20, "-o", str(fifo))
    _refused(r, f"cannot write {fifo}: it is a FIFO")
    link = tmp_path / "l.onnx"
    link.symlink_to(tmp_path / "victim.onnx")
    r = run_cli("export", C20, "-o", str(link))
    _refused(r, "it is a symbolic link")
    r = run_cli("export", C20, "-o", "-")
    _refused(r, "give -o FILE")
    (tmp_path / "f").write_text("")
    r = run_cli("export", C20, "-o", str(tmp_path / "f" / "m.onnx"))
    _refused(r, "Not a directory")


def test_atomic_output_moves_side_files_and_cleans_up(tmp_path):
    """The helper for writers that need a file name (the ONNX exporter, with external data)."""
    from rescompile.errors import UserError
    from rescompile.files import atomic_output

    target = tmp_path / "sub" / "m.onnx"
    with atomic_output(target, parents=True) as tmp:
        assert tmp.name == "m.onnx" and tmp.parent.parent == target.parent
        tmp.write_bytes(b"model")
        (tmp.parent / "m.onnx.data").write_bytes(b"weights")
    assert sorted(p.name for p in target.parent.iterdir()) == ["m.onnx", "m.onnx.data"]
    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("the exporter failed")
    assert target.read_bytes() == b"model"
    assert sorted(p.name for p in target.parent.iterdir()) == ["m.onnx", "m.onnx.data"]
    with pytest.raises(UserError, match="produced no file"), atomic_output(target):
        pass


def _write_metrics(run: Path) -> None:
    from rescompile.harness.metrics import MetricsLogger

    with MetricsLogger(run) as log:
        for step in (10, 20, 30):
            log.log_train(
                step,
                epoch=step / 10,
                loss=1.0,
                train_error=0.5 - step / 100,
                lr=0.1,
                images_per_s=1.0,
            )
            log.log_eval(step, test_loss=1.0, test_error=0.6 - step / 100)


@pytest.mark.parametrize(
    ("name", "magic"), [("c.png", b"\x89PNG\r\n\x1a\n"), ("c.svg", b"<?xml"), ("c.pdf", b"%PDF-")]
)
def test_plot_writes_the_format_its_suffix_names(name, magic, tmp_path):
    pytest.importorskip("matplotlib")
    run = tmp_path / "run"
    _write_metrics(run)
    out = tmp_path / name
    r = run_cli("plot", str(run), "-o", str(out))
    assert r.code == 0, r.stderr
    assert out.read_bytes().startswith(magic)
    if name.endswith(".svg"):
        assert b"<svg" in out.read_bytes()[:2000]


def test_plot_refuses_unknown_formats_and_bad_targets(tmp_path):
    run = tmp_path / "run"
    _write_metrics(run)
    r = run_cli("plot", str(run), "-o", str(tmp_path / "c.jpg"))
    _refused(r, "name it .png, .svg or .pdf")
    fifo = tmp_path / "c.png"
    os.mkfifo(fifo)
    r = run_cli("plot", str(run), "-o", str(fifo))
    _refused(r, "it is a FIFO")
    r = run_cli("plot", str(run), "-o", str(tmp_path / "run" / "metrics.jsonl" / "c.png"))
    _refused(r, "Not a directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.png", "run"]
