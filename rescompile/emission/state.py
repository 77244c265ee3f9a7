"""The tensors of a graph as every backend names them: PyTorch's state_dict layout.

Keys are IR node names plus the tensor's name (``layer1.0.conv1.weight``); shapes are PyTorch's
(convolution kernels OIHW). The flax backend converts its own parameter tree to and from this
layout, so the two backends and the portable checkpoint share one definition.
"""

from __future__ import annotations

from rescompile.ir.graph import Graph, Op


def state_dict_layout(graph: Graph) -> dict[str, tuple[int, ...]]:
    """The state_dict keys and shapes the IR implies, in IR order."""
    out: dict[str, tuple[int, ...]] = {}
    for n in graph:
        a = n.attrs
        if n.op is Op.CONV2D:
            k = a["kernel"]
            out[f"{n.name}.weight"] = (a["out_channels"], a["in_channels"] // a["groups"], k, k)
            if a["bias"]:
                out[f"{n.name}.bias"] = (a["out_channels"],)
        elif n.op is Op.BATCHNORM:
            for p in ("weight", "bias", "running_mean", "running_var"):
                out[f"{n.name}.{p}"] = (a["channels"],)
            out[f"{n.name}.num_batches_tracked"] = ()
        elif n.op is Op.LINEAR:
            out[f"{n.name}.weight"] = (a["out_features"], a["in_features"])
            if a["bias"]:
                out[f"{n.name}.bias"] = (a["out_features"],)
    return out


def tensor_owners(graph: Graph) -> set[str]:
    """The IR nodes that own tensors (their module paths in either backend)."""
    return {key.rpartition(".")[0] for key in state_dict_layout(graph)}
