"""The one layout engine of emitted code: Python written already in ``ruff format`` style.

Rendering never runs a formatter (``rescompile build`` must stay fast and dependency-free), so the
few constructs the renderers write are laid out here exactly as ruff (black style) lays them out:
a call on one line when it fits in 88 columns, otherwise one argument per line with a trailing
comma. With that magic trailing comma the layout is the same under any line length from 88 up,
so ``ruff format --check`` passes under ruff's default (88) and under this project's (100).
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass

from rescompile.errors import EmitError

WIDTH = 88
INDENT = "    "


@dataclass(frozen=True, slots=True)
class Call:
    """``func(args...)``; an argument is source text, a Call, a Kw or a Repeat."""

    func: str
    args: tuple[str | Call | Kw | Repeat, ...] = ()

    def flat(self) -> str:
        return f"{self.func}({', '.join(_flat(a) for a in self.args)})"


@dataclass(frozen=True, slots=True)
class Kw:
    name: str
    value: str | Call

    def flat(self) -> str:
        return f"{self.name}={_flat(self.value)}"


@dataclass(frozen=True, slots=True)
class Repeat:
    """``*[item for _ in range(n)]`` inside a call's arguments."""

    item: Call
    n: int

    def flat(self) -> str:
        return f"*[{self.item.flat()} for _ in range({self.n})]"


def _flat(a: str | Call | Kw | Repeat) -> str:
    return a if isinstance(a, str) else a.flat()


def fits(line: str) -> bool:
    return len(line) <= WIDTH


def call_lines(
    call: Call, level: int, prefix: str = "", suffix: str = "", explode: bool = False
) -> list[str]:
    """Lay out ``prefix + call + suffix`` at indentation ``level`` as ruff would.

    ``explode`` forces one argument per line with a magic trailing comma (a stage's blocks, which
    read best one per line).
    """
    pad = INDENT * level
    one = f"{pad}{prefix}{call.flat()}{suffix}"
    if (not explode and fits(one)) or not call.args:
        return [one]
    lines = [f"{pad}{prefix}{call.func}("]
    for a in call.args:
        lines += _arg_lines(a, level + 1)
    return [*lines, f"{pad}){suffix}"]


def _arg_lines(a: str | Call | Kw | Repeat, level: int) -> list[str]:
    pad = INDENT * level
    if isinstance(a, Call):
        return call_lines(a, level, suffix=",")
    if isinstance(a, Kw) and isinstance(a.value, Call):
        return call_lines(a.value, level, prefix=f"{a.name}=", suffix=",")
    if isinstance(a, Repeat):
        one = f"{pad}{a.flat()},"
        if fits(one):
            return [one]
        inner = INDENT * (level + 1)
        return [
            f"{pad}*[",
            *call_lines(a.item, level + 1, explode=True),  # the comma keeps it at 100 too
            f"{inner}for _ in range({a.n})",
            f"{pad}],",
        ]
    line = f"{pad}{_flat(a)},"
    if not fits(line):  # pragma: no cover - arguments are short names and numbers
        raise EmitError(f"cannot lay out argument {_flat(a)!r} in {WIDTH} columns")
    return [line]


def def_lines(name: str, params: list[str], returns: str, level: int = 1) -> list[str]:
    """``def name(params) -> returns:`` laid out like ruff does."""
    return call_lines(Call(f"def {name}", tuple(params)), level, suffix=f" -> {returns}:")


def statements(body: list[str], level: int) -> list[str]:
    """Indent ``body`` (blank strings stay blank lines)."""
    pad = INDENT * level
    return [f"{pad}{s}" if s else "" for s in body]


def _hang(line: str, width: int) -> list[str]:
    """A preformatted line, wrapped if too long, under its ``Label:`` column (hanging indent)."""
    if len(line) <= width:
        return [line]
    label = re.match(r"\s*\S[^:]*:\s+", line)
    hang = " " * (label.end() if label else len(line) - len(line.lstrip()))
    return textwrap.wrap(
        line, width, subsequent_indent=hang, break_long_words=False, break_on_hyphens=False
    )


def docstring(text_: str, level: int) -> list[str]:
    """A docstring at ``level``: paragraphs (blank-line separated) wrapped to 88 columns.

    A paragraph starting with a tab is preformatted and kept line by line (a line too long for
    the width is wrapped under its ``Label:`` column).
    """
    pad = INDENT * level
    width = WIDTH - len(pad)
    body: list[str] = []
    for i, para in enumerate(text_.strip("\n").split("\n\n")):
        if i:
            body.append("")
        if para.startswith("\t"):
            lines = [part for line in para[1:].split("\n") for part in _hang(line, width)]
        else:
            first = '"""' if i == 0 else ""
            lines = textwrap.wrap(
                " ".join(para.split()), width, initial_indent=first, break_on_hyphens=False
            )
            if i == 0:
                lines[0] = lines[0][3:]
        for line in lines:
            if not fits(pad + line):
                raise EmitError(f"docstring line too long: {line!r}")
        body += lines
    if len(body) == 1:
        if fits(f'{pad}"""{body[0]}"""'):
            return [f'{pad}"""{body[0]}"""']
        # two lines, or ruff format would put the closing quotes back on the one line
        body = textwrap.wrap(f'"""{body[0]}', width - 3, break_long_words=False)
        body[0] = body[0][3:]
    return [f'{pad}"""{body[0]}', *(f"{pad}{x}" if x else "" for x in body[1:]), f'{pad}"""']


def join_parts(parts: list[list[str]]) -> str:
    """A file from its parts: the header, the imports, then definitions two blank lines apart."""
    out: list[str] = []
    for i, p in enumerate(parts):
        if i:
            out += [""] if i == 1 else ["", ""]
        out += p
    return "\n".join(out) + "\n"
