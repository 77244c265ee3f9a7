"""Cases for the PyTorch backend tests: the suite's shared spec cases plus cached emits."""

from __future__ import annotations

import functools
from pathlib import Path

import spec_cases
from spec_cases import (  # noqa: F401  (re-exported for the torch test modules)
    ROOT,
    SMALL,
    SPECS,
    TORCHVISION_SPECS,
    VARIANTS,
    compiled,
    spec_id,
    variant_id,
    variant_path,
)

TINY = 8  # very deep CIFAR nets run at 8x8 (final maps 2x2): shapes, params and FLOPs still hold


def small(path: Path) -> tuple[str, ...]:
    """Like spec_cases.small, and also shrinks very deep (> 2,000 IR nodes) CIFAR nets."""
    if shrink := spec_cases.small(path):
        return shrink
    return (f"input.size={TINY}",) if len(compiled(path)[1]) > 2000 else ()


@functools.cache
def emitted(path: Path, overrides: tuple[str, ...] = ()) -> str:
    from rescompile.backends.torch import emit

    return emit(compiled(path, overrides)[1])
