"""Shared cases for the flax backend tests: every spec in specs/, variants, cached builds."""

from __future__ import annotations

import functools
from pathlib import Path

from rescompile import compile_spec

ROOT = Path(__file__).resolve().parents[3]
SPECS = sorted((ROOT / "specs").rglob("*.yaml"))
SMALL = 32  # ImageNet-size specs run at 32x32 (final maps 1x1) where a forward pass is executed


def spec_id(p: Path) -> str:
    return f"{p.parent.name}/{p.stem}"


@functools.cache
def compiled(path: Path, overrides: tuple[str, ...] = ()):
    """(resolved, graph) for ``path``; cached (the backend never mutates the IR)."""
    return compile_spec(path, list(overrides))


def small(path: Path) -> tuple[str, ...]:
    """Overrides that shrink an ImageNet-size spec's input for tests that execute the model."""
    _, g = compiled(path)
    return (f"input.size={SMALL}",) if max(g.input_shape[1:]) > SMALL else ()


@functools.cache
def emitted(path: Path, overrides: tuple[str, ...] = ()) -> str:
    from rescompile.backends.flax import emit

    return emit(compiled(path, overrides)[1])


@functools.cache
def model_class(path: Path, overrides: tuple[str, ...] = ()) -> type:
    from rescompile.backends.flax import load_module

    return load_module(emitted(path, overrides), compiled(path, overrides)[1].class_name)


def abstract(path: Path, overrides: tuple[str, ...] = ()):
    """A fresh shape-only instance of the emitted model (nothing allocated or computed)."""
    from rescompile.backends.flax.runtime import abstract_model

    return abstract_model(model_class(path, overrides))


# Variants that exercise what the library's specs do not: every shortcut option, mixed per-stage
# overrides (which make a block class take a `shortcut`, `stride_on`, `avg_down` or `groups`
# argument), pre-activation with option A, dropout, zero-init, avg-pool downsampling at odd sizes.
VARIANTS: list[tuple[str, tuple[str, ...]]] = [
    ("paper/cifar-resnet20", ("shortcut=B",)),
    ("paper/cifar-resnet20", ("shortcut=C",)),
    ("paper/cifar-resnet20", ("preact=true",)),  # pre-activation with option A
    ("paper/cifar-resnet20", ("preact=true", "shortcut=none")),
    ("paper/cifar-resnet20", ("stages.1.shortcut=B",)),  # A and B in one block class
    ("paper/cifar-resnet20", ("stages.1.shortcut=C",)),  # identity and projection, no rule
    ("paper/cifar-resnet20", ("stages.2.shortcut=none",)),  # residual and plain blocks
    ("paper/cifar-resnet20", ("preact=true", "stages.1.shortcut=C", "stages.2.shortcut=none")),
    ("paper/cifar-resnet20", ("head.dropout=0.25", "norm.eps=0.001", "norm.momentum=0.01")),
    ("paper/cifar-resnet20", ("init.zero_init_residual=true",)),
    ("paper/cifar-resnet20", ("block.expansion=2",)),  # basic blocks with width != output
    ("paper/cifar-resnet20", ("stages.0.stride=2", "input.size=33")),  # odd sizes
    ("paper/cifar-resnet20", ("stem=deep",)),
    ("paper/resnet50", ("input.size=64", "shortcut=A")),  # v1 bottleneck, option A
    ("torchvision/resnet50", ("input.size=64", "stages.2.stride_on=1x1")),  # v1 and v1.5 mixed
    ("torchvision/resnet50", ("input.size=64", "stages.1.downsample=avgpool")),
    ("torchvision/resnet50", ("input.size=64", "downsample=avgpool", "preact=true")),
    ("torchvision/resnet50", ("input.size=64", "shortcut=C", "downsample=avgpool")),
    ("torchvision/resnext50_32x4d", ("input.size=64", "init.zero_init_residual=true", "stem=deep")),
    ("torchvision/resnext50_32x4d", ("input.size=64", "stages.0.block={kind: bottleneck}")),
    ("torchvision/resnet18", ("input.size=64", "stages.3.block=bottleneck")),  # two block kinds
    ("torchvision/resnet18", ("input.size=[64, 48]", "input.channels=1", "num_classes=7")),
    ("variants/resnet50-d", ("input.size=72",)),  # ceil-mode avg pool on odd maps (9 -> 5)
    (
        "torchvision/resnext101_32x8d",
        ("input.size=64", "preact=true", "shortcut=none", "stages.3.stride_on=1x1"),
    ),
]


def variant_path(v: tuple[str, tuple[str, ...]]) -> Path:
    return ROOT / "specs" / f"{v[0]}.yaml"


def variant_id(v: tuple[str, tuple[str, ...]]) -> str:
    return f"{v[0]}[{','.join(v[1])}]"
