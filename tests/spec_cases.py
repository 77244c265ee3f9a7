"""Spec cases shared by the whole suite: the library's specs, feature-covering variants, caches.

``tests/`` is on ``sys.path`` (pytest's rootdir conftest), so every test module, the backends'
included, imports these from one place.
"""

from __future__ import annotations

import functools
from pathlib import Path

from rescompile import compile_spec

ROOT = Path(__file__).resolve().parents[1]
# Every spec of the library (core tests: validation, schema, numbers, graphs, hostile bases) ...
LIBRARY_SPECS = sorted((ROOT / "specs").rglob("*.yaml"))
# ... timm's ResNet family (tests/test_timm_family.py checks it against timm's own figures) ...
TIMM_SPECS = sorted((ROOT / "specs" / "timm").glob("*.yaml"))
# ... and the specs the backends' tests emit and run: the library without the ResNet family
# (specs/timm: 79 models of up to 800M parameters; specs/followup: the follow-up papers' audit
# rows), which has tests of its own: tests/test_timm_family.py (numbers and layout for all) and
# tests/backends/test_timm_emit.py (a few small models per family feature through both emitters).
SPECS = [p for p in LIBRARY_SPECS if p.parent.name not in ("timm", "followup")]
TORCHVISION_SPECS = sorted((ROOT / "specs" / "torchvision").glob("*.yaml"))
SMALL = 32  # ImageNet-size specs run at 32x32 (final maps 1x1) where a model is executed


def spec_id(p: Path) -> str:
    return f"{p.parent.name}/{p.stem}"


@functools.cache
def compiled(path: Path, overrides: tuple[str, ...] = ()):
    """(resolved, graph) for ``path``; cached (the backends never mutate the IR)."""
    return compile_spec(path, list(overrides))


def small(path: Path) -> tuple[str, ...]:
    """Overrides that shrink an ImageNet-size spec's input for tests that execute the model."""
    _, g = compiled(path)
    return (f"input.size={SMALL}",) if max(g.input_shape[1:]) > SMALL else ()


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
    ("paper/cifar-resnet20", ("stages.0.stride=2", "input.size=33")),  # odd sizes, 0 pad channels
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
    # projections that never stride (no stride parameter in the shortcut builders)
    (
        "paper/cifar-resnet20",
        ("stages=[{depth: 2, width: 32}]", "stem={kind: cifar, width: 16}", "shortcut=B"),
    ),
    ("variants/resnet50-d", ("stages=[{depth: 2, width: 64}]", "input.size=32")),
    # long class names: repeated blocks that do not fit on one line
    (
        "torchvision/resnext101_32x8d",
        ("input.size=64", "preact=true", "shortcut=none", "stages.3.stride_on=1x1"),
    ),
]


def variant_path(v: tuple[str, tuple[str, ...]]) -> Path:
    return ROOT / "specs" / f"{v[0]}.yaml"


def variant_id(v: tuple[str, tuple[str, ...]]) -> str:
    return f"{v[0]}[{','.join(v[1])}]"


# The deepest and widest library specs cost the most where a test executes every spec; their block
# designs are covered by smaller specs (cifar-resnet110, resnet50/101, resnext50_32x4d,
# wide_resnet50_2), so tests that run a model per spec run these under -m slow only.
HEAVY = {
    "paper/cifar-resnet1202",
    "paper/resnet152",
    "torchvision/resnet152",
    "torchvision/resnext101_32x8d",
    "torchvision/wide_resnet101_2",
}


def executed(paths: list[Path]) -> list:
    """``paths`` as pytest parameters, the heavy ones marked slow."""
    import pytest

    return [pytest.param(p, marks=pytest.mark.slow) if spec_id(p) in HEAVY else p for p in paths]
