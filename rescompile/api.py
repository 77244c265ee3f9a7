"""The Python API: what the command line does, as functions.

    >>> import rescompile
    >>> spec, graph = rescompile.compile_spec("paper/resnet50")   # a library name, or a path
    >>> graph.totals["params"], graph.totals["macs"]
    (25557032, 3857973248)
    >>> _, small = rescompile.compile_spec("paper/resnet50", ["input.size=160"])
    >>> small.totals["macs"] < graph.totals["macs"]
    True
    >>> print(rescompile.report(graph, "csv").splitlines()[1])
    stem,stem,conv1,64x56x56,9536,128,118013952,236027904,802816,802816,0,802816,0,0,2609152,10436608
    >>> [f.status for f in rescompile.audit(spec, graph)].count("FAIL")
    0
    >>> source = rescompile.emit(graph, "torch")                  # a str; imports no framework
    >>> f"class {graph.class_name}(nn.Module):" in source
    True

``build_model(graph, "torch")`` returns an ``nn.Module`` instance, ``build_model(graph, "flax")``
an ``nnx.Module`` (initialised with ``nnx.Rngs(seed)``); both import their framework on first use.
Errors in a spec raise :class:`rescompile.SpecError`, whose ``diagnostics`` carry
``file:line:col`` positions.
"""

from __future__ import annotations

import io
from typing import Any, Literal

from rescompile.backends import load_backend
from rescompile.compiler import analyse, compile_spec
from rescompile.ir.features import require_backend_support
from rescompile.ir.graph import Graph
from rescompile.passes.audit import Finding
from rescompile.spec.load import Resolved

Format = Literal["table", "json", "csv", "markdown", "html"]
Depth = Literal["stage", "block", "layer"]

__all__ = ["analyse", "audit", "build_model", "compile_spec", "emit", "load_backend", "report"]


def report(graph: Graph, format: Format = "table", depth: Depth = "stage") -> str:
    """The report ``rescompile report`` prints: shapes, parameters, MACs, FLOPs, activations."""
    from rescompile.passes import report as rep

    if format == "table":
        from rich.console import Console

        out = io.StringIO()
        rep.render_table(graph, depth, Console(file=out, width=160, color_system=None))
        return out.getvalue()
    render = {
        "json": rep.to_json,
        "csv": rep.to_csv,
        "markdown": rep.to_markdown,
        "html": rep.to_html,
    }
    if format not in render:
        raise ValueError(f"unknown report format {format!r}")
    return render[format](graph, depth)


def audit(spec: Resolved, graph: Graph) -> list[Finding]:
    """The figures ``rescompile check`` prints: each computed figure against the paper's row.

    Raises :class:`rescompile.UserError` when the spec names no paper row.
    """
    from rescompile.passes.audit import audit as _audit

    return _audit(spec, graph)


def emit(graph: Graph, backend_name: str = "torch") -> str:
    """The standalone source file ``rescompile build`` writes for ``graph``.

    Raises :class:`rescompile.UserError` when the backend cannot emit a feature the graph uses.
    """
    backend = load_backend(backend_name)
    require_backend_support(graph, backend, backend_name)
    return backend.emit(graph)


def build_model(graph: Graph, backend_name: str = "torch", *, seed: int = 0) -> Any:
    """A freshly initialised model object for ``graph``: ``nn.Module`` or ``nnx.Module``."""
    module = load_backend(backend_name).module
    cls = module.load_module(emit(graph, backend_name), graph.class_name)
    if backend_name == "flax":
        from flax import nnx

        return cls(rngs=nnx.Rngs(seed))
    if backend_name == "torch":
        import torch

        torch.manual_seed(seed)
    return cls()
