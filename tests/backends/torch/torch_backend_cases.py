"""Shared cases for the PyTorch backend tests: every spec in specs/, compiled small and cached."""

from __future__ import annotations

import functools
from pathlib import Path

from rescompile import compile_spec

ROOT = Path(__file__).resolve().parents[3]
SPECS = sorted((ROOT / "specs").rglob("*.yaml"))
TORCHVISION_SPECS = sorted((ROOT / "specs" / "torchvision").glob("*.yaml"))
SMALL = 32  # ImageNet-size specs are checked at 32x32 (final maps 1x1) to keep the suite fast
TINY = 8  # and very deep CIFAR nets at 8x8 (final maps 2x2): shapes, params and FLOPs still hold


def spec_id(p: Path) -> str:
    return f"{p.parent.name}/{p.stem}"


@functools.cache
def compiled(path: Path, overrides: tuple[str, ...] = ()):
    """(resolved, graph) for ``path``; cached (the backend never mutates the IR)."""
    return compile_spec(path, list(overrides))


def small(path: Path) -> tuple[str, ...]:
    """Overrides that shrink an expensive spec's input (compiled again by the IR at that size)."""
    _, g = compiled(path)
    if max(g.input_shape[1:]) > SMALL:
        return (f"input.size={SMALL}",)
    if len(g) > 2000:
        return (f"input.size={TINY}",)
    return ()


@functools.cache
def emitted(path: Path, overrides: tuple[str, ...] = ()) -> str:
    from rescompile.backends.torch import emit

    return emit(compiled(path, overrides)[1])


# Spec variants that exercise what the library's specs do not: every shortcut option, mixed
# per-stage overrides, pre-activation with option A, avg-pool downsampling at odd sizes, ...
VARIANTS: list[tuple[str, tuple[str, ...]]] = [
    ("paper/cifar-resnet20", ("shortcut=B",)),
    ("paper/cifar-resnet20", ("shortcut=C",)),
    ("paper/cifar-resnet20", ("preact=true",)),  # pre-activation with option A
    ("paper/cifar-resnet20", ("preact=true", "shortcut=none")),
    ("paper/cifar-resnet20", ("stages.1.shortcut=B",)),  # A and B in one model
    ("paper/cifar-resnet20", ("stages.2.shortcut=none",)),  # residual and plain blocks
    ("paper/cifar-resnet20", ("head.dropout=0.25", "norm.eps=0.001", "norm.momentum=0.01")),
    ("paper/cifar-resnet20", ("init.zero_init_residual=true",)),
    ("paper/cifar-resnet20", ("block.expansion=2",)),  # basic blocks with width != output
    ("paper/cifar-resnet20", ("stages.0.stride=2", "input.size=33")),  # odd sizes, 0 pad channels
    ("paper/cifar-resnet20", ("stem=deep",)),
    ("paper/resnet50", ("input.size=64", "shortcut=A")),  # v1 bottleneck, option A
    ("torchvision/resnet50", ("input.size=64", "stages.2.stride_on=1x1")),  # v1 and v1.5 mixed
    ("torchvision/resnet50", ("input.size=64", "stages.1.downsample=avgpool")),
    ("torchvision/resnet50", ("input.size=64", "downsample=avgpool", "preact=true")),
    ("torchvision/resnext50_32x4d", ("input.size=64", "init.zero_init_residual=true", "stem=deep")),
    ("torchvision/resnet18", ("input.size=64", "stages.3.block=bottleneck")),  # two block kinds
    ("torchvision/resnet18", ("input.size=[64, 48]", "input.channels=1", "num_classes=7")),
    ("variants/resnet50-d", ("input.size=72",)),  # ceil-mode avg pool on odd maps
    # projections that never stride (no stride parameter in the shortcut builders)
    ("paper/cifar-resnet20",
     ("stages=[{depth: 2, width: 32}]", "stem={kind: cifar, width: 16}", "shortcut=B")),
    ("variants/resnet50-d", ("stages=[{depth: 2, width: 64}]", "input.size=32")),
    # long class names: repeated blocks that do not fit on one line
    ("torchvision/resnext101_32x8d",
     ("input.size=64", "preact=true", "shortcut=none", "stages.3.stride_on=1x1")),
]


def variant_path(v: tuple[str, tuple[str, ...]]) -> Path:
    return ROOT / "specs" / f"{v[0]}.yaml"


def variant_id(v: tuple[str, tuple[str, ...]]) -> str:
    return f"{v[0]}[{','.join(v[1])}]"
