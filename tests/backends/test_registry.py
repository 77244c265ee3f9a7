"""One registry finds every backend: emit, check and training, with clear errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
from rescompile.backends import BUILTIN, load_backend
from spec_cases import ROOT

from rescompile.errors import UserError


@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_backends_emit_without_importing_a_framework(name):
    code = (
        "import sys\n"
        "from rescompile import compile_spec\n"
        "from rescompile.backends import load_backend\n"
        "_, g = compile_spec('specs/paper/cifar-resnet20.yaml')\n"
        f"b = load_backend({name!r})\n"
        'assert b.emit(g).startswith(\'"""\')\n'
        "print(','.join(m for m in ('torch', 'jax', 'flax') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == ""
    backend = load_backend(name)
    assert backend.name == name and backend.module.__name__ == f"rescompile.backends.{name}"
    assert callable(backend.check)


def test_unknown_backend_is_a_user_error():
    with pytest.raises(UserError, match="unknown backend 'tensorflow'; available: torch, flax"):
        load_backend("tensorflow")
