"""Shape inference: writes ``node.meta["shape"]`` (C, H, W), or (F,) after flatten."""

from __future__ import annotations

import math

from rescompile.errors import Diagnostic, SpecError
from rescompile.ir.graph import Graph, Node, Op


def _conv_out(size: int, k: int, s: int, p: int) -> int:
    return (size + 2 * p - k) // s + 1


def _shape(g: Graph, n: Node, ins: list[tuple[int, ...]]) -> tuple[int, ...]:
    a = n.attrs
    if n.op is Op.INPUT:
        return tuple(a["shape"])
    x = ins[0]
    match n.op:
        case Op.CONV2D:
            c, h, w = x
            if c != a["in_channels"]:
                raise ValueError(f"expects {a['in_channels']} input channels, got {c}")
            k, s, p = a["kernel"], a["stride"], a["padding"]
            k = a.get("dilation", 1) * (k - 1) + 1  # the dilated kernel's extent
            return (a["out_channels"], _conv_out(h, k, s, p), _conv_out(w, k, s, p))
        case Op.BATCHNORM | Op.GROUPNORM:
            if x[0] != a["channels"]:
                raise ValueError(f"expects {a['channels']} channels, got {x[0]}")
            return x
        case Op.RELU | Op.DROPOUT | Op.DROP_PATH | Op.SIGMOID:
            return x
        case Op.BLUR:
            k, s, p = a["kernel"], a["stride"], a["padding"]
            if x[0] != a["channels"]:
                raise ValueError(f"expects {a['channels']} channels, got {x[0]}")
            if p >= min(x[1:]):
                raise ValueError(
                    f"pads a {_fmt(x[1:])} feature map by reflection by {p}, which needs a map "
                    f"larger than {p}: the input is too small"
                )
            return (x[0], _conv_out(x[1], k, s, p), _conv_out(x[2], k, s, p))
        case Op.AA_AVGPOOL:  # floor mode, no padding
            k, s = a["kernel"], a["stride"]
            return (x[0], (x[1] - k) // s + 1, (x[2] - k) // s + 1)
        case Op.CHANNEL_CONV:
            if x[1:] != (1, 1):
                raise ValueError(f"expects pooled C x 1 x 1 input, got {_fmt(x)}")
            return x
        case Op.SCALE:
            gate = ins[1]
            if gate != (x[0], 1, 1):
                raise ValueError(f"scales a {_fmt(x)} map by a {_fmt(gate)} gate")
            return x
        case Op.MAXPOOL:
            k, s, p = a["kernel"], a["stride"], a["padding"]
            return (x[0], _conv_out(x[1], k, s, p), _conv_out(x[2], k, s, p))
        case Op.AVGPOOL if a.get("same"):  # zeros padded right and below: the map's size / s
            s = a["stride"]
            return (x[0], _ceil_div(x[1], s), _ceil_div(x[2], s))
        case Op.AVGPOOL:  # ceil_mode=True, no padding
            k, s = a["kernel"], a["stride"]
            return (x[0], _ceil_div(x[1] - k, s) + 1, _ceil_div(x[2] - k, s) + 1)
        case Op.PAD_CHANNELS:  # x[:, :, ::s, ::s] then zero channels up to out_channels
            s = a["stride"]
            return (a["out_channels"], _ceil_div(x[1], s), _ceil_div(x[2], s))
        case Op.ADD:
            if any(i != x for i in ins):
                raise ValueError(
                    "adds tensors of different shapes: " + " + ".join(_fmt(i) for i in ins)
                )
            return x
        case Op.GLOBAL_AVGPOOL:
            return (x[0], 1, 1)
        case Op.FLATTEN:
            return (math.prod(x),)
        case Op.LINEAR:
            if x != (a["in_features"],):
                raise ValueError(f"expects {a['in_features']} features, got {_fmt(x)}")
            return (a["out_features"],)
    raise AssertionError(f"no shape rule for {n.op}")  # pragma: no cover


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)  # exact for any int, unlike math.ceil(a / b)


def _fmt(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def infer_shapes(g: Graph) -> Graph:
    """Annotate every node with its output shape; a spec error names the node and YAML line."""
    for n in g:
        ins = [g[p].meta["shape"] for p in g.inputs(n.name)]
        try:
            shape = _shape(g, n, ins)
        except ValueError as e:
            raise SpecError(Diagnostic(n.src, f"IR node {n.name!r} ({n.op}) {e}")) from None
        stride = n.attrs.get("stride", 1)
        if stride > 1 and min(ins[0][1:]) < stride:
            raise SpecError(
                Diagnostic(
                    n.src,
                    f"IR node {n.name!r} ({n.op}) applies stride {stride} to a {_fmt(ins[0][1:])} "
                    "feature map, which cannot shrink further: the input is too small for this "
                    "many downsampling stages",
                )
            )
        if len(shape) == 3 and (shape[1] < 1 or shape[2] < 1):
            raise SpecError(
                Diagnostic(
                    n.src,
                    f"IR node {n.name!r} ({n.op}) turns the {_fmt(ins[0][1:])} feature map into "
                    f"{_fmt(shape[1:])}: the input is too small for this many stride-2 stages",
                )
            )
        n.meta["shape"] = shape
    return g
