"""User-facing errors.

A :class:`UserError` is something the user can fix (a bad spec, a missing file); the CLI prints it
without a traceback and exits with status 1. Anything else is a bug in rescompile and keeps its
traceback.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SourcePos:
    """A position in a source file; ``line`` and ``col`` are 1-based."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{one_line(self.file)}:{self.line}:{self.col}"


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One problem, at one place."""

    pos: SourcePos | None
    message: str
    path: str = ""  # dotted field path, e.g. "stages.2.depth"

    def __str__(self) -> str:
        where = f"{self.pos}: " if self.pos else ""
        field = f"{one_line(self.path)}: " if self.path else ""
        return f"{where}{field}{one_line(self.message)}"


def one_line(text: str) -> str:
    """``text`` with non-printable characters (newlines, controls, bidi overrides) escaped, so a
    diagnostic is always exactly one line and shows what the input really contains."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


class UserError(Exception):
    """An error caused by user input; printed as ``error: ...`` with exit status 1."""


class SpecError(UserError):
    """One or more diagnostics about a spec, all reported at once."""

    def __init__(self, diagnostics: list[Diagnostic] | Diagnostic, count: int | None = None):
        if isinstance(diagnostics, Diagnostic):
            diagnostics = [diagnostics]
        self.diagnostics = list(diagnostics)
        # How many problems there are: more than the diagnostics when some were only counted.
        self.count = len(self.diagnostics) if count is None else count
        super().__init__("\n".join(str(d) for d in self.diagnostics))


class EmitError(Exception):
    """A backend was handed an IR it cannot express, or a name that is unsafe in source code.

    Validation and lowering rule both out for any spec, so this is a bug in rescompile (a check
    that lets too much through, or a backend behind the IR), never a user error: the CLI lets it
    keep its traceback. Both backends raise it.
    """
