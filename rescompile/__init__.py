"""rescompile: a declarative architecture-spec compiler for residual networks.

    from rescompile import compile_spec
    resolved, graph = compile_spec("specs/paper/resnet50.yaml")
    graph.totals["macs"]

Importing rescompile never imports torch, jax or flax.
"""

from rescompile.compiler import analyse, compile_spec
from rescompile.errors import SpecError, UserError

__all__ = ["SpecError", "UserError", "analyse", "compile_spec"]
__version__ = "0.1.0"
