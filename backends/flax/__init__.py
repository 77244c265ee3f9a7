"""The flax.nnx backend: IR -> flax.nnx source, weight conversion, portable checkpoints.

    from rescompile import compile_spec
    from rescompile.backends import flax as fb

    resolved, graph = compile_spec("specs/torchvision/resnet50.yaml")
    source = fb.emit(graph)                        # a self-contained flax.nnx file
    Model = fb.load_module(source, graph.class_name)
    model = Model(rngs=nnx.Rngs(0))
    fb.torch_state_dict_to_nnx(model, state_dict)  # numpy arrays keyed like torch's state_dict
    spec = resolved.spec.model_dump(mode="json")
    fb.save_portable(model, "ckpt.safetensors", spec, graph.spec_hash)  # + ckpt.json sidecar

Importing this package imports neither jax nor flax: ``emit`` is pure Python, and the runtime
pieces import them when first called. ``check(graph, source)`` backs ``rescompile build --check``;
``linear_tracing()`` keeps jax's tracing time linear in depth (see its docstring) around
``nnx.eval_shape``/``jax.jit`` of deep models; ``abstract_model(cls)`` builds a shape-only model
that ``torch_state_dict_to_nnx`` can fill without running any initialiser.
"""

from __future__ import annotations

from rescompile.backends.flax.render import emit

from rescompile.errors import EmitError
from rescompile.ir.features import FEATURES as _FAMILY_FEATURES

NAME = "flax"
SUFFIX = ".py"
# The family features (rescompile.ir.features) this backend emits: all of them.
FEATURES = frozenset(_FAMILY_FEATURES)

__all__ = [
    "FEATURES",
    "NAME",
    "SUFFIX",
    "EmitError",
    "abstract_model",
    "check",
    "emit",
    "load_module",
    "load_portable",
    "nnx_to_torch_state_dict",
    "save_portable",
    "linear_tracing",
    "torch_shapes",
    "torch_state_dict_to_nnx",
]

_RUNTIME = {
    "abstract_model": "rescompile.backends.flax.tools",
    "check": "rescompile.backends.flax.tools",
    "linear_tracing": "rescompile.backends.flax.tools",
    "load_module": "rescompile.backends.flax.tools",
    "nnx_to_torch_state_dict": "rescompile.backends.flax.convert",
    "torch_state_dict_to_nnx": "rescompile.backends.flax.convert",
    "torch_shapes": "rescompile.backends.flax.convert",
    "save_portable": "rescompile.backends.flax.convert",
    "load_portable": "rescompile.backends.flax.convert",
}


def __getattr__(name: str):
    """Import the jax-dependent pieces on first use."""
    if name in _RUNTIME:
        import importlib

        return getattr(importlib.import_module(_RUNTIME[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
