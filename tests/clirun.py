"""Run the ``rescompile`` command line in-process, exactly as ``rescompile.cli:main`` runs it.

A subprocess per call costs about half a second; the hostile-input suites make thousands of calls.
``run_cli`` goes through the real entry point (typer parsing, the user-error handler, exit codes),
with stdout and stderr captured. An exception that ``main`` does not turn into a diagnostic
propagates to the caller: that is a crash, and the test fails with its traceback.
"""

from __future__ import annotations

import io
import re
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass

from rescompile.cli import main

# What rescompile may print on stderr: positioned diagnostics, their count, `error: ...` lines,
# `wrote FILE`, warnings, and `check`'s count of failed figures.
STDERR_LINE = re.compile(
    r"(?s).+:\d+:\d+: .+"  # file:line:col: [field: ]message
    r"|\d+ errors?"
    r"|error: .+"
    r"|warning: .+"
    r"|wrote .+"
    r"|\d+ figure\(s\) FAIL"
    r"|  (PASS|FAIL)  .+"  # build --check results
)


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str
    seconds: float  # wall clock
    cpu_seconds: float  # this process's CPU time

    def stderr_lines(self) -> list[str]:
        return self.stderr.splitlines()

    def assert_clean(self) -> None:
        """Exit 0, or exit 1 with every stderr line a diagnostic: never a traceback."""
        assert self.code in (0, 1), (self.code, self.stderr[-2000:])
        assert "Traceback" not in self.stderr, self.stderr[-2000:]
        for line in self.stderr_lines():
            assert STDERR_LINE.fullmatch(line), f"unexpected stderr line: {line[:300]!r}"
        if self.code == 1:
            assert self.stderr.strip(), "exit 1 without a message"


def run_cli(*args: str) -> Result:
    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = ["rescompile", *args]
    code = 0
    start, cpu = time.perf_counter(), time.process_time()
    try:
        with redirect_stdout(out), redirect_stderr(err):
            try:
                main()
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = argv
    return Result(
        code,
        out.getvalue(),
        err.getvalue(),
        time.perf_counter() - start,
        time.process_time() - cpu,
    )
