"""The graph IR: a closed op vocabulary over a ``networkx.DiGraph``.

Each node carries a :class:`Node` under the ``"node"`` attribute. Node names follow torchvision's
module naming (``conv1``, ``layer1.0.conv2``, ``layer2.0.downsample.0``, ``fc``) wherever the
architecture coincides; parameter-free nodes get unique names of the same style
(``layer1.0.relu2``, ``layer1.0.add``). Nodes are kept in insertion order, which is a topological
order by construction.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import networkx as nx

from rescompile.errors import SourcePos


class Op(StrEnum):
    """The closed op vocabulary. Layouts are CHW (the batch dimension is implicit)."""

    INPUT = "input"
    # attrs: in_channels, out_channels, kernel, stride, padding, groups, bias; dilation (only
    # where it is not 1: output_stride's dilated stages)
    CONV2D = "conv2d"
    BATCHNORM = "batchnorm"  # attrs: channels, eps, momentum, zero_init
    RELU = "relu"
    GROUPNORM = "groupnorm"  # attrs: channels, groups, eps
    MAXPOOL = "maxpool"  # attrs: kernel, stride, padding
    # attrs: kernel, stride (ceil_mode, count_include_pad=False); same=True (only in dilated
    # stages' avg-pool shortcuts): timm's AvgPool2dSame, zeros padded right and below, counted
    AVGPOOL = "avgpool"
    AA_AVGPOOL = "aa_avgpool"  # anti-aliasing: attrs: kernel, stride (floor mode, no padding)
    BLUR = "blur"  # attrs: channels, kernel, stride, padding (binomial, depthwise, reflect pad)
    SIGMOID = "sigmoid"  # an attention gate
    SCALE = "scale"  # x * gate: inputs (x of C x H x W, gate of C x 1 x 1)
    CHANNEL_CONV = "channel_conv"  # ECA: attrs: kernel, padding: a 1-d conv across the channels
    DROP_PATH = "drop_path"  # stochastic depth: attrs: p (training only)
    GLOBAL_AVGPOOL = "global_avgpool"
    PAD_CHANNELS = "pad_channels"  # option A: attrs: stride, out_channels (zeros appended)
    ADD = "add"
    FLATTEN = "flatten"
    DROPOUT = "dropout"  # attrs: p
    LINEAR = "linear"  # attrs: in_features, out_features, bias


@dataclass(slots=True)
class Node:
    """One op. ``meta`` is where passes write their results (shape, params, macs, ...)."""

    name: str
    op: Op
    attrs: dict[str, Any]
    src: SourcePos | None = None
    stage: str = ""  # "stem", "layer1", ..., "head"
    block: str | None = None  # "layer1.0" for nodes inside a residual block
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Block:
    """A residual block region: what a backend turns into one module instance."""

    name: str  # "layer1.0"
    stage: str  # "layer1"
    kind: str  # "basic" | "bottleneck"
    preact: bool
    shortcut: str  # "identity" | "pad" | "projection" | "none"
    downsample: str  # "conv" | "avgpool"
    in_channels: int
    width: int  # inner (3x3) width
    out_channels: int
    stride: int
    stride_on: str  # "1x1" | "3x3" (bottleneck) or "3x3" (basic)
    groups: int
    src: SourcePos | None = None
    nodes: list[str] = field(default_factory=list)
    attention: str = "none"  # "none" | "se" | "eca"
    # se: (("rd_ratio", r), ("rd_divisor", d)); eca: (("kernel_size", k or None: from channels),)
    attention_args: tuple[tuple[str, object], ...] = ()
    anti_alias: str = "none"  # "none" | "blur" | "avgpool" (only where the block strides)
    drop_path: float = 0.0
    dropout: float = 0.0
    pruned: bool = False  # widths given per block (block_widths / out_channels)
    dilation: int = 1  # the stage's dilation (output_stride); its first 3x3 conv may keep less


@dataclass
class Graph:
    """The IR: nodes and edges in a networkx DiGraph plus model-level facts."""

    name: str
    class_name: str
    input_shape: tuple[int, int, int]  # C, H, W
    num_classes: int
    spec_hash: str = ""
    g: nx.DiGraph = field(default_factory=nx.DiGraph)
    blocks: list[Block] = field(default_factory=list)
    stem: str = "imagenet"
    stem_pool: str = "max"  # "max" | "conv" | "none"
    preact: bool = False
    zero_init_residual: bool = False
    output: str = ""
    totals: dict[str, int] = field(default_factory=dict)

    def add(self, node: Node, *inputs: str) -> str:
        if node.name in self.g:
            raise ValueError(f"duplicate IR node name {node.name!r}")  # a lowering bug
        self.g.add_node(node.name, node=node)
        for i, src in enumerate(inputs):
            self.g.add_edge(src, node.name, index=i)
        self.output = node.name
        return node.name

    def __getitem__(self, name: str) -> Node:
        return self.g.nodes[name]["node"]

    def __iter__(self) -> Iterator[Node]:
        for data in self.g.nodes.values():
            yield data.get("node")

    def __len__(self) -> int:
        return self.g.number_of_nodes()

    def inputs(self, name: str) -> list[str]:
        """Predecessors of ``name`` in argument order."""
        preds = self.g.pred[name]
        if len(preds) < 2:  # most nodes: no order to restore (the passes call this per node)
            return list(preds)
        return sorted(preds, key=lambda p: preds[p]["index"])

    def nodes_of(self, *ops: Op) -> list[Node]:
        return [n for n in self if n.op in ops]

    def stages(self) -> list[str]:
        """Stage names in order: stem, layer1, ..., head."""
        seen: dict[str, None] = {}
        for n in self:
            seen.setdefault(n.stage, None)
        return list(seen)
