"""The emission plan -> flax.nnx source: one self-contained file importing only jax and flax.

The plan (:mod:`rescompile.emission.plan`) decides the block classes, their parameters, the stages
and every name, so this file defines the same classes with the same constructor parameters as
the PyTorch file (plus flax's ``rngs``). This module spells them in flax.nnx, NHWC, with the
few pieces flax lacks written out: a ``BatchNorm`` with PyTorch's semantics, a ``Sequential``
indexed like PyTorch's, an ``AvgPool`` in ceil mode. It never imports jax or flax.
"""

from __future__ import annotations

from rescompile.emission.layout import (
    INDENT,
    Call,
    Kw,
    Repeat,
    call_lines,
    def_lines,
    docstring,
    fits,
    join_parts,
    statements,
)
from rescompile.emission.names import num
from rescompile.emission.plan import (
    ATTENTION_DEFAULTS,
    ATTENTION_HELPERS,
    HELPER_DOCS,
    BlockCall,
    BlockClass,
    ConvHelper,
    Layer,
    Param,
    Plan,
    Projection,
    Stage,
    Step,
    attention_args,
    header,
    make_plan,
    model_doc,
)
from rescompile.errors import EmitError
from rescompile.ir.graph import Graph, Op

NOTES = (
    "Layout is NHWC. Attribute paths are the IR node names (conv1, layer1.0.conv1, fc): with "
    "PyTorch's suffixes they are the state_dict keys of the PyTorch model emitted from the same "
    "spec, and rescompile.backends.flax converts weights between the two. model.train() and "
    "model.eval() switch BatchNorm between batch and running statistics."
)
_STATELESS = {Op.RELU, Op.MAXPOOL, Op.GLOBAL_AVGPOOL}  # written inline, no attribute
RNGS = Kw("rngs", "rngs")


def emit(graph: Graph) -> str:
    """The flax.nnx source of ``graph``: one self-contained, formatted Python file."""
    if not graph.totals:
        raise EmitError("emit needs an analysed graph (run the shape and cost passes first)")
    return _Renderer(make_plan(graph)).source()


def _v(x: object) -> str:
    return x.name if isinstance(x, Param) else num(x)


def _lit(x: object) -> str:
    return "None" if x is None else _v(x)


class _Renderer:
    def __init__(self, plan: Plan):
        self.p = plan
        self.n = plan.names
        if len(plan.eps) > 1 or len(plan.momentum) > 1:
            raise EmitError("the flax backend expects one BatchNorm eps and momentum per model")
        self.zero_init = any(c.zero for c in plan.classes)
        self.pooled = any(h.pool not in ("none", "same") for h in plan.projections)
        self.same_pool = any(h.pool == "same" for h in plan.projections)
        # a max pool inside a Sequential (the blur stem's) needs a module; alone it is inline
        self.max_pool = any(
            m.op is Op.MAXPOOL
            for t in plan.body
            if not isinstance(t, Stage) and t.sequential
            for m in t.layers
        )

    def source(self) -> str:
        p = self.p
        parts = [docstring(header(p, "flax", NOTES), 0), [*self.imports(), "", *self.he_normal()]]
        parts += [self.conv_helper(c) for c in p.convs]
        parts += [self.attention(k) for k in p.attention]
        if p.num_classes:
            parts.append(self.linear())
        if p.eps:
            parts.append(self.batchnorm())
        parts.append(self.sequential())
        if self.pooled:
            parts.append(self.avgpool())
        if self.same_pool:
            parts.append(self.same_avg_pool())
        if Op.BLUR in p.ops:
            parts.append(self.blur_pool())
        if Op.DROP_PATH in p.ops:
            parts.append(self.drop_path())
        if self.max_pool:
            parts.append(self.max_pool_helper())
        if Op.AA_AVGPOOL in p.ops:
            parts.append(self.floor_avg_pool())
        if p.zero_pad:
            parts.append(self.zero_pad())
        parts += [self.projection(h) for h in p.projections]
        parts += [self.block_class(c) for c in p.classes]
        parts.append(self.model_class())
        return join_parts(parts)

    def imports(self) -> list[str]:
        first = ["import math", ""] if "eca" in self.p.attention else []
        return [*first, "import jax", "import jax.numpy as jnp", "from flax import nnx"]

    # -- modules -------------------------------------------------------------------------------
    def layer(self, m: Layer, zero: bool = False) -> Call | str:
        a = dict(m.args)
        if m.op is Op.CONV2D:
            c = self.p.conv(a["kernel"])
            stride = [] if a["stride"] == 1 else [_v(a["stride"])]
            groups = [] if a["groups"] == 1 else [Kw("groups", _v(a["groups"]))]
            dilation = [Kw("dilation", _v(a["dilation"]))] if "dilation" in a else []
            args = (_v(a["in_channels"]), _v(a["out_channels"]), *stride, *groups, *dilation, RNGS)
            return Call(c.name, args)
        if m.op is Op.BATCHNORM:
            init = [Kw("zero_init", "True")] if zero else []
            return Call(self.n["BatchNorm"], (_v(a["channels"]), *init, RNGS))
        if m.op is Op.GROUPNORM:
            args = (_v(a["channels"]), Kw("num_groups", _v(a["groups"])))
            return Call("nnx.GroupNorm", (*args, Kw("epsilon", num(a["eps"])), RNGS))
        if m.op is Op.RELU:
            return "nnx.relu"
        if m.op is Op.AVGPOOL:
            return Call(self.n["AvgPool"], (_v(a["stride"]),))
        if m.op is Op.DROPOUT:
            return Call("nnx.Dropout", (_v(a["p"]), RNGS))
        if m.op is Op.LINEAR:
            return Call(self.n["linear"], (_v(a["in_features"]), "num_classes", RNGS))
        if m.op is Op.DROP_PATH:
            return Call(self.n["DropPath"], (_v(a["p"]), RNGS))
        if m.op is Op.BLUR:
            stride = [Kw("stride", _v(a["stride"]))] if a["stride"] != 2 else []
            return Call(self.n["BlurPool"], (_v(a["channels"]), *stride))
        if m.op is Op.AA_AVGPOOL:
            return Call(self.n["FloorAvgPool"], (_v(a["kernel"]), _v(a["stride"])))
        if m.op is Op.MAXPOOL:
            args = (num(a["kernel"]), num(a["stride"]), num(a["padding"]))
            return Call(self.n["MaxPool"], args)
        if m.op is Op.SCALE:
            helper = self.n[ATTENTION_HELPERS[a["kind"]]]
            kws = [Kw(k, _lit(v)) for k, v in attention_args(m)]
            return Call(helper, (_v(a["channels"]), *kws, RNGS))
        raise EmitError(f"no flax module for {m.op}")  # pragma: no cover

    def conv_call(
        self, k: int, cin: str, cout: str, stride: str, groups: str, dilation: str = "1"
    ) -> Call:
        args: list[str | Kw] = [cin, cout, f"({k}, {k})"]
        args += [Kw("strides", stride)] if stride != "1" else []
        pad = k // 2
        if dilation == "1":
            args.append(Kw("padding", str(pad)))
        else:
            args.append(Kw("padding", dilation if pad == 1 else f"{pad} * {dilation}"))
            args.append(Kw("kernel_dilation", dilation))
        args += [Kw("feature_group_count", groups)] if groups != "1" else []
        args += [Kw("use_bias", "False"), Kw("kernel_init", self.n["he_normal"]), RNGS]
        return Call("nnx.Conv", tuple(args))

    def inline(self, op: Op | None, module: str, src: str) -> str:
        """A module call, or the expression of an op flax has no module for."""
        if op is Op.RELU:
            return f"nnx.relu({src})"
        if op is Op.GLOBAL_AVGPOOL:
            return f"{src}.mean(axis=(1, 2))"
        if op is Op.MAXPOOL:
            m = next(t for t in self.p.body if t.name == module).layers[0]
            k, s, p = m["kernel"], m["stride"], m["padding"]
            return (
                f"nnx.max_pool({src}, ({k}, {k}), strides=({s}, {s}), "
                f"padding=(({p}, {p}), ({p}, {p})))"
            )
        return f"self.{module}({src})"

    def step(self, s: Step) -> list[str]:
        if s.kind == "layer" and s.guard:
            line = f"{s.out} = {self.inline(s.op, s.module, s.src)}"
            return [f"if self.{s.module} is not None:", f"    {line}"]
        if s.kind == "layer":
            return [f"{s.out} = {self.inline(s.op, s.module, s.src)}"]
        if s.kind == "flatten":  # the global average pool already gave (batch, channels)
            return []
        if s.kind == "copy":
            return [f"{s.out} = {s.src}"]
        if s.kind == "shortcut":
            line = f"{s.out} = self.{s.module}({s.src})"
            return [f"if self.{s.module} is not None:", f"    {line}"] if s.guard else [line]
        if s.kind == "add":
            return [f"{s.out} = {s.out} + {s.src}"]
        if s.kind == "return":
            return [f"return {s.src}"]
        return [""]

    def forward(self, steps: list[Step]) -> list[str]:
        """Statements; a conv, BatchNorm and ReLU feeding each other are one nested call (where
        it fits), and a block's groups of them are not set apart by blank lines."""
        body: list[str] = []
        chain: Step | None = None  # the group's layers so far: one step with a nested source
        for i, s in enumerate(steps):
            unit = s.kind == "layer" and s.op in (Op.CONV2D, Op.BATCHNORM, Op.RELU)
            if chain and unit and s.src == s.out == chain.out:
                src = self.inline(chain.op, chain.module, chain.src)
                nested = Step("layer", s.out, src, s.module, s.op)
                if fits(f"{INDENT * 2}{self.step(nested)[0]}"):
                    chain = nested
                    continue
            body += self.step(chain) if chain else []
            chain = s if unit else None
            if s.kind == "blank" and 0 < i < len(steps) - 1:
                around = (steps[i - 1], steps[i + 1])
                if all(t.kind == "layer" and t.out == "out" for t in around):
                    continue  # one line per conv group in a block
            if chain is None:
                body += self.step(s)
        body += self.step(chain) if chain else []
        return ["    def __call__(self, x: jax.Array) -> jax.Array:", *statements(body, 2)]

    # -- helpers -------------------------------------------------------------------------------
    def he_normal(self) -> list[str]:
        return [
            "# He et al. (2015) initialisation as torchvision does it: normal, std "
            "sqrt(2 / fan_out).",
            f'{self.n["he_normal"]} = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")',
        ]

    def conv_helper(self, c: ConvHelper) -> list[str]:
        k, pad = c.kernel, c.kernel // 2
        params = ["in_channels: int", "out_channels: int"]
        params += ["stride: int = 1"] * c.stride + ["*"] + ["groups: int = 1"] * c.groups
        params += ["dilation: int = 1"] * c.dilation
        lines = def_lines(c.name, [*params, "rngs: nnx.Rngs"], "nnx.Conv", level=0)
        padding = ("dilation" if pad == 1 else f"{pad} * dilation") if c.dilation else pad
        lines += docstring(
            f"{k}x{k} convolution"
            + (f", padding {padding}" if pad else "")
            + ", no bias (BatchNorm follows).",
            1,
        )
        call = self.conv_call(
            k,
            "in_channels",
            "out_channels",
            "stride" if c.stride else "1",
            "groups" if c.groups else "1",
            "dilation" if c.dilation else "1",
        )
        return lines + call_lines(call, 1, "return ")

    def attention(self, kind: str) -> list[str]:
        name = self.n[ATTENTION_HELPERS[kind]]
        d = ATTENTION_DEFAULTS[kind]
        he = self.n["he_normal"]
        if kind == "se":
            conv = "nnx.Conv({}, {}, (1, 1), kernel_init=" + he + ", rngs=rngs)"
            return [
                f"class {name}(nnx.Module):",
                *docstring(HELPER_DOCS["se"], 1),
                "",
                *def_lines(
                    "__init__",
                    [
                        "self",
                        "channels: int",
                        f"rd_ratio: float = {num(d['rd_ratio'])}",
                        f"rd_divisor: int = {num(d['rd_divisor'])}",
                        "*",
                        "rngs: nnx.Rngs",
                    ],
                    "None",
                ),
                "        rd = int(channels * rd_ratio + rd_divisor / 2) // rd_divisor * rd_divisor",
                "        rd_channels = max(rd_divisor, rd)",
                f"        self.fc1 = {conv.format('channels', 'rd_channels')}",
                f"        self.fc2 = {conv.format('rd_channels', 'channels')}",
                "",
                "    def __call__(self, x: jax.Array) -> jax.Array:",
                "        s = x.mean(axis=(1, 2), keepdims=True)",
                "        s = self.fc2(nnx.relu(self.fc1(s)))",
                "        return x * jax.nn.sigmoid(s)",
            ]
        return [
            f"class {name}(nnx.Module):",
            *docstring(HELPER_DOCS["eca"], 1),
            "",
            *def_lines(
                "__init__",
                ["self", "channels: int", "kernel_size: int | None = None", "*", "rngs: nnx.Rngs"],
                "None",
            ),
            "        if kernel_size is None:",
            "            t = int(abs(math.log(channels, 2) + 1) / 2)",
            "            kernel_size = max(t if t % 2 else t + 1, 3)",
            "        padding = (kernel_size - 1) // 2",
            *call_lines(
                Call(
                    "nnx.Conv",
                    (
                        "1",
                        "1",
                        "(kernel_size,)",
                        Kw("padding", "padding"),
                        Kw("use_bias", "False"),
                        RNGS,
                    ),
                ),
                2,
                "self.conv = ",
            ),
            "",
            "    def __call__(self, x: jax.Array) -> jax.Array:",
            "        y = x.mean(axis=(1, 2))[:, :, None]  # the channels as a 1-d signal",
            "        y = jax.nn.sigmoid(self.conv(y))",
            "        return x * y.reshape(x.shape[0], 1, 1, -1)",
        ]

    def linear(self) -> list[str]:
        return [
            f"def {self.n['linear']}(in_features: int, out_features: int, *, rngs: nnx.Rngs) "
            "-> nnx.Linear:",
            '    """A fully connected layer initialised like torch.nn.Linear: '
            'U(-1/sqrt(in), 1/sqrt(in))."""',
            "    bound = in_features**-0.5",
            "",
            "    def uniform(key, shape, dtype):",
            "        return jax.random.uniform(key, shape, dtype, -bound, bound)",
            "",
            *call_lines(
                Call(
                    "nnx.Linear",
                    (
                        "in_features",
                        "out_features",
                        Kw("kernel_init", "uniform"),
                        Kw("bias_init", "uniform"),
                        RNGS,
                    ),
                ),
                1,
                "return ",
            ),
        ]

    def batchnorm(self) -> list[str]:
        (eps,), (momentum,) = self.p.eps, self.p.momentum
        sig = ["self", "num_features: int", "*"]
        sig += ["zero_init: bool = False"] * self.zero_init + ["rngs: nnx.Rngs"]
        args = [
            "num_features",
            Kw("momentum", num(round(1 - momentum, 12))),
            Kw("epsilon", num(eps)),
        ]
        if self.zero_init:
            args.append(
                Kw("scale_init", "nnx.initializers.zeros if zero_init else nnx.initializers.ones")
            )
        return [
            f"class {self.n['BatchNorm']}(nnx.BatchNorm):",
            *docstring(
                f"nnx.BatchNorm with PyTorch's semantics (its momentum {momentum:g} is flax's "
                f"{round(1 - momentum, 12):g}).\n\nIn training mode it normalises with the batch "
                "statistics and folds them into the running averages as PyTorch does: the "
                "variance with Bessel's correction n/(n-1). Its variables are assigned "
                "with set_value, which keeps tracing time linear in depth.",
                1,
            ),
            "",
            *def_lines("__init__", sig, "None"),
            *call_lines(Call("super().__init__", (*args, RNGS)), 2),
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
        ]

    def sequential(self) -> list[str]:
        return [
            f"class {self.n['Sequential']}(nnx.List):",
            '    """Layers applied in order, indexed like torch.nn.Sequential '
            '(path layer1.0.conv1)."""',
            "",
            "    def __init__(self, *layers) -> None:",
            "        super().__init__(layers)",
            "",
            "    def __call__(self, x: jax.Array) -> jax.Array:",
            "        for layer in self:",
            "            x = layer(x)",
            "        return x",
        ]

    def avgpool(self) -> list[str]:
        return [
            f"class {self.n['AvgPool']}(nnx.Module):",
            *docstring(
                "torch.nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False).\n\n"
                "A partial window at the bottom or right edge averages only the values it "
                "covers; AvgPool(1) is the identity (a stride-1 projection shortcut).",
                1,
            ),
            "",
            "    def __init__(self, stride: int) -> None:",
            "        self.stride = stride",
            "",
            "    def __call__(self, x: jax.Array) -> jax.Array:",
            "        s = self.stride",
            "        padding = ((0, -x.shape[1] % s), (0, -x.shape[2] % s))",
            *call_lines(
                Call(
                    "nnx.avg_pool",
                    (
                        "x",
                        "(s, s)",
                        Kw("strides", "(s, s)"),
                        Kw("padding", "padding"),
                        Kw("count_include_pad", "False"),
                    ),
                ),
                2,
                "return ",
            ),
        ]

    def drop_path(self) -> list[str]:
        return [
            f"class {self.n['DropPath']}(nnx.Module):",
            *docstring(
                "Stochastic depth per sample (timm's DropPath): in training, a sample's residual "
                "branch is zeroed with probability ``p`` and the others scaled by 1 / (1 - p); "
                "the identity after model.eval(). A dropout whose mask is shared by a sample's "
                "positions and channels.",
                1,
            ),
            "",
            *def_lines("__init__", ["self", "p: float", "*", "rngs: nnx.Rngs"], "None"),
            "        self.dropout = nnx.Dropout(p, broadcast_dims=(1, 2, 3), rngs=rngs)",
            "",
            "    def __call__(self, x: jax.Array) -> jax.Array:",
            "        return self.dropout(x)",
        ]

    def blur_pool(self) -> list[str]:
        return [
            f"class {self.n['BlurPool']}(nnx.Module):",
            *docstring(
                "Blur pool (Zhang 2019), as timm's BlurPool2d: reflect padding, then a depthwise "
                "3x3 binomial filter ([1, 2, 1] x [1, 2, 1] / 16) at ``stride``; no parameters.",
                1,
            ),
            "",
            *def_lines("__init__", ["self", "channels: int", "stride: int = 2"], "None"),
            "        self.channels = channels",
            "        self.stride = stride",
            "        self.padding = (stride + 1) // 2",
            "",
            "    def __call__(self, x: jax.Array) -> jax.Array:",
            "        p, s = self.padding, self.stride",
            '        x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode="reflect")',
            "        k = jnp.array([1.0, 2.0, 1.0], x.dtype) / 4",
            "        filt = jnp.tile((k[:, None] * k[None, :])[:, :, None, None], self.channels)",
            *call_lines(
                Call(
                    "jax.lax.conv_general_dilated",
                    (
                        "x",
                        "filt",
                        "(s, s)",
                        '"VALID"',
                        Kw("dimension_numbers", '("NHWC", "HWIO", "NHWC")'),
                        Kw("feature_group_count", "self.channels"),
                    ),
                ),
                2,
                "return ",
            ),
        ]

    def max_pool_helper(self) -> list[str]:
        return [
            f"class {self.n['MaxPool']}(nnx.Module):",
            '    """torch.nn.MaxPool2d(kernel, stride, padding) as a module of a Sequential."""',
            "",
            *def_lines("__init__", ["self", "kernel: int", "stride: int", "padding: int"], "None"),
            "        self.kernel, self.stride, self.padding = kernel, stride, padding",
            "",
            "    def __call__(self, x: jax.Array) -> jax.Array:",
            "        k, s, p = self.kernel, self.stride, self.padding",
            "        return nnx.max_pool(x, (k, k), strides=(s, s), padding=((p, p), (p, p)))",
        ]

    def same_avg_pool(self) -> list[str]:
        return [
            f"class {self.n['SameAvgPool']}(nnx.Module):",
            *docstring(HELPER_DOCS["same_avgpool"], 1),
            "",
            "    def __call__(self, x: jax.Array) -> jax.Array:",
            "        x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))",
            "        return nnx.avg_pool(x, (2, 2), strides=(1, 1))",
        ]

    def floor_avg_pool(self) -> list[str]:
        return [
            f"class {self.n['FloorAvgPool']}(nnx.Module):",
            '    """torch.nn.AvgPool2d(kernel, stride): no padding, floor mode (anti-aliasing)."""',
            "",
            *def_lines("__init__", ["self", "kernel: int", "stride: int"], "None"),
            "        self.kernel, self.stride = kernel, stride",
            "",
            "    def __call__(self, x: jax.Array) -> jax.Array:",
            "        k, s = self.kernel, self.stride",
            "        return nnx.avg_pool(x, (k, k), strides=(s, s))",
        ]

    def zero_pad(self) -> list[str]:
        return [
            f"class {self.n['ZeroPadShortcut']}(nnx.Module):",
            *docstring(HELPER_DOCS["option_a"], 1),
            "",
            *def_lines(
                "__init__",
                ["self", "in_channels: int", "out_channels: int", "stride: int = 1"],
                "None",
            ),
            "        self.stride = stride",
            "        self.pad = ((0, 0), (0, 0), (0, 0), (0, out_channels - in_channels))",
            "",
            "    def __call__(self, x: jax.Array) -> jax.Array:",
            "        s = self.stride",
            "        return jnp.pad(x[:, ::s, ::s, :], self.pad)",
        ]

    def projection(self, h: Projection) -> list[str]:
        params = ["in_channels: int", "out_channels: int"] + ["stride: int = 1"] * h.stride
        params += ["dilation: int = 1"] * h.dilation
        lines = def_lines(h.name, [*params, "*", "rngs: nnx.Rngs"], self.n["Sequential"], 0)
        lines += docstring(h.doc, 1)
        items: list[str | Call] = []
        if h.pool == "same":
            items.append(Call(self.n["SameAvgPool"], ()))
        elif h.pool != "none":  # AvgPool(1) is the identity
            items.append(Call(self.n["AvgPool"], ("stride" if h.stride else "1",)))
        items += [self.layer(m) for m in h.layers]
        seq = Call(self.n["Sequential"], tuple(items))
        return lines + call_lines(seq, 1, "return ", explode=True)

    # -- block classes -------------------------------------------------------------------------
    def block_class(self, c: BlockClass) -> list[str]:
        lines = [f"class {c.name}(nnx.Module):", *docstring(c.doc, 1), ""]
        params = ["self", *(f"{p}: int" for p in c.channels)]
        params += ["stride: int = 1"] * c.stride + ["groups: int = 1"] * c.groups
        params += ["dilation: int = 1"] * c.dilation
        params += ["first_dilation: int = 1"] * c.first_dilation
        params += ["eca_kernel_size: int | None = None"] * c.eca_kernel
        params += ["drop_path_rate: float = 0.0"] * c.drop_path
        if c.required:
            params += ["*", f"{c.shortcuts[0]}: nnx.Module"]
        else:
            params += [f"{a}: nnx.Module | None = None" for a in c.shortcuts] + ["*"]
        lines += def_lines("__init__", [*params, "rngs: nnx.Rngs"], "None")
        for m in c.layers:
            tail = f" if {c.aa_condition} else None" if m.name in c.optional else ""
            tail = " if drop_path_rate > 0 else None" if m.op is Op.DROP_PATH else tail
            lines += call_lines(self.layer(m, m.name in c.zero), 2, f"self.{m.name} = ", tail)
        lines += [f"        self.{a} = {a}" for a in c.shortcuts]
        return [*lines, "", *self.forward(c.forward)]

    # -- the model -----------------------------------------------------------------------------
    def model_class(self) -> list[str]:
        p = self.p
        params = ["self"] + [f"num_classes: int = {num(p.graph.num_classes)}"] * p.num_classes
        lines = [f"class {p.model}(nnx.Module):", *docstring(model_doc(p), 1), ""]
        lines += def_lines("__init__", [*params, "*", "rngs: nnx.Rngs"], "None")
        seq = self.n["Sequential"]
        for mod in p.body:
            if isinstance(mod, Stage):
                runs = tuple(
                    Repeat(self.block_call(c), n) if n > 1 else self.block_call(c)
                    for c, n in mod.runs
                )
                lines += call_lines(Call(seq, runs), 2, f"self.{mod.name} = ", explode=True)
            elif mod.sequential:
                layers = tuple(self.layer(m) for m in mod.layers)
                lines += call_lines(Call(seq, layers), 2, f"self.{mod.name} = ", explode=True)
            elif mod.layers[0].op not in _STATELESS:
                lines += call_lines(self.layer(mod.layers[0]), 2, f"self.{mod.name} = ")
        return [*lines, "", *self.forward(p.forward)]

    def block_call(self, b: BlockCall) -> Call:
        args: list[str | Kw | Call] = [num(c) for c in b.channels]
        if b.stride != 1:
            args.append(num(b.stride))
        if b.groups != 1:
            args.append(Kw("groups", num(b.groups)))
        if b.dilation != 1:
            args.append(Kw("dilation", num(b.dilation)))
        if b.first_dilation != 1:
            args.append(Kw("first_dilation", num(b.first_dilation)))
        if b.eca_kernel_size is not None:
            args.append(Kw("eca_kernel_size", num(b.eca_kernel_size)))
        if b.drop_path_rate > 0:
            args.append(Kw("drop_path_rate", num(b.drop_path_rate)))
        if b.shortcut:
            param, helper, (cin, cout, stride), dilation = b.shortcut
            hargs = [num(cin), num(cout)] + [num(stride)] * (stride != 1)
            hargs += [Kw("dilation", num(dilation))] * (dilation != 1)
            if helper != self.n["ZeroPadShortcut"]:
                hargs.append(RNGS)
            args.append(Kw(param, Call(helper, tuple(hargs))))
        return Call(b.cls, (*args, RNGS))
