"""Everything that reaches emitted source as a name or a literal, validated, and one namespace.

Nothing from a spec is interpolated into code unchecked: identifiers, dotted IR node names,
numbers, docstring words and the spec hash each pass one of the functions below first. The
:class:`Namespace` hands out the file's top-level names (classes, helper functions, module
aliases) so that none shadows another, a builtin or an imported module, as torch.fx's
``_Namespace`` does.
"""

from __future__ import annotations

import builtins
import keyword
import math
import re

from rescompile.errors import EmitError

# Module names the renderers import under their own name; a model class can never take one.
IMPORTS = frozenset({"torch", "nn", "jax", "jnp", "nnx"})

# Attribute names an nn.Module or an nnx.Module already uses (a submodule must never shadow one).
MODULE_ATTRS = frozenset(
    """T_destination add_module apply bfloat16 buffers call_super_init children compile cpu cuda
    double dump_patches eval extra_repr float forward get_buffer get_extra_state get_parameter
    get_submodule half ipu load_state_dict modules mtia named_buffers named_children
    named_modules named_parameters parameters register_backward_hook register_buffer
    register_forward_hook register_forward_pre_hook register_full_backward_hook
    register_full_backward_pre_hook register_load_state_dict_post_hook register_module
    register_parameter register_state_dict_pre_hook requires_grad_ set_extra_state
    set_submodule share_memory state_dict to to_empty train training type xpu zero_grad
    iter_children iter_modules perturb set_attributes sow""".split()
)
_SAFE_TEXT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_HEX = re.compile(r"[0-9a-f]{0,64}")
_SAFE_IDENTS: set[str] = set()  # validation is a pure function of the string: cache the passes
_SAFE_PARTS: set[str] = set()


def ident(name: object, what: str = "identifier") -> str:
    """``name`` if it is a plain ASCII, non-keyword, non-dunder Python identifier."""
    if isinstance(name, str) and name in _SAFE_IDENTS:
        return name
    if (
        not isinstance(name, str)
        or not name.isascii()
        or not name.isidentifier()
        or keyword.iskeyword(name)
        or name.startswith("__")
    ):
        raise EmitError(f"refusing to emit {what} {name!r}: not a safe Python identifier")
    _SAFE_IDENTS.add(name)
    return name


def attr_name(name: object, what: str = "module name") -> str:
    """A submodule attribute name: an identifier that shadows no attribute of a module class."""
    ident(name, what)
    if name.startswith("_") or name in MODULE_ATTRS:
        raise EmitError(f"refusing to emit {what} {name!r}: it would shadow Module.{name}")
    return name


def node_path(name: object) -> list[str]:
    """Split a dotted IR node name; each part an attribute name or a decimal index."""
    if not isinstance(name, str) or not name:
        raise EmitError(f"refusing to emit IR node name {name!r}")
    parts = name.split(".")
    for p in parts:
        if p in _SAFE_PARTS:
            continue
        if not (p.isascii() and p.isdecimal() and str(int(p)) == p):
            attr_name(p, f"IR node name {name!r} component")
        _SAFE_PARTS.add(p)
    return parts


def text(value: object, what: str) -> str:
    """A spec name for a comment or docstring: letters, digits, ``_ . -`` only."""
    if not isinstance(value, str) or not _SAFE_TEXT.fullmatch(value):
        raise EmitError(f"refusing to emit {what} {value!r} into a docstring")
    return value


def hexdigest(value: object, what: str = "spec hash") -> str:
    if not isinstance(value, str) or not _HEX.fullmatch(value):
        raise EmitError(f"refusing to emit {what} {value!r}")
    return value


def num(value: object) -> str:
    """A literal for an int or a finite float taken from the IR."""
    if isinstance(value, bool):
        raise EmitError(f"expected a number, got {value!r}")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)
    raise EmitError(f"expected a number, got {value!r}")


class Namespace:
    """The top-level names of one emitted file.

    ``create(candidate)`` returns ``candidate``, or ``candidate_``, ``candidate__``, ... when it is
    taken, a keyword, a builtin or an imported module's name.
    """

    def __init__(self) -> None:
        self._taken = set(dir(builtins)) | IMPORTS

    def claim(self, name: str, what: str) -> str:
        """Take ``name`` exactly (the model class, which users import by name)."""
        ident(name, what)
        if name in self._taken:
            raise EmitError(f"refusing to emit {what} {name!r}: it would shadow a builtin name")
        self._taken.add(name)
        return name

    def create(self, candidate: str, what: str = "name") -> str:
        name = ident(candidate, what)
        while name in self._taken:
            name += "_"
        self._taken.add(name)
        return name
