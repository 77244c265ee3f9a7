"""The emission plan -> PyTorch source: one self-contained file importing only torch.

Everything structural (block classes, their parameters, stages, names, verification) is decided
by :mod:`rescompile.emission.plan`; this module only spells plan elements as ``torch.nn`` code, in
the shape of torchvision's resnet.py. It never imports torch.
"""

from __future__ import annotations

from rescompile.emission.layout import (
    Call,
    Kw,
    Repeat,
    call_lines,
    def_lines,
    docstring,
    join_parts,
    statements,
)
from rescompile.emission.names import num
from rescompile.emission.plan import (
    ATTENTION_DEFAULTS,
    ATTENTION_HELPERS,
    BN_EPS,
    BN_MOMENTUM,
    HELPER_DOCS,
    BlockCall,
    BlockClass,
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
    "torch.utils.flop_counter reports 2 x MACs. Module names follow torchvision's resnet.py, "
    "so state_dict keys are the IR's node names."
)


def emit(graph: Graph) -> str:
    """The complete source of a standalone PyTorch module file for ``graph``."""
    return _Renderer(make_plan(graph)).source()


def _v(x: object) -> str:
    return x.name if isinstance(x, Param) else num(x)


def _check_blur(m: Layer) -> None:
    """The BlurPool helpers are timm's 3x3 binomial filter with timm's padding."""
    a = dict(m.args)
    # a stride parameter: 1 or 2 (anti-aliasing where a block strides or starts dilating)
    stride = 2 if isinstance(a["stride"], Param) else a["stride"]
    if a["kernel"] != 3 or a["padding"] != (stride + 1) // 2:
        raise EmitError(f"a blur pool of kernel {a['kernel']}, padding {a['padding']}")


def _lit(x: object) -> str:
    return "None" if x is None else _v(x)


class _Renderer:
    def __init__(self, plan: Plan):
        self.p = plan
        self.F = plan.names["F"]
        self.same_pool = any(h.pool == "same" for h in plan.projections)

    def source(self) -> str:
        p = self.p
        parts = [docstring(header(p, "torch", NOTES), 0), self.imports()]
        parts += [self.conv_helper(c) for c in p.convs]
        parts += [self.attention(k) for k in p.attention]
        if Op.BLUR in p.ops:
            parts.append(self.blur_pool())
        if Op.DROP_PATH in p.ops:
            parts.append(self.drop_path())
        if p.zero_pad:
            parts.append(self.zero_pad())
        if self.same_pool:
            parts.append(self.same_avg_pool())
        parts += [self.projection(h) for h in p.projections]
        parts += [self.block_class(c) for c in p.classes]
        parts.append(self.model_class())
        return join_parts(parts)

    def imports(self) -> list[str]:
        lines = ["import math", ""] if "eca" in self.p.attention else []
        lines.append("import torch")
        if self.p.zero_pad or Op.BLUR in self.p.ops or self.same_pool:
            lines.append(
                "from torch.nn import functional"
                if self.F == "functional"
                else f"import torch.nn.functional as {self.F}"
            )
        return [*lines, "from torch import nn"]

    # -- modules -------------------------------------------------------------------------------
    def layer(self, m: Layer, inplace: bool = True) -> Call:
        a = dict(m.args)

        def kw(key: str, name: str, default: object) -> list[Kw]:
            x = a[key]
            return [] if type(x) is type(default) and x == default else [Kw(name, _v(x))]

        if m.op is Op.CONV2D:
            c = self.p.conv(a["kernel"])
            stride = [] if a["stride"] == 1 else [_v(a["stride"])]
            dilation = [Kw("dilation", _v(a["dilation"]))] if "dilation" in a else []
            return Call(
                c.name,
                (
                    _v(a["in_channels"]),
                    _v(a["out_channels"]),
                    *stride,
                    *kw("groups", "groups", 1),
                    *dilation,
                ),
            )
        if m.op is Op.BATCHNORM:
            return Call(
                "nn.BatchNorm2d",
                (
                    _v(a["channels"]),
                    *kw("eps", "eps", BN_EPS),
                    *kw("momentum", "momentum", BN_MOMENTUM),
                ),
            )
        if m.op is Op.GROUPNORM:
            eps = kw("eps", "eps", BN_EPS)
            return Call("nn.GroupNorm", (_v(a["groups"]), _v(a["channels"]), *eps))
        if m.op is Op.RELU:
            return Call("nn.ReLU", (Kw("inplace", "True"),) if a.get("inplace", inplace) else ())
        if m.op is Op.MAXPOOL:
            return Call(
                "nn.MaxPool2d",
                (
                    Kw("kernel_size", _v(a["kernel"])),
                    Kw("stride", _v(a["stride"])),
                    *kw("padding", "padding", 0),
                ),
            )
        if m.op is Op.AVGPOOL:
            return Call(
                "nn.AvgPool2d",
                (
                    Kw("kernel_size", _v(a["kernel"])),
                    Kw("stride", _v(a["stride"])),
                    Kw("ceil_mode", "True"),
                    Kw("count_include_pad", "False"),
                ),
            )
        if m.op is Op.GLOBAL_AVGPOOL:
            return Call("nn.AdaptiveAvgPool2d", ("(1, 1)",))
        if m.op is Op.DROPOUT:
            return Call("nn.Dropout", (Kw("p", _v(a["p"])),))
        if m.op is Op.LINEAR:
            return Call("nn.Linear", (_v(a["in_features"]), "num_classes"))
        if m.op is Op.DROP_PATH:
            return Call(self.p.names["DropPath"], (_v(a["p"]),))
        if m.op is Op.BLUR:
            _check_blur(m)
            stride = [Kw("stride", _v(a["stride"]))] if a["stride"] != 2 else []
            return Call(self.p.names["BlurPool"], (_v(a["channels"]), *stride))
        if m.op is Op.AA_AVGPOOL:
            return Call(
                "nn.AvgPool2d",
                (Kw("kernel_size", _v(a["kernel"])), Kw("stride", _v(a["stride"]))),
            )
        if m.op is Op.SCALE:
            helper = self.p.names[ATTENTION_HELPERS[a["kind"]]]
            kws = [Kw(k, _lit(v)) for k, v in attention_args(m)]
            return Call(helper, (_v(a["channels"]), *kws))
        raise EmitError(f"no PyTorch module for {m.op}")  # pragma: no cover

    def step(self, s: Step) -> list[str]:
        if s.kind == "layer" and s.guard:
            return [f"if self.{s.module} is not None:", f"    {s.out} = self.{s.module}({s.src})"]
        if s.kind == "layer":
            return [f"{s.out} = self.{s.module}({s.src})"]
        if s.kind == "flatten":
            return [f"{s.out} = torch.flatten({s.src}, 1)"]
        if s.kind == "copy":
            return [f"{s.out} = {s.src}"]
        if s.kind == "shortcut":
            line = f"{s.out} = self.{s.module}({s.src})"
            return [f"if self.{s.module} is not None:", f"    {line}"] if s.guard else [line]
        if s.kind == "add":
            return [f"{s.out} += {s.src}" if s.inplace else f"{s.out} = {s.out} + {s.src}"]
        if s.kind == "return":
            return [f"return {s.src}"]
        return [""]

    def forward(self, steps: list[Step]) -> list[str]:
        body = [line for s in steps for line in self.step(s)]
        return ["    def forward(self, x: torch.Tensor) -> torch.Tensor:", *statements(body, 2)]

    # -- helpers -------------------------------------------------------------------------------
    def conv_helper(self, c) -> list[str]:
        k, pad = c.kernel, c.kernel // 2
        params = ["in_channels: int", "out_channels: int"]
        params += ["stride: int = 1"] * c.stride + ["groups: int = 1"] * c.groups
        params += ["dilation: int = 1"] * c.dilation
        lines = def_lines(c.name, params, "nn.Conv2d", level=0)
        padding = "dilation" if pad == 1 else f"{pad} * dilation"
        lines += docstring(
            f"{k}x{k} convolution"
            + (f", padding {padding if c.dilation else pad}" if pad else "")
            + ", no bias (BatchNorm follows).",
            1,
        )
        args = ["in_channels", "out_channels", Kw("kernel_size", str(k))]
        args += [Kw("stride", "stride")] * c.stride
        args += [Kw("padding", padding if c.dilation else str(pad))] * (pad > 0)
        args += [Kw("groups", "groups")] * c.groups + [Kw("dilation", "dilation")] * c.dilation
        args += [Kw("bias", "False")]
        return lines + call_lines(Call("nn.Conv2d", tuple(args)), 1, "return ")

    def attention(self, kind: str) -> list[str]:
        name = self.p.names[ATTENTION_HELPERS[kind]]
        d = ATTENTION_DEFAULTS[kind]
        if kind == "se":
            return [
                f"class {name}(nn.Module):",
                *docstring(HELPER_DOCS["se"], 1),
                "",
                *def_lines(
                    "__init__",
                    [
                        "self",
                        "channels: int",
                        f"rd_ratio: float = {num(d['rd_ratio'])}",
                        f"rd_divisor: int = {num(d['rd_divisor'])}",
                    ],
                    "None",
                ),
                "        super().__init__()",
                "        rd = int(channels * rd_ratio + rd_divisor / 2) // rd_divisor * rd_divisor",
                "        rd_channels = max(rd_divisor, rd)",
                "        self.fc1 = nn.Conv2d(channels, rd_channels, kernel_size=1)",
                "        self.act = nn.ReLU(inplace=True)",
                "        self.fc2 = nn.Conv2d(rd_channels, channels, kernel_size=1)",
                "",
                "    def forward(self, x: torch.Tensor) -> torch.Tensor:",
                "        s = x.mean((2, 3), keepdim=True)",
                "        s = self.fc2(self.act(self.fc1(s)))",
                "        return x * s.sigmoid()",
            ]
        return [
            f"class {name}(nn.Module):",
            *docstring(HELPER_DOCS["eca"], 1),
            "",
            *def_lines(
                "__init__",
                ["self", "channels: int", "kernel_size: int | None = None"],
                "None",
            ),
            "        super().__init__()",
            "        if kernel_size is None:",
            "            t = int(abs(math.log(channels, 2) + 1) / 2)",
            "            kernel_size = max(t if t % 2 else t + 1, 3)",
            "        padding = (kernel_size - 1) // 2",
            "        self.conv = nn.Conv1d(1, 1, kernel_size, padding=padding, bias=False)",
            "",
            "    def forward(self, x: torch.Tensor) -> torch.Tensor:",
            "        y = x.mean((2, 3)).view(x.shape[0], 1, -1)",
            "        y = self.conv(y).sigmoid()",
            "        return x * y.view(x.shape[0], -1, 1, 1)",
        ]

    def same_avg_pool(self) -> list[str]:
        return [
            f"class {self.p.names['SameAvgPool']}(nn.Module):",
            *docstring(HELPER_DOCS["same_avgpool"], 1),
            "",
            "    def forward(self, x: torch.Tensor) -> torch.Tensor:",
            f"        x = {self.F}.pad(x, (0, 1, 0, 1))",
            f"        return {self.F}.avg_pool2d(x, 2, 1, ceil_mode=True, count_include_pad=False)",
        ]

    def drop_path(self) -> list[str]:
        return [
            f"class {self.p.names['DropPath']}(nn.Module):",
            *docstring(
                "Stochastic depth per sample (timm's DropPath): in training, a sample's residual "
                "branch is zeroed with probability ``p`` and the others scaled by 1 / (1 - p); "
                "the identity in eval mode.",
                1,
            ),
            "",
            *def_lines("__init__", ["self", "p: float"], "None"),
            "        super().__init__()",
            "        self.p = p",
            "",
            "    def forward(self, x: torch.Tensor) -> torch.Tensor:",
            "        if not self.training or self.p == 0.0:",
            "            return x",
            "        keep = 1 - self.p",
            "        mask = x.new_empty((x.shape[0], 1, 1, 1)).bernoulli_(keep)",
            "        return x * mask.div_(keep)",
        ]

    def blur_pool(self) -> list[str]:
        return [
            f"class {self.p.names['BlurPool']}(nn.Module):",
            *docstring(
                "Blur pool (Zhang 2019), as timm's BlurPool2d: reflect padding, then a depthwise "
                "3x3 binomial filter ([1, 2, 1] x [1, 2, 1] / 16) at ``stride``. The filter is a "
                "non-persistent buffer: it is not in the state_dict.",
                1,
            ),
            "",
            *def_lines("__init__", ["self", "channels: int", "stride: int = 2"], "None"),
            "        super().__init__()",
            "        self.channels = channels",
            "        self.stride = stride",
            "        self.padding = [(stride + 1) // 2] * 4",
            "        coeffs = torch.tensor([1.0, 2.0, 1.0]) / 4",
            "        filt = (coeffs[:, None] * coeffs[None, :])[None, None]",
            "        filt = filt.repeat(channels, 1, 1, 1)",
            '        self.register_buffer("filt", filt, persistent=False)',
            "",
            "    def forward(self, x: torch.Tensor) -> torch.Tensor:",
            f'        x = {self.F}.pad(x, self.padding, mode="reflect")',
            f"        return {self.F}.conv2d("
            "x, self.filt, stride=self.stride, groups=self.channels)",
        ]

    def zero_pad(self) -> list[str]:
        return [
            f"class {self.p.names['ZeroPadShortcut']}(nn.Module):",
            *docstring(HELPER_DOCS["option_a"], 1),
            "",
            *def_lines(
                "__init__",
                ["self", "in_channels: int", "out_channels: int", "stride: int = 1"],
                "None",
            ),
            "        super().__init__()",
            "        self.stride = stride",
            "        self.pad = (0, 0, 0, 0, 0, out_channels - in_channels)",
            "",
            "    def forward(self, x: torch.Tensor) -> torch.Tensor:",
            "        s = self.stride",
            f"        return {self.F}.pad(x[:, :, ::s, ::s], self.pad)",
        ]

    def projection(self, h: Projection) -> list[str]:
        params = ["in_channels: int", "out_channels: int"] + ["stride: int = 1"] * h.stride
        params += ["dilation: int = 1"] * h.dilation
        lines = def_lines(h.name, params, "nn.Sequential", level=0) + docstring(h.doc, 1)
        items: list[str | Call] = []
        pool = self.layer(
            Layer("0", Op.AVGPOOL, (("kernel", Param("stride")), ("stride", Param("stride"))))
        )
        if h.pool == "strided":
            lines += [
                "    if stride > 1:",
                *call_lines(pool, 2, "pool = "),
                "    else:",
                "        pool = nn.Identity()",
            ]
            items.append("pool")
        elif h.pool == "always":
            items.append(pool)
        elif h.pool == "never":
            items.append(Call("nn.Identity"))
        elif h.pool == "same":
            items.append(Call(self.p.names["SameAvgPool"]))
        items += [self.layer(m) for m in h.layers]
        return lines + call_lines(Call("nn.Sequential", tuple(items)), 1, "return ", explode=True)

    # -- block classes -------------------------------------------------------------------------
    def block_class(self, c: BlockClass) -> list[str]:
        lines = [f"class {c.name}(nn.Module):", *docstring(c.doc, 1), ""]
        params = ["self", *(f"{p}: int" for p in c.channels)]
        params += ["stride: int = 1"] * c.stride + ["groups: int = 1"] * c.groups
        params += ["dilation: int = 1"] * c.dilation
        params += ["first_dilation: int = 1"] * c.first_dilation
        params += ["eca_kernel_size: int | None = None"] * c.eca_kernel
        params += ["drop_path_rate: float = 0.0"] * c.drop_path
        if c.required:
            params += ["*", f"{c.shortcuts[0]}: nn.Module"]
        else:
            params += [f"{a}: nn.Module | None = None" for a in c.shortcuts]
        lines += def_lines("__init__", params, "None")
        lines.append("        super().__init__()")
        for m in c.layers:
            tail = f" if {c.aa_condition} else None" if m.name in c.optional else ""
            tail = " if drop_path_rate > 0 else None" if m.op is Op.DROP_PATH else tail
            lines += call_lines(self.layer(m), 2, f"self.{m.name} = ", tail)
        if c.relu:
            lines += call_lines(self.layer(Layer("relu", Op.RELU), c.inplace), 2, "self.relu = ")
        lines += [f"        self.{a} = {a}" for a in c.shortcuts]
        return [*lines, "", *self.forward(c.forward)]

    # -- the model -----------------------------------------------------------------------------
    def model_class(self) -> list[str]:
        p = self.p
        params = ["self"] + [f"num_classes: int = {num(p.graph.num_classes)}"] * p.num_classes
        lines = [f"class {p.model}(nn.Module):", *docstring(model_doc(p), 1), ""]
        lines += def_lines("__init__", params, "None")
        lines.append("        super().__init__()")
        for mod in p.body:
            if isinstance(mod, Stage):
                lines += call_lines(
                    Call(
                        "nn.Sequential",
                        tuple(
                            Repeat(self.block_call(c), n) if n > 1 else self.block_call(c)
                            for c, n in mod.runs
                        ),
                    ),
                    2,
                    f"self.{mod.name} = ",
                    explode=True,
                )
            elif mod.sequential:
                lines += call_lines(
                    Call("nn.Sequential", tuple(self.layer(m) for m in mod.layers)),
                    2,
                    f"self.{mod.name} = ",
                    explode=True,
                )
            else:
                lines += call_lines(self.layer(mod.layers[0]), 2, f"self.{mod.name} = ")
        return [*lines, "", *self.init_lines(), "", *self.forward(p.forward)]

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
            args.append(Kw(param, Call(helper, tuple(hargs))))
        return Call(b.cls, tuple(args))

    def init_lines(self) -> list[str]:
        lines = [
            "# He initialisation, as torchvision does it (nn.Linear keeps its default).",
            "for m in self.modules():",
            "    if isinstance(m, nn.Conv2d):",
            '        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")',
            "    elif isinstance(m, nn.BatchNorm2d):",
            "        nn.init.constant_(m.weight, 1)",
            "        nn.init.constant_(m.bias, 0)",
        ]
        zeroed = [c for c in self.p.classes if c.zero]
        if zeroed:
            lines += [
                "",
                "# zero_init_residual: the last BN of each residual branch starts at zero,",
                "# so every residual block starts as the identity (Goyal et al. 2017).",
                "for m in self.modules():",
            ]
            for i, c in enumerate(zeroed):
                lines.append(f"    {'if' if i == 0 else 'elif'} isinstance(m, {c.name}):")
                lines += [f"        nn.init.constant_(m.{z}.weight, 0)" for z in c.zero]
        return statements(lines, 2)
