"""The spec library: the YAML specs shipped with rescompile, addressable by name.

The library is the top-level ``specs/`` folder of the source tree, installed as the package data of
``rescompile.specs`` (``pyproject.toml`` maps one onto the other), so an editable install and a
wheel read the same files through :mod:`importlib.resources`.

A library spec's name is its path in the library without the suffix: ``paper/resnet50``,
``torchvision/resnext50_32x4d``. Where a command takes a spec (and in ``extends:``), a path to an
existing file always wins; a name that is no such file is looked up in the library, with or
without ``.yaml``.

    >>> "paper/resnet50" in names()
    True
    >>> find("paper/resnet50").name
    'resnet50.yaml'
    >>> find("no/such-spec") is None
    True
"""

from __future__ import annotations

import functools
import re
from importlib import resources
from pathlib import Path

# what a library name may look like: folder/name, letters, digits, '-', '_', '.'
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)*")


@functools.cache
def root() -> Path:
    """The directory holding the library (``paper/``, ``torchvision/``, ..., ``schema.json``)."""
    folder = resources.files("rescompile.specs")
    if not isinstance(folder, Path) or not folder.is_dir():
        raise RuntimeError(f"the spec library is not a directory on disk: {folder}")
    return folder


def paths() -> list[Path]:
    """Every library spec, sorted by name."""
    return sorted(root().rglob("*.yaml"), key=lambda p: name_of(p) or "")


def names() -> list[str]:
    """Every library spec's name (``paper/resnet50``, ...), sorted."""
    return [name_of(p) for p in paths()]


def name_of(path: Path) -> str | None:
    """The library name of ``path``, or None when it is not a library spec."""
    try:
        rel = Path(path).resolve().relative_to(root().resolve())
    except ValueError:
        return None
    return rel.with_suffix("").as_posix() if rel.suffix in (".yaml", ".yml") else None


def find(name: str) -> Path | None:
    """The library spec called ``name`` (``paper/resnet50`` or ``paper/resnet50.yaml``), or None."""
    if len(name) > 200 or not _NAME.fullmatch(name) or ".." in name.split("/"):
        return None
    base = root() / name
    for candidate in (base, base.with_name(base.name + ".yaml")):
        if candidate.suffix in (".yaml", ".yml") and candidate.is_file():
            return candidate
    return None
