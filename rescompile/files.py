"""Writing files safely: every file rescompile writes goes through this module.

A file is written to a temporary file created exclusively (:func:`tempfile.mkstemp`: ``O_CREAT |
O_EXCL``, an unpredictable name, so a planted link is never followed) in the target's own
directory, flushed and fsynced, given the permissions an ordinary ``open()`` would give it (``0666``
less the umask, not mkstemp's ``0600``) and renamed over the target with :func:`os.replace`. A
reader sees the old file or the new one, never half of one, and a crash leaves at most a hidden
``.NAME.*.tmp`` file behind.

The target itself is checked first: an existing directory, device, FIFO or socket is refused (a
rename would replace the device node, and writing into it is not what ``-o`` means), and so is a
symbolic link (replacing it would surprise whoever made it; writing through it would write
somewhere else). ``-`` means standard output. Every failure (no space, a file-size limit, no
permission, a parent that is a file, an empty name) is a :class:`~rescompile.errors.UserError`
naming the path: one line, exit status 1.

Why not a library: ``atomicwrites`` is archived by its author and leaves files ``0600`` and links
unchecked; ``safer`` and similar packages check neither. What is needed is ``mkstemp`` +
``fchmod`` + ``os.replace`` plus the target checks, which this module spells out in one place.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from rescompile.errors import UserError, one_line

__all__ = [
    "STDOUT",
    "DirectoryLock",
    "atomic_output",
    "check_target",
    "file_mode",
    "write_file",
    "write_temp",
]

STDOUT = "-"

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
)


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _umask() -> int:
    """The process umask, read without changing it where the system allows (Linux 4.7+)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: the classic read-by-setting (briefly)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The permissions a new file gets from ``open()``: ``0o666`` less the umask."""
    return 0o666 & ~_umask()


def _show(path: str | Path) -> str:
    return one_line(str(path))


def check_target(path: str | Path, *, stdout_hint: bool = False) -> Path:
    """``path`` as a Path, if a regular file may be (re)placed there; else a :class:`UserError`.

    Refused: an empty name, a name ending in a separator, an existing directory, device, FIFO
    or socket, and a symbolic link (even one to a regular file). ``stdout_hint`` adds that
    ``-o -`` means standard output to the message (for a command's ``-o``).
    """
    tip = "; -o - writes to standard output" if stdout_hint else ""
    text = os.fspath(path)
    if not text:
        raise UserError("cannot write to an empty file name")
    if "\0" in text:
        raise UserError(f"cannot write {_show(text)!r}: a file name cannot contain a NUL byte")
    if text.endswith(os.sep) or text.endswith(os.sep + ".") or text in (".", ".."):
        raise UserError(f"cannot write {_show(text)}: it names a directory, not a file")
    target = Path(text)
    try:
        st = target.lstat()
    except FileNotFoundError:
        return target
    except OSError as e:  # a parent that is a file, a name too long, no permission, ...
        raise UserError(f"cannot write {_show(text)}: {e.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        try:
            dest = os.readlink(target)
        except OSError:  # pragma: no cover - removed in between
            dest = "?"
        raise UserError(
            f"cannot write {_show(text)}: it is a symbolic link (to {_show(dest)}); "
            f"refusing to replace it or write through it{tip}"
        )
    if not stat.S_ISREG(st.st_mode):
        if stat.S_ISDIR(st.st_mode):
            tip = ""
        raise UserError(
            f"cannot write {_show(text)}: it is {_kind(st.st_mode)}, not a regular file{tip}"
        )
    return target


def write_temp(directory: str | Path, final_name: str, data: bytes) -> Path:
    """Write ``data`` to a new temporary file in ``directory`` (named after ``final_name``),
    created exclusively with the umask's permissions and fsynced; the caller renames it.

    Raises :class:`OSError` (callers that commit several files handle it themselves).
    """
    fd, name = tempfile.mkstemp(dir=directory, prefix=f".{final_name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), file_mode())
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _ensure_parent(target: Path, parents: bool) -> None:
    if parents:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise UserError(
                f"cannot write {_show(target)}: {_show(target.parent)} is not a directory"
            ) from None
        except OSError as e:
            raise UserError(f"cannot write {_show(target)}: {e.strerror}") from None


def write_file(
    path: str | Path, data: str | bytes, *, parents: bool = False, stdout_hint: bool = False
) -> Path:
    """Atomically replace the regular file ``path`` with ``data`` (text is UTF-8).

    ``parents`` creates missing parent directories. Raises :class:`UserError` for a target that
    is not a regular file (see :func:`check_target`) and for any I/O failure.
    """
    target = check_target(path, stdout_hint=stdout_hint)
    _ensure_parent(target, parents)
    blob = data.encode("utf-8") if isinstance(data, str) else data
    try:
        tmp = write_temp(target.parent, target.name, blob)
    except OSError as e:
        raise UserError(f"cannot write {_show(target)}: {e.strerror or e}") from None
    try:
        check_target(target)  # again, just before the rename: nothing was planted meanwhile
        os.replace(tmp, target)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise UserError(f"cannot write {_show(target)}: {e.strerror or e}") from None
        raise
    return target


def write_output(data: str | bytes, path: str | Path | None) -> Path | None:
    """Write a command's output: to standard output for ``None`` or ``-``, else to ``path``.

    Returns the path written, or ``None`` for standard output.
    """
    if path is None or os.fspath(path) == STDOUT:
        if isinstance(data, bytes):
            if sys.stdout.isatty():
                raise UserError("refusing to write binary data to a terminal: give -o FILE")
            sys.stdout.flush()
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
        else:
            sys.stdout.write(data)
        return None
    return write_file(path, data, stdout_hint=True)


@contextlib.contextmanager
def atomic_output(path: str | Path, *, parents: bool = False) -> Iterator[Path]:
    """For writers that need a file name (an exporter, a plotting library): yields a path with
    the target's name inside a private temporary directory next to the target; when the block
    ends without an exception, every file written there is renamed into the target's directory
    (an exporter's side files, e.g. ONNX external data, keep the names it gave them).
    """
    target = check_target(path)
    _ensure_parent(target, parents)
    try:
        scratch = Path(
            tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        )
    except OSError as e:
        raise UserError(f"cannot write {_show(target)}: {e.strerror or e}") from None
    try:
        yield scratch / target.name
        mode = file_mode()
        produced = sorted(scratch.iterdir(), key=lambda p: p.name != target.name)
        if not produced or produced[0].name != target.name:
            raise UserError(f"cannot write {_show(target)}: the writer produced no file")
        for item in produced[::-1]:  # side files first, the target last
            final = check_target(target.parent / item.name)
            if not item.is_file() or item.is_symlink():
                raise UserError(f"cannot write {_show(final)}: the writer produced {item.name}")
            os.chmod(item, mode)
            with open(item, "rb") as f:
                os.fsync(f.fileno())
            os.replace(item, final)
    except OSError as e:
        raise UserError(f"cannot write {_show(target)}: {e.strerror or e}") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# ------------------------------------------------------------------------------------------------
# Run directories: one process at a time


class DirectoryLock:
    """An exclusive advisory lock (``flock``) on a directory, held until :meth:`release`.

    The lock is taken on the directory itself, so no lock file is created, followed or left
    behind; the kernel drops it when the process ends in any way (``kill -9`` included), so a
    stale lock cannot outlive its process. Without ``fcntl`` (Windows) it does nothing.
    """

    def __init__(self, directory: str | Path, busy_message: str) -> None:
        self.directory = Path(directory)
        self._fd: int | None = None
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return
        try:
            fd = os.open(self.directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except OSError as e:
            raise UserError(f"cannot use {_show(directory)}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserError(busy_message) from None
        except OSError as e:  # a file system without flock: run unguarded, as before
            os.close(fd)
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                raise UserError(f"cannot lock {_show(directory)}: {e.strerror}") from None
            return
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor releases the flock
            self._fd = None

    def __enter__(self) -> DirectoryLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
