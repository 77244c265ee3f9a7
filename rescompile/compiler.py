"""The pipeline: spec file -> resolved spec -> IR -> analyses."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rescompile.ir.graph import Graph
from rescompile.ir.lower import lower
from rescompile.ir.verify import verify
from rescompile.passes.costs import count_costs
from rescompile.passes.shapes import infer_shapes
from rescompile.spec.load import Resolved, load_spec


def analyse(resolved: Resolved) -> Graph:
    """Lower a resolved spec and run every analysis pass on it."""
    g = lower(resolved)
    verify(g)
    infer_shapes(g)
    count_costs(g)
    return g


def compile_spec(path: str | Path, overrides: Sequence[str] = ()) -> tuple[Resolved, Graph]:
    """Load ``path`` (with ``--set`` style ``overrides``) and return the spec and analysed IR."""
    resolved = load_spec(path, overrides)
    return resolved, analyse(resolved)
