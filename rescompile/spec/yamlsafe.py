"""Safe YAML loading with source positions and hard limits.

Specs are parsed with PyYAML's safe parser only, then converted to plain Python values by this
module rather than by PyYAML's constructors, so that:

* every value keeps its ``file:line:col`` (``Located.positions`` maps a field path to it);
* duplicate keys are an error, not "last one wins";
* explicit tags (``!!python/object``, ``!!binary``, ...) are rejected outright;
* YAML 1.1 surprises are not coerced: ``no``/``yes``/``on``/``off`` stay strings, ``010`` is an
  error rather than octal 8, timestamps stay strings;
* file size, nesting depth and alias expansion are bounded, so a "billion laughs" file fails fast.
"""

from __future__ import annotations

import os
import re
import select
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rescompile.errors import Diagnostic, SourcePos, SpecError

MAX_BYTES = 1 << 20  # 1 MiB: real specs are a few hundred bytes
MAX_DEPTH = 32
MAX_NODES = 100_000  # after alias expansion
MAX_DIGITS = 100  # an integer literal longer than this is an error, not a bignum

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_NULL = {"", "~", "null", "Null", "NULL"}
_TRUE = {"true", "True", "TRUE"}
_FALSE = {"false", "False", "FALSE"}
_INT = re.compile(r"[-+]?(0|[1-9][0-9]*)")
_LEADING_ZERO = re.compile(r"[-+]?0[0-9]+")
_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+\.[0-9]*|[0-9]+)([eE][-+]?[0-9]+)?")

_BREAK = re.compile("\r\n|[\r\n\x85\u2028\u2029]")  # YAML 1.1 line breaks (PyYAML's reader)

Path_ = tuple[str | int, ...]


@dataclass
class Located:
    """Plain data loaded from YAML plus the source position of every value and mapping key."""

    data: Any
    file: str
    positions: dict[Path_, SourcePos] = field(default_factory=dict)
    key_positions: dict[Path_, SourcePos] = field(default_factory=dict)
    problems: list[Diagnostic] = field(default_factory=list)  # non-fatal, reported with the rest

    def pos(self, path: Path_, *, key: bool = False) -> SourcePos | None:
        """Position of ``path`` or of its nearest ancestor that has one."""
        table = self.key_positions if key else self.positions
        for n in range(len(path), -1, -1):
            p = table.get(path[:n]) or self.positions.get(path[:n])
            if p is not None:
                return p
        return None


def _pos(file: str, mark: yaml.Mark) -> SourcePos:
    return SourcePos(file, mark.line + 1, mark.column + 1)


def _fail(file: str, mark: yaml.Mark | None, message: str) -> SpecError:
    return SpecError(Diagnostic(_pos(file, mark) if mark else SourcePos(file, 1, 1), message))


def _prescan(text: str, file: str) -> None:
    """Check nesting depth and tags on the event stream, before any recursive composition."""
    depth = 0
    try:
        for ev in yaml.parse(text, Loader=_Loader):
            tag = getattr(ev, "tag", None)
            if tag is not None and not isinstance(ev, yaml.DocumentStartEvent):
                raise _fail(file, ev.start_mark, f"explicit YAML tags are not allowed ({tag!s})")
            if isinstance(ev, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    raise _fail(file, ev.start_mark, f"nesting deeper than {MAX_DEPTH} levels")
            elif isinstance(ev, yaml.CollectionEndEvent):
                depth -= 1
            elif isinstance(ev, yaml.DocumentStartEvent) and ev.explicit and ev.tags:
                raise _fail(file, ev.start_mark, "%TAG directives are not allowed")
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        raise _fail(file, mark, f"invalid YAML: {e.problem or e.context}") from None
    except yaml.reader.ReaderError as e:  # a character YAML does not allow (control, NUL, ...)
        at = e.position
        if _Loader is not yaml.SafeLoader:  # libyaml counts UTF-8 bytes, not characters
            at = len(text.encode()[:at].decode(errors="ignore"))
        lines = _BREAK.split(text[:at])  # CR, LF, CRLF and YAML's other breaks, as the parser
        line, col = len(lines), len(lines[-1]) + 1
        char = chr(e.character) if isinstance(e.character, int) else e.character
        raise SpecError(
            Diagnostic(SourcePos(file, line, col), f"invalid YAML: character {char!r}: {e.reason}")
        ) from None
    except yaml.YAMLError as e:  # pragma: no cover - unmarked errors are rare
        raise _fail(file, None, f"invalid YAML: {' '.join(str(e).split())}") from None


def _scalar(node: yaml.ScalarNode, file: str, problems: list[Diagnostic], path: Path_) -> Any:
    v = node.value
    if node.style:  # quoted or block scalar: always a string
        return v
    if v in _NULL:
        return None
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    if _INT.fullmatch(v) or _LEADING_ZERO.fullmatch(v):
        digits = len(v.lstrip("+-"))
        if digits > MAX_DIGITS:  # int() would refuse (or take quadratic time)
            problems.append(
                Diagnostic(
                    _pos(file, node.start_mark),
                    f"number with {digits} digits is too large",
                    ".".join(map(str, path)),
                )
            )
            return v
    if _INT.fullmatch(v):
        return int(v)
    if _LEADING_ZERO.fullmatch(v):
        problems.append(
            Diagnostic(
                _pos(file, node.start_mark),
                f"ambiguous number {v!r}: a leading zero is octal in YAML 1.1; write {int(v)} or "
                "quote it",
                ".".join(map(str, path)),
            )
        )
    if _FLOAT.fullmatch(v):
        return float(v)
    return v


class _Builder:
    def __init__(self, file: str, located: Located, text: str = ""):
        self.text = text
        self.file = file
        self.loc = located
        self.count = 0
        self.open: set[int] = set()  # collection nodes being built (to spot a recursive alias)

    def build(self, node: yaml.Node, path: Path_) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise _fail(
                self.file,
                node.start_mark,
                f"the document expands to more than {MAX_NODES} values "
                "(alias expansion limit; is this a 'billion laughs' file?)",
            )
        if id(node) in self.open:
            raise _fail(self.file, node.start_mark, "recursive alias: a node contains itself")
        if len(path) > MAX_DEPTH:  # reachable only through aliases
            raise _fail(
                self.file,
                node.start_mark,
                f"nesting deeper than {MAX_DEPTH} levels once aliases are expanded",
            )
        self.loc.positions.setdefault(path, _pos(self.file, node.start_mark))
        if isinstance(node, yaml.ScalarNode):
            return _scalar(node, self.file, self.loc.problems, path)
        self.open.add(id(node))
        try:
            return self._collection(node, path)
        finally:
            self.open.discard(id(node))

    def _collection(self, node: yaml.Node, path: Path_) -> Any:
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Any] = {}
            for knode, vnode in node.value:
                if not isinstance(knode, yaml.ScalarNode):
                    raise _fail(self.file, knode.start_mark, "mapping keys must be plain strings")
                if knode.value == "<<":
                    raise _fail(self.file, knode.start_mark, "merge keys ('<<') are not allowed")
                key = knode.value
                if key in out:
                    first = self.loc.key_positions[(*path, key)]
                    raise _fail(
                        self.file,
                        self._alias_mark(knode, node, first) or knode.start_mark,
                        f"duplicate key {key!r} (first defined at line {first.line})",
                    )
                self.loc.key_positions[(*path, key)] = _pos(self.file, knode.start_mark)
                out[key] = self.build(vnode, (*path, key))
            return out
        raise _fail(self.file, node.start_mark, "unsupported YAML node")  # pragma: no cover

    def _alias_mark(
        self, knode: yaml.Node, mapping: yaml.Node, first: SourcePos
    ) -> yaml.Mark | None:
        """Where a key that came through an alias (``*k : 2``) was written. The composed node
        is the anchored one, so its own mark is the anchor's; the alias is found in the events
        (only when reporting a duplicate, so the second parse costs nothing otherwise)."""
        anchor = None
        start, end = mapping.start_mark.index, mapping.end_mark.index
        for ev in yaml.parse(self.text, Loader=_Loader):
            if isinstance(ev, yaml.ScalarEvent) and ev.start_mark.index == knode.start_mark.index:
                anchor = ev.anchor
            elif (
                isinstance(ev, yaml.AliasEvent)
                and anchor is not None
                and ev.anchor == anchor
                and start <= ev.start_mark.index <= end
                and (ev.start_mark.line + 1, ev.start_mark.column + 1) > (first.line, first.col)
            ):
                return ev.start_mark
        return None


def load_text(text: str, file: str = "<string>") -> Located:
    """Load one YAML document from ``text``; raises :class:`SpecError` on any problem."""
    if len(text) > MAX_BYTES:
        raise _fail(file, None, f"file is larger than {MAX_BYTES} bytes; refusing to parse it")
    _prescan(text, file)
    try:
        docs = list(yaml.compose_all(text, Loader=_Loader))
    except yaml.MarkedYAMLError as e:
        raise _fail(file, e.problem_mark, f"invalid YAML: {e.problem}") from None
    if len(docs) > 1:
        raise _fail(file, docs[1].start_mark, "expected one YAML document, found several")
    located = Located(None, file)
    if docs and docs[0] is not None:
        located.data = _Builder(file, located, text).build(docs[0], ())
    return located


FIFO_WAIT_S = 5.0  # how long a named pipe may stay silent before a spec read gives up


def _read_fifo(path: Path, name: str) -> bytes:
    """Read at most ``MAX_BYTES + 1`` bytes from a named pipe without hanging: opening it
    non-blocking never waits for a writer, and each read waits at most ``FIFO_WAIT_S``."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        chunks, size = [], 0
        while size <= MAX_BYTES:
            if not poller.poll(FIFO_WAIT_S * 1000):
                raise _fail(
                    name,
                    None,
                    f"is a FIFO and nothing {'more ' if size else ''}was written to it "
                    f"for {FIFO_WAIT_S:g} s",
                )
            chunk = os.read(fd, min(1 << 16, MAX_BYTES + 1 - size))
            if not chunk:  # the writer closed it
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def load_file(path: str | Path, display: str | None = None) -> Located:
    """Load a YAML file with all the limits of :func:`load_text`."""
    p = Path(path)
    name = display or str(path)
    try:
        size = p.stat().st_size
        if size > MAX_BYTES:
            raise _fail(name, None, f"file is larger than {MAX_BYTES} bytes; refusing to parse it")
        if stat.S_ISFIFO(p.stat().st_mode):  # a named pipe may never be written to
            raw = _read_fifo(p, name)
        else:
            with p.open("rb") as f:  # bounded: a device has no meaningful size
                raw = f.read(MAX_BYTES + 1)
        if len(raw) > MAX_BYTES:
            raise _fail(name, None, f"file is larger than {MAX_BYTES} bytes; refusing to parse it")
    except FileNotFoundError:
        raise SpecError(Diagnostic(None, f"{name}: no such file")) from None
    except IsADirectoryError:
        raise SpecError(Diagnostic(None, f"{name}: is a directory, expected a YAML file")) from None
    except OSError as e:
        raise SpecError(Diagnostic(None, f"{name}: cannot read: {e.strerror}")) from None
    except ValueError:  # an embedded NUL byte
        raise SpecError(Diagnostic(None, f"{name!r}: not a valid file name")) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _fail(name, None, f"file is not UTF-8 (byte {e.start})") from None
    return load_text(text, name)
