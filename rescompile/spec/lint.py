"""Warnings about valid specs: settings that have no effect where they are written.

They do not stop a command (the spec means something definite); the command line prints them
as ``warning: file:line:col: field: message`` on standard error.
"""

from __future__ import annotations

from rescompile.errors import Diagnostic
from rescompile.spec.load import Resolved

_STRIDE_ON_BASIC = (
    "has no effect: stride_on places a bottleneck's stride (on its 1x1 or its 3x3 conv), and "
    "basic blocks always stride their first 3x3 conv"
)


def lint(resolved: Resolved) -> list[Diagnostic]:
    """Settings of ``resolved`` that change nothing, positioned where they were written."""
    s = resolved.spec
    out: list[Diagnostic] = []
    kinds = [(st.block or s.block).kind for st in s.stages]
    if "stride_on" in s.model_fields_set and "bottleneck" not in kinds:
        out.append(Diagnostic(resolved.pos("stride_on"), _STRIDE_ON_BASIC, "stride_on"))
    for i, (st, kind) in enumerate(zip(s.stages, kinds, strict=True)):
        if st.stride_on is not None and kind != "bottleneck":
            where = resolved.pos("stages", i, "stride_on")
            out.append(Diagnostic(where, _STRIDE_ON_BASIC, f"stages.{i}.stride_on"))
    return out
