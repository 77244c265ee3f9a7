"""IR -> PyTorch source: one self-contained file, importing only torch, reading like torchvision.

The emitter never imports torch. It works in three steps:

1. **Analyse** each residual :class:`~rescompile.ir.graph.Block` of the IR into its main branch (a
   chain of conv / BN / ReLU nodes), its shortcut (identity, option A zero-padding, or a
   projection chain) and what follows the addition.
2. **Group** blocks of the same structure into one class per block kind actually used
   (``BasicBlock``, ``Bottleneck``, ``PreActBottleneck``, ``PlainBasicBlock``, ...), whose
   constructor takes the numbers that vary between instances (channels, stride, groups, the
   shortcut module), and emit only the code paths the model uses.
3. **Verify** that every module the emitted code will build, instantiated with each block's
   constructor arguments, has exactly the attributes of the IR node of the same name. Every
   number in the output therefore comes from the IR, and module attribute paths equal IR node
   names, so ``state_dict`` keys equal the IR's parameter names (and torchvision's).

Nothing from a spec reaches the source except validated identifiers, numbers and (in docstrings)
the spec name, which the core validates and :mod:`.codegen` checks again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from rescompile.ir.graph import Block, Graph, Node, Op

from .codegen import (
    INDENT,
    Call,
    EmitError,
    Kw,
    Repeat,
    attr_name,
    call_lines,
    def_lines,
    docstring,
    fits,
    hexdigest,
    ident,
    node_path,
    num,
    text,
)

BN_EPS, BN_MOMENTUM = 1e-5, 0.1  # nn.BatchNorm2d's defaults: only other values are emitted
REPEAT_MIN = 4  # a run of this many identical blocks is written as *[Block(...) for _ in ...]
_BASE_NAMES = {
    ("basic", False, True): "BasicBlock",
    ("bottleneck", False, True): "Bottleneck",
    ("basic", True, True): "PreActBasicBlock",
    ("bottleneck", True, True): "PreActBottleneck",
    ("basic", False, False): "PlainBasicBlock",
    ("bottleneck", False, False): "PlainBottleneck",
    ("basic", True, False): "PlainPreActBasicBlock",
    ("bottleneck", True, False): "PlainPreActBottleneck",
}
_MODE_ATTR = {"projection": "downsample", "pad": "shortcut"}  # IR names of the shortcut modules
_MAIN_OPS = {Op.CONV2D, Op.BATCHNORM, Op.RELU}


def emit(graph: Graph) -> str:
    """The complete source of a standalone PyTorch module file for ``graph``."""
    return _Emitter(graph).run()


# ---------------------------------------------------------------------------------------------
# block analysis


@dataclass
class _BlockIR:
    """One residual block of the IR, taken apart."""

    block: Block
    local: dict[str, str]  # IR node name -> name inside the block ("layer1.0.conv1" -> "conv1")
    main: list[Node]  # the main branch, in order
    short: list[Node]  # the shortcut's nodes (empty for identity and none)
    short_src: str | None  # the main-branch node the shortcut reads (local name); None: input
    add: Node | None
    post: list[Node]  # after the addition
    mode: str  # identity | pad | projection | none

    def params(self) -> dict[str, int]:
        b = self.block
        return dict(in_channels=b.in_channels, width=b.width, out_channels=b.out_channels,
                    stride=b.stride, groups=b.groups)


class _View:
    """Read-only access to the IR's nodes and edges, built once per emit (networkx is slow)."""

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

    def inputs(self, name: str) -> list[str]:
        return self.ins[name]


def _analyse_block(g: _View, b: Block) -> _BlockIR:
    ident(b.stage, "stage name")
    if not b.nodes:
        raise EmitError(f"block {b.name!r} has no IR nodes")
    node_path(b.name)
    prefix = b.name + "."
    inside = set(b.nodes)
    local: dict[str, str] = {}
    for name in b.nodes:
        if not name.startswith(prefix) or g[name].block != b.name:
            raise EmitError(f"IR node {name!r} does not belong to block {b.name!r}")
        local[name] = name[len(prefix):]
        node_path(local[name])
    external = {p for n in b.nodes for p in g.inputs(n) if p not in inside}
    if len(external) != 1:
        raise EmitError(f"block {b.name!r} reads {sorted(external)}; expected one input")
    (entry,) = external
    out = b.nodes[-1]
    for n in b.nodes[:-1]:
        if any(s not in inside for s in g.succ[n]):
            raise EmitError(f"IR node {n!r} is used outside its block {b.name!r}")

    def chain_back(start: str, stop: set[str]) -> tuple[list[Node], str]:
        nodes, cur = [], start
        while cur in inside and cur not in stop:
            ins = g.inputs(cur)
            if len(ins) != 1:
                raise EmitError(f"IR node {cur!r}: expected one input inside block {b.name!r}")
            nodes.append(g[cur])
            cur = ins[0]
        return nodes[::-1], cur

    adds = [n for n in b.nodes if g[n].op is Op.ADD]
    if len(adds) > 1:
        raise EmitError(f"block {b.name!r} has {len(adds)} additions")
    if adds:
        add = g[adds[0]]
        h, s = g.inputs(add.name)
        main, src = chain_back(h, set())
        if src != entry:
            raise EmitError(f"block {b.name!r}: the main branch does not start at the input")
        main_names = {n.name for n in main}
        short, src = chain_back(s, main_names)
        if src not in main_names and src != entry:
            raise EmitError(f"block {b.name!r}: the shortcut reads {src!r}")
        post, cur = [], add.name
        while cur != out:
            succ = g.succ[cur]
            if len(succ) != 1:
                raise EmitError(f"block {b.name!r}: {cur!r} does not lead to the block output")
            cur = succ[0]
            post.append(g[cur])
            if g.inputs(cur) != [post[-2].name if len(post) > 1 else add.name]:
                raise EmitError(f"block {b.name!r}: {cur!r} reads more than the addition")
        seen = main_names | {n.name for n in short} | {add.name} | {n.name for n in post}
        short_src = local[src] if src != entry else None
    else:
        add, short, post, short_src = None, [], [], None
        main, src = chain_back(out, set())
        if src != entry:
            raise EmitError(f"block {b.name!r}: the main branch does not start at the input")
        seen = {n.name for n in main}
    if seen != inside:
        raise EmitError(f"block {b.name!r}: unexpected IR nodes {sorted(inside - seen)}")
    for n in main:
        if n.op not in _MAIN_OPS:
            raise EmitError(f"IR node {n.name!r}: {n.op} in a block's main branch")
    for n in post:
        if n.op is not Op.RELU:
            raise EmitError(f"IR node {n.name!r}: {n.op} after a block's addition")

    mode = b.shortcut
    ops = [n.op for n in short]
    ok = {
        "none": add is None,
        "identity": add is not None and not short and short_src is None,
        "pad": ops == [Op.PAD_CHANNELS] and short_src is None,
        "projection": bool(short) and Op.CONV2D in ops
        and set(ops) <= {Op.AVGPOOL, Op.CONV2D, Op.BATCHNORM},
    }.get(mode, False)
    if not ok:
        raise EmitError(f"block {b.name!r}: shortcut {mode!r} does not match its IR nodes")
    if mode == "pad" and local[short[0].name] != "shortcut":
        raise EmitError(f"IR node {short[0].name!r}: an option A shortcut must be named 'shortcut'")
    return _BlockIR(b, local, main, short, short_src, add, post, mode)


# ---------------------------------------------------------------------------------------------
# module templates: what the emitted code builds, with symbolic arguments


@dataclass(frozen=True)
class _P:
    """A symbolic constructor argument: the name of a parameter of the emitted class/function."""

    name: str


@dataclass(frozen=True)
class _Mod:
    """One module of a template. ``args`` values: a number/bool from the IR, or a :class:`_P`."""

    name: str  # attribute name ("conv1") or Sequential index ("0")
    op: Op
    args: tuple[tuple[str, object], ...]

    def resolve(self, params: dict[str, int]) -> dict[str, object]:
        return {k: params[v.name] if isinstance(v, _P) else v for k, v in self.args}


_CHECKED = {
    Op.CONV2D: ("in_channels", "out_channels", "kernel", "stride", "padding", "groups", "bias"),
    Op.BATCHNORM: ("channels", "eps", "momentum"),
    Op.AVGPOOL: ("kernel", "stride"),
    Op.MAXPOOL: ("kernel", "stride", "padding"),
    Op.LINEAR: ("in_features", "out_features", "bias"),
    Op.DROPOUT: ("p",),
    Op.PAD_CHANNELS: ("stride", "out_channels"),
}


def _verify(mod: _Mod, params: dict[str, int], node: Node) -> None:
    want = mod.resolve(params)
    if node.op is not mod.op:
        raise EmitError(f"IR node {node.name!r} is {node.op}; the emitted module is {mod.op}")
    for k in _CHECKED.get(node.op, ()):
        if k not in want or want[k] != node.attrs.get(k) or type(want[k]) is not type(
            node.attrs.get(k)
        ):
            raise EmitError(
                f"IR node {node.name!r}: {k}={node.attrs.get(k)!r}, but the emitted module "
                f"would have {k}={want.get(k)!r}"
            )


def _module_expr(m: _Mod, inplace: bool = True) -> Call:
    """The constructor call for a template module (parameter names stay symbolic)."""
    a = dict(m.args)

    def v(key: str) -> str:
        x = a[key]
        return ident(x.name, "parameter") if isinstance(x, _P) else num(x)

    def kw(key: str, name: str, default: object) -> list[Kw]:
        x = a[key]
        return [] if type(x) is type(default) and x == default else [Kw(name, v(key))]

    if "bias" in a and type(a["bias"]) is not bool:
        raise EmitError(f"module {m.name!r}: bias must be a bool, got {a['bias']!r}")

    if m.op is Op.CONV2D:
        return Call("nn.Conv2d", (
            v("in_channels"), v("out_channels"), Kw("kernel_size", v("kernel")),
            *kw("stride", "stride", 1), *kw("padding", "padding", 0), *kw("groups", "groups", 1),
            *([] if a["bias"] is True else [Kw("bias", "False")]),
        ))
    if m.op is Op.BATCHNORM:
        return Call("nn.BatchNorm2d", (
            v("channels"), *kw("eps", "eps", BN_EPS), *kw("momentum", "momentum", BN_MOMENTUM)))
    if m.op is Op.RELU:
        return Call("nn.ReLU", (Kw("inplace", "True"),) if inplace else ())
    if m.op is Op.MAXPOOL:
        return Call("nn.MaxPool2d", (Kw("kernel_size", v("kernel")), Kw("stride", v("stride")),
                                     *kw("padding", "padding", 0)))
    if m.op is Op.AVGPOOL:
        return Call("nn.AvgPool2d", (Kw("kernel_size", v("kernel")), Kw("stride", v("stride")),
                                     Kw("ceil_mode", "True"), Kw("count_include_pad", "False")))
    if m.op is Op.GLOBAL_AVGPOOL:
        return Call("nn.AdaptiveAvgPool2d", ("(1, 1)",))
    if m.op is Op.DROPOUT:
        return Call("nn.Dropout", (Kw("p", v("p")),))
    if m.op is Op.LINEAR:
        return Call("nn.Linear", (v("in_features"), v("out_features"),
                                  *([] if a["bias"] is True else [Kw("bias", "False")])))
    raise EmitError(f"no PyTorch module for {m.op}")  # pragma: no cover


def _literal_mod(name: str, n: Node) -> _Mod:
    """A module whose arguments are all literals taken from the IR node."""
    keys = _CHECKED.get(n.op, ())
    args = {k: n.attrs[k] for k in keys}
    if n.op is Op.BATCHNORM:
        args = dict(channels=n.attrs["channels"], eps=n.attrs["eps"], momentum=n.attrs["momentum"])
    return _Mod(name, n.op, tuple(args.items()))


def _inplace_ok(g: _View, relu: Node) -> bool:
    """A ReLU may run in place when the tensor it overwrites has no other reader."""
    (src,) = g.inputs(relu.name)
    return g[src].op in (Op.CONV2D, Op.BATCHNORM, Op.ADD) and len(g.succ[src]) == 1


_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}


def _group_key(local: str) -> str:
    m = re.search(r"\d+$", local)
    return m.group() if m else local


def _kxk(n: Node) -> str:
    return f"{n.attrs['kernel']}x{n.attrs['kernel']}"


# ---------------------------------------------------------------------------------------------
# block classes


@dataclass
class _BlockClass:
    name: str
    kind: str
    preact: bool
    residual: bool
    members: list[_BlockIR]
    stride_conv: str | None = None  # local name of the conv that carries the stride
    group_conv: str | None = None  # local name of the conv that carries the groups
    merge_width: bool = False  # width == out_channels for every instance: one parameter
    modes: list[str] = field(default_factory=list)  # identity / projection / pad, in this order
    mods: list[_Mod] = field(default_factory=list)
    inplace: bool = True
    zero: tuple[str, ...] = ()  # local names of zero-initialised BNs

    @property
    def channel_params(self) -> list[str]:
        return ["in_channels", "out_channels"] if self.merge_width else [
            "in_channels", "width", "out_channels"]

    @property
    def has_stride(self) -> bool:
        return any(m.block.stride != 1 for m in self.members)

    @property
    def has_groups(self) -> bool:
        return any(m.block.groups != 1 for m in self.members)


def _structure(bi: _BlockIR) -> tuple:
    """What must be equal for two blocks to share a class (numbers that vary are parameters)."""
    main = tuple(
        (bi.local[n.name], n.op,
         tuple(n.attrs[k] for k in ("kernel", "padding", "bias")) if n.op is Op.CONV2D else
         (n.attrs["eps"], n.attrs["momentum"]) if n.op is Op.BATCHNORM else ())
        for n in bi.main
    )
    post = tuple((bi.local[n.name], n.op) for n in bi.post)
    return (bi.block.kind, bi.block.preact, bi.add is not None, main, post)


def _where(bi: _BlockIR, attr: str, default: int) -> str | None:
    """The local name of the single main-branch conv whose ``attr`` differs from ``default``."""
    convs = [bi.local[n.name] for n in bi.main if n.op is Op.CONV2D and n.attrs[attr] != default]
    if len(convs) > 1:
        raise EmitError(f"block {bi.block.name!r}: {attr} on {len(convs)} convolutions")
    return convs[0] if convs else None


def _make_classes(
    blocks: list[_BlockIR], taken: set[str], inplace: dict[str, bool]
) -> list[_BlockClass]:
    order = {bi.block.name: i for i, bi in enumerate(blocks)}
    by_structure: dict[tuple, list[_BlockIR]] = {}
    for bi in blocks:
        by_structure.setdefault(_structure(bi), []).append(bi)
    classes: list[_BlockClass] = []
    for key, members in by_structure.items():
        kind, preact, residual = key[:3]
        # A strided block pins where its class puts the stride; stride-1 blocks fit any class.
        split: dict[str | None, list[_BlockIR]] = {}
        for bi in members:
            split.setdefault(_where(bi, "stride", 1), []).append(bi)
        strided = [s for s in split if s is not None]
        loose = split.pop(None, [])
        if loose:
            split.setdefault(strided[0] if strided else None, []).extend(loose)
        for where, ms in split.items():
            ms.sort(key=lambda bi: order[bi.block.name])
            groups = {_where(bi, "groups", 1) for bi in ms} - {None}
            if len(groups) > 1:
                raise EmitError(f"blocks group different convolutions: {sorted(groups)}")
            base = _BASE_NAMES.get((kind, preact, residual))
            if base is None:
                raise EmitError(f"unknown block kind {kind!r}")
            if len(split) > 1 and where is not None:
                conv = next(n for n in ms[0].main if ms[0].local[n.name] == where)
                base += f"Stride{_kxk(conv)}"
            classes.append(_BlockClass(
                base, kind, preact, residual, ms, stride_conv=where,
                group_conv=next(iter(groups)) if groups else None))
    classes.sort(key=lambda c: order[c.members[0].block.name])
    names: set[str] = set()
    for c in classes:
        c.name = _fresh(c.name, taken | names)
        names.add(c.name)
        _fill_class(c, inplace)
    return classes


def _fresh(name: str, taken: set[str]) -> str:
    while name in taken:
        name += "_"
    return ident(name, "class name")


def _fill_class(c: _BlockClass, inplace: dict[str, bool]) -> None:
    first = c.members[0]
    c.merge_width = all(m.block.width == m.block.out_channels for m in c.members)
    width = "out_channels" if c.merge_width else "width"
    convs = [n for n in first.main if n.op is Op.CONV2D]
    if not convs:
        raise EmitError(f"block {first.block.name!r} has no convolution")
    role, k = "in_channels", 0
    for n in first.main:
        local = first.local[n.name]
        if n.op is Op.CONV2D:
            k += 1
            out_role = "out_channels" if k == len(convs) else width
            c.mods.append(_Mod(local, n.op, (
                ("in_channels", _P(role)), ("out_channels", _P(out_role)),
                ("kernel", n.attrs["kernel"]),
                ("stride", _P("stride") if local == c.stride_conv else 1),
                ("padding", n.attrs["padding"]),
                ("groups", _P("groups") if local == c.group_conv else 1),
                ("bias", n.attrs["bias"]),
            )))
            role = out_role
        elif n.op is Op.BATCHNORM:
            c.mods.append(_Mod(local, n.op, (
                ("channels", _P(role)), ("eps", n.attrs["eps"]),
                ("momentum", n.attrs["momentum"]))))
    for m in (*c.mods, "downsample", "shortcut", "relu"):
        attr_name(m.name if isinstance(m, _Mod) else m, "block module name")
    if {"relu", "downsample", "shortcut"} & {m.name for m in c.mods}:
        raise EmitError(f"block {first.block.name!r}: a module name clashes with the emitter's")
    modes = {m.mode for m in c.members}
    c.modes = [m for m in ("identity", "projection", "pad") if m in modes]
    mods = {mm.name: mm for mm in c.mods}
    for m in c.members:
        p = m.params()
        for n in m.main:
            if n.op is not Op.RELU:
                _verify(mods[m.local[n.name]], p, n)
        if c.residual and m.mode == "none" or not c.residual and m.mode != "none":
            raise EmitError(f"block {m.block.name!r}: shortcut {m.mode!r} in class {c.name}")
    # ReLUs share one module (as in torchvision); in place only where every use allows it.
    g_relus = [n for m in c.members for n in (*m.main, *m.post) if n.op is Op.RELU]
    c.inplace = all(inplace[n.name] for n in g_relus)
    zero = {tuple(m.local[n.name] for n in m.main if n.op is Op.BATCHNORM and n.attrs["zero_init"])
            for m in c.members}
    if len(zero) != 1:
        raise EmitError(f"class {c.name}: zero_init differs between its blocks")
    c.zero = next(iter(zero))
    srcs = {(m.mode, m.short_src) for m in c.members}
    if len({mode for mode, _ in srcs}) != len(srcs):
        raise EmitError(f"class {c.name}: a shortcut reads different tensors in different blocks")


# ---------------------------------------------------------------------------------------------
# shortcut helpers


@dataclass
class _Helper:
    """A projection shortcut builder: ``projection(in, out, stride)`` -> nn.Sequential."""

    name: str
    conv_index: int  # 0: strided conv first; 1: [avg pool | identity] then conv (ResNet-D)
    mods: list[_Mod]  # the Sequential's modules from the conv on
    pooled: set[bool] = field(default_factory=set)  # whether instances have the avg pool
    strided: bool = False


def _helper_structure(bi: _BlockIR) -> tuple:
    idx = [int(bi.local[n.name].removeprefix("downsample.")) for n in bi.short]
    conv = next(i for i, n in zip(idx, bi.short, strict=True) if n.op is Op.CONV2D)
    ops = tuple((i, n.op) for i, n in zip(idx, bi.short, strict=True) if i >= conv)
    return (conv, ops)


def _make_helpers(blocks: list[_BlockIR], taken: set[str]) -> dict[tuple, _Helper]:
    helpers: dict[tuple, _Helper] = {}
    for bi in blocks:
        if bi.mode != "projection":
            continue
        for n in bi.short:
            parts = bi.local[n.name].split(".")
            if len(parts) != 2 or parts[0] != "downsample" or not parts[1].isdecimal():
                raise EmitError(f"IR node {n.name!r}: projection nodes are named downsample.<i>")
        key = _helper_structure(bi)
        conv_index, ops = key
        idx = [int(bi.local[n.name].split(".")[1]) for n in bi.short]
        pool = [n for n in bi.short if n.op is Op.AVGPOOL]
        expect = list(range(conv_index, conv_index + len(ops)))
        if [i for i in idx if i >= conv_index] != expect or (
            conv_index == 1 and idx[0] not in (0, 1)) or conv_index > 1:
            raise EmitError(f"block {bi.block.name!r}: unexpected projection layout {idx}")
        if conv_index == 0 and pool or conv_index == 1 and len(pool) != (idx[0] == 0):
            raise EmitError(f"block {bi.block.name!r}: unexpected projection layout {idx}")
        h = helpers.get(key)
        if h is None:
            mods = []
            for (i, op), n in zip(ops, bi.short[len(bi.short) - len(ops):], strict=True):
                if op is Op.CONV2D:
                    mods.append(_Mod(str(i), op, (
                        ("in_channels", _P("in_channels")), ("out_channels", _P("out_channels")),
                        ("kernel", n.attrs["kernel"]),
                        ("stride", _P("stride") if conv_index == 0 else 1),
                        ("padding", n.attrs["padding"]), ("groups", 1),
                        ("bias", n.attrs["bias"]))))
                elif op is Op.BATCHNORM:
                    mods.append(_Mod(str(i), op, (
                        ("channels", _P("out_channels")), ("eps", n.attrs["eps"]),
                        ("momentum", n.attrs["momentum"]))))
                else:
                    raise EmitError(f"IR node {n.name!r}: {op} in a projection shortcut")
            name = "projection" if conv_index == 0 else "avgpool_projection"
            h = helpers[key] = _Helper(name, conv_index, mods)
        h.pooled.add(bool(pool))
        p = _helper_params(bi)
        h.strided |= p["stride"] != 1
        for mod, n in zip(h.mods, bi.short[len(bi.short) - len(h.mods):], strict=True):
            _verify(mod, p, n)
        for n in pool:
            _verify(_POOL, p, n)
        if conv_index == 1 and bool(pool) != (p["stride"] != 1):
            raise EmitError(f"block {bi.block.name!r}: avg pool present at stride {p['stride']}")
    names: set[str] = set()
    for h in helpers.values():
        h.name = _fresh(h.name, taken | names)
        names.add(h.name)
    return helpers


_POOL = _Mod("0", Op.AVGPOOL, (("kernel", _P("stride")), ("stride", _P("stride"))))


def _bind(m: _Mod, values: dict[str, int]) -> _Mod:
    """``m`` with the parameters named in ``values`` replaced by those values."""
    return _Mod(m.name, m.op, tuple(
        (k, values[v.name]) if isinstance(v, _P) and v.name in values else (k, v)
        for k, v in m.args))


def _helper_params(bi: _BlockIR) -> dict[str, int]:
    b = bi.block
    return dict(in_channels=b.in_channels, out_channels=b.out_channels, stride=b.stride)


def _helper_source(h: _Helper) -> list[str]:
    params = ["in_channels: int", "out_channels: int"]
    if h.strided:
        params.append("stride: int = 1")
    lines = def_lines(h.name, params, "nn.Sequential", level=0)
    k = dict(h.mods[0].args)["kernel"]
    if h.conv_index == 0:
        doc = (f"Projection shortcut: a {k}x{k} convolution"
               + (" with ``stride``" if h.strided else "")
               + (", then BatchNorm." if len(h.mods) > 1 else "."))
    else:
        doc = (("Projection shortcut of ResNet-D: ``stride`` x ``stride`` average pooling "
                "(ceil mode, padding excluded), then a " if h.strided else
                "Projection shortcut of ResNet-D at stride 1 (no average pooling): a ")
               + f"{k}x{k} convolution" + (" and BatchNorm." if len(h.mods) > 1 else "."))
    lines += docstring(doc, 1)
    items: list[str | Call] = []
    if h.conv_index == 1:
        pool = _module_expr(_POOL)
        if h.pooled == {True, False}:
            lines += ["    if stride > 1:", *call_lines(pool, 2, "pool = "), "    else:",
                      "        pool = nn.Identity()"]
            items.append("pool")
        elif h.pooled == {True}:
            items.append(pool)
        else:
            items.append(Call("nn.Identity"))
    bound = {} if h.strided else {"stride": 1}  # no stride parameter: every instance has 1
    items += [_module_expr(_bind(m, bound)) for m in h.mods]
    lines += call_lines(Call("nn.Sequential", tuple(items)), 1, "return ", explode=True)
    return lines


_ZERO_PAD = "ZeroPadShortcut"


def _zero_pad_source(name: str, functional: str) -> list[str]:
    return [
        f"class {name}(nn.Module):",
        *docstring(
            "Option A shortcut (no parameters): keep every ``stride``-th row and column, then "
            "append zero channels up to ``out_channels``.", 1),
        "",
        *def_lines("__init__", ["self", "in_channels: int", "out_channels: int", "stride: int"],
                   "None"),
        "        super().__init__()",
        "        self.stride = stride",
        "        self.pad = (0, 0, 0, 0, 0, out_channels - in_channels)",
        "",
        "    def forward(self, x: torch.Tensor) -> torch.Tensor:",
        "        s = self.stride",
        f"        return {functional}.pad(x[:, :, ::s, ::s], self.pad)",
    ]


# ---------------------------------------------------------------------------------------------
# the emitter


class _Emitter:
    def __init__(self, g: Graph):
        self.g = g

    # -- analysis --------------------------------------------------------------------------------
    def run(self) -> str:
        g = self.g
        self.model = ident(g.class_name, "model class name")
        text(g.name, "spec name")
        hexdigest(g.spec_hash)
        self.view = v = _View(g)
        for n in v.node.values():
            node_path(n.name)
            if "shape" not in n.meta or "macs" not in n.meta:
                raise EmitError("emit needs an analysed IR (run the shape and cost passes)")
        self.inplace = {n.name: _inplace_ok(v, n) for n in v.node.values() if n.op is Op.RELU}
        self.blocks = [_analyse_block(v, b) for b in g.blocks]
        self.by_block = {bi.block.name: bi for bi in self.blocks}
        uses_pad = any(bi.mode == "pad" for bi in self.blocks)
        taken = {self.model, "torch", "nn"}
        self.functional = _fresh("F", taken) if uses_pad else ""
        taken.add(self.functional)
        self.zero_pad = _fresh(_ZERO_PAD, taken) if uses_pad else ""
        taken.add(self.zero_pad)
        self.classes = _make_classes(self.blocks, taken, self.inplace)
        taken |= {c.name for c in self.classes}
        self.helpers = _make_helpers(self.blocks, taken)
        self.class_of = {bi.block.name: c for c in self.classes for bi in c.members}
        self._top_level()
        for bi in self.blocks:
            if bi.mode == "pad":
                n = bi.short[0]
                _verify(_Mod("shortcut", Op.PAD_CHANNELS, (("stride", _P("stride")),
                                                           ("out_channels", _P("out_channels")))),
                        bi.params(), n)
                (src,) = v.inputs(n.name)
                if v[src].meta["shape"][0] != bi.block.in_channels:
                    raise EmitError(f"IR node {n.name!r}: input channels differ from the block's")
        return self.source()

    def _top_level(self) -> None:
        """The model's own modules (stem and head) and its forward, checked as one chain."""
        g = self.g
        self.top: dict[str, list[Node]] = {}  # attribute -> IR nodes (several: nn.Sequential)
        self.steps: list[tuple[str, str]] = []  # (group, statement) of the model's forward
        self.stages: dict[str, list[_BlockIR]] = {}
        self.order: list[tuple[str, str]] = []  # ("top" | "stage", attribute), in IR order
        prev = None
        for n in self.view.node.values():
            ins = self.view.inputs(n.name)
            if n.block is not None:
                bi = self.by_block.get(n.block)
                if bi is None:
                    raise EmitError(f"IR node {n.name!r}: unknown block {n.block!r}")
                if n.name == bi.block.nodes[0]:
                    stage = attr_name(bi.block.stage, "stage name")
                    blocks = self.stages.setdefault(stage, [])
                    if bi.block.name != f"{stage}.{len(blocks)}":
                        raise EmitError(f"block {bi.block.name!r} is not {stage}.{len(blocks)}")
                    if blocks and self.steps[-1][1] != f"x = self.{stage}(x)":
                        raise EmitError(f"stage {stage!r} is not contiguous")
                    blocks.append(bi)
                    if len(blocks) == 1:
                        self.steps.append(("stages", f"x = self.{stage}(x)"))
                        self.order.append(("stage", stage))
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
            group = "stem" if not self.stages else "head"
            if n.op is Op.FLATTEN:
                self.steps.append((group, "x = torch.flatten(x, 1)"))
                continue
            parts = node_path(n.name)
            top = attr_name(parts[0], "module name")
            if top in self.stages:
                raise EmitError(f"IR node {n.name!r} clashes with a stage")
            if len(parts) > 2 or (len(parts) == 2 and not parts[1].isdecimal()):
                raise EmitError(f"IR node {n.name!r}: unsupported module path")
            nodes = self.top.setdefault(top, [])
            want = top if len(parts) == 1 else f"{top}.{len(nodes)}"
            if n.name != want or (nodes and len(parts) == 1):
                raise EmitError(f"IR node {n.name!r}: expected {want!r}")
            if nodes and self.steps[-1][1] != f"x = self.{top}(x)":
                raise EmitError(f"IR node {n.name!r}: its nn.Sequential is not contiguous")
            if not nodes:
                self.steps.append((group, f"x = self.{top}(x)"))
                self.order.append(("top", top))
            nodes.append(n)
            if n.op not in (Op.CONV2D, Op.BATCHNORM, Op.RELU, Op.MAXPOOL, Op.AVGPOOL,
                            Op.GLOBAL_AVGPOOL, Op.DROPOUT, Op.LINEAR):
                raise EmitError(f"IR node {n.name!r}: {n.op} outside a block")
        if prev != g.output:
            raise EmitError("the model does not end at the IR's output")
        linears = [n for n in self.view.node.values() if n.op is Op.LINEAR]
        if len(linears) > 1:
            raise EmitError("more than one fully connected layer")
        self.fc = linears[0] if linears else None
        if self.fc is not None and (
            self.fc.name != g.output or self.fc.attrs["out_features"] != g.num_classes):
            raise EmitError("the classifier must be the last node, with num_classes outputs")
        if set(self.top) & set(self.stages):
            raise EmitError("a module name clashes with a stage name")
        for n in self.view.node.values():
            if n.block is None and n.op is Op.BATCHNORM and n.attrs["zero_init"]:
                raise EmitError(f"IR node {n.name!r}: zero_init outside a residual block")
            if n.op is Op.BATCHNORM and n.block is not None and n.attrs["zero_init"] and any(
                    s.name == n.name for s in self.by_block[n.block].short):
                raise EmitError(f"IR node {n.name!r}: zero_init in a shortcut")

    # -- source ----------------------------------------------------------------------------------
    def source(self) -> str:
        parts: list[list[str]] = [self.header(), self.imports()]
        if self.zero_pad:
            parts.append(_zero_pad_source(self.zero_pad, self.functional))
        parts += [_helper_source(h) for h in self.helpers.values()]
        parts += [self.block_class(c) for c in self.classes]
        parts.append(self.model_class())
        out: list[str] = []
        for i, p in enumerate(parts):
            if i:
                out += [""] if i == 1 else ["", ""]
            out += p
        return "\n".join(out) + "\n"

    def imports(self) -> list[str]:
        lines = ["import torch"]
        if self.functional:
            alias = "" if self.functional == "functional" else f" as {self.functional}"
            lines.append(f"import torch.nn.functional{alias}" if alias else
                         "from torch.nn import functional")
        lines.append("from torch import nn")
        return lines

    def header(self) -> list[str]:
        g, t = self.g, self.g.totals
        c, h, w = g.input_shape
        rows = [("stage", "blocks", "output", "params", "MACs")]
        sums = {"params": 0, "macs": 0}
        by_stage: dict[str, list[Node]] = {}
        for n in self.view.node.values():
            by_stage.setdefault(n.stage, []).append(n)
        for stage, nodes in by_stage.items():
            p = sum(n.meta["params"] for n in nodes)
            m = sum(n.meta["macs"] for n in nodes)
            sums["params"] += p
            sums["macs"] += m
            blocks = len(self.stages.get(stage, ())) or "-"
            shape = "x".join(map(str, nodes[-1].meta["shape"]))
            rows.append((text(stage, "stage"), str(blocks), shape, f"{p:,}", f"{m:,}"))
        if sums["params"] != t["params"] or sums["macs"] != t["macs"]:
            raise EmitError("per-stage costs do not add up to the IR totals")
        rows.append(("total", "", "", f"{t['params']:,}", f"{t['macs']:,}"))
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        table = "\n".join(
            "    " + "  ".join(
                cell.ljust(widths[i]) if i < 3 else cell.rjust(widths[i])
                for i, cell in enumerate(r)).rstrip()
            for r in rows)
        kinds = ", ".join(f"{len(cl.members)} x {cl.name}" for cl in self.classes)
        doc = (
            f"ResNet ``{g.name}``, emitted by rescompile from its graph IR. Do not edit.\n\n"
            f"\tSpec:        {g.name} (resolved-spec sha256 {g.spec_hash or '-'})\n"
            f"Input:       {c}x{h}x{w}, {g.num_classes} classes\n"
            f"Blocks:      {kinds or 'none'}\n"
            f"Parameters:  {t['params']:,} trainable; {t['buffers']:,} buffers (BatchNorm "
            f"running\n             mean and variance; num_batches_tracked not counted)\n"
            f"MACs:        {t['macs']:,} per image\n"
            f"FLOPs:       {2 * t['macs']:,} per image (= 2 x MACs)\n\n"
            "MACs are multiply-accumulates of the convolutions and the fully connected layer "
            "only (the ResNet paper's \"FLOPs\"); BatchNorm, ReLU, pooling and additions are "
            "not counted. torch.utils.flop_counter reports 2 x MACs.\n\n"
            f"\t{table}\n\n"
            "Module names follow torchvision's resnet.py, so state_dict keys are the IR's node "
            "names."
        )
        return docstring(doc, 0)

    # -- block classes ---------------------------------------------------------------------------
    def block_class(self, c: _BlockClass) -> list[str]:
        first = c.members[0]
        lines = [f"class {c.name}(nn.Module):", *docstring(self.block_doc(c), 1), ""]
        params = ["self", *(f"{p}: int" for p in c.channel_params)]
        if c.has_stride:
            params.append("stride: int = 1")
        if c.has_groups:
            params.append("groups: int = 1")
        others = [_MODE_ATTR[m] for m in c.modes if m != "identity"]
        required = len(c.modes) == 1 and bool(others)
        if required:
            params += ["*", f"{others[0]}: nn.Module"]
        else:
            params += [f"{a}: nn.Module | None = None" for a in others]
        lines += def_lines("__init__", params, "None")
        lines.append("        super().__init__()")
        for m in c.mods:
            lines += call_lines(_module_expr(m), 2, f"self.{m.name} = ")
        if any(n.op is Op.RELU for n in (*first.main, *first.post)):
            lines += call_lines(_module_expr(_Mod("relu", Op.RELU, ()), c.inplace), 2,
                                "self.relu = ")
        lines += [f"        self.{a} = {a}" for a in others]
        lines += ["", *self.block_forward(c)]
        return lines

    def block_doc(self, c: _BlockClass) -> str:
        first = c.members[0]
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
        summary = f"{c.kind.capitalize()} {summary}: {what} convolutions."
        steps = []
        for n in first.main:
            steps.append(f"{_kxk(n)} conv" if n.op is Op.CONV2D else
                         "BN" if n.op is Op.BATCHNORM else "ReLU")
        tail = ""
        if c.residual:
            tail = ", plus the shortcut" + (", then ReLU" if first.post else "")
        cite = " (He et al. 2016, Identity Mappings)" if c.preact else ""
        doc = f"{summary}\n\n{' -> '.join(steps)}{tail}{cite}."
        if c.stride_conv is not None:
            conv = next(n for n in first.main if first.local[n.name] == c.stride_conv)
            doc += f" The stride is on the {_kxk(conv)} convolution ``{c.stride_conv}``"
            if c.kind == "bottleneck":
                doc += (" (ResNet v1.5, as torchvision)." if conv.attrs["kernel"] > 1 else
                        " (the ResNet paper's v1).")
            else:
                doc += "."
        sc = []
        if "projection" in c.modes:
            sc.append("``downsample`` (a projection)")
        if "pad" in c.modes:
            sc.append("``shortcut`` (option A zero padding)")
        if sc:
            what = " or ".join(sc)
            doc += (f" The shortcut is the identity unless {what} is given." if "identity" in
                    c.modes else f" The shortcut is {what}.")
        return doc

    def block_forward(self, c: _BlockClass) -> list[str]:
        first = c.members[0]
        src = {m.mode: m.short_src for m in c.members}
        multi = len(c.modes) > 1
        body: list[str] = []

        def shortcut(mode: str, var: str) -> list[str]:
            a = _MODE_ATTR[mode]
            if multi:
                return [f"if self.{a} is not None:", f"    identity = self.{a}({var})"]
            return [f"identity = self.{a}({var})"]

        if "identity" in c.modes and multi:
            body += ["identity = x", ""]
        var, group = "x", None
        for n in first.main:
            local = first.local[n.name]
            if group is not None and _group_key(local) != group:
                body.append("")
            group = _group_key(local)
            mod = "relu" if n.op is Op.RELU else local
            body.append(f"out = self.{mod}({var})")
            var = "out"
            for mode in c.modes:
                if mode != "identity" and src[mode] == local:
                    body += shortcut(mode, "out")
        if c.residual:
            late = [m for m in c.modes if m != "identity" and src[m] is None]
            for mode in late:
                body += ["", *shortcut(mode, "x")]
            total = "x" if c.modes == ["identity"] else "identity"
            last = first.main[-1]
            body.append("")
            body.append(f"out += {total}" if len(self.view.succ[last.name]) == 1 else
                        f"out = out + {total}")
            body += ["out = self.relu(out)" for _ in first.post]
        body += ["", "return out"]
        return ["    def forward(self, x: torch.Tensor) -> torch.Tensor:",
                *(f"        {x}" if x else "" for x in body)]

    # -- the model -------------------------------------------------------------------------------
    def model_class(self) -> list[str]:
        g = self.g
        stage_names = list(self.stages)
        kind = "pre-activation ResNet" if g.preact else "ResNet"
        doc = (f"The ``{g.name}`` network, a {kind}.\n\n"
               f"Stem ``{text(g.stem, 'stem kind')}``, {len(stage_names)} "
               f"stage{'s' if len(stage_names) != 1 else ''} of blocks ("
               + ", ".join(f"{s}: {len(b)}" for s, b in self.stages.items())
               + "), global average pooling and a fully connected classifier.")
        params = ["self"]
        if self.fc is not None:
            params.append(f"num_classes: int = {num(g.num_classes)}")
        lines = [f"class {self.model}(nn.Module):", *docstring(doc, 1), ""]
        lines += def_lines("__init__", params, "None")
        lines.append("        super().__init__()")
        for what, top in self.order:
            if what == "stage":
                lines += self.stage_lines(top)
                continue
            nodes = self.top[top]
            exprs = []
            for n in nodes:
                mod = _literal_mod(top, n)
                expr = _module_expr(mod, self.inplace.get(n.name, True))
                if n.op is Op.LINEAR:
                    expr = Call(expr.func, (expr.args[0], "num_classes", *expr.args[2:]))
                exprs.append(expr)
            if len(nodes) == 1 and nodes[0].name == top:
                lines += call_lines(exprs[0], 2, f"self.{top} = ")
            else:
                lines += call_lines(Call("nn.Sequential", tuple(exprs)), 2, f"self.{top} = ",
                                    explode=True)
        lines += ["", *self.init_lines(), "", *self.forward_lines()]
        return lines

    def stage_lines(self, stage: str) -> list[str]:
        calls = [self.block_call(bi) for bi in self.stages[stage]]
        args: list[Call | Repeat] = []
        i = 0
        while i < len(calls):
            j = i
            while j < len(calls) and calls[j] == calls[i]:
                j += 1
            if j - i >= REPEAT_MIN:
                args.append(Repeat(calls[i], j - i))
            else:
                args += calls[i:j]
            i = j
        return call_lines(Call("nn.Sequential", tuple(args)), 2, f"self.{stage} = ", explode=True)

    def block_call(self, bi: _BlockIR) -> Call:
        c = self.class_of[bi.block.name]
        p = bi.params()
        args: list[str | Kw] = [num(p[k]) for k in c.channel_params]
        if bi.block.stride != 1:
            args.append(Kw("stride", num(bi.block.stride)))
        if bi.block.groups != 1:
            args.append(Kw("groups", num(bi.block.groups)))
        if bi.mode == "projection":
            h = self.helpers[_helper_structure(bi)]
            hp = _helper_params(bi)
            hargs: list[str | Kw] = [num(hp["in_channels"]), num(hp["out_channels"])]
            if hp["stride"] != 1:
                hargs.append(Kw("stride", num(hp["stride"])))
            args.append(Kw("downsample", Call(h.name, tuple(hargs))))
        elif bi.mode == "pad":
            args.append(Kw("shortcut", Call(self.zero_pad, (
                num(bi.block.in_channels), num(bi.block.out_channels),
                Kw("stride", num(bi.block.stride))))))
        call = Call(c.name, tuple(args))
        if fits(f"{INDENT * 3}{call.flat()},"):
            return call
        # One argument per line: name the channel arguments too.
        named = [Kw(k, a) for k, a in zip(c.channel_params, args, strict=False)]
        return Call(c.name, (*named, *args[len(named):]))

    def init_lines(self) -> list[str]:
        pad = INDENT * 2
        lines = [
            f"{pad}# He initialisation, as torchvision does it (nn.Linear keeps its default).",
            f"{pad}for m in self.modules():",
            f"{pad}    if isinstance(m, nn.Conv2d):",
            f'{pad}        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")',
            f"{pad}    elif isinstance(m, nn.BatchNorm2d):",
            f"{pad}        nn.init.constant_(m.weight, 1)",
            f"{pad}        nn.init.constant_(m.bias, 0)",
        ]
        zeroed = [c for c in self.classes if c.zero]
        if zeroed:
            lines += [
                "",
                f"{pad}# zero_init_residual: the last BN of each residual branch starts at zero,",
                f"{pad}# so every residual block starts as the identity (Goyal et al. 2017).",
                f"{pad}for m in self.modules():",
            ]
            for i, c in enumerate(zeroed):
                lines.append(f"{pad}    {'if' if i == 0 else 'elif'} isinstance(m, {c.name}):")
                lines += [f"{pad}        nn.init.constant_(m.{z}.weight, 0)" for z in c.zero]
        return lines

    def forward_lines(self) -> list[str]:
        lines = ["    def forward(self, x: torch.Tensor) -> torch.Tensor:"]
        group = None
        for grp, stmt in self.steps:
            if group is not None and grp != group:
                lines.append("")
            group = grp
            lines.append(f"        {stmt}")
        lines += ["", "        return x"]
        return lines

