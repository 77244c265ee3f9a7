"""Lowering: a validated :class:`Spec` -> the graph IR.

The only place that knows what a block kind, a shortcut option or a stem means. Semantic errors
that pydantic cannot see (a width that groups do not divide, option A shrinking a width, ...) are
raised here at the YAML position of the offending value.
"""

from __future__ import annotations

from dataclasses import dataclass

from rescompile.errors import Diagnostic, SourcePos, SpecError
from rescompile.ir.graph import Block, Graph, Node, Op
from rescompile.spec.load import Resolved
from rescompile.spec.models import BlockSpec, Spec, StageSpec


@dataclass(frozen=True)
class _StageCfg:
    """A stage with the model-level defaults applied."""

    index: int
    spec: StageSpec
    block: BlockSpec
    shortcut: str
    downsample: str
    stride_on: str


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
            preact=s.preact,
            zero_init_residual=s.init.zero_init_residual,
        )
        self.errors: list[Diagnostic] = []

    # -- helpers ---------------------------------------------------------------------------
    def pos(self, *path: str | int) -> SourcePos | None:
        return self.r.pos(*path)

    def error(self, message: str, *path: str | int) -> None:
        self.errors.append(Diagnostic(self.pos(*path), message, ".".join(map(str, path))))

    def node(self, name, op, attrs, inputs, *, src, stage, block=None) -> str:
        return self.g.add(Node(name, op, attrs, src, stage, block), *inputs)

    def conv(self, name, x, cin, cout, k, stride=1, groups=1, *, src, stage, block=None) -> str:
        attrs = dict(
            in_channels=cin,
            out_channels=cout,
            kernel=k,
            stride=stride,
            padding=k // 2,
            groups=groups,
            bias=False,
        )
        return self.node(name, Op.CONV2D, attrs, [x], src=src, stage=stage, block=block)

    def bn(self, name, x, c, *, src, stage, block=None, zero_init=False) -> str:
        attrs = dict(
            channels=c, eps=self.s.norm.eps, momentum=self.s.norm.momentum, zero_init=zero_init
        )
        return self.node(name, Op.BATCHNORM, attrs, [x], src=src, stage=stage, block=block)

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
            if width % 2:
                self.error(f"a deep stem needs an even width, got {width}", "stem")
            half = width // 2
            x = self.conv("conv1.0", x, cin, half, 3, 2, **kw)
            x = self.bn("conv1.1", x, half, **kw)
            x = self.relu("conv1.2", x, **kw)
            x = self.conv("conv1.3", x, half, half, 3, **kw)
            x = self.bn("conv1.4", x, half, **kw)
            x = self.relu("conv1.5", x, **kw)
            x = self.conv("conv1.6", x, half, width, 3, **kw)
        elif s.stem.kind == "imagenet":
            x = self.conv("conv1", x, cin, width, 7, 2, **kw)
        else:
            x = self.conv("conv1", x, cin, width, 3, 1, **kw)
        if not s.preact:  # a pre-activation net normalises at the start of each unit instead
            x = self.bn("bn1", x, width, **kw)
            x = self.relu("relu", x, **kw)
        if s.stem.kind in ("imagenet", "deep"):
            x = self.node("maxpool", Op.MAXPOOL, dict(kernel=3, stride=2, padding=1), [x], **kw)
        return x, width

    # -- blocks ------------------------------------------------------------------------------
    def stage_cfg(self, i: int, st: StageSpec) -> _StageCfg:
        s = self.s
        return _StageCfg(
            i,
            st,
            st.block or s.block,
            st.shortcut or s.shortcut,
            st.downsample or s.downsample,
            st.stride_on or s.stride_on,
        )

    def block(self, cfg: _StageCfg, j: int, x: str, cin: int) -> tuple[str, int]:
        st, b = cfg.spec, cfg.block
        i = cfg.index
        stage = f"layer{i + 1}"
        name = f"{stage}.{j}"
        src = self.pos("stages", i) if j == 0 else self.pos("stages", i, "depth")
        stride = st.stride if j == 0 else 1
        exp = b.expansion_
        cout = st.width * exp
        if b.kind == "basic":
            if b.groups != 1 or b.width_per_group != 64:
                path = ("stages", i, "block") if st.block else ("block",)
                self.error("basic blocks support only groups=1 and width_per_group=64", *path)
            inner = st.width
        else:
            if (st.width * b.width_per_group) % 64:
                path = ("stages", i, "block") if st.block else ("block",)
                self.error(
                    f"width {st.width} x width_per_group {b.width_per_group} / 64 is not an "
                    "integer",
                    *path,
                )
            inner = (st.width * b.width_per_group // 64) * b.groups
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
        stride_on = cfg.stride_on if b.kind == "bottleneck" else "3x3"
        blk = Block(
            name,
            stage,
            b.kind,
            self.s.preact,
            sc,
            cfg.downsample,
            cin,
            inner,
            cout,
            stride,
            stride_on,
            b.groups,
            src,
        )
        self.g.blocks.append(blk)
        first = len(self.g)
        kw = dict(src=src, stage=stage, block=name)
        zero_init = self.s.init.zero_init_residual
        if zero_init and (self.s.preact or sc == "none"):
            self.error("zero_init_residual needs post-activation residual blocks", "init")
            zero_init = False

        # Main branch. Post-activation: conv-bn-relu ... conv-bn (+ shortcut) relu.
        # Pre-activation: bn-relu-conv ... bn-relu-conv (+ shortcut).
        if b.kind == "basic":
            convs = [(3, cin, inner, stride, 1), (3, inner, cout, 1, 1)]
        else:
            s1, s3 = (stride, 1) if stride_on == "1x1" else (1, stride)
            convs = [
                (1, cin, inner, s1, 1),
                (3, inner, inner, s3, b.groups),
                (1, inner, cout, 1, 1),
            ]
        h = x
        preact_out = None
        last = len(convs)
        for k, (ks, ci, co, s_, gr) in enumerate(convs, start=1):
            if self.s.preact:
                h = self.bn(f"{name}.bn{k}", h, ci, **kw)
                h = self.relu(f"{name}.relu{k}", h, **kw)
                if k == 1:
                    preact_out = h
                h = self.conv(f"{name}.conv{k}", h, ci, co, ks, s_, gr, **kw)
            else:
                h = self.conv(f"{name}.conv{k}", h, ci, co, ks, s_, gr, **kw)
                h = self.bn(f"{name}.bn{k}", h, co, zero_init=zero_init and k == last, **kw)
                if k < last or sc == "none":
                    h = self.relu(f"{name}.relu{k}", h, **kw)

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
                if cfg.downsample == "avgpool":
                    if stride > 1:
                        short = self.node(
                            f"{name}.downsample.0",
                            Op.AVGPOOL,
                            dict(kernel=stride, stride=stride),
                            [short],
                            **kw,
                        )
                    idx = 1
                    conv_stride = 1
                else:
                    conv_stride = stride
                short = self.conv(
                    f"{name}.downsample.{idx}", short, cin, cout, 1, conv_stride, **kw
                )
                if not self.s.preact:
                    short = self.bn(f"{name}.downsample.{idx + 1}", short, cout, **kw)
            h = self.node(f"{name}.add", Op.ADD, {}, [h, short], **kw)
            if not self.s.preact:
                h = self.relu(f"{name}.relu{last}", h, **kw)
        blk.nodes = list(self.g.g.nodes)[first:]
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
        for i, st in enumerate(self.s.stages):
            cfg = self.stage_cfg(i, st)
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
