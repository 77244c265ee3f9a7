"""The IR verifier: each invariant it guards, broken on purpose, and every library spec passing."""

from __future__ import annotations

import networkx as nx
import pytest
from spec_cases import LIBRARY_SPECS, compiled, spec_id

from rescompile.ir.graph import Graph, Node, Op
from rescompile.ir.verify import verify


def _graph(*nodes: tuple[str, Op, tuple[str, ...]]) -> Graph:
    g = Graph("t", "T", (3, 8, 8), 10)
    g.add(Node("input", Op.INPUT, {"shape": (3, 8, 8)}))
    for name, op, inputs in nodes:
        g.add(Node(name, op, {}), *inputs)
    return g


def test_a_well_formed_graph_passes():
    g = _graph(("a", Op.RELU, ("input",)), ("b", Op.RELU, ("a",)), ("c", Op.ADD, ("a", "b")))
    assert verify(g) is g


@pytest.mark.parametrize("path", LIBRARY_SPECS, ids=spec_id)
def test_every_library_spec_lowers_to_a_verified_dag(path):
    g = compiled(path)[1]
    verify(g)
    assert nx.is_directed_acyclic_graph(g.g)  # the independent check the order check replaces


def test_a_cycle_is_an_edge_against_the_order():
    g = _graph(("a", Op.RELU, ("input",)), ("b", Op.RELU, ("a",)), ("c", Op.ADD, ("b", "input")))
    g.g.remove_edge("input", "a")
    g.g.add_edge("c", "a", index=0)  # a -> b -> c -> a; every arity still right
    g.g.add_node("d", node=Node("d", Op.RELU, {}))
    g.g.add_edge("c", "d", index=0)
    g.output = "d"
    assert not nx.is_directed_acyclic_graph(g.g)
    with pytest.raises(AssertionError, match="a: not in topological order"):
        verify(g)


def test_an_edge_to_an_earlier_node_is_rejected_even_without_a_cycle():
    g = _graph(("a", Op.RELU, ("input",)), ("b", Op.RELU, ("input",)))
    g.g.remove_edge("input", "a")
    g.g.add_edge("b", "a", index=0)
    g.output = "a"
    with pytest.raises(AssertionError, match="a: not in topological order"):
        verify(g)


def test_an_input_named_before_it_exists_is_rejected():
    g = _graph(("a", Op.RELU, ("later",)))  # networkx creates "later" without IR data
    with pytest.raises(AssertionError, match="a: not in topological order"):
        verify(g)


@pytest.mark.parametrize(
    ("nodes", "message"),
    [
        ((("a", Op.ADD, ("input",)),), "a: 1 inputs for add"),
        ((("a", Op.RELU, ("input",)), ("b", Op.RELU, ("input",))), "expected one output"),
        ((("a", Op.INPUT, ()), ("b", Op.ADD, ("input", "a"))), "expected one input node"),
    ],
)
def test_arity_outputs_and_inputs(nodes, message):
    with pytest.raises(AssertionError, match=message):
        verify(_graph(*nodes))


def test_an_op_outside_the_vocabulary():
    g = _graph(("a", Op.RELU, ("input",)))
    g["a"].op = "softmax"
    with pytest.raises(AssertionError, match="not in the vocabulary"):
        verify(g)


def test_inputs_keep_argument_order():
    g = _graph(("a", Op.RELU, ("input",)), ("b", Op.RELU, ("input",)), ("c", Op.ADD, ("b", "a")))
    assert g.inputs("c") == ["b", "a"] and g.inputs("a") == ["input"] and g.inputs("input") == []
