"""Lowering: a validated :class:`Spec` -> the graph IR.

The only place that knows what a block kind, a shortcut option or a stem means. Semantic errors
that pydantic cannot see (a width that groups do not divide, option A shrinking a width, ...) are
raised here at the YAML position of the offending value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from rescompile.errors import Diagnostic, SourcePos, SpecError
from rescompile.ir.graph import Block, Graph, Node, Op
from rescompile.spec.load import Resolved
from rescompile.spec.models import AttentionSpec, BlockSpec, DownsampleSpec, Spec, StageSpec


@dataclass(frozen=True)
class _StageCfg:
    """A stage with the model-level defaults applied."""

    index: int
    spec: StageSpec
    block: BlockSpec
    shortcut: str
    downsample: DownsampleSpec
    stride_on: str
    attention: AttentionSpec
    anti_alias: str
    stride: int = 1  # the stage's stride after output_stride (1 where it became a dilation)
    dilation: int = 1  # of the stage's 3x3 convs (timm's dilation)
    first_dilation: int = 1  # of the first block's first 3x3 conv: the previous stage's


def make_divisible(v: float, divisor: int) -> int:
    """timm's ``make_divisible(v, divisor, round_limit=0.)``: the nearest multiple of
    ``divisor`` (halves round up), at least ``divisor``."""
    return max(divisor, int(v + divisor / 2) // divisor * divisor)


def eca_kernel(channels: int) -> int:
    """timm's EcaModule kernel for ``channels`` (gamma 2, beta 1): odd, at least 3."""
    t = int(abs(math.log(channels, 2) + 1) / 2)
    return max(t if t % 2 else t + 1, 3)


def _padding(kernel: int, stride: int, dilation: int = 1) -> int:
    """timm's ``get_padding``: ``((stride - 1) + dilation * (kernel - 1)) // 2``."""
    return (stride - 1 + dilation * (kernel - 1)) // 2


class _Lowerer:
    def __init__(self, r: Resolved):
        self.r = r
        s: Spec = r.spec
        self.s = s
        self.g = Graph(
            name=s.name,
            class_name=s.class_name,
            input_shape=(s.input.channels, *s.input.hw),
            num_classes=s.num_classes,
            spec_hash=r.hash,
            stem=s.stem.kind,
            stem_pool=s.stem.pool_,
            preact=s.preact,
            zero_init_residual=s.init.zero_init_residual,
        )
        self.errors: list[Diagnostic] = []
        self.n_blocks = sum(st.depth for st in s.stages)
        self.block_index = 0
        self.bad_norm_widths: set[int] = set()
        self._check_model()

    # -- helpers ---------------------------------------------------------------------------
    def pos(self, *path: str | int) -> SourcePos | None:
        return self.r.pos(*path)

    def error(self, message: str, *path: str | int) -> None:
        self.errors.append(Diagnostic(self.pos(*path), message, ".".join(map(str, path))))

    def node(self, name, op, attrs, inputs, *, src, stage, block=None) -> str:
        return self.g.add(Node(name, op, attrs, src, stage, block), *inputs)

    def conv(
        self, name, x, cin, cout, k, stride=1, groups=1, *, src, stage, block=None, **extra
    ) -> str:
        dilation = extra.pop("dilation", 1)
        attrs = dict(
            in_channels=cin,
            out_channels=cout,
            kernel=k,
            stride=stride,
            padding=extra.pop("padding", dilation * (k // 2)),
            groups=groups,
            bias=extra.pop("bias", False),
        )
        if dilation != 1:  # only where it is not 1, so undilated nets keep their IR as it was
            attrs["dilation"] = dilation
        return self.node(name, Op.CONV2D, attrs, [x], src=src, stage=stage, block=block)

    def bn(self, name, x, c, *, src, stage, block=None, zero_init=False) -> str:
        """The spec's norm layer (BatchNorm or GroupNorm) over ``c`` channels."""
        norm = self.s.norm
        if norm.kind == "group":
            groups = norm.groups_
            if c % groups and c not in self.bad_norm_widths:
                self.bad_norm_widths.add(c)
                self.error(
                    f"GroupNorm's {groups} groups do not divide {c} channels (IR node {name!r})",
                    "norm",
                    "groups",
                )
            attrs = dict(channels=c, groups=groups, eps=norm.eps, zero_init=zero_init)
            return self.node(name, Op.GROUPNORM, attrs, [x], src=src, stage=stage, block=block)
        attrs = dict(channels=c, eps=norm.eps, momentum=norm.momentum, zero_init=zero_init)
        return self.node(name, Op.BATCHNORM, attrs, [x], src=src, stage=stage, block=block)

    def anti_alias(self, name, x, kind, c, stride, *, src, stage, block=None) -> str:
        """timm's aa_layer at ``stride``: BlurPool2d (3x3 binomial, reflect padding) or
        AvgPool2d(stride)."""
        kw = dict(src=src, stage=stage, block=block)
        if kind == "blur":
            attrs = dict(channels=c, kernel=3, stride=stride, padding=_padding(3, stride))
            return self.node(name, Op.BLUR, attrs, [x], **kw)
        return self.node(name, Op.AA_AVGPOOL, dict(kernel=stride, stride=stride), [x], **kw)

    def attention(
        self, prefix, x, c, att: AttentionSpec, *, nominal: int, src, stage, block
    ) -> str:
        """timm's SEModule / EcaModule on a ``c``-channel map, named ``{prefix}.fc1`` etc.;
        ECA's default kernel follows the ``nominal`` (unpruned) channel count."""
        kw = dict(src=src, stage=stage, block=block)
        pooled = self.node(f"{prefix}.pool", Op.GLOBAL_AVGPOOL, {}, [x], **kw)
        if att.kind == "se":
            rd = make_divisible(c * att.rd_ratio_, att.rd_divisor_)
            h = self.conv(f"{prefix}.fc1", pooled, c, rd, 1, bias=True, **kw)
            h = self.relu(f"{prefix}.act", h, **kw)
            h = self.conv(f"{prefix}.fc2", h, rd, c, 1, bias=True, **kw)
        else:
            k = att.kernel_size if att.kernel_size is not None else eca_kernel(nominal)
            attrs = dict(kernel=k, padding=(k - 1) // 2)
            h = self.node(f"{prefix}.conv", Op.CHANNEL_CONV, attrs, [pooled], **kw)
        gate = self.node(f"{prefix}.gate", Op.SIGMOID, {}, [h], **kw)
        return self.node(f"{prefix}.scale", Op.SCALE, {}, [x, gate], **kw)

    def _check_model(self) -> None:
        """Model-level rules that pydantic cannot see, at the position of the value concerned."""
        s = self.s
        if s.stem.widths is not None and s.stem.kind != "deep":
            self.error(f"widths apply only to a deep stem, not {s.stem.kind}", "stem", "widths")
        if s.norm.groups is not None and s.norm.kind != "group":
            self.error("groups apply only to norm kind group", "norm", "groups")
        if s.preact:
            if s.anti_alias != "none":
                self.error("anti_alias needs post-activation blocks", "anti_alias")
            if s.stem.pool_ == "conv":
                self.error("a conv stem pool needs post-activation blocks", "stem", "pool")
        if s.drop_path > 0 and any((st.shortcut or s.shortcut) == "none" for st in s.stages):
            self.error("drop_path needs residual blocks (a stage has shortcut none)", "drop_path")

    def relu(self, name, x, *, src, stage, block=None) -> str:
        return self.node(name, Op.RELU, {}, [x], src=src, stage=stage, block=block)

    # -- stem --------------------------------------------------------------------------------
    def stem(self) -> tuple[str, int]:
        s, src = self.s, self.pos("stem")
        kw = dict(src=src, stage="stem")
        cin = s.input.channels
        width = s.stem.width or s.stages[0].width
        x = self.node(
            "input",
            Op.INPUT,
            {"shape": self.g.input_shape},
            [],
            src=self.pos("input"),
            stage="stem",
        )
        if s.stem.kind == "deep":
            if s.stem.widths is not None:
                w0, w1, width = s.stem.widths
                if s.stem.width is not None and s.stem.width != width:
                    self.error(
                        f"width {s.stem.width} differs from the last of widths ({width})",
                        "stem",
                        "width",
                    )
            else:
                if width % 2:
                    self.error(f"a deep stem needs an even width, got {width}", "stem")
                w0 = w1 = width // 2
            x = self.conv("conv1.0", x, cin, w0, 3, 2, **kw)
            x = self.bn("conv1.1", x, w0, **kw)
            x = self.relu("conv1.2", x, **kw)
            x = self.conv("conv1.3", x, w0, w1, 3, **kw)
            x = self.bn("conv1.4", x, w1, **kw)
            x = self.relu("conv1.5", x, **kw)
            x = self.conv("conv1.6", x, w1, width, 3, **kw)
        elif s.stem.kind == "imagenet":
            x = self.conv("conv1", x, cin, width, 7, 2, **kw)
        else:
            x = self.conv("conv1", x, cin, width, 3, 1, **kw)
        if not s.preact:  # a pre-activation net normalises at the start of each unit instead
            x = self.bn("bn1", x, width, **kw)
            x = self.relu("relu", x, **kw)
        aa, pool = s.anti_alias, s.stem.pool_
        pool_kw = dict(src=self.pos("stem", "pool") if s.stem.pool else src, stage="stem")
        if pool == "max" and aa == "none":
            x = self.node(
                "maxpool", Op.MAXPOOL, dict(kernel=3, stride=2, padding=1), [x], **pool_kw
            )
        elif pool == "max" and aa == "blur":  # timm: MaxPool2d(3, 1, 1) then BlurPool2d
            x = self.node(
                "maxpool.0", Op.MAXPOOL, dict(kernel=3, stride=1, padding=1), [x], **pool_kw
            )
            x = self.anti_alias("maxpool.1", x, aa, width, 2, **pool_kw)
        elif pool == "max":  # timm replaces the max pool by AvgPool2d(2)
            x = self.anti_alias("maxpool", x, aa, width, 2, **pool_kw)
        elif pool == "conv":  # ResNet-RS: a 3x3/2 conv (stride 1 then aa), norm, ReLU
            x = self.conv("maxpool.0", x, width, width, 3, 1 if aa != "none" else 2, **pool_kw)
            i = 1
            if aa != "none":
                x = self.anti_alias("maxpool.1", x, aa, width, 2, **pool_kw)
                i = 2
            x = self.bn(f"maxpool.{i}", x, width, **pool_kw)
            x = self.relu(f"maxpool.{i + 1}", x, **pool_kw)
        return x, width

    # -- blocks ------------------------------------------------------------------------------
    def stage_cfg(self, i: int, st: StageSpec) -> _StageCfg:
        s = self.s
        block = st.block or s.block
        return _StageCfg(
            i,
            st,
            block,
            st.shortcut or s.shortcut,
            st.downsample or s.downsample,
            st.stride_on or s.stride_on,
            st.attention or block.attention,
            st.anti_alias or s.anti_alias,
        )

    def block(self, cfg: _StageCfg, j: int, x: str, cin: int) -> tuple[str, int]:
        st, b = cfg.spec, cfg.block
        i = cfg.index
        stage = f"layer{i + 1}"
        name = f"{stage}.{j}"
        src = self.pos("stages", i) if j == 0 else self.pos("stages", i, "depth")
        stride = cfg.stride if j == 0 else 1
        dilation = cfg.dilation
        first_dilation = cfg.first_dilation if j == 0 else dilation  # of the first 3x3 conv
        exp = b.expansion_
        nominal = st.width * exp
        cout = st.out_channels or nominal
        block_path = ("stages", i, "block") if st.block else ("block",)
        if b.kind == "basic":
            if b.groups != 1 or b.width_per_group != 64:
                self.error("basic blocks support only groups=1 and width_per_group=64", *block_path)
            inner = st.width
        else:
            if (st.width * b.width_per_group) % 64:
                self.error(
                    f"width {st.width} x width_per_group {b.width_per_group} / 64 is not an "
                    "integer",
                    *block_path,
                )
            inner = (st.width * b.width_per_group // 64) * b.groups
        first = inner // b.reduce_first  # timm's first_planes
        custom = st.block_widths is not None and j < len(st.block_widths)
        if st.block_widths is not None and j == 0:
            want = 1 if b.kind == "basic" else 2
            if len(st.block_widths) != st.depth:
                self.error(
                    f"{len(st.block_widths)} entries for {st.depth} blocks",
                    "stages",
                    i,
                    "block_widths",
                )
            bad = [k for k, w in enumerate(st.block_widths) if len(w) != want]
            if bad:
                self.error(
                    f"a {b.kind} block takes {want} width{'s' if want > 1 else ''} per entry "
                    f"([first{', inner' if want > 1 else ''}]); entry {bad[0]} has "
                    f"{len(st.block_widths[bad[0]])}",
                    "stages",
                    i,
                    "block_widths",
                )
        if custom and len(st.block_widths[j]) == (1 if b.kind == "basic" else 2):
            first, inner = (st.block_widths[j] * 2)[:2] if b.kind == "basic" else st.block_widths[j]
            if b.kind == "bottleneck" and (first % b.groups or inner % b.groups):
                self.error(
                    f"block {j}: the 3x3 conv's {b.groups} groups do not divide {first} -> "
                    f"{inner} channels",
                    "stages",
                    i,
                    "block_widths",
                    j,
                )
        elif first < 1 or (b.kind == "bottleneck" and first % b.groups):
            self.error(
                f"reduce_first {b.reduce_first} leaves {first} channels from an inner width of "
                f"{inner}, which the 3x3 conv's {b.groups} groups do not divide",
                *block_path,
                "reduce_first",
            )
            first = inner
        if cfg.shortcut == "none":
            sc = "none"
        elif cfg.shortcut == "C" or (cout != cin or stride != 1):
            sc = "pad" if cfg.shortcut == "A" else "projection"
        else:
            sc = "identity"
        if sc == "pad" and cout < cin:
            self.error(
                f"option A cannot shrink the width ({cin} -> {cout} channels); use B or C",
                "stages",
                i,
                "width",
            )
        att = cfg.attention
        if att.kind != "none" and self.s.preact:
            path = ("stages", i, "attention") if st.attention else (*block_path, "attention")
            self.error("attention needs post-activation blocks", *path)
        if cfg.anti_alias != "none" and self.s.preact and st.anti_alias:
            self.error("anti_alias needs post-activation blocks", "stages", i, "anti_alias")
        # as timm: where the block strides, and in a dilated stage's first block (whose first
        # 3x3 conv keeps the previous stage's dilation), there at stride 1
        dilating = first_dilation != dilation
        aa = cfg.anti_alias if (stride == 2 or dilating) and not self.s.preact else "none"
        drop_path = 0.0
        if self.n_blocks > 1:
            drop_path = self.s.drop_path * self.block_index / (self.n_blocks - 1)
        self.block_index += 1
        stride_on = cfg.stride_on if b.kind == "bottleneck" else "3x3"
        blk = Block(
            name,
            stage,
            b.kind,
            self.s.preact,
            sc,
            cfg.downsample.kind,
            cin,
            inner,
            cout,
            stride,
            stride_on,
            b.groups,
            src,
            attention=att.kind,
            attention_args=(
                (("rd_ratio", att.rd_ratio_), ("rd_divisor", att.rd_divisor_))
                if att.kind == "se"
                else (("kernel_size", att.kernel_size),)
                if att.kind == "eca"
                else ()
            ),
            anti_alias=aa,
            drop_path=drop_path if sc != "none" else 0.0,
            dropout=b.dropout,
            pruned=st.block_widths is not None or st.out_channels is not None,
            dilation=dilation,
        )
        self.g.blocks.append(blk)
        first_node = len(self.g)
        kw = dict(src=src, stage=stage, block=name)
        zero_init = self.s.init.zero_init_residual
        if zero_init and (self.s.preact or sc == "none"):
            self.error("zero_init_residual needs post-activation residual blocks", "init")
            zero_init = False

        # Main branch. Post-activation: conv-bn-relu ... conv-bn (+ shortcut) relu.
        # Pre-activation: bn-relu-conv ... bn-relu-conv (+ shortcut).
        # With anti-aliasing the strided conv runs at stride 1 and `aa` follows its ReLU; block
        # dropout sits before the second conv (after the first ReLU, or before the second BN
        # when pre-activated); attention follows the last BN.
        # (kernel, in, out, stride, groups, dilation); anti-aliasing follows conv `aa_at`
        if b.kind == "basic":
            convs = [(3, cin, first, stride, 1, first_dilation), (3, first, cout, 1, 1, dilation)]
            aa_at = 1
        else:
            s1, s3 = (stride, 1) if stride_on == "1x1" else (1, stride)
            convs = [
                (1, cin, first, s1, 1, 1),
                (3, first, inner, s3, b.groups, first_dilation),
                (1, inner, cout, 1, 1, 1),
            ]
            aa_at = 1 if s1 > 1 else 2
        h = x
        preact_out = None
        last = len(convs)
        for k, (ks, ci, co, s_, gr, dl) in enumerate(convs, start=1):
            if k == 2 and b.dropout > 0:
                h = self.node(f"{name}.dropout", Op.DROPOUT, {"p": b.dropout}, [h], **kw)
            if self.s.preact:
                h = self.bn(f"{name}.bn{k}", h, ci, **kw)
                h = self.relu(f"{name}.relu{k}", h, **kw)
                if k == 1:
                    preact_out = h
                h = self.conv(f"{name}.conv{k}", h, ci, co, ks, s_, gr, dilation=dl, **kw)
            else:
                strided = k == aa_at and aa != "none"
                s_ = 1 if strided else s_
                h = self.conv(f"{name}.conv{k}", h, ci, co, ks, s_, gr, dilation=dl, **kw)
                h = self.bn(f"{name}.bn{k}", h, co, zero_init=zero_init and k == last, **kw)
                if k == last and att.kind != "none":
                    h = self.attention(f"{name}.se", h, co, att, nominal=nominal, **kw)
                if k < last or sc == "none":
                    h = self.relu(f"{name}.relu{k}", h, **kw)
                if strided:
                    h = self.anti_alias(f"{name}.aa", h, aa, co, stride, **kw)
        if blk.drop_path > 0:
            h = self.node(f"{name}.drop_path", Op.DROP_PATH, {"p": blk.drop_path}, [h], **kw)

        # Shortcut.
        if sc != "none":
            if sc == "identity":
                short = x
            elif sc == "pad":
                short = self.node(
                    f"{name}.shortcut",
                    Op.PAD_CHANNELS,
                    dict(stride=stride, out_channels=cout),
                    [x],
                    **kw,
                )
            else:
                short = preact_out if self.s.preact else x
                idx = 0
                ds = cfg.downsample
                if ds.kind == "avgpool":
                    if stride > 1:
                        short = self.node(
                            f"{name}.downsample.0",
                            Op.AVGPOOL,
                            dict(kernel=stride, stride=stride),
                            [short],
                            **kw,
                        )
                    elif dilation > 1:  # timm's AvgPool2dSame(2, 1): zeros padded right, below
                        short = self.node(
                            f"{name}.downsample.0",
                            Op.AVGPOOL,
                            dict(kernel=2, stride=1, same=True),
                            [short],
                            **kw,
                        )
                    idx = 1
                    conv_stride = 1
                    k = 1
                else:
                    conv_stride = stride
                    # timm: 1x1 where nothing strides or dilates
                    k = ds.kernel_size if stride > 1 or dilation > 1 else 1
                dl = first_dilation if k > 1 else 1
                short = self.conv(
                    f"{name}.downsample.{idx}",
                    short,
                    cin,
                    cout,
                    k,
                    conv_stride,
                    padding=0 if k == 1 else _padding(k, conv_stride, dl),  # 1x1: as ever
                    dilation=dl,
                    **kw,
                )
                if not self.s.preact:
                    short = self.bn(f"{name}.downsample.{idx + 1}", short, cout, **kw)
            h = self.node(f"{name}.add", Op.ADD, {}, [h, short], **kw)
            if not self.s.preact:
                h = self.relu(f"{name}.relu{last}", h, **kw)
        blk.nodes = list(self.g.g.nodes)[first_node:]
        return h, cout

    # -- head --------------------------------------------------------------------------------
    def head(self, x: str, c: int) -> None:
        kw = dict(src=self.pos("num_classes"), stage="head")
        if self.s.preact:
            x = self.bn("norm", x, c, **kw)
            x = self.relu("act", x, **kw)
        x = self.node("avgpool", Op.GLOBAL_AVGPOOL, {}, [x], **kw)
        x = self.node("flatten", Op.FLATTEN, {}, [x], **kw)
        if self.s.head.dropout > 0:
            x = self.node(
                "dropout",
                Op.DROPOUT,
                {"p": self.s.head.dropout},
                [x],
                src=self.pos("head", "dropout"),
                stage="head",
            )
        self.node(
            "fc",
            Op.LINEAR,
            dict(in_features=c, out_features=self.s.num_classes, bias=True),
            [x],
            **kw,
        )

    def run(self) -> Graph:
        x, c = self.stem()
        # timm's make_blocks: once the maps are output_stride times smaller than the input, a
        # stage's stride becomes a dilation of its 3x3 convs (its first block's first 3x3 conv
        # keeps the previous stage's)
        net_stride = math.prod(n.attrs.get("stride", 1) for n in self.g)  # the stem's: 1 to 4
        dilation = 1
        for i, st in enumerate(self.s.stages):
            first_dilation, stride = dilation, st.stride
            if net_stride >= self.s.output_stride:
                dilation *= stride
                stride = 1
            else:
                net_stride *= stride
            cfg = replace(
                self.stage_cfg(i, st),
                stride=stride,
                dilation=dilation,
                first_dilation=first_dilation,
            )
            for j in range(st.depth):
                x, c = self.block(cfg, j, x, c)
        self.head(x, c)
        if self.errors:
            raise SpecError(_dedupe(self.errors))
        return self.g


def _dedupe(diags: list[Diagnostic]) -> list[Diagnostic]:
    seen: dict[str, Diagnostic] = {}
    for d in diags:
        seen.setdefault(str(d), d)
    return list(seen.values())


def lower(resolved: Resolved) -> Graph:
    """Lower a resolved spec to the IR (without running any pass)."""
    return _Lowerer(resolved).run()
