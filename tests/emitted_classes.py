"""What an emitted file defines, read from its AST: the same for both backends, by design."""

from __future__ import annotations

import ast
import re

# Definitions only the flax file has: what torch.nn provides and flax.nnx lacks (a spec's own
# class name may push them to a trailing underscore).
FLAX_ONLY = re.compile(r"(BatchNorm|Sequential|AvgPool|FloorAvgPool|MaxPool|linear)_*")


def definitions(source: str) -> dict[str, list[str]]:
    """Top-level classes and functions -> their parameter names (``__init__``'s for a class),
    without ``self`` and flax's ``rngs``, in order."""
    out: dict[str, list[str]] = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef):
            init = [s for s in node.body if isinstance(s, ast.FunctionDef) and s.name == "__init__"]
            fn = init[0] if init else None
        elif isinstance(node, ast.FunctionDef):
            fn = node
        else:
            continue
        args = [] if fn is None else [*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs]
        out[node.name] = [a.arg for a in args if a.arg not in ("self", "rngs")]
    return out


def assert_same_definitions(torch_source: str, flax_source: str) -> None:
    """Both files define the same classes and helpers, in the same order, with the same
    parameters; flax adds only its stand-ins for torch.nn pieces."""
    t, f = definitions(torch_source), definitions(flax_source)
    assert t, "no definitions found"
    extra = [k for k in f if k not in t]
    assert all(FLAX_ONLY.fullmatch(k) for k in extra), extra
    assert [(k, f[k]) for k in f if k in t] == list(t.items())
