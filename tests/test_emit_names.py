"""The emitted file's one namespace: no name shadows another, a builtin or an import."""

from __future__ import annotations

import pytest

from rescompile.emission.names import IMPORTS, Namespace
from rescompile.errors import EmitError


def test_created_names_never_shadow_builtins_imports_or_each_other():
    ns = Namespace()
    assert ns.claim("ResNet", "model class name") == "ResNet"
    assert ns.create("ResNet") == "ResNet_"
    assert ns.create("ResNet") == "ResNet__"
    assert ns.create("range") == "range_"  # a builtin
    assert ns.create("nnx") == "nnx_"  # an imported module
    assert ns.create("BasicBlock") == "BasicBlock"


@pytest.mark.parametrize("name", ["print", "ValueError", *sorted(IMPORTS)])
def test_the_model_class_cannot_take_a_builtin_or_import(name):
    with pytest.raises(EmitError, match="shadow"):
        Namespace().claim(name, "model class name")


@pytest.mark.parametrize("name", ["class", "__init__", "a b", "x;import os"])
def test_unsafe_names_are_refused(name):
    with pytest.raises(EmitError, match="not a safe Python identifier"):
        Namespace().create(name)
