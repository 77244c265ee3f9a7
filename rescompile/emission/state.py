"""The tensors of a graph as every backend names them: PyTorch's state_dict layout.

Keys are IR node names plus the tensor's name (``layer1.0.conv1.weight``); shapes are PyTorch's
(convolution kernels OIHW). The flax backend converts its own parameter tree to and from this
layout, so the two backends and the portable checkpoint share one definition.
"""

from __future__ import annotations

from rescompile.ir.graph import Graph
from rescompile.passes.layout import state_layout


def state_dict_layout(graph: Graph) -> dict[str, tuple[int, ...]]:
    """The state_dict keys and shapes the IR implies, in IR order (one definition, the core's
    :func:`rescompile.passes.layout.state_layout`)."""
    return dict(state_layout(graph))


def tensor_owners(graph: Graph) -> set[str]:
    """The IR nodes that own tensors (their module paths in either backend)."""
    return {key.rpartition(".")[0] for key in state_dict_layout(graph)}
