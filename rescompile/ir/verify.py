"""IR verifier: structural invariants every pass and backend may rely on."""

from __future__ import annotations

import networkx as nx

from rescompile.ir.graph import Graph, Op

_ARITY = {Op.INPUT: 0, Op.ADD: 2, Op.SCALE: 2}


def verify(g: Graph) -> Graph:
    """Raise ``AssertionError`` (an internal bug, not a user error) on a malformed graph."""
    assert nx.is_directed_acyclic_graph(g.g), "IR has a cycle"
    order = {name: i for i, name in enumerate(g.g.nodes)}
    inputs = [n.name for n in g if n.op is Op.INPUT]
    assert inputs == ["input"], f"expected one input node, got {inputs}"
    for n in g:
        assert isinstance(n.op, Op), f"{n.name}: op {n.op!r} is not in the vocabulary"
        preds = g.inputs(n.name)
        assert len(preds) == _ARITY.get(n.op, 1), f"{n.name}: {len(preds)} inputs for {n.op}"
        assert all(order[p] < order[n.name] for p in preds), f"{n.name}: not in topological order"
    sinks = [name for name in g.g if g.g.out_degree(name) == 0]
    assert sinks == [g.output], f"expected one output, got {sinks}"
    return g
