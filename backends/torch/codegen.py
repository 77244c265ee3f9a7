"""A tiny code builder that writes Python already in ``ruff format`` style.

The emitter never runs a formatter (``rescompile build`` must stay fast and dependency-free), so
the few constructs it emits are laid out here exactly as ruff (black style) lays them out: a call
on one line when it fits in 88 columns, otherwise one argument per line with a trailing comma.
Ruff would "hug" some of those arguments onto one indented line at 88 columns but join them at
100; with the magic trailing comma the layout is the same under any line length from 88 up, so
``ruff format --check`` passes both under ruff's default (88) and under this project's (100).
"""

from __future__ import annotations

import keyword
import math
import re
import textwrap
from dataclasses import dataclass

from rescompile.errors import EmitError

WIDTH = 88
INDENT = "    "

# Attribute names an ``nn.Module`` already uses (a submodule must never shadow one).
_MODULE_ATTRS = frozenset(
    """T_destination add_module apply bfloat16 buffers call_super_init children compile cpu cuda
    double dump_patches eval extra_repr float forward get_buffer get_extra_state get_parameter
    get_submodule half ipu load_state_dict modules mtia named_buffers named_children
    named_modules named_parameters parameters register_backward_hook register_buffer
    register_forward_hook register_forward_pre_hook register_full_backward_hook
    register_full_backward_pre_hook register_load_state_dict_post_hook register_module
    register_parameter register_state_dict_pre_hook requires_grad_ set_extra_state
    set_submodule share_memory state_dict to to_empty train training type xpu zero_grad""".split()
)
_SAFE_TEXT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_HEX = re.compile(r"[0-9a-f]{0,64}")


# Names already validated (validation is a pure function of the string): a 4,000-node IR
# repeats the same few dozen names.
_SAFE_IDENTS: set[str] = set()
_SAFE_PARTS: set[str] = set()


# -- validation of everything that reaches the source ------------------------------------------


def ident(name: object, what: str = "identifier") -> str:
    """``name`` if it is a plain ASCII, non-keyword, non-dunder Python identifier."""
    if isinstance(name, str) and name in _SAFE_IDENTS:
        return name
    if (
        not isinstance(name, str)
        or not name.isascii()
        or not name.isidentifier()
        or keyword.iskeyword(name)
        or name.startswith("__")
    ):
        raise EmitError(f"refusing to emit {what} {name!r}: not a safe Python identifier")
    _SAFE_IDENTS.add(name)
    return name


def attr_name(name: object, what: str = "module name") -> str:
    """A submodule attribute name: an identifier that does not shadow ``nn.Module``'s own."""
    ident(name, what)
    if name.startswith("_") or name in _MODULE_ATTRS:
        raise EmitError(f"refusing to emit {what} {name!r}: it would shadow nn.Module.{name}")
    return name


def node_path(name: object) -> list[str]:
    """Split a dotted IR node name; each part an attribute name or a decimal index."""
    if not isinstance(name, str) or not name:
        raise EmitError(f"refusing to emit IR node name {name!r}")
    parts = name.split(".")
    for p in parts:
        if p in _SAFE_PARTS:
            continue
        if not (p.isascii() and p.isdecimal() and str(int(p)) == p):
            attr_name(p, f"IR node name {name!r} component")
        _SAFE_PARTS.add(p)
    return parts


def text(value: object, what: str) -> str:
    """A spec name for a comment or docstring: letters, digits, ``_ . -`` only."""
    if not isinstance(value, str) or not _SAFE_TEXT.fullmatch(value):
        raise EmitError(f"refusing to emit {what} {value!r} into a docstring")
    return value


def hexdigest(value: object, what: str = "spec hash") -> str:
    if not isinstance(value, str) or not _HEX.fullmatch(value):
        raise EmitError(f"refusing to emit {what} {value!r}")
    return value


def num(value: object) -> str:
    """A literal for an int or a finite float taken from the IR."""
    if isinstance(value, bool):
        raise EmitError(f"expected a number, got {value!r}")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)
    raise EmitError(f"expected a number, got {value!r}")


def grouped(n: int) -> str:
    return f"{num(n)}" if n < 10_000 else f"{n:,}"


# -- expressions -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Call:
    """``func(args...)``; an argument is source text, a :class:`Call` or a :class:`Kw`."""

    func: str
    args: tuple[str | Call | Kw, ...] = ()

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

    ``explode`` forces one argument per line with a magic trailing comma (used for the stages'
    ``nn.Sequential``, which read best one block per line).
    """
    pad = INDENT * level
    one = f"{pad}{prefix}{call.flat()}{suffix}"
    if not explode and fits(one):
        return [one]
    head = f"{pad}{prefix}{call.func}("
    tail = f"{pad}){suffix}"
    if not call.args:
        return [one]
    lines = [head]
    for a in call.args:
        lines += _arg_lines(a, level + 1)
    lines.append(tail)
    return lines


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
            *call_lines(a.item, level + 1, explode=True),
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


def _hang(line: str, width: int) -> list[str]:
    """A preformatted line, wrapped if too long, under its ``Label:`` column (hanging indent)."""
    if len(line) <= width:
        return [line]
    label = re.match(r"\s*\S[^:]*:\s+", line)
    hang = " " * (label.end() if label else len(line) - len(line.lstrip()))
    return textwrap.wrap(line, width, subsequent_indent=hang, break_long_words=False,
                         break_on_hyphens=False)


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
            lines = textwrap.wrap(" ".join(para.split()), width, initial_indent=first)
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
