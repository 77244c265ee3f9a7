"""IR -> flax.nnx source.

The emitted file is shaped like flax's ``examples/imagenet/models.py`` ResNet, written in
flax.nnx: a ``conv`` helper, a ``BatchNorm`` with PyTorch's semantics, one class per block kind the
model uses and the model class. Layout is NHWC. Attribute names follow the IR node names
(``conv1``, ``bn1``, ``layer1[0].conv1``, ``layer1[0].downsample[0]``, ``fc``), so an nnx state path
joined with dots is the IR node name and, with the PyTorch suffix, the torchvision state_dict key.

Everything is derived from IR nodes and block records; only code paths the model uses are
emitted; the output is deterministic and ``ruff format`` / ``ruff check`` clean (line length 100).
Nothing here imports jax or flax.
"""

from __future__ import annotations

import textwrap
from collections import Counter
from dataclasses import dataclass

from rescompile.errors import EmitError
from rescompile.ir.graph import Block, Graph, Node, Op

LINE = 100  # the project's ruff line length
_SHORTCUTS = ("identity", "pad", "projection", "none")  # a fixed order for emitted branches


# ---------------------------------------------------------------------------------------------
# formatting helpers: produce what `ruff format` would


@dataclass(frozen=True)
class _Expr:
    """A call ``head(args)`` whose arguments may be calls too, or with ``repeat`` > 0 the
    starred generator ``*(head(args) for _ in range(repeat))``: laid out as ruff format does."""

    head: str
    args: tuple[str | _Expr, ...]
    repeat: int = 0

    def __str__(self) -> str:
        call = f"{self.head}({', '.join(map(str, self.args))})"
        return f"*({call} for _ in range({self.repeat}))" if self.repeat else call


def _lines(indent: int, expr: str | _Expr, tail: str = "") -> list[str]:
    """``expr`` then ``tail`` at ``indent``: on one line if it fits; a generator with its element
    and its ``for`` on lines of their own; a call with its arguments on one indented line, or
    one per line (each laid out the same way)."""
    pad = " " * indent
    if len(pad) + len(str(expr)) + len(tail) <= LINE or isinstance(expr, str):
        return [f"{pad}{expr}{tail}"]
    if expr.repeat:
        call = _Expr(expr.head, expr.args)
        return [f"{pad}*(", *_lines(indent + 4, call), f"{pad}    for _ in range({expr.repeat})",
                f"{pad}){tail}"]
    inner = " " * (indent + 4)
    joined = inner + ", ".join(map(str, expr.args))
    if len(joined) <= LINE:
        return [f"{pad}{expr.head}(", joined, f"{pad}){tail}"]
    args = [line for a in expr.args for line in _lines(indent + 4, a, ",")]
    return [f"{pad}{expr.head}(", *args, f"{pad}){tail}"]


def _call(indent: int, head: str, args: list[str | _Expr], tail: str = "") -> list[str]:
    """``head(args)tail`` laid out by :func:`_lines`."""
    return _lines(indent, _Expr(head, tuple(args)), tail)


def _docstring(indent: int, text: str) -> list[str]:
    """A docstring: on one line if it fits, else wrapped with the closing quotes on their own."""
    pad = " " * indent
    if len(pad) + len(text) + 6 <= LINE:
        return [f'{pad}"""{text}"""']
    # narrower by the closing quotes' width: the text then takes two lines or more (ruff format
    # puts the closing quotes of a one-line text back on its line, over the line length)
    lines = textwrap.wrap(text, LINE - indent - 3, initial_indent='"""', break_on_hyphens=False)
    return [pad + lines[0], *(pad + line for line in lines[1:]), f'{pad}"""']


def _num(x: float) -> str:
    return repr(float(x))


def _fmt_int(n: int) -> str:
    return f"{n:,}"


# ---------------------------------------------------------------------------------------------
# analysis of the IR: what the emitted code needs


@dataclass
class _BlockClass:
    """One emitted block class: the IR blocks it instantiates and how they differ."""

    name: str
    kind: str  # basic | bottleneck
    preact: bool
    blocks: list[Block]
    width_param: bool  # basic blocks whose inner width differs from their output width
    shortcut_mode: str  # uniform | conditional | explicit
    shortcut: str  # the shortcut of uniform/conditional mode; the default of explicit mode
    kinds: list[str]  # shortcut kinds present, in _SHORTCUTS order
    groups: int | None  # a constant group count, or None when it varies (then a parameter)
    stride_on: str | None  # constant stride placement, or None when it varies (bottleneck)
    avg_down: bool | None  # constant projection kind (avgpool?), or None when it varies
    zero_init: bool  # last BN of the residual branch starts at gamma = 0

    @property
    def projection(self) -> bool:
        return "projection" in self.kinds

    def args(self, b: Block) -> list[str]:
        """Constructor arguments for block ``b``."""
        out = [str(b.in_channels)]
        if self.kind == "bottleneck" or self.width_param:
            out.append(str(b.width))
        out.append(str(b.out_channels))
        if b.stride != 1:
            out.append(str(b.stride))
        if self.groups is None and b.groups != 1:
            out.append(f"groups={b.groups}")
        if self.stride_on is None and b.stride_on != "3x3":
            out.append(f'stride_on="{b.stride_on}"')
        if self.shortcut_mode == "explicit" and b.shortcut != self.shortcut:
            out.append(f'shortcut="{b.shortcut}"')
        if self.avg_down is None and b.shortcut == "projection" and b.downsample == "avgpool":
            out.append("avg_down=True")
        out.append("rngs=rngs")
        return out


def _uniform(values, what: str):
    values = set(values)
    if len(values) != 1:
        raise EmitError(f"the flax backend expects one {what} per model, got {sorted(values)}")
    return values.pop()


def _changes_shape(b: Block) -> bool:
    return b.stride != 1 or b.in_channels != b.out_channels


class _Emitter:
    def __init__(self, g: Graph):
        self.g = g
        bns = g.nodes_of(Op.BATCHNORM)
        self.eps = _uniform((n.attrs["eps"] for n in bns), "BatchNorm eps")
        self.momentum = _uniform((n.attrs["momentum"] for n in bns), "BatchNorm momentum")
        convs = g.nodes_of(Op.CONV2D)
        if any(n.attrs["bias"] for n in convs):
            raise EmitError("convolutions with a bias are not in the IR's block vocabulary")
        self.grouped = any(n.attrs["groups"] != 1 for n in convs)
        self.zero_init = any(n.attrs["zero_init"] for n in bns)
        self.taken = {g.class_name}
        self.classes = self._block_classes()
        self.uses_pad = any("pad" in c.kinds for c in self.classes)
        # the pooled projection is emitted wherever a class may take it, also when every block
        # of the class keeps its stride at 1 (the IR then has no pool node: AvgPool(1) = identity)
        self.uses_avgpool = any(c.projection and c.avg_down is not False for c in self.classes)
        self.names = {
            k: self._unique(k) for k in ("BatchNorm", "Sequential", "AvgPool")
        }  # class names that a spec's class name could shadow

    def _unique(self, name: str) -> str:
        while name in self.taken:
            name += "_"
        self.taken.add(name)
        return name

    # -- block classes -----------------------------------------------------------------------
    def _block_classes(self) -> list[_BlockClass]:
        by_kind: dict[tuple[str, bool], list[Block]] = {}
        for b in self.g.blocks:
            by_kind.setdefault((b.kind, b.preact), []).append(b)
        classes = []
        for (kind, preact), blocks in by_kind.items():
            kinds = [k for k in _SHORTCUTS if any(b.shortcut == k for b in blocks)]
            plain = kinds == ["none"]
            base = {
                "basic": "Block" if preact or plain else "BasicBlock",
                "bottleneck": "Bottleneck",
            }[kind]
            prefix = "PreAct" if preact else "Plain" if plain else ""
            name = self._unique(prefix + base)
            if len(kinds) == 1:
                mode, shortcut = "uniform", kinds[0]
            else:
                # "identity where the shape is kept, K where it changes": say it with a condition
                mode = "explicit"
                for k in ("pad", "projection"):
                    if all(b.shortcut == (k if _changes_shape(b) else "identity") for b in blocks):
                        mode, shortcut = "conditional", k
                if mode == "explicit":
                    counts = Counter(b.shortcut for b in blocks)
                    shortcut = max(kinds, key=lambda k: counts[k])  # first most common
            groups = {b.groups for b in blocks}
            stride_on = {b.stride_on for b in blocks}
            avg = {b.downsample == "avgpool" for b in blocks if b.shortcut == "projection"}
            zero = {self._zero_init(b) for b in blocks if b.shortcut != "none"}
            if len(zero) > 1:
                raise EmitError(f"{name}: zero_init differs between blocks")
            classes.append(
                _BlockClass(
                    name=name,
                    kind=kind,
                    preact=preact,
                    blocks=blocks,
                    width_param=kind == "basic" and any(b.width != b.out_channels for b in blocks),
                    shortcut_mode=mode,
                    shortcut=shortcut,
                    kinds=kinds,
                    groups=groups.pop() if len(groups) == 1 else None,
                    stride_on=stride_on.pop() if len(stride_on) == 1 else None,
                    avg_down=avg.pop() if len(avg) == 1 else (None if avg else False),
                    zero_init=bool(zero) and zero.pop(),
                )
            )
        return classes

    def _zero_init(self, b: Block) -> bool:
        last = "bn2" if b.kind == "basic" else "bn3"
        node = self.g[f"{b.name}.{last}"]
        return bool(node.attrs["zero_init"])

    def class_of(self, b: Block) -> _BlockClass:
        for c in self.classes:
            if b in c.blocks:
                return c
        raise EmitError(f"no block class for {b.name}")  # pragma: no cover

    # -- the file ----------------------------------------------------------------------------
    def source(self) -> str:
        head = "\n\n".join("\n".join(p) for p in (self.header(), self.imports()))
        parts = [self.helpers(), *(self.block_class(c) for c in self.classes), self.model_class()]
        return head + "\n\n" + "\n\n\n".join("\n".join(p) for p in parts) + "\n"

    def header(self) -> list[str]:
        g, t = self.g, self.g.totals
        c, h, w = g.input_shape
        title = f"{g.class_name}: a flax.nnx model emitted by rescompile from the spec {g.name}."
        return [
            *textwrap.wrap(title, LINE, initial_indent='"""', break_on_hyphens=False),
            "",
            f"Spec hash {g.spec_hash}. IR totals for one {h}x{w}x{c} image (NHWC):",
            f"  parameters      {_fmt_int(t['params'])}",
            f"  BN buffers      {_fmt_int(t['buffers'])} (running means and variances)",
            f"  multiply-adds   {_fmt_int(t['macs'])} (conv and fc layers, the paper's FLOPs)",
            f"  FLOPs           {_fmt_int(t['flops'])} (2 x multiply-adds)",
            "",
            "Attribute paths are the IR node names (conv1, layer1.0.conv1, fc): with PyTorch's",
            "suffixes they are the state_dict keys of the PyTorch model emitted from the same "
            "spec,",
            "and rescompile.backends.flax converts weights between the two. model.train() and",
            "model.eval() switch BatchNorm between batch and running statistics.",
            "Generated code: rebuild it from the spec rather than editing it.",
            '"""',
        ]

    def imports(self) -> list[str]:
        return ["import jax", "import jax.numpy as jnp", "from flax import nnx"]

    def helpers(self) -> list[str]:
        bn, seq, avg = (self.names[k] for k in ("BatchNorm", "Sequential", "AvgPool"))
        out = [
            "# He et al. (2015) initialisation as torchvision does it: normal, std "
            "sqrt(2 / fan_out).",
            'he_normal = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")',
            "",
            "",
        ]
        sig = ["in_channels: int", "out_channels: int", "kernel_size: int", "stride: int = 1", "*"]
        if self.grouped:
            sig.append("groups: int = 1")
        sig.append("rngs: nnx.Rngs")
        out += _call(0, "def conv", sig, " -> nnx.Conv:")
        out.append(
            '    """A bias-free convolution padded like PyTorch\'s: kernel_size // 2 '
            'on each side."""'
        )
        args = [
            "in_channels",
            "out_channels",
            "(kernel_size, kernel_size)",
            "strides=stride",
            "padding=kernel_size // 2",
        ]
        if self.grouped:
            args.append("feature_group_count=groups")
        args += ["use_bias=False", "kernel_init=he_normal", "rngs=rngs"]
        out += _call(4, "return nnx.Conv", args)
        out += [
            "",
            "",
            "def linear(in_features: int, out_features: int, *, rngs: nnx.Rngs) -> nnx.Linear:",
            '    """A fully connected layer initialised like torch.nn.Linear: '
            'U(-1/sqrt(in), 1/sqrt(in))."""',
            "    bound = in_features**-0.5",
            "",
            "    def uniform(key, shape, dtype):",
            "        return jax.random.uniform(key, shape, dtype, -bound, bound)",
            "",
            "    return nnx.Linear(in_features, out_features, kernel_init=uniform, "
            "bias_init=uniform, rngs=rngs)",
        ]
        if self.uses_pad:
            out += [
                "",
                "",
                "def pad_channels(x: jax.Array, stride: int, channels: int) -> jax.Array:",
                '    """Option A shortcut: subsample by `stride`, then append zero channels up to '
                '`channels`."""',
                "    x = x[:, ::stride, ::stride, :]",
                "    return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, channels - x.shape[-1])))",
            ]
        out += ["", ""]
        out += [f"class {bn}(nnx.BatchNorm):"]
        out += [
            f'    """nnx.BatchNorm with PyTorch\'s semantics (its momentum {self.momentum:g} is '
            f"flax's {round(1 - self.momentum, 12):g}).",
            "",
            "    In training mode it normalises with the batch statistics and folds them into the",
            "    running averages as PyTorch does: the variance with Bessel's correction, "
            "n / (n - 1).",
            "    Its variables are assigned with set_value, which keeps tracing time linear in "
            "depth.",
            '    """',
            "",
        ]
        sig = ["self", "num_features: int", "*"]
        if self.zero_init:
            sig.append("zero_init: bool = False")
        sig.append("rngs: nnx.Rngs")
        out += _call(4, "def __init__", sig, ":")
        args = [
            "num_features",
            f"momentum={_num(round(1 - self.momentum, 12))}",
            f"epsilon={_num(self.eps)}",
        ]
        if self.zero_init:
            args.append("scale_init=nnx.initializers.zeros if zero_init else nnx.initializers.ones")
        args.append("rngs=rngs")
        out += _call(8, "super().__init__", args)
        out += [
            "",
            "    def __call__(self, x: jax.Array) -> jax.Array:",
            "        if self.use_running_average:",
            "            return super().__call__(x)",
            "        xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))  # float32 at least",
            "        mean = xf.mean(axis=(0, 1, 2))",
            "        var = xf.var(axis=(0, 1, 2))",
            "        n = x.size // x.shape[-1]  # values per channel",
            "        if n < 2:  # as torch.nn.BatchNorm2d: one value gives no batch variance",
            "            raise ValueError(",
            '                f"Expected more than 1 value per channel when training, '
            'got input shape {x.shape}"',
            "            )",
            "        m = self.momentum",
            "        self.mean.set_value(m * self.mean[...] + (1 - m) * mean)",
            "        self.var.set_value(m * self.var[...] + (1 - m) * var * (n / (n - 1)))",
            "        scale = self.scale[...] * jax.lax.rsqrt(var + self.epsilon)",
            "        return ((xf - mean) * scale + self.bias[...]).astype(self.dtype or x.dtype)",
            "",
            "",
            f"class {seq}(nnx.List):",
            '    """Layers applied in order, indexed like torch.nn.Sequential '
            '(path layer1.0.conv1)."""',
            "",
            "    def __init__(self, *layers):",
            "        super().__init__(layers)",
            "",
            "    def __call__(self, x: jax.Array) -> jax.Array:",
            "        for layer in self:",
            "            x = layer(x)",
            "        return x",
        ]
        if self.uses_avgpool:
            out += [
                "",
                "",
                f"class {avg}(nnx.Module):",
                '    """torch.nn.AvgPool2d(stride, stride, ceil_mode=True, '
                "count_include_pad=False).",
                "",
                "    A partial window at the bottom or right edge averages only the values it "
                "covers;",
                "    AvgPool(1) is the identity (a stride-1 projection shortcut).",
                '    """',
                "",
                "    def __init__(self, stride: int):",
                "        self.stride = stride",
                "",
                "    def __call__(self, x: jax.Array) -> jax.Array:",
                "        s = self.stride",
                "        padding = ((0, -x.shape[1] % s), (0, -x.shape[2] % s))",
                "        return nnx.avg_pool(x, (s, s), strides=(s, s), padding=padding, "
                "count_include_pad=False)",
            ]
        return out

    # -- a block class -----------------------------------------------------------------------
    def block_class(self, c: _BlockClass) -> list[str]:
        bn, seq, avg = (self.names[k] for k in ("BatchNorm", "Sequential", "AvgPool"))
        wide = c.kind == "bottleneck" or c.width_param
        width = "width" if wide else "out_channels"
        sig = ["self", "in_channels: int"]
        if wide:
            sig.append("width: int")
        sig += ["out_channels: int", "stride: int = 1", "*"]
        if c.groups is None:
            sig.append("groups: int = 1")
        if c.stride_on is None:
            sig.append('stride_on: str = "3x3"')
        if c.shortcut_mode == "explicit":
            sig.append(f'shortcut: str = "{c.shortcut}"')
        if c.avg_down is None:
            sig.append("avg_down: bool = False")
        sig.append("rngs: nnx.Rngs")

        lines = [f"class {c.name}(nnx.Module):", *_docstring(4, self.block_doc(c)), ""]
        lines += _call(4, "def __init__", sig, ":")
        groups = "groups" if c.groups is None else (str(c.groups) if c.groups != 1 else None)
        g_arg = [f"groups={groups}"] if groups else []
        # main branch: (conv name, in, out, kernel, stride expression, extra args)
        if c.kind == "basic":
            convs = [
                ("conv1", "in_channels", width, 3, "stride", []),
                ("conv2", width, "out_channels", 3, None, []),
            ]
        else:
            if c.stride_on is None:
                lines.append('        s1, s3 = (stride, 1) if stride_on == "1x1" else (1, stride)')
                s1, s3 = "s1", "s3"
            else:
                s1, s3 = ("stride", None) if c.stride_on == "1x1" else (None, "stride")
            convs = [
                ("conv1", "in_channels", "width", 1, s1, []),
                ("conv2", "width", "width", 3, s3, g_arg),
                ("conv3", "width", "out_channels", 1, None, []),
            ]
        last = len(convs)
        for k, (name, cin, cout, ks, stride, extra) in enumerate(convs, start=1):
            conv_args = [cin, cout, str(ks)] + ([stride] if stride else []) + extra + ["rngs=rngs"]
            if c.preact:
                lines += _call(8, f"self.bn{k} = {bn}", [cin, "rngs=rngs"])
                lines += _call(8, f"self.{name} = conv", conv_args)
            else:
                lines += _call(8, f"self.{name} = conv", conv_args)
                bn_args = [cout] + (["zero_init=True"] if c.zero_init and k == last else [])
                lines += _call(8, f"self.bn{k} = {bn}", bn_args + ["rngs=rngs"])
        # shortcut
        if c.projection:
            plain = ["conv(in_channels, out_channels, 1, stride, rngs=rngs)"]
            pooled = [f"{avg}(stride)", "conv(in_channels, out_channels, 1, rngs=rngs)"]
            if not c.preact:
                plain.append(f"{bn}(out_channels, rngs=rngs)")
                pooled.append(f"{bn}(out_channels, rngs=rngs)")

            def proj(indent: int) -> list[str]:
                pad = " " * indent
                if c.avg_down is None:
                    return (
                        [f"{pad}if avg_down:"]
                        + _call(indent + 4, f"self.downsample = {seq}", pooled)
                        + [f"{pad}else:"]
                        + _call(indent + 4, f"self.downsample = {seq}", plain)
                    )
                return _call(indent, f"self.downsample = {seq}", pooled if c.avg_down else plain)

            if c.shortcut_mode == "uniform":
                lines += proj(8)
            elif c.shortcut_mode == "conditional":
                lines += ["        if stride != 1 or in_channels != out_channels:", *proj(12)]
                lines += ["        else:", "            self.downsample = None"]
            else:
                lines += ['        if shortcut == "projection":', *proj(12)]
        if "pad" in c.kinds:
            lines.append("        self.stride = stride")
        if c.shortcut_mode == "explicit":
            lines.append("        self.shortcut = shortcut")
        lines += ["", "    def __call__(self, x: jax.Array) -> jax.Array:"]
        lines += [f"        {s}" for s in self.block_call(c, last)]
        return lines

    def block_doc(self, c: _BlockClass) -> str:
        convs = "3x3 -> 3x3" if c.kind == "basic" else "1x1 -> 3x3 -> 1x1"
        if c.kind == "bottleneck" and c.stride_on is not None:
            convs += f" (stride on the {c.stride_on})"
        unit = "pre-activation (BN-ReLU-conv)" if c.preact else "conv-BN-ReLU"
        what = {
            "identity": "identity",
            "pad": "zero-padded identity (option A)",
            "projection": "1x1 projection",
            "none": "no shortcut",
        }
        if c.shortcut_mode == "uniform":
            sc = (
                "no shortcut (a plain block)"
                if c.shortcut == "none"
                else (f"{what[c.shortcut]} shortcut")
            )
        elif c.shortcut_mode == "conditional":
            sc = f"identity shortcut, {what[c.shortcut]} where the shape changes"
        else:
            sc = "shortcut: " + " | ".join(c.kinds)
        return f"A {c.kind} {unit} block, {convs}, {sc}."

    def block_call(self, c: _BlockClass, last: int) -> list[str]:
        body: list[str] = []
        src = "preact" if c.preact else "x"  # what a projection shortcut reads
        if c.preact:
            if c.projection:
                body += ["preact = nnx.relu(self.bn1(x))", "out = self.conv1(preact)"]
            else:
                body += ["out = self.conv1(nnx.relu(self.bn1(x)))"]
            for k in range(2, last + 1):
                body.append(f"out = self.conv{k}(nnx.relu(self.bn{k}(out)))")
        else:
            body.append("out = nnx.relu(self.bn1(self.conv1(x)))")
            for k in range(2, last):
                body.append(f"out = nnx.relu(self.bn{k}(self.conv{k}(out)))")
            body.append(f"out = self.bn{last}(self.conv{last}(out))")
        pad = "pad_channels(x, self.stride, out.shape[-1])"
        if c.shortcut_mode == "uniform":
            final = {
                "identity": "out + x",
                "pad": f"out + {pad}",
                "projection": f"out + self.downsample({src})",
                "none": "out",
            }[c.shortcut]
        elif c.shortcut_mode == "conditional":
            if c.shortcut == "projection":
                body.append(f"shortcut = x if self.downsample is None else self.downsample({src})")
                final = "out + shortcut"
            else:
                body += ["if x.shape != out.shape:", f"    x = {pad}"]
                final = "out + x"
        else:
            branches = [k for k in c.kinds if k != "none"]
            if "none" in c.kinds:
                body.append('# shortcut "none": a plain block, nothing is added')
            expr = {"identity": "x", "pad": pad, "projection": f"self.downsample({src})"}
            for i, k in enumerate(branches):
                if i == len(branches) - 1 and "none" not in c.kinds and i > 0:
                    body.append("else:")
                else:
                    body.append(f'{"if" if i == 0 else "elif"} self.shortcut == "{k}":')
                body.append(f"    out = out + {expr[k]}")
            final = "out"
        body.append(f"return {final}" if c.preact else f"return nnx.relu({final})")
        return body

    # -- the model ---------------------------------------------------------------------------
    def model_class(self) -> list[str]:
        g = self.g
        bn, seq = self.names["BatchNorm"], self.names["Sequential"]
        c, h, w = g.input_shape
        init: list[str] = []
        call: list[str] = []
        # stem
        if g.stem == "deep":
            layers = []
            for name in (
                "conv1.0",
                "conv1.1",
                "conv1.2",
                "conv1.3",
                "conv1.4",
                "conv1.5",
                "conv1.6",
            ):
                layers.append(self.layer_expr(g[name]))
            init += _call(8, f"self.conv1 = {seq}", layers)
        else:
            init += _call(8, "self.conv1 = conv", self.conv_args(g["conv1"]))
        x = "self.conv1(x)"
        if "bn1" in g.g:
            init += _call(8, f"self.bn1 = {bn}", [str(g["bn1"].attrs["channels"]), "rngs=rngs"])
            x = f"nnx.relu(self.bn1({x}))"
        call.append(f"        x = {x}")
        if "maxpool" in g.g:
            a = g["maxpool"].attrs
            k, s, p = a["kernel"], a["stride"], a["padding"]
            call.append(
                f"        x = nnx.max_pool(x, ({k}, {k}), strides=({s}, {s}), "
                f"padding=(({p}, {p}), ({p}, {p})))"
            )
        # stages
        stages: dict[str, list[Block]] = {}
        for b in g.blocks:
            stages.setdefault(b.stage, []).append(b)
        for stage, blocks in stages.items():
            first, rest = blocks[0], blocks[1:]
            cls = self.class_of(first)
            args: list[str | _Expr] = [_Expr(cls.name, tuple(cls.args(first)))]
            if rest:
                rcls = self.class_of(rest[0])
                rargs = [rcls.args(b) for b in rest]
                if any(a != rargs[0] for a in rargs) or any(
                    self.class_of(b) is not rcls for b in rest
                ):
                    raise EmitError(f"{stage}: blocks after the first differ")
                one = _Expr(rcls.name, tuple(rargs[0]))
                if one == args[0]:  # the first block keeps the shape too: all alike
                    args = [_Expr(one.head, one.args, len(blocks))]
                else:
                    args.append(one if len(rest) == 1 else _Expr(one.head, one.args, len(rest)))
            init += _call(8, f"self.{stage} = {seq}", args)
            call.append(f"        x = self.{stage}(x)")
        # head
        if "norm" in g.g:
            init += _call(8, f"self.norm = {bn}", [str(g["norm"].attrs["channels"]), "rngs=rngs"])
            call.append("        x = nnx.relu(self.norm(x))")
        call.append("        x = x.mean(axis=(1, 2))  # global average pool")
        if "dropout" in g.g:
            init += _call(
                8, "self.dropout = nnx.Dropout", [_num(g["dropout"].attrs["p"]), "rngs=rngs"]
            )
            call.append("        x = self.dropout(x)")
        fc = g["fc"].attrs
        if not fc["bias"]:
            raise EmitError("the classifier is expected to have a bias")
        init += _call(
            8, "self.fc = linear", [str(fc["in_features"]), str(fc["out_features"]), "rngs=rngs"]
        )
        call.append("        return self.fc(x)")

        out_shape = g[g.output].meta["shape"]
        lines = [
            f"class {g.class_name}(nnx.Module):",
            *_docstring(4, f"{g.name}: ({h}, {w}, {c}) NHWC images -> {out_shape[0]} logits."),
            "",
            "    def __init__(self, *, rngs: nnx.Rngs):",
            *init,
            "",
            "    def __call__(self, x: jax.Array) -> jax.Array:",
            *call,
        ]
        return lines

    def conv_args(self, n: Node) -> list[str]:
        a = n.attrs
        if a["padding"] != a["kernel"] // 2:
            raise EmitError(f"{n.name}: padding {a['padding']} is not kernel // 2")
        args = [str(a["in_channels"]), str(a["out_channels"]), str(a["kernel"])]
        if a["stride"] != 1:
            args.append(str(a["stride"]))
        if a["groups"] != 1:
            args.append(f"groups={a['groups']}")
        return args + ["rngs=rngs"]

    def layer_expr(self, n: Node) -> str:
        if n.op is Op.CONV2D:
            return f"conv({', '.join(self.conv_args(n))})"
        if n.op is Op.BATCHNORM:
            return f"{self.names['BatchNorm']}({n.attrs['channels']}, rngs=rngs)"
        if n.op is Op.RELU:
            return "nnx.relu"
        raise EmitError(f"{n.name}: {n.op} in a layer sequence")


def emit(graph: Graph) -> str:
    """The flax.nnx source of ``graph``: one self-contained, formatted Python file."""
    if not graph.totals:
        raise EmitError("emit needs an analysed graph (run the shape and cost passes first)")
    return _Emitter(graph).source()
