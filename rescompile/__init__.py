"""rescompile: a declarative architecture-spec compiler for residual networks.

    >>> import rescompile
    >>> spec, graph = rescompile.compile_spec("paper/resnet50")  # a library name or a file path
    >>> f"{graph.totals['params']:,} parameters, {graph.totals['macs']:,} multiply-adds"
    '25,557,032 parameters, 3,857,973,248 multiply-adds'

The functions (see :mod:`rescompile.api`): :func:`compile_spec` (with ``--set``-style overrides),
:func:`report`, :func:`audit`, :func:`emit`, :func:`build_model`, :func:`load_backend`; the spec
library is :mod:`rescompile.library`. Importing rescompile never imports torch, jax or flax.
"""

from rescompile import library
from rescompile.api import analyse, audit, build_model, compile_spec, emit, load_backend, report
from rescompile.errors import SpecError, UserError
from rescompile.ir.graph import Graph
from rescompile.spec.load import Resolved

__all__ = [
    "Graph",
    "Resolved",
    "SpecError",
    "UserError",
    "analyse",
    "audit",
    "build_model",
    "compile_spec",
    "emit",
    "library",
    "load_backend",
    "report",
]
__version__ = "0.1.0"
