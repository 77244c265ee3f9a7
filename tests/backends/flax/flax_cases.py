"""Cases for the flax backend tests: the suite's shared spec cases plus cached builds."""

from __future__ import annotations

import functools
from pathlib import Path

from spec_cases import (  # noqa: F401  (re-exported for the flax test modules)
    ROOT,
    SMALL,
    SPECS,
    VARIANTS,
    compiled,
    small,
    spec_id,
    variant_id,
    variant_path,
)


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
    from rescompile.backends.flax.tools import abstract_model

    return abstract_model(model_class(path, overrides))
