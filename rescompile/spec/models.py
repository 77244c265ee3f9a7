"""The spec language: pydantic v2 models.

Every model forbids unknown fields and validates strictly (no "3" -> 3, no "yes" -> True), so a
spec means exactly what it says. Field descriptions feed the JSON Schema and the reference docs.
"""

from __future__ import annotations

import keyword
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

BlockKind = Literal["basic", "bottleneck"]
Shortcut = Literal["A", "B", "C", "none"]
DownsampleKind = Literal["conv", "avgpool"]
StrideOn = Literal["1x1", "3x3"]
StemKind = Literal["imagenet", "cifar", "deep"]
StemPool = Literal["max", "conv", "none"]
AntiAlias = Literal["none", "blur", "avgpool"]
AttentionKind = Literal["none", "se", "eca"]
NormKind = Literal["batch", "group"]

# Upper bounds keep every figure an exact, float-convertible number and every model buildable in
# principle; they are far beyond any real network.
MAX_WIDTH = 1 << 16  # channels, widths, groups, input size
MAX_BLOCKS = 2000  # blocks in the whole network
PosInt = Annotated[int, Field(ge=1, le=MAX_WIDTH)]
NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
LABEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")  # paper table and row labels


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _shorthand(value: Any) -> Any:
    """``block: bottleneck`` is short for ``block: {kind: bottleneck}`` (same for ``stem``,
    ``downsample`` and ``attention``)."""
    return {"kind": value} if isinstance(value, str) else value


class AttentionSpec(_Model):
    """Channel attention at the end of a block's main branch, before the addition (timm)."""

    kind: AttentionKind = Field(
        description="none; se: squeeze-and-excitation (global mean, 1x1 conv with bias, ReLU, "
        "1x1 conv with bias, sigmoid gate scaling the channels; timm's SEModule); eca: efficient "
        "channel attention (global mean, 1-d conv across channels, sigmoid gate; timm's EcaModule)"
    )
    rd_ratio: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="se only: reduced width = make_divisible(channels * rd_ratio, rd_divisor) "
        "(timm's rounding to the nearest multiple, never below rd_divisor); default 1/16",
    )
    rd_divisor: PosInt | None = Field(None, description="se only: default 8")
    kernel_size: Annotated[int, Field(ge=1, le=255)] | None = Field(
        None,
        description="eca only: odd width of the 1-d conv; default from the channel count C: "
        "t = int((log2(C) + 1) / 2), the odd number t or t + 1, at least 3",
    )

    @field_validator("kernel_size")
    @classmethod
    def _odd(cls, v: int | None) -> int | None:
        if v is not None and v % 2 == 0:
            raise ValueError(f"must be odd (the conv is centred on each channel), got {v}")
        return v

    @model_validator(mode="after")
    def _fields_of_kind(self) -> AttentionSpec:
        se = [f for f in ("rd_ratio", "rd_divisor") if getattr(self, f) is not None]
        if se and self.kind != "se":
            raise ValueError(f"{' and '.join(se)} apply only to kind se, not {self.kind}")
        if self.kernel_size is not None and self.kind != "eca":
            raise ValueError(f"kernel_size applies only to kind eca, not {self.kind}")
        return self

    @property
    def rd_ratio_(self) -> float:
        return self.rd_ratio if self.rd_ratio is not None else 1.0 / 16

    @property
    def rd_divisor_(self) -> int:
        return self.rd_divisor if self.rd_divisor is not None else 8


class DownsampleSpec(_Model):
    """The projection shortcut of a block that changes shape (shortcut B or C)."""

    kind: DownsampleKind = Field(
        description="conv: strided conv + norm; avgpool: 2x2 average pool (stride 2, ceil "
        "mode, padding not counted) then 1x1 conv + norm (ResNet-D)"
    )
    kernel_size: Literal[1, 3] = Field(
        1,
        description="conv only: kernel of a strided projection (3: SENet-154); a stride-1 "
        "projection is always 1x1",
    )

    @model_validator(mode="after")
    def _kernel_of_kind(self) -> DownsampleSpec:
        if self.kernel_size != 1 and self.kind != "conv":
            raise ValueError("kernel_size 3 applies only to kind conv (avgpool uses a 1x1 conv)")
        return self


class BlockSpec(_Model):
    """A residual block kind and its width parameters (torchvision's conventions)."""

    kind: BlockKind = Field(description="basic: two 3x3 convs; bottleneck: 1x1, 3x3, 1x1")
    expansion: Annotated[int, Field(ge=1, le=64)] | None = Field(
        None, description="output width / stage width; default 1 (basic) or 4 (bottleneck)"
    )
    groups: PosInt = Field(1, description="groups of the 3x3 conv (ResNeXt cardinality)")
    width_per_group: PosInt = Field(
        64,
        description="inner 3x3 width = int(width * width_per_group / 64) * groups "
        "(64: the plain ResNet bottleneck; 128: Wide ResNet-50-2)",
    )
    attention: AttentionSpec = Field(
        default_factory=lambda: AttentionSpec(kind="none"),
        description="none | se | eca, or {kind, rd_ratio, rd_divisor} / {kind, kernel_size}",
    )
    reduce_first: PosInt = Field(
        1,
        description="the first conv outputs inner width // reduce_first channels (timm's "
        "block_reduce_first; 2 in SENet-154)",
    )
    dropout: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="dropout between the block's first and second conv, in training only (Wide "
        "ResNet); no parameters",
    )

    _attention = field_validator("attention", mode="before")(lambda v: _shorthand(v))

    @property
    def expansion_(self) -> int:
        return self.expansion if self.expansion is not None else (1 if self.kind == "basic" else 4)


class StemSpec(_Model):
    """The layers before the first stage."""

    kind: StemKind = Field(
        description="imagenet: 7x7/2 conv + BN + ReLU + 3x3/2 max pool; cifar: 3x3 conv + BN + "
        "ReLU; deep: three 3x3 convs (the first stride 2) + max pool (ResNet-C)"
    )
    width: PosInt | None = Field(
        None, description="output channels; default: the first stage's width (deep: widths[2])"
    )
    widths: tuple[PosInt, PosInt, PosInt] | None = Field(
        None,
        description="deep only: the outputs of its three 3x3 convs; default [w/2, w/2, w] for "
        "output width w (timm 'deep'; 'deep_tiered' is [3*(s//4), s, 2s] for stem_width s)",
    )
    pool: StemPool | None = Field(
        None,
        description="max: 3x3/2 max pool; conv: 3x3/2 conv + norm + ReLU (ResNet-RS); none. "
        "Default: max, except none for the cifar stem",
    )

    @field_validator("widths", mode="before")
    @classmethod
    def _widths(cls, v: Any) -> Any:
        return tuple(v) if isinstance(v, list) else v

    @property
    def pool_(self) -> str:
        return self.pool if self.pool is not None else ("none" if self.kind == "cifar" else "max")


class InputSpec(_Model):
    """The input image."""

    channels: PosInt = Field(3, description="input channels")
    size: PosInt | tuple[PosInt, PosInt] = Field(description="an int, or [height, width]")

    @field_validator("size", mode="before")
    @classmethod
    def _size(cls, v: Any) -> Any:
        return tuple(v) if isinstance(v, list) else v

    @property
    def hw(self) -> tuple[int, int]:
        return (self.size, self.size) if isinstance(self.size, int) else tuple(self.size)


class StageSpec(_Model):
    """One stage: ``depth`` blocks of the same width; the first one may downsample."""

    depth: Annotated[int, Field(ge=1, le=MAX_BLOCKS)] = Field(description="number of blocks")
    width: PosInt = Field(description="stage width (planes); a block outputs width * expansion")
    stride: Annotated[int, Field(ge=1, le=64)] = Field(
        1, description="stride of the stage's first block"
    )
    block: BlockSpec | None = Field(None, description="override of the model's block")
    shortcut: Shortcut | None = Field(None, description="override of the model's shortcut")
    downsample: DownsampleSpec | None = Field(
        None, description="override of the model's downsample"
    )
    stride_on: StrideOn | None = Field(None, description="override of the model's stride_on")
    attention: AttentionSpec | None = Field(
        None, description="override of the block's attention in this stage"
    )
    anti_alias: AntiAlias | None = Field(None, description="override of the model's anti_alias")
    out_channels: PosInt | None = Field(
        None,
        description="the blocks' output channels; default width x expansion (set by pruned "
        "models, with block_widths)",
    )
    block_widths: (
        Annotated[
            list[Annotated[list[PosInt], Field(min_length=1, max_length=2)]],
            Field(max_length=MAX_BLOCKS),
        ]
        | None
    ) = Field(
        None,
        description="per block, the output channels of its convs before the last: [first, "
        "inner] (bottleneck) or [first] (basic); default from width, groups, width_per_group "
        "and reduce_first (timm's pruned models give them one by one). ECA's kernel still "
        "follows width x expansion, as in timm's pruned models",
    )

    _block = field_validator("block", "downsample", "attention", mode="before")(
        lambda v: _shorthand(v)
    )


class HeadSpec(_Model):
    """Global average pool, optional dropout, fully connected classifier."""

    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout before the classifier")


class NormSpec(_Model):
    """Normalisation layers: BatchNorm (PyTorch's momentum convention) or GroupNorm."""

    kind: NormKind = Field(
        "batch",
        description="batch: BatchNorm (running statistics); group: GroupNorm (no running "
        "statistics, no momentum)",
    )
    groups: PosInt | None = Field(
        None,
        description="group only: groups of every GroupNorm; default 32; must divide every "
        "normalised width",
    )
    eps: float = Field(1e-5, gt=0.0, le=1.0, description="epsilon")
    momentum: float = Field(
        0.1, gt=0.0, le=1.0, description="BatchNorm: weight of the new batch in running statistics"
    )

    @property
    def groups_(self) -> int:
        return self.groups if self.groups is not None else 32


class InitSpec(_Model):
    """Weight initialisation (He et al. 2015, as torchvision does it)."""

    zero_init_residual: bool = Field(
        False, description="zero the last BN gamma of each residual branch (Goyal et al. 2017)"
    )


class PaperRef(_Model):
    """The published row a spec is audited against by ``rescompile check``."""

    table: str = Field(
        description="e.g. resnet2016.table1, resnet2016.table6, torchvision",
        json_schema_extra={"pattern": f"^{LABEL_RE.pattern}$"},
    )
    row: str = Field(
        description="e.g. 50-layer, ResNet-110, resnet50",
        json_schema_extra={"pattern": f"^{LABEL_RE.pattern}$"},
    )

    @field_validator("table", "row")
    @classmethod
    def _label(cls, v: str) -> str:
        if not LABEL_RE.fullmatch(v):
            raise ValueError(
                "must start with a letter or digit and use only letters, digits, '_', '-', '.' "
                "or '+' (at most 64 characters)"
            )
        return v


class Spec(_Model):
    """A residual network."""

    name: str = Field(description="identifier; the emitted class name derives from it")
    input: InputSpec = Field(description="input channels and size")
    num_classes: Annotated[int, Field(ge=1, le=10_000_000)] = Field(
        description="classifier outputs"
    )
    stem: StemSpec = Field(description="imagenet | cifar | deep, or {kind, width}")
    block: BlockSpec = Field(
        description="basic | bottleneck, or {kind, expansion, groups, width_per_group}"
    )
    preact: bool = Field(False, description="pre-activation units (He et al., Identity Mappings)")
    shortcut: Shortcut = Field(
        "B",
        description="A: zero-padded identity; B: projection where the shape changes; "
        "C: projections everywhere; none: plain net",
    )
    downsample: DownsampleSpec = Field(
        default_factory=lambda: DownsampleSpec(kind="conv"),
        description="projection: strided conv (1x1, or {kind: conv, kernel_size: 3}), or "
        "avg-pool then 1x1 conv (ResNet-D)",
    )
    stride_on: StrideOn = Field(
        "1x1", description="bottleneck stride on the 1x1 (paper, v1) or the 3x3 (torchvision, v1.5)"
    )
    anti_alias: AntiAlias = Field(
        "none",
        description="none; blur: a stride-2 block (only those, as in timm) runs its strided conv "
        "at stride 1, then a "
        "[1,2,1]x[1,2,1] depthwise blur (reflect padding) at stride 2, and the stem's max pool "
        "runs at stride 1 before a blur (timm's BlurPool2d); avgpool: the same with a 2x2 average "
        "pool (floor mode), the stem's max pool replaced by it (timm's aa_layer=AvgPool2d)",
    )
    drop_path: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="stochastic depth in training: block i of n drops its branch with "
        "probability drop_path * i / (n - 1) (timm's drop_path_rate)",
    )
    output_stride: Literal[8, 16, 32] = Field(
        32,
        description="the largest total stride of the feature maps (timm's output_stride): once "
        "the stem and stages have reduced the input by this factor, a later stage's stride "
        "becomes a dilation of its 3x3 convs instead (dilated last stages, as segmentation "
        "backbones use). 32: no dilation in a four-stage ImageNet net",
    )
    stages: list[StageSpec] = Field(min_length=1, max_length=16, description="the stages, in order")
    head: HeadSpec = Field(default_factory=HeadSpec, description="classifier head")
    norm: NormSpec = Field(default_factory=NormSpec, description="BatchNorm settings")
    init: InitSpec = Field(default_factory=InitSpec, description="initialisation")
    paper: PaperRef | None = Field(None, description="published row to audit against")

    _block = field_validator("block", "stem", "downsample", mode="before")(lambda v: _shorthand(v))

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.fullmatch(v):
            raise ValueError(
                "name must start with a letter and use only letters, digits, '_', '-' or '.' "
                "(at most 64 characters)"
            )
        if keyword.iskeyword(_camel(v)):
            raise ValueError(
                f"name {v!r} would make the class name {_camel(v)!r}, a Python keyword"
            )
        return v

    @model_validator(mode="after")
    def _total_depth(self) -> Spec:
        blocks = sum(s.depth for s in self.stages)
        if blocks > MAX_BLOCKS:
            raise ValueError(f"{blocks} blocks in total; rescompile accepts at most {MAX_BLOCKS}")
        return self

    @property
    def class_name(self) -> str:
        """CamelCase class name: ``cifar-resnet20`` -> ``CifarResnet20``."""
        out = _camel(self.name)
        if not out.isidentifier() or keyword.iskeyword(out):  # pragma: no cover - NAME_RE forbids
            raise ValueError(f"cannot derive a class name from {self.name!r}")
        return out


def _camel(name: str) -> str:
    return "".join(p[0].upper() + p[1:] for p in re.split(r"[-_.]", name) if p)
