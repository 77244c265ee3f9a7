"""IR verifier: structural invariants every pass and backend may rely on."""

from __future__ import annotations

from rescompile.ir.graph import Graph, Node, Op

_ARITY = {Op.INPUT: 0, Op.ADD: 2, Op.SCALE: 2}


def verify(g: Graph) -> Graph:
    """Raise ``AssertionError`` (an internal bug, not a user error) on a malformed graph.

    Every edge must run forward in the node order (insertion order, which every pass iterates
    in): that makes the order a topological one and so also proves the graph acyclic, since a
    cycle would need an edge that runs backwards.
    """
    order = {name: i for i, name in enumerate(g.g.nodes)}
    inputs = []
    for n in g:
        assert isinstance(n, Node), f"a node without IR data: {n!r}"
        assert isinstance(n.op, Op), f"{n.name}: op {n.op!r} is not in the vocabulary"
        if n.op is Op.INPUT:
            inputs.append(n.name)
        preds = g.inputs(n.name)
        assert len(preds) == _ARITY.get(n.op, 1), f"{n.name}: {len(preds)} inputs for {n.op}"
        i = order[n.name]
        assert all(order[p] < i for p in preds), f"{n.name}: not in topological order"
    assert inputs == ["input"], f"expected one input node, got {inputs}"
    sinks = [name for name, d in g.g.out_degree() if d == 0]
    assert sinks == [g.output], f"expected one output, got {sinks}"
    return g
