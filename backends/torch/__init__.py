"""The PyTorch backend: IR -> a standalone ``nn.Module`` source file, and tools to run it.

    from rescompile import compile_spec
    from rescompile.backends import torch as backend

    _, graph = compile_spec("specs/torchvision/resnet50.yaml")
    source = backend.emit(graph)                   # str; never imports torch
    Model = backend.load_module(source, graph.class_name)
    rows = backend.check(graph, source)            # [(what, expected, measured, ok), ...]
    backend.export(graph, source, "resnet50.onnx")  # ONNX, validated with onnx.checker

Only :func:`emit` is imported eagerly; everything that needs torch lives in submodules
(:mod:`.tools` here, :mod:`.training` for the harness) imported on first use, so
``rescompile build`` stays fast and torch-free.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rescompile.errors import EmitError
from rescompile.ir.features import FEATURES as _FAMILY_FEATURES

from .render import emit

if TYPE_CHECKING:
    from pathlib import Path

    from rescompile.ir.graph import Graph

NAME = "torch"
SUFFIX = ".py"
# The family features (rescompile.ir.features) this backend emits: all of them.
FEATURES = frozenset(_FAMILY_FEATURES)

__all__ = [
    "FEATURES",
    "NAME",
    "SUFFIX",
    "EmitError",
    "build_model",
    "check",
    "emit",
    "export",
    "load_module",
]


def load_module(source: str, class_name: str) -> Any:
    """Execute emitted ``source`` in a fresh module namespace and return its ``class_name``."""
    from . import tools

    return tools.load_module(source, class_name)


def build_model(graph: Graph, source: str | None = None) -> Any:
    """An instance of the model emitted for ``graph`` (emitting it when ``source`` is None)."""
    from . import tools

    return tools.build_model(graph, source)


def check(graph: Graph, source: str, **options: Any) -> list[tuple[str, str, str, bool]]:
    """Build ``source``, run it forward and backward, and compare it with the IR.

    Returns ``(what, expected from the IR, measured, ok)`` rows; see
    :func:`rescompile.backends.torch.tools.check` for the options (batch, seed).
    """
    from . import tools

    return tools.check(graph, source, **options)


def export(
    graph: Graph, source: str, out_path: str | Path, fmt: str = "onnx", **options: Any
) -> Path:
    """Export the emitted model (``fmt="onnx"``), validated with ``onnx.checker``.

    ``options``: ``model`` (an instance to export, e.g. trained), ``opset``, ``seed``; see
    :func:`rescompile.backends.torch.tools.export`.
    """
    from . import tools

    return tools.export(graph, source, out_path, fmt, **options)
