"""Code-generation targets, and the one registry that finds them.

``load_backend(name)`` returns a :class:`Backend`: ``emit`` (graph -> source, framework-free),
``check`` (build the source and compare it with the IR) and ``training`` (the module that
implements the harness's runtime protocol, imported on first use). Built-in targets are
``rescompile.backends.torch`` and ``rescompile.backends.flax``; a third-party target registers
under the entry-point group ``rescompile.backends`` and is found the same way. Importing this
package imports no framework.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from rescompile.errors import UserError

BUILTIN = ("torch", "flax")


@dataclass(frozen=True)
class Backend:
    """One target: its package, with the three things the core asks of it."""

    name: str
    module: ModuleType  # the package: emit, check and the backend's own tools (export, ...)

    @property
    def emit(self) -> Callable[..., str]:
        return self.module.emit

    @property
    def check(self) -> Callable[..., list[tuple[str, str, str, bool]]]:
        return self.module.check

    @property
    def training(self) -> ModuleType:
        """The ``training`` module (``make_runtime``); a clear error when it cannot load."""
        try:
            return importlib.import_module(f"{self.module.__name__}.training")
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith(self.module.__name__):
                raise UserError(
                    f"backend {self.name!r} cannot train (it has no training module)"
                ) from None
            raise UserError(
                f"the {self.name} backend needs the Python package {exc.name!r} to train; "
                f"install rescompile[{self.name}]"
            ) from None


@functools.cache
def load_backend(name: str) -> Backend:
    """The backend called ``name``: built-in, or registered under ``rescompile.backends``."""
    if name in BUILTIN:
        return Backend(name, importlib.import_module(f"rescompile.backends.{name}"))
    from importlib.metadata import entry_points

    for ep in entry_points(group="rescompile.backends"):
        if ep.name == name:
            module: Any = ep.load()
            return Backend(name, module)
    raise UserError(f"unknown backend {name!r}; available: {', '.join(BUILTIN)}")
