"""The emission plan: how a person would write the IR as source, for any framework.

:func:`make_plan` takes an analysed IR apart once: each residual :class:`~rescompile.ir.graph.Block`
into its main branch, its shortcut and what follows the addition; blocks of the same structure
into one :class:`BlockClass` whose constructor takes the numbers that vary (channels, stride,
groups, the shortcut module); the stem and head into the model's own modules; every stage into
runs of identical constructor calls. It then verifies that every module the plan builds, with
each block's arguments, has exactly the attributes of the IR node of the same name, so every
number a renderer writes comes from the IR and module paths are IR node names (= state_dict
keys). Names come from one :class:`~rescompile.emission.names.Namespace`.

A renderer (``rescompile.backends.<name>.render``) only spells the plan in its framework.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from rescompile.errors import EmitError
from rescompile.ir.graph import Block, Graph, Node, Op
from rescompile.ir.lower import eca_kernel, make_divisible

from .names import Namespace, attr_name, hexdigest, ident, node_path, text

BN_EPS, BN_MOMENTUM = 1e-5, 0.1  # the frameworks' BatchNorm defaults (PyTorch's convention)
_BASE_NAMES = {  # (kind, preact, residual) -> class name
    ("basic", False, True): "BasicBlock",
    ("bottleneck", False, True): "Bottleneck",
    ("basic", True, True): "PreActBasicBlock",
    ("bottleneck", True, True): "PreActBottleneck",
    ("basic", False, False): "PlainBasicBlock",
    ("bottleneck", False, False): "PlainBottleneck",
    ("basic", True, False): "PlainPreActBasicBlock",
    ("bottleneck", True, False): "PlainPreActBottleneck",
}
SHORTCUT_ATTR = {"projection": "downsample", "pad": "shortcut"}  # IR names of shortcut modules
_AA_OPS = {Op.BLUR, Op.AA_AVGPOOL}  # anti-aliasing after a block's conv run at stride 1
_NORM_OPS = {Op.BATCHNORM, Op.GROUPNORM}
_MAIN_OPS = {Op.CONV2D, Op.RELU, Op.SCALE, Op.DROPOUT, Op.DROP_PATH, *_NORM_OPS, *_AA_OPS}
_TOP_OPS = {
    Op.CONV2D,
    Op.BATCHNORM,
    Op.GROUPNORM,
    Op.RELU,
    Op.MAXPOOL,
    Op.AVGPOOL,
    Op.GLOBAL_AVGPOOL,
    Op.DROPOUT,
    Op.LINEAR,
    *_AA_OPS,
}
# Helper names both renderers may define, claimed after the model and block classes.
HELPERS = (
    "F",
    "he_normal",
    "linear",
    "BatchNorm",
    "Sequential",
    "AvgPool",
    "ZeroPadShortcut",
    "SEModule",
    "EcaModule",
    "BlurPool",
    "MaxPool",
    "FloorAvgPool",
    "DropPath",
    "SameAvgPool",
)
# Channel attention modules (a block's ``se``, as timm names it). In a plan they are layers of op
# Op.SCALE whose args are ``kind``, ``channels`` and the helper's own arguments; the helpers'
# defaults are timm's (SEModule: rd_ratio 1/16, rd_divisor 8; EcaModule: the kernel from the
# channel count), and a renderer writes an argument only where it differs.
ATTENTION_HELPERS = {"se": "SEModule", "eca": "EcaModule"}
ATTENTION_DEFAULTS: dict[str, dict[str, object]] = {
    "se": {"rd_ratio": 1 / 16, "rd_divisor": 8},
    "eca": {"kernel_size": None},
}


# What each shared helper module does, in the same words in every backend's source.
HELPER_DOCS = {
    "se": (
        "Squeeze-and-excitation (Hu et al. 2018), as timm's SEModule: global average "
        "pool, a 1x1 conv down to ``rd_channels``, ReLU, a 1x1 conv back up, and a "
        "sigmoid gate that scales ``x``.\n\n``rd_channels`` is ``channels * "
        "rd_ratio`` rounded to the nearest multiple of ``rd_divisor`` (halves up), "
        "at least ``rd_divisor`` (timm's make_divisible)."
    ),
    "eca": (
        "Efficient channel attention (Wang et al. 2020), as timm's EcaModule: global "
        "average pool, a 1-d convolution across the channels, and a sigmoid gate that "
        "scales ``x``.\n\nWithout ``kernel_size`` the kernel follows the channel "
        "count: int((log2(channels) + 1) / 2), made odd, at least 3."
    ),
    "same_avgpool": (
        "timm's AvgPool2dSame(2, stride=1), where a dilated stage starts: zeros padded on "
        "the right and below, then 2x2 average pooling at stride 1 (the padded zeros "
        "count), so the map keeps its size."
    ),
    "option_a": (
        "Option A shortcut (no parameters): keep every ``stride``-th row and column, "
        "then append zero channels up to ``out_channels``."
    ),
}


# ---------------------------------------------------------------------------------------------
# plan elements


@dataclass(frozen=True)
class Param:
    """A symbolic constructor argument: the name of a parameter of the enclosing definition."""

    name: str


@dataclass(frozen=True)
class Layer:
    """One module a constructor builds. ``args``: IR attribute -> number/bool or :class:`Param`."""

    name: str  # attribute name ("conv1") or Sequential index ("0")
    op: Op
    args: tuple[tuple[str, object], ...] = ()

    def __getitem__(self, key: str) -> object:
        return dict(self.args)[key]

    def resolve(self, params: dict[str, int]) -> dict[str, object]:
        return {k: params[v.name] if isinstance(v, Param) else v for k, v in self.args}

    def bind(self, values: dict[str, int]) -> Layer:
        """This layer with the parameters named in ``values`` replaced by those values."""
        return Layer(
            self.name,
            self.op,
            tuple(
                (k, values[v.name]) if isinstance(v, Param) and v.name in values else (k, v)
                for k, v in self.args
            ),
        )


@dataclass(frozen=True)
class Step:
    """One statement of a forward pass, in words a renderer spells.

    ``layer``: ``out = self.<module>(src)`` (a ReLU: the framework's activation), under ``if
    self.<module> is not None`` when ``guard``; ``flatten``;
    ``copy``: ``out = src``; ``shortcut``: ``out = self.<module>(src)``, under ``if self.<module>
    is not None`` when ``guard``; ``add``: ``out += src`` (``inplace``) or ``out = out + src``;
    ``blank``: an empty line; ``return``: ``return src``.
    """

    kind: str
    out: str = ""
    src: str = ""
    module: str = ""
    op: Op | None = None
    guard: bool = False
    inplace: bool = False


@dataclass(frozen=True)
class ConvHelper:
    """``conv<k>x<k>(in_channels, out_channels[, stride][, groups][, dilation])``: a bias-free
    convolution (padded by ``dilation * (k // 2)``: the map keeps its size at stride 1)."""

    name: str
    kernel: int
    stride: bool
    groups: bool
    dilation: bool = False


@dataclass
class BlockClass:
    """One block class: the IR blocks it instantiates and the numbers that vary between them."""

    name: str
    kind: str
    preact: bool
    residual: bool
    doc: str = ""
    # in_channels, [first_width,] [width,] out_channels (first_width: a reduced first conv)
    channels: list[str] = field(default_factory=list)
    stride: bool = False  # a ``stride: int = 1`` parameter
    groups: bool = False  # a ``groups: int = 1`` parameter
    # ``dilation: int = 1`` of the 3x3 convs, and ``first_dilation: int = 1`` of the first one
    # where it differs (timm's, for output_stride: a dilated stage's first block keeps the
    # previous dilation)
    dilation: bool = False
    first_dilation: bool = False
    single_dilation: bool = False  # ``dilation`` is the one 3x3 conv's (see _fill_class)
    # an ``eca_kernel_size: int | None = None`` parameter: ECA kernels that do not follow the
    # block's channels (timm's pruned models take them from the unpruned width)
    eca_kernel: bool = False
    shortcuts: list[str] = field(default_factory=list)  # module parameters: downsample, shortcut
    required: bool = False  # the one shortcut is always given (keyword-only, no default)
    layers: list[Layer] = field(default_factory=list)
    relu: bool = False  # one shared ReLU module (torchvision's self.relu)
    inplace: bool = True
    zero: tuple[str, ...] = ()  # zero-initialised BatchNorms (zero_init_residual)
    optional: tuple[str, ...] = ()  # modules built only when stride > 1 (anti-aliasing), or None
    # when they are built: "stride > 1", or also where a dilated stage starts (timm's use_aa)
    aa_condition: str = "stride > 1"
    # a ``drop_path_rate: float = 0.0`` parameter; its ``drop_path`` module is None at rate 0
    drop_path: bool = False
    forward: list[Step] = field(default_factory=list)
    members: list[_BlockIR] = field(default_factory=list)

    @property
    def params(self) -> list[str]:
        """Constructor parameter names, in order (framework plumbing like rngs aside)."""
        return [
            *self.channels,
            *(["stride"] if self.stride else []),
            *(["groups"] if self.groups else []),
            *(["dilation"] if self.dilation else []),
            *(["first_dilation"] if self.first_dilation else []),
            *(["eca_kernel_size"] if self.eca_kernel else []),
            *(["drop_path_rate"] if self.drop_path else []),
            *self.shortcuts,
        ]


@dataclass
class Projection:
    """A projection shortcut builder, ``name(in_channels, out_channels[, stride])``."""

    name: str
    # "none": strided conv first; "always" | "strided" | "never": ResNet-D avg pool; "same":
    # timm's AvgPool2dSame(2, 1), where a dilated stage starts
    pool: str
    layers: list[Layer]  # the Sequential's modules from the conv on
    stride: bool = False
    dilation: bool = False  # a 3x3 conv's ``dilation: int = 1`` (SENet-154 with output_stride)
    doc: str = ""


@dataclass(frozen=True)
class BlockCall:
    """``cls(channels..., stride, groups=, dilation=, first_dilation=, downsample=/shortcut=
    helper(in, out, stride[, dilation=]))``."""

    cls: str
    channels: tuple[int, ...]
    stride: int
    groups: int
    # (param, helper, (in, out, stride), dilation)
    shortcut: tuple[str, str, tuple[int, int, int], int] | None = None
    eca_kernel_size: int | None = None
    drop_path_rate: float = 0.0
    dilation: int = 1
    first_dilation: int = 1


@dataclass
class Stage:
    """A stage: runs of identical consecutive block calls (a run of 2 or more is a repeat)."""

    name: str
    runs: list[tuple[BlockCall, int]]

    @property
    def depth(self) -> int:
        return sum(n for _, n in self.runs)


@dataclass
class TopModule:
    """A module of the model itself (stem or head): one layer, or a Sequential of several."""

    name: str
    layers: list[Layer]
    sequential: bool


@dataclass
class Plan:
    graph: Graph
    model: str
    names: dict[str, str]  # helper -> its name in the file (see HELPERS)
    convs: list[ConvHelper]
    classes: list[BlockClass]
    projections: list[Projection]
    zero_pad: bool
    body: list[TopModule | Stage]  # the model's modules, in order
    forward: list[Step]
    num_classes: bool  # the classifier takes num_classes
    eps: set[float] = field(default_factory=set)
    momentum: set[float] = field(default_factory=set)
    attention: list[str] = field(default_factory=list)  # kinds of ATTENTION_HELPERS used
    ops: set[Op] = field(default_factory=set)  # the ops of every module the plan builds

    def conv(self, kernel: int) -> ConvHelper:
        return next(c for c in self.convs if c.kernel == kernel)

    @property
    def stages(self) -> list[Stage]:
        return [m for m in self.body if isinstance(m, Stage)]


# ---------------------------------------------------------------------------------------------
# block analysis


@dataclass
class _BlockIR:
    """One residual block of the IR, taken apart."""

    block: Block
    local: dict[str, str]  # IR node name -> name inside the block ("layer1.0.conv1" -> "conv1")
    main: list[Node]
    short: list[Node]  # the shortcut's nodes (empty for identity and none)
    short_src: str | None  # the main-branch node the shortcut reads (local name); None: input
    add: Node | None
    post: list[Node]  # after the addition
    mode: str  # identity | pad | projection | none
    # a main-branch Op.SCALE node's name -> the attention nodes computing its gate, in order
    attention: dict[str, list[Node]] = field(default_factory=dict)

    def params(self) -> dict[str, int]:
        b = self.block
        first = next((n for n in self.main if n.op is Op.CONV2D), None)
        first_kxk = next((n for n in self.main if _kxk_conv(n)), None)
        return dict(
            in_channels=b.in_channels,
            first_width=first.attrs["out_channels"] if first else b.width,
            width=b.width,
            out_channels=b.out_channels,
            stride=b.stride,
            groups=b.groups,
            dilation=b.dilation,  # the stage's: a bottleneck's 3x3 conv may keep the previous
            first_dilation=first_kxk.attrs.get("dilation", 1) if first_kxk else b.dilation,
            eca_kernel_size=self.eca_kernel_size(),
            drop_path_rate=b.drop_path,
        )

    def eca_kernel_size(self) -> int | None:
        """The ECA kernel where the spec leaves it to the channels but it does not follow the
        block's output channels (a pruned block), else None."""
        b = self.block
        if b.attention != "eca" or dict(b.attention_args).get("kernel_size") is not None:
            return None
        conv = next(n for ns in self.attention.values() for n in ns if n.op is Op.CHANNEL_CONV)
        k = conv.attrs["kernel"]
        return k if k != eca_kernel(b.out_channels) else None


def _kxk_conv(n: Node) -> bool:
    """A convolution that output_stride may dilate (every one but the 1x1s)."""
    return n.op is Op.CONV2D and n.attrs["kernel"] > 1


class _View:
    """Read-only access to the IR's nodes and edges, built once (networkx is slow)."""

    def __init__(self, g: Graph):
        self.node: dict[str, Node] = dict(g.g.nodes(data="node"))
        ins: dict[str, list[tuple[int, str]]] = {n: [] for n in self.node}
        self.succ: dict[str, list[str]] = {n: [] for n in self.node}
        for u, v, i in g.g.edges(data="index"):
            ins[v].append((i, u))
            self.succ[u].append(v)
        self.ins = {v: [u for _, u in sorted(p)] for v, p in ins.items()}

    def __getitem__(self, name: str) -> Node:
        return self.node[name]


def _analyse_block(g: _View, b: Block) -> _BlockIR:
    ident(b.stage, "stage name")
    if not b.nodes:
        raise EmitError(f"block {b.name!r} has no IR nodes")
    node_path(b.name)
    prefix, inside = b.name + ".", set(b.nodes)
    local: dict[str, str] = {}
    for name in b.nodes:
        if not name.startswith(prefix) or g[name].block != b.name:
            raise EmitError(f"IR node {name!r} does not belong to block {b.name!r}")
        local[name] = name[len(prefix) :]
        node_path(local[name])
    external = {p for n in b.nodes for p in g.ins[n] if p not in inside}
    if len(external) != 1:
        raise EmitError(f"block {b.name!r} reads {sorted(external)}; expected one input")
    (entry,) = external
    out = b.nodes[-1]
    for n in b.nodes[:-1]:
        if any(s not in inside for s in g.succ[n]):
            raise EmitError(f"IR node {n!r} is used outside its block {b.name!r}")

    attention: dict[str, list[Node]] = {}

    def chain_back(start: str, stop: set[str]) -> tuple[list[Node], str]:
        nodes, cur = [], start
        while cur in inside and cur not in stop:
            if g[cur].op is Op.SCALE:  # x * gate(x): one step of the chain, reading x
                x, gate = g.ins[cur]
                gating, a = [], gate
                while a != x:
                    if a not in inside or len(g.ins[a]) != 1:
                        raise EmitError(f"IR node {cur!r}: its gate does not read its input")
                    gating.append(g[a])
                    a = g.ins[a][0]
                attention[cur] = gating[::-1]
                nodes.append(g[cur])
                cur = x
                continue
            if len(g.ins[cur]) != 1:
                raise EmitError(f"IR node {cur!r}: expected one input inside block {b.name!r}")
            nodes.append(g[cur])
            cur = g.ins[cur][0]
        return nodes[::-1], cur

    adds = [n for n in b.nodes if g[n].op is Op.ADD]
    if len(adds) > 1:
        raise EmitError(f"block {b.name!r} has {len(adds)} additions")
    add, short, post, short_src = None, [], [], None
    if adds:
        add = g[adds[0]]
        h, s = g.ins[add.name]
        main, src = chain_back(h, set())
        main_names = {n.name for n in main}
        if src != entry:
            raise EmitError(f"block {b.name!r}: the main branch does not start at the input")
        short, src = chain_back(s, main_names)
        if src not in main_names and src != entry:
            raise EmitError(f"block {b.name!r}: the shortcut reads {src!r}")
        cur = add.name
        while cur != out:
            if len(g.succ[cur]) != 1:
                raise EmitError(f"block {b.name!r}: {cur!r} does not lead to the block output")
            nxt = g.succ[cur][0]
            if g.ins[nxt] != [cur]:
                raise EmitError(f"block {b.name!r}: {nxt!r} reads more than the addition")
            post.append(g[nxt])
            cur = nxt
        seen = main_names | {n.name for n in (*short, add, *post)}
        seen |= {n.name for ns in attention.values() for n in ns}
        short_src = local[src] if src != entry else None
    else:
        main, src = chain_back(out, set())
        if src != entry:
            raise EmitError(f"block {b.name!r}: the main branch does not start at the input")
        seen = {n.name for n in main} | {n.name for ns in attention.values() for n in ns}
    if seen != inside:
        raise EmitError(f"block {b.name!r}: unexpected IR nodes {sorted(inside - seen)}")
    for n in main:
        if n.op not in _MAIN_OPS:
            raise EmitError(f"IR node {n.name!r}: {n.op} in a block's main branch")
    for n in post:
        if n.op is not Op.RELU:
            raise EmitError(f"IR node {n.name!r}: {n.op} after a block's addition")
    mode, ops = b.shortcut, [n.op for n in short]
    ok = {
        "none": add is None,
        "identity": add is not None and not short and short_src is None,
        "pad": ops == [Op.PAD_CHANNELS] and short_src is None,
        "projection": Op.CONV2D in ops and set(ops) <= {Op.AVGPOOL, Op.CONV2D, *_NORM_OPS},
    }.get(mode, False)
    if not ok:
        raise EmitError(f"block {b.name!r}: shortcut {mode!r} does not match its IR nodes")
    if mode == "pad" and local[short[0].name] != "shortcut":
        raise EmitError(f"IR node {short[0].name!r}: an option A shortcut must be named 'shortcut'")
    for name in attention:
        if not local[name].endswith(".scale") or "." in local[name].removesuffix(".scale"):
            raise EmitError(f"IR node {name!r}: an attention scale is named <module>.scale")
        if b.attention not in ATTENTION_HELPERS:
            raise EmitError(f"block {b.name!r}: a gate without attention {b.attention!r}")
    return _BlockIR(b, local, main, short, short_src, add, post, mode, attention)


# ---------------------------------------------------------------------------------------------
# verification: a layer, instantiated with a block's arguments, is its IR node

_CHECKED = {
    Op.CONV2D: ("in_channels", "out_channels", "kernel", "stride", "padding", "groups", "bias"),
    Op.BATCHNORM: ("channels", "eps", "momentum"),
    Op.GROUPNORM: ("channels", "groups", "eps"),
    Op.AVGPOOL: ("kernel", "stride"),
    Op.MAXPOOL: ("kernel", "stride", "padding"),
    Op.LINEAR: ("in_features", "out_features", "bias"),
    Op.DROPOUT: ("p",),
    Op.DROP_PATH: ("p",),
    Op.PAD_CHANNELS: ("stride", "out_channels"),
    Op.BLUR: ("channels", "kernel", "stride", "padding"),
    Op.AA_AVGPOOL: ("kernel", "stride"),
}


def _verify(layer: Layer, params: dict[str, int], node: Node) -> None:
    want = layer.resolve(params)
    if node.op is not layer.op:
        raise EmitError(f"IR node {node.name!r} is {node.op}; the emitted module is {layer.op}")
    for k in _CHECKED.get(node.op, ()):
        have = node.attrs.get(k)
        if k not in want or want[k] != have or type(want[k]) is not type(have):
            raise EmitError(
                f"IR node {node.name!r}: {k}={have!r}, but the emitted module would "
                f"have {k}={want.get(k)!r}"
            )
    for k in ("dilation", "same"):  # attributes the IR writes only where they are not 1/False
        default = 1 if k == "dilation" else False
        if node.op in (Op.CONV2D, Op.AVGPOOL) and want.get(k, default) != node.attrs.get(
            k, default
        ):
            raise EmitError(
                f"IR node {node.name!r}: {k}={node.attrs.get(k, default)!r}, but the emitted "
                f"module would have {k}={want.get(k, default)!r}"
            )
    dilation = node.attrs.get("dilation", 1)
    if node.op is Op.CONV2D and (
        node.attrs["bias"] is not False
        or node.attrs["padding"] != dilation * (node.attrs["kernel"] // 2)
    ):
        raise EmitError(
            f"IR node {node.name!r}: only bias-free, dilation * (kernel // 2) padded "
            f"convolutions (bias={node.attrs['bias']!r}, padding={node.attrs['padding']!r})"
        )
    if node.op is Op.LINEAR and node.attrs["bias"] is not True:
        raise EmitError(f"IR node {node.name!r}: the classifier is expected to have a bias")


def attention_args(m: Layer) -> list[tuple[str, object]]:
    """An attention layer's arguments other than ``channels`` that differ from its helper's
    defaults: what a renderer writes as keywords."""
    defaults = ATTENTION_DEFAULTS[m["kind"]]
    return [
        (k, v)
        for k, v in m.args
        if k not in ("kind", "channels") and (isinstance(v, Param) or v != defaults[k])
    ]


def _module(local: str) -> str:
    """The module a main-branch node is computed by: ``se`` for the scale ``se.scale``."""
    return local.removesuffix(".scale")


def _attention(name: str, b: Block, channels: Param, eca_param: bool = False) -> Layer:
    args = tuple(
        (k, Param("eca_kernel_size") if eca_param and k == "kernel_size" else v)
        for k, v in b.attention_args
    )
    return Layer(name, Op.SCALE, (("kind", b.attention), ("channels", channels), *args))


def _verify_attention(layer: Layer, params: dict[str, int], bi: _BlockIR, scale: Node) -> None:
    """The attention module, built with a block's arguments, computes the gate of ``scale``."""
    want = layer.resolve(params)
    c, mod = want["channels"], layer.name
    if want["kind"] == "se":
        rd = make_divisible(c * want["rd_ratio"], want["rd_divisor"])
        conv = dict(kernel=1, stride=1, padding=0, groups=1, bias=True)
        expect = [
            ("pool", Op.GLOBAL_AVGPOOL, {}),
            ("fc1", Op.CONV2D, dict(in_channels=c, out_channels=rd, **conv)),
            ("act", Op.RELU, {}),
            ("fc2", Op.CONV2D, dict(in_channels=rd, out_channels=c, **conv)),
            ("gate", Op.SIGMOID, {}),
        ]
    elif want["kind"] == "eca":
        k = want["kernel_size"] if want["kernel_size"] is not None else eca_kernel(c)
        expect = [
            ("pool", Op.GLOBAL_AVGPOOL, {}),
            ("conv", Op.CHANNEL_CONV, dict(kernel=k, padding=(k - 1) // 2)),
            ("gate", Op.SIGMOID, {}),
        ]
    else:
        raise EmitError(f"IR node {scale.name!r}: unknown attention {want['kind']!r}")
    nodes = bi.attention[scale.name]
    got = [(bi.local[n.name], n.op) for n in nodes]
    if got != [(f"{mod}.{name}", op) for name, op, _ in expect]:
        raise EmitError(
            f"IR node {scale.name!r}: its gate is {got}; the emitted {want['kind']} module "
            f"computes {[(f'{mod}.{name}', op) for name, op, _ in expect]}"
        )
    for n, (_, _, attrs) in zip(nodes, expect, strict=True):
        for k, v in attrs.items():
            have = n.attrs.get(k)
            if have != v or type(have) is not type(v):
                raise EmitError(
                    f"IR node {n.name!r}: {k}={have!r}, but the emitted module would have {k}={v!r}"
                )
    if scale.meta["shape"][0] != c:
        raise EmitError(f"IR node {scale.name!r}: {scale.meta['shape'][0]} channels, not {c}")


def _literal(name: str, n: Node) -> Layer:
    """A layer whose arguments are all literals taken from the IR node."""
    return Layer(name, n.op, tuple((k, n.attrs[k]) for k in _CHECKED.get(n.op, ())))


def _conv(
    name: str,
    n: Node,
    cin: Param,
    cout: Param,
    stride: object,
    groups: object = 1,
    dilation: Param | None = None,
) -> Layer:
    """A convolution whose channels (and stride, groups, dilation) may be parameters; the rest
    from ``n``. A dilated 3x3 conv is padded by its ``dilation``."""
    a = n.attrs
    if dilation is not None and a["kernel"] != 3:
        raise EmitError(f"IR node {n.name!r}: a dilated {_kxk(n)} convolution")
    padding = a["padding"] if dilation is None else dilation
    return Layer(name, Op.CONV2D, (
        ("in_channels", cin), ("out_channels", cout), ("kernel", a["kernel"]), ("stride", stride),
        ("padding", padding), ("groups", groups), ("bias", a["bias"]),
        *((("dilation", dilation),) if dilation is not None else ()),
    ))  # fmt: skip


def _bn(name: str, n: Node, channels: Param) -> Layer:
    """The norm layer of ``n``: BatchNorm, or GroupNorm (its groups fixed by the spec)."""
    if n.op is Op.GROUPNORM:
        return Layer(name, Op.GROUPNORM, (
            ("channels", channels), ("groups", n.attrs["groups"]), ("eps", n.attrs["eps"]),
        ))  # fmt: skip
    return Layer(name, Op.BATCHNORM, (
        ("channels", channels), ("eps", n.attrs["eps"]), ("momentum", n.attrs["momentum"]),
    ))  # fmt: skip


def _kxk(n: Node) -> str:
    return f"{n.attrs['kernel']}x{n.attrs['kernel']}"


# ---------------------------------------------------------------------------------------------
# block classes


def _structure(bi: _BlockIR) -> tuple:
    """What must be equal for two blocks to share a class (numbers that vary are parameters)."""
    main = tuple(
        (
            bi.local[n.name],
            n.op,
            # the padding beyond the dilated kernel's half: 0 for every conv a class builds
            (
                n.attrs["kernel"],
                n.attrs["padding"] - n.attrs.get("dilation", 1) * (n.attrs["kernel"] // 2),
                n.attrs["bias"],
            )
            if n.op is Op.CONV2D
            else (n.attrs["eps"], n.attrs["momentum"])
            if n.op is Op.BATCHNORM
            else (n.attrs["groups"], n.attrs["eps"])
            if n.op is Op.GROUPNORM
            else (n.attrs["p"],)
            if n.op is Op.DROPOUT
            else (bi.block.attention, bi.block.attention_args)
            if n.op is Op.SCALE
            else (),
        )
        for n in bi.main
        if n.op not in _AA_OPS  # present only where the block strides: an optional module
        and n.op is not Op.DROP_PATH  # present only at a rate above 0
    )
    post = tuple((bi.local[n.name], n.op) for n in bi.post)
    return (bi.block.kind, bi.block.preact, bi.add is not None, main, post)


def _where(bi: _BlockIR, attr: str) -> str | None:
    """The local name of the single main-branch conv whose ``attr`` is not 1."""
    convs = [bi.local[n.name] for n in bi.main if n.op is Op.CONV2D and n.attrs[attr] != 1]
    if len(convs) > 1:
        raise EmitError(f"block {bi.block.name!r}: {attr} on {len(convs)} convolutions")
    return convs[0] if convs else None


def _make_classes(
    blocks: list[_BlockIR], ns: Namespace
) -> list[tuple[BlockClass, str | None, str | None]]:
    order = {bi.block.name: i for i, bi in enumerate(blocks)}
    by_structure: dict[tuple, list[_BlockIR]] = {}
    for bi in blocks:
        by_structure.setdefault(_structure(bi), []).append(bi)
    found: list[tuple[BlockClass, str | None, str | None]] = []
    for key, members in by_structure.items():
        kind, preact, residual = key[:3]
        # A strided block pins where its class puts the stride; stride-1 blocks fit any class.
        split: dict[str | None, list[_BlockIR]] = {}
        for bi in members:
            # an anti-aliased block strides in its filter (aa:<op>), its convs at stride 1
            aa = [f"aa:{n.op}" for n in bi.main if n.op in _AA_OPS]
            split.setdefault(_where(bi, "stride") or (aa[0] if aa else None), []).append(bi)
        strided = [s for s in split if s is not None]
        loose = split.pop(None, [])
        if loose:
            split.setdefault(strided[0] if strided else None, []).extend(loose)
        for where, ms in split.items():
            ms.sort(key=lambda bi: order[bi.block.name])
            groups = {_where(bi, "groups") for bi in ms} - {None}
            if len(groups) > 1:
                raise EmitError(f"blocks group different convolutions: {sorted(groups)}")
            base = _BASE_NAMES.get((kind, preact, residual))
            if base is None:
                raise EmitError(f"unknown block kind {kind!r}")
            if len(split) > 1 and where is not None and where.startswith("aa:"):
                base += "AntiAliased"
            elif len(split) > 1 and where is not None:
                conv = next(n for n in ms[0].main if ms[0].local[n.name] == where)
                base += f"Stride{_kxk(conv)}"
            c = BlockClass(base, kind, preact, residual, members=ms)
            found.append((c, where, next(iter(groups)) if groups else None))
    found.sort(key=lambda f: order[f[0].members[0].block.name])
    for c, _, _ in found:
        c.name = ns.create(c.name, "class name")
    return found


def _fill_class(
    c: BlockClass,
    stride_conv: str | None,
    group_conv: str | None,
    inplace: dict[str, bool],
    succ: dict[str, list[str]],
) -> None:
    first = _representative(c)
    merge = all(m.block.width == m.block.out_channels for m in c.members)
    convs = [n for n in first.main if n.op is Op.CONV2D]
    if not convs:
        raise EmitError(f"block {first.block.name!r} has no convolution")
    # a reduced first conv (timm's block_reduce_first): its output is a parameter of its own
    reduce = len(convs) > 1 and any(m.params()["first_width"] != m.block.width for m in c.members)
    c.channels = [
        "in_channels",
        *(["first_width"] if reduce else []),
        *([] if merge else ["width"]),
        "out_channels",
    ]
    width = "out_channels" if merge else "width"
    c.stride = any(m.block.stride != 1 for m in c.members)
    c.groups = any(m.block.groups != 1 for m in c.members)
    c.eca_kernel = any(m.params()["eca_kernel_size"] is not None for m in c.members)
    # anti-aliasing at stride 1 where a dilated stage starts: the filter takes the block's stride
    aa_at_1 = any(n.op in _AA_OPS and n.attrs["stride"] == 1 for m in c.members for n in m.main)
    # one 3x3 conv (a bottleneck) and no such filter: ``dilation`` is simply that conv's
    c.single_dilation = sum(map(_kxk_conv, first.main)) <= 1 and not aa_at_1
    c.dilation = any(_class_params(c, m)["dilation"] != 1 for m in c.members)
    c.first_dilation = (
        c.dilation
        and not c.single_dilation
        and any(m.params()["first_dilation"] != m.params()["dilation"] for m in c.members)
    )
    role, k, kxk = "in_channels", 0, 0
    aa_stride = Param("stride") if aa_at_1 and c.stride else None
    if aa_at_1:
        c.aa_condition = " or ".join(
            [*(["stride > 1"] if c.stride else []), "first_dilation != dilation"]
        )
    for n in first.main:
        local = first.local[n.name]
        if n.op is Op.CONV2D:
            k += 1
            out_role = (
                "out_channels" if k == len(convs) else "first_width" if k == 1 and reduce else width
            )
            stride = Param("stride") if local == stride_conv and c.stride else 1
            groups = Param("groups") if local == group_conv and c.groups else 1
            dilation = None
            if _kxk_conv(n) and c.dilation:
                dilation = Param("first_dilation" if kxk == 0 and c.first_dilation else "dilation")
                kxk += 1
            c.layers.append(_conv(local, n, Param(role), Param(out_role), stride, groups, dilation))
            role = out_role
        elif n.op in _NORM_OPS:
            c.layers.append(_bn(local, n, Param(role)))
        elif n.op is Op.SCALE:
            c.layers.append(_attention(_module(local), first.block, Param(role), c.eca_kernel))
        elif n.op is Op.BLUR:
            a = n.attrs
            c.layers.append(Layer(local, n.op, (
                ("channels", Param(role)), ("kernel", a["kernel"]),
                ("stride", aa_stride or a["stride"]), ("padding", a["padding"]),
            )))  # fmt: skip
            c.optional += (local,)
        elif n.op is Op.AA_AVGPOOL:
            c.layers.append(
                Layer(local, n.op, (("kernel", aa_stride), ("stride", aa_stride)))
                if aa_stride
                else _literal(local, n)
            )
            c.optional += (local,)
        elif n.op is Op.DROPOUT:  # block dropout (Wide ResNet): active in training only
            c.layers.append(_literal(local, n))
        elif n.op is Op.DROP_PATH:  # stochastic depth at the block's rate: training only
            c.layers.append(Layer(local, n.op, (("p", Param("drop_path_rate")),)))
            c.drop_path = True
    names = {m.name for m in c.layers}
    for m in (*names, "downsample", "shortcut", "relu"):
        attr_name(m, "block module name")
    if {"relu", "downsample", "shortcut"} & names:
        raise EmitError(f"block {first.block.name!r}: a module name clashes with the plan's")
    modes = [m for m in ("identity", "projection", "pad") if any(b.mode == m for b in c.members)]
    c.shortcuts = [SHORTCUT_ATTR[m] for m in modes if m != "identity"]
    c.required = len(modes) == 1 and bool(c.shortcuts)
    layers = {m.name: m for m in c.layers}
    for m in c.members:
        p = _class_params(c, m)
        for n in m.main:
            if n.op is Op.SCALE:
                _verify_attention(layers[_module(m.local[n.name])], p, m, n)
            elif n.op is not Op.RELU:
                _verify(layers[m.local[n.name]], p, n)
        has_dp = any(n.op is Op.DROP_PATH for n in m.main)
        if has_dp != (m.block.drop_path > 0) or (
            has_dp and m.local[m.main[-1].name] != "drop_path"
        ):
            raise EmitError(f"block {m.block.name!r}: drop path at rate {m.block.drop_path}")
        if c.optional:  # built where the block strides (or starts dilating), None elsewhere
            aa = tuple(m.local[n.name] for n in m.main if n.op in _AA_OPS)
            built = m.block.stride > 1 or (aa_at_1 and p["first_dilation"] != p["dilation"])
            if aa != (c.optional if built else ()):
                raise EmitError(
                    f"block {m.block.name!r}: anti-aliasing {aa} at stride {m.block.stride}"
                )
        if c.residual == (m.mode == "none"):
            raise EmitError(f"block {m.block.name!r}: shortcut {m.mode!r} in class {c.name}")
    # ReLUs share one module (as in torchvision); in place only where every use allows it.
    relus = [n for m in c.members for n in (*m.main, *m.post) if n.op is Op.RELU]
    c.relu = bool(relus)
    c.inplace = all(inplace[n.name] for n in relus)
    zero = {
        tuple(m.local[n.name] for n in m.main if n.op is Op.BATCHNORM and n.attrs["zero_init"])
        for m in c.members
    }
    if len(zero) != 1:
        raise EmitError(f"class {c.name}: zero_init differs between its blocks")
    c.zero = next(iter(zero))
    srcs = {(m.mode, m.short_src) for m in c.members}
    if len({mode for mode, _ in srcs}) != len(srcs):
        raise EmitError(f"class {c.name}: a shortcut reads different tensors in different blocks")
    c.doc = _block_doc(c, stride_conv, modes)
    c.forward = _block_forward(c, modes, dict(srcs), len(succ[first.main[-1].name]) == 1)


def _class_params(c: BlockClass, m: _BlockIR) -> dict[str, int]:
    """A member's constructor arguments as its class takes them."""
    p = m.params()
    if c.single_dilation:
        p["dilation"] = p["first_dilation"]
    return p


def _representative(c: BlockClass) -> _BlockIR:
    """The member that shows every module of its class (an anti-aliased one, if any)."""
    return max(c.members, key=lambda m: len(m.main))  # the first of the longest


_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}


def _block_doc(c: BlockClass, stride_conv: str | None, modes: list[str]) -> str:
    first = _representative(c)
    convs = [_kxk(n) for n in first.main if n.op is Op.CONV2D]
    summary = {
        (False, True): "residual block",
        (True, True): "pre-activation residual block",
        (False, False): "plain block (no shortcut)",
        (True, False): "plain pre-activation block (no shortcut)",
    }[(c.preact, c.residual)]
    if len(set(convs)) == 1:
        what = f"{_WORDS.get(len(convs), str(len(convs)))} {convs[0]}"
    else:
        what = ", ".join(convs[:-1]) + " and " + convs[-1]
    steps = [
        f"{_kxk(n)} conv"
        if n.op is Op.CONV2D
        else "BN"
        if n.op is Op.BATCHNORM
        else first.block.attention.upper()
        if n.op is Op.SCALE
        else "blur pool"
        if n.op is Op.BLUR
        else "2x2 avg pool"
        if n.op is Op.AA_AVGPOOL
        else "dropout"
        if n.op is Op.DROPOUT
        else "drop path"
        if n.op is Op.DROP_PATH
        else "ReLU"
        for n in first.main
    ]
    tail = (", plus the shortcut" + (", then ReLU" if first.post else "")) if c.residual else ""
    cite = " (He et al. 2016, Identity Mappings)" if c.preact else ""
    doc = f"{c.kind.capitalize()} {summary}: {what} convolutions.\n\n"
    doc += f"{' -> '.join(steps)}{tail}{cite}."
    if c.optional:
        aa = ", ".join(f"``{m}``" for m in c.optional)
        doc += (
            f" Where ``stride`` > 1 the convolutions run at stride 1 and {aa} (anti-aliasing, "
            "as timm's aa_layer) strides after the ReLU"
            + (
                ", and where ``first_dilation`` differs from ``dilation`` (a dilated stage's "
                "first block) it filters at stride 1"
                if "first_dilation" in c.aa_condition
                else ""
            )
            + "; elsewhere it is None."
        )
    elif stride_conv is not None and c.stride:
        conv = next(n for n in first.main if first.local[n.name] == stride_conv)
        doc += f" The stride is on the {_kxk(conv)} convolution ``{stride_conv}``"
        if c.kind == "bottleneck":
            doc += (
                " (ResNet v1.5, as torchvision)."
                if conv.attrs["kernel"] > 1
                else " (the ResNet paper's v1)."
            )
        else:
            doc += "."
    if c.dilation:
        doc += (
            " ``dilation`` dilates (and pads) its 3x3 convolutions"
            + (", ``first_dilation`` the first one" if c.first_dilation else "")
            + " (timm's output_stride: dilated stages)."
        )
    sc = []
    if "projection" in modes:
        sc.append("``downsample`` (a projection)")
    if "pad" in modes:
        sc.append("``shortcut`` (option A zero padding)")
    if sc:
        what = " or ".join(sc)
        doc += (
            f" The shortcut is the identity unless {what} is given."
            if "identity" in modes
            else f" The shortcut is {what}."
        )
    return doc


def _group_key(local: str) -> str:
    m = re.search(r"\d+$", local)
    return m.group() if m else local


def _block_forward(
    c: BlockClass, modes: list[str], src: dict[str, str | None], inplace_add: bool
) -> list[Step]:
    first = _representative(c)
    multi = len(modes) > 1
    body: list[Step] = []

    def shortcut(mode: str, var: str) -> Step:
        return Step("shortcut", "identity", var, SHORTCUT_ATTR[mode], guard=multi)

    if "identity" in modes and multi:
        body += [Step("copy", "identity", "x"), Step("blank")]
    var, group = "x", None
    for n in first.main:
        local = first.local[n.name]
        if group is not None and _group_key(local) != group:
            body.append(Step("blank"))
        group = _group_key(local)
        module = "relu" if n.op is Op.RELU else _module(local) if n.op is Op.SCALE else local
        guard = local in c.optional or n.op is Op.DROP_PATH
        body.append(Step("layer", "out", var, module, n.op, guard=guard))
        var = "out"
        body += [shortcut(m, "out") for m in modes if m != "identity" and src[m] == local]
    if c.residual:
        for m in modes:
            if m != "identity" and src[m] is None:
                body += [Step("blank"), shortcut(m, "x")]
        total = "x" if modes == ["identity"] else "identity"
        body += [Step("blank"), Step("add", "out", total, inplace=inplace_add)]
        body += [Step("layer", "out", "out", "relu", Op.RELU) for _ in first.post]
    return [*body, Step("blank"), Step("return", src="out")]


# ---------------------------------------------------------------------------------------------
# projection shortcuts


def _projection_key(bi: _BlockIR) -> tuple:
    idx = [int(bi.local[n.name].removeprefix("downsample.")) for n in bi.short]
    conv, kernel = next(
        (i, n.attrs["kernel"]) for i, n in zip(idx, bi.short, strict=True) if n.op is Op.CONV2D
    )
    ops = tuple((i, n.op) for i, n in zip(idx, bi.short, strict=True) if i >= conv)
    same = any(n.attrs.get("same") for n in bi.short)  # AvgPool2dSame: a projection of its own
    return (conv, ops, kernel, same)


_POOL = Layer("0", Op.AVGPOOL, (("kernel", Param("stride")), ("stride", Param("stride"))))
_SAME_POOL = Layer("0", Op.AVGPOOL, (("kernel", 2), ("stride", 1), ("same", True)))


def _make_projections(blocks: list[_BlockIR], ns: Namespace) -> dict[tuple, Projection]:
    found: dict[tuple, Projection] = {}
    pooled: dict[tuple, set[bool]] = {}
    for bi in blocks:
        if bi.mode != "projection":
            continue
        for n in bi.short:
            parts = bi.local[n.name].split(".")
            if len(parts) != 2 or parts[0] != "downsample" or not parts[1].isdecimal():
                raise EmitError(f"IR node {n.name!r}: projection nodes are named downsample.<i>")
        key = _projection_key(bi)
        conv_index, ops, kernel, same = key
        idx = [int(bi.local[n.name].split(".")[1]) for n in bi.short]
        pool = [n for n in bi.short if n.op is Op.AVGPOOL]
        expect = list(range(conv_index, conv_index + len(ops)))
        bad = (
            [i for i in idx if i >= conv_index] != expect
            or conv_index > 1
            or (conv_index == 1 and (idx[0] not in (0, 1) or len(pool) != (idx[0] == 0)))
            or (conv_index == 0 and pool)
        )
        if bad:
            raise EmitError(f"block {bi.block.name!r}: unexpected projection layout {idx}")
        p = found.get(key)
        if p is None:
            layers = []
            for (i, op), n in zip(ops, bi.short[len(bi.short) - len(ops) :], strict=True):
                if op is Op.CONV2D:
                    stride = Param("stride") if conv_index == 0 else 1
                    dilated = any(
                        m.op is Op.CONV2D and m.attrs.get("dilation", 1) != 1
                        for b in blocks
                        if b.mode == "projection" and _projection_key(b) == key
                        for m in b.short
                    )
                    layers.append(
                        _conv(
                            str(i),
                            n,
                            Param("in_channels"),
                            Param("out_channels"),
                            stride,
                            dilation=Param("dilation") if dilated else None,
                        )
                    )
                elif op in _NORM_OPS:
                    layers.append(_bn(str(i), n, Param("out_channels")))
                else:
                    raise EmitError(f"IR node {n.name!r}: {op} in a projection shortcut")
            name = "projection" if conv_index == 0 else "avgpool_projection"
            name += f"{kernel}x{kernel}" if kernel != 1 else ""  # 3x3: SENet-154
            name += "_same" if same else ""
            pool_mode = "none" if conv_index == 0 else "same" if same else ""
            p = found[key] = Projection(name, pool_mode, layers)
            p.dilation = any(m.args and dict(m.args).get("dilation") for m in layers)
        pooled.setdefault(key, set()).add(bool(pool))
        params = _shortcut_args(bi)
        p.stride |= params["stride"] != 1
        for layer, n in zip(p.layers, bi.short[len(bi.short) - len(p.layers) :], strict=True):
            _verify(layer, params, n)
        for n in pool:
            _verify(_SAME_POOL if same else _POOL, params, n)
        if same and params["stride"] != 1:
            raise EmitError(f"block {bi.block.name!r}: a same-padded pool at stride > 1")
        if conv_index == 1 and not same and bool(pool) != (params["stride"] != 1):
            raise EmitError(
                f"block {bi.block.name!r}: avg pool present at stride {params['stride']}"
            )
    for key, p in found.items():
        p.name = ns.create(p.name, "helper name")
        if p.pool == "":
            p.pool = {frozenset({True}): "always", frozenset({False}): "never"}.get(
                frozenset(pooled[key]), "strided"
            )
        if not p.stride:  # no stride parameter: every instance has 1
            p.layers = [m.bind({"stride": 1}) for m in p.layers]
        p.doc = _projection_doc(p)
    return found


def _projection_doc(p: Projection) -> str:
    k = p.layers[0]["kernel"]
    bn = len(p.layers) > 1
    if p.pool == "none":
        return (
            f"Projection shortcut: a {k}x{k} convolution"
            + (" with ``stride``" if p.stride else "")
            + (" and ``dilation``" if p.dilation else "")
            + (", then BatchNorm." if bn else ".")
        )
    if p.pool == "same":
        return (
            "Projection shortcut of ResNet-D where a dilated stage starts (timm's "
            "AvgPool2dSame): 2x2 average pooling at stride 1 over the map padded with zeros on "
            f"the right and below, then a {k}x{k} convolution" + (" and BatchNorm." if bn else ".")
        )
    return (
        (
            "Projection shortcut of ResNet-D: ``stride`` x ``stride`` average pooling (ceil "
            "mode, padding excluded), then a "
            if p.stride
            else "Projection shortcut of ResNet-D at stride 1 (no average pooling): a "
        )
        + f"{k}x{k} convolution"
        + (" and BatchNorm." if bn else ".")
    )


def _shortcut_args(bi: _BlockIR) -> dict[str, int]:
    b = bi.block
    conv = next((n for n in bi.short if n.op is Op.CONV2D), None)
    dilation = conv.attrs.get("dilation", 1) if conv is not None else 1
    return dict(
        in_channels=b.in_channels, out_channels=b.out_channels, stride=b.stride, dilation=dilation
    )


# ---------------------------------------------------------------------------------------------
# the model


def _inplace_ok(g: _View, relu: Node) -> bool:
    """A ReLU may run in place when the tensor it overwrites has no other reader."""
    (src,) = g.ins[relu.name]
    return g[src].op in (Op.CONV2D, Op.BATCHNORM, Op.ADD) and len(g.succ[src]) == 1


class _Planner:
    def __init__(self, g: Graph):
        self.g = g
        self.view = v = _View(g)
        for n in v.node.values():
            node_path(n.name)
            if "shape" not in n.meta or "macs" not in n.meta:
                raise EmitError("emit needs an analysed IR (run the shape and cost passes)")
        text(g.name, "spec name")
        text(g.stem, "stem kind")
        hexdigest(g.spec_hash)
        self.inplace = {n.name: _inplace_ok(v, n) for n in v.node.values() if n.op is Op.RELU}

    def run(self) -> Plan:
        g, v = self.g, self.view
        ns = Namespace()
        model = ns.claim(g.class_name, "model class name")
        blocks = [_analyse_block(v, b) for b in g.blocks]
        self.by_block = {bi.block.name: bi for bi in blocks}
        found = _make_classes(blocks, ns)
        classes = [c for c, _, _ in found]
        self.names = names = {h: ns.create(h, "helper name") for h in HELPERS}
        for c, stride_conv, group_conv in found:
            _fill_class(c, stride_conv, group_conv, self.inplace, v.succ)
        self.class_of = {bi.block.name: c for c in classes for bi in c.members}
        self.projections = _make_projections(blocks, ns)
        for bi in blocks:
            if bi.mode == "pad":
                n = bi.short[0]
                _verify(
                    Layer(
                        "shortcut",
                        Op.PAD_CHANNELS,
                        (("stride", Param("stride")), ("out_channels", Param("out_channels"))),
                    ),
                    bi.params(),
                    n,
                )
                if v[v.ins[n.name][0]].meta["shape"][0] != bi.block.in_channels:
                    raise EmitError(f"IR node {n.name!r}: input channels differ from the block's")
        body, forward = self.top_level()
        plan = Plan(
            g,
            model,
            names,
            [],
            classes,
            list(self.projections.values()),
            any(bi.mode == "pad" for bi in blocks),
            body,
            forward,
            self.fc is not None,
        )
        layers = (
            [m for c in classes for m in c.layers]
            + [m for p in plan.projections for m in p.layers]
            + [m for t in body if isinstance(t, TopModule) for m in t.layers]
        )
        convs = [m for m in layers if m.op is Op.CONV2D]
        for k in sorted({m["kernel"] for m in convs}, reverse=True):
            same = [m for m in convs if m["kernel"] == k]
            plan.convs.append(
                ConvHelper(
                    ns.create(f"conv{k}x{k}", "helper name"),
                    k,
                    any(m["stride"] != 1 for m in same),
                    any(m["groups"] != 1 for m in same),
                    any("dilation" in dict(m.args) for m in same),
                )
            )
        plan.ops = {m.op for m in layers}
        kinds = {m["kind"] for m in layers if m.op is Op.SCALE}
        plan.attention = [k for k in ATTENTION_HELPERS if k in kinds]
        plan.eps = {m["eps"] for m in layers if m.op is Op.BATCHNORM}
        plan.momentum = {m["momentum"] for m in layers if m.op is Op.BATCHNORM}
        return plan

    def top_level(self) -> tuple[list[TopModule | Stage], list[Step]]:
        """The model's own modules (stem and head), its stages and its forward, as one chain."""
        g, v = self.g, self.view
        top: dict[str, TopModule] = {}
        stages: dict[str, list[_BlockIR]] = {}
        body: list[TopModule | Stage] = []
        forward: list[Step] = []
        prev, group = None, "stem"

        def step(grp: str, s: Step) -> None:
            nonlocal group
            if grp != group and forward:
                forward.append(Step("blank"))
            group = grp
            forward.append(s)

        for n in v.node.values():
            ins = v.ins[n.name]
            if n.block is not None:
                bi = self.by_block.get(n.block)
                if bi is None:
                    raise EmitError(f"IR node {n.name!r}: unknown block {n.block!r}")
                if n.name == bi.block.nodes[0]:
                    stage = attr_name(bi.block.stage, "stage name")
                    blocks = stages.setdefault(stage, [])
                    if bi.block.name != f"{stage}.{len(blocks)}":
                        raise EmitError(f"block {bi.block.name!r} is not {stage}.{len(blocks)}")
                    if blocks and forward[-1].module != stage:
                        raise EmitError(f"stage {stage!r} is not contiguous")
                    if stage in top:
                        raise EmitError(f"stage {stage!r} clashes with a module name")
                    blocks.append(bi)
                    if len(blocks) == 1:
                        step("stages", Step("layer", "x", "x", stage))
                        body.append(Stage(stage, []))
                if not all(p in bi.local or p == prev for p in ins):
                    raise EmitError(f"block {bi.block.name!r} does not read the previous output")
                if n.name == bi.block.nodes[-1]:
                    prev = n.name
                continue
            if n.op is Op.INPUT:
                if prev is not None:
                    raise EmitError("the input must come first")
                prev = n.name
                continue
            if ins != [prev]:
                raise EmitError(f"IR node {n.name!r} does not read the previous output")
            prev = n.name
            grp = "stem" if not stages else "head"
            if n.op is Op.FLATTEN:
                step(grp, Step("flatten", "x", "x"))
                continue
            if n.op not in _TOP_OPS:
                raise EmitError(f"IR node {n.name!r}: {n.op} outside a block")
            parts = node_path(n.name)
            name = attr_name(parts[0], "module name")
            if name in stages:
                raise EmitError(f"IR node {n.name!r} clashes with a stage")
            if len(parts) > 2 or (len(parts) == 2 and not parts[1].isdecimal()):
                raise EmitError(f"IR node {n.name!r}: unsupported module path")
            mod = top.get(name)
            index = len(mod.layers) if mod else 0
            want = name if len(parts) == 1 else f"{name}.{index}"
            if n.name != want or (mod and len(parts) == 1):
                raise EmitError(f"IR node {n.name!r}: expected {want!r}")
            if mod is None:
                mod = top[name] = TopModule(name, [], len(parts) == 2)
                body.append(mod)
                step(grp, Step("layer", "x", "x", name, n.op))
            elif forward[-1].module != name:
                raise EmitError(f"IR node {n.name!r}: its Sequential is not contiguous")
            layer = _literal(parts[-1], n)
            _verify(layer, {}, n)
            if n.op is Op.RELU:
                layer = Layer(layer.name, Op.RELU, (("inplace", self.inplace[n.name]),))
            mod.layers.append(layer)
            if mod.sequential:
                forward[-1] = Step("layer", "x", "x", name, None)
        if prev != g.output:
            raise EmitError("the model does not end at the IR's output")
        forward += [Step("blank"), Step("return", src="x")]
        for n in v.node.values():
            if n.op is Op.GROUPNORM and n.attrs["zero_init"]:
                raise EmitError(f"IR node {n.name!r}: zero_init of a GroupNorm is not emitted")
            if (
                n.op is Op.BATCHNORM
                and n.attrs["zero_init"]
                and (n.block is None or any(s.name == n.name for s in self.by_block[n.block].short))
            ):
                raise EmitError(f"IR node {n.name!r}: zero_init outside a residual branch")
        linears = [n for n in v.node.values() if n.op is Op.LINEAR]
        if len(linears) > 1:
            raise EmitError("more than one fully connected layer")
        self.fc = linears[0] if linears else None
        if self.fc is not None and (
            self.fc.name != g.output or self.fc.attrs["out_features"] != g.num_classes
        ):
            raise EmitError("the classifier must be the last node, with num_classes outputs")
        for s in body:
            if isinstance(s, Stage):
                s.runs = _runs([self.block_call(bi) for bi in stages[s.name]])
        return body, forward

    def block_call(self, bi: _BlockIR) -> BlockCall:
        c, b = self.class_of[bi.block.name], bi.block
        p = _class_params(c, bi)
        shortcut = None
        if bi.mode == "projection":
            shortcut = (
                "downsample",
                self.projections[_projection_key(bi)].name,
                (b.in_channels, b.out_channels, b.stride),
                _shortcut_args(bi)["dilation"],
            )
        elif bi.mode == "pad":
            shortcut = (
                "shortcut",
                self.names["ZeroPadShortcut"],
                (b.in_channels, b.out_channels, b.stride),
                1,
            )
        return BlockCall(
            c.name,
            tuple(p[k] for k in c.channels),
            b.stride,
            b.groups,
            shortcut,
            p["eca_kernel_size"] if c.eca_kernel else None,
            b.drop_path if c.drop_path else 0.0,
            p["dilation"] if c.dilation else 1,
            p["first_dilation"] if c.first_dilation else 1,
        )


def _runs(calls: list[BlockCall]) -> list[tuple[BlockCall, int]]:
    """Consecutive identical calls, each with its count: the one rule for writing a stage."""
    runs: list[tuple[BlockCall, int]] = []
    for call in calls:
        if runs and runs[-1][0] == call:
            runs[-1] = (call, runs[-1][1] + 1)
        else:
            runs.append((call, 1))
    return runs


def make_plan(graph: Graph) -> Plan:
    """The emission plan of an analysed ``graph``, verified against it."""
    return _Planner(graph).run()


# ---------------------------------------------------------------------------------------------
# the header both targets write


def header(plan: Plan, backend: str, notes: str) -> str:
    """The file docstring: the spec, how to regenerate the file, totals and a per-stage table."""
    g, t = plan.graph, plan.graph.totals
    c, h, w = g.input_shape
    rows = [("stage", "blocks", "output", "params", "MACs")]
    sums = {"params": 0, "macs": 0}
    by_stage: dict[str, list[Node]] = {}
    for n in g:
        by_stage.setdefault(n.stage, []).append(n)
    depth = {s.name: s.depth for s in plan.stages}
    for stage, nodes in by_stage.items():
        p = sum(n.meta["params"] for n in nodes)
        m = sum(n.meta["macs"] for n in nodes)
        sums["params"] += p
        sums["macs"] += m
        shape = "x".join(map(str, nodes[-1].meta["shape"]))
        rows.append((text(stage, "stage"), str(depth.get(stage, "-")), shape, f"{p:,}", f"{m:,}"))
    if sums["params"] != t["params"] or sums["macs"] != t["macs"]:
        raise EmitError("per-stage costs do not add up to the IR totals")
    rows.append(("total", "", "", f"{t['params']:,}", f"{t['macs']:,}"))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    table = "\n".join(
        "    "
        + "  ".join(
            cell.ljust(widths[i]) if i < 3 else cell.rjust(widths[i]) for i, cell in enumerate(r)
        ).rstrip()
        for r in rows
    )
    kinds = ", ".join(f"{len(cl.members)} x {cl.name}" for cl in plan.classes)
    return (
        f"{plan.model}: the ResNet ``{g.name}`` for {backend}, emitted by rescompile from its "
        "graph IR.\n\n"
        f"Regenerate it rather than editing it: ``rescompile build SPEC --backend {backend}``, "
        f"where SPEC is the spec file (and ``--set`` overrides) that resolves to sha256 "
        f"{g.spec_hash or '-'}.\n\n"
        f"\tSpec:        {g.name} (resolved-spec sha256 {g.spec_hash or '-'})\n"
        f"Input:       {c}x{h}x{w}, {g.num_classes} classes\n"
        f"Blocks:      {kinds or 'none'}\n"
        f"Parameters:  {t['params']:,} trainable; {t['buffers']:,} buffers (BatchNorm "
        f"running\n             mean and variance; num_batches_tracked not counted)\n"
        f"MACs:        {t['macs']:,} per image\n"
        f"FLOPs:       {2 * t['macs']:,} per image (= 2 x MACs)\n\n"
        "MACs are multiply-accumulates of the convolutions and the fully connected layer "
        'only (the ResNet paper\'s "FLOPs"); BatchNorm, ReLU, pooling and additions are '
        "not counted.\n\n"
        f"\t{table}\n\n{notes}"
    )


def model_doc(plan: Plan) -> str:
    g = plan.graph
    kind = "pre-activation ResNet" if g.preact else "ResNet"
    stages = plan.stages
    return (
        f"The ``{g.name}`` network, a {kind}.\n\n"
        f"Stem ``{g.stem}``, {len(stages)} stage{'s' if len(stages) != 1 else ''} of blocks ("
        + ", ".join(f"{s.name}: {s.depth}" for s in stages)
        + "), global average pooling and a fully connected classifier."
    )
