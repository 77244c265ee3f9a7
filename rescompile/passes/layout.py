"""Parameter and buffer layout: every tensor the IR's layers own, in PyTorch's state_dict order.

The names are IR node names plus PyTorch's tensor names (``weight``, ``bias``, BatchNorm's
``running_mean``, ``running_var`` and ``num_batches_tracked``), in IR order, which is the order
in which the emitted modules register them. A model emitted from the IR therefore has this
state_dict layout; tests compare it with torchvision's and timm's recorded layouts.
"""

from __future__ import annotations

from rescompile.ir.graph import Graph, Op

Shape = tuple[int, ...]


def state_layout(g: Graph) -> list[tuple[str, Shape]]:
    """``[(key, shape), ...]`` of the model's state_dict, in order (a scalar has shape ``()``)."""
    out: list[tuple[str, Shape]] = []
    for n in g:
        a, p = n.attrs, n.name
        if n.op is Op.CONV2D:
            k = a["kernel"]
            out.append((f"{p}.weight", (a["out_channels"], a["in_channels"] // a["groups"], k, k)))
            if a["bias"]:
                out.append((f"{p}.bias", (a["out_channels"],)))
        elif n.op is Op.CHANNEL_CONV:
            out.append((f"{p}.weight", (1, 1, a["kernel"])))
        elif n.op is Op.LINEAR:
            out.append((f"{p}.weight", (a["out_features"], a["in_features"])))
            if a["bias"]:
                out.append((f"{p}.bias", (a["out_features"],)))
        elif n.op is Op.BATCHNORM:
            c = (a["channels"],)
            out += [(f"{p}.weight", c), (f"{p}.bias", c), (f"{p}.running_mean", c)]
            out += [(f"{p}.running_var", c), (f"{p}.num_batches_tracked", ())]
        elif n.op is Op.GROUPNORM:
            out += [(f"{p}.weight", (a["channels"],)), (f"{p}.bias", (a["channels"],))]
    return out
