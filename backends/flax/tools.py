"""Loading emitted source and checking a built model against the IR (imports jax and flax)."""

from __future__ import annotations

import contextlib
import hashlib
import linecache
import math
import types
from collections.abc import Iterator
from typing import Any

from rescompile.emission.state import tensor_owners
from rescompile.ir.graph import Graph


def load_module(source: str, class_name: str) -> type:
    """Execute emitted flax source in a fresh module namespace and return ``class_name``.

    The source is registered with :mod:`linecache`, so tracebacks through the model show its lines.
    """
    digest = hashlib.sha256(source.encode()).hexdigest()[:12]
    filename = f"<rescompile-flax {class_name} {digest}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    module = types.ModuleType(f"rescompile_flax_{class_name}_{digest}")
    module.__file__ = filename
    exec(compile(source, filename, "exec"), module.__dict__)  # noqa: S102 - our own emitted code
    try:
        return module.__dict__[class_name]
    except KeyError:
        raise KeyError(f"the source defines no class {class_name!r}") from None


@contextlib.contextmanager
def linear_tracing() -> Iterator[None]:
    """Keep tracing time linear in the model's depth (a workaround for jax <= 0.10).

    nnx assigns Variables (the Rngs counters, BatchNorm statistics, optimizer state) through a
    ``getattr(value, "sharding", None)`` probe. On a tracer that raises an AttributeError whose
    message walks every equation traced so far, so tracing a model is quadratic in its depth:
    minutes for ResNet-1202. This blanks that message ("the value came from ...") while the
    context is active; jax-ml/jax#40041 removes the walk upstream.
    """
    try:
        from jax._src.interpreters.partial_eval import DynamicJaxprTracer
    except ImportError:  # pragma: no cover - a jax without the private module
        yield
        return
    original = DynamicJaxprTracer.__dict__.get("_origin_msg")
    if original is None:  # pragma: no cover
        yield
        return
    DynamicJaxprTracer._origin_msg = lambda self: ""
    try:
        yield
    finally:
        DynamicJaxprTracer._origin_msg = original


def abstract_model(cls: type, seed: int = 0) -> Any:
    """The model with shape-only arrays: building it allocates and computes nothing."""
    from flax import nnx

    with linear_tracing():
        return nnx.eval_shape(lambda: cls(rngs=nnx.Rngs(seed)))


def output_shape(model: Any, input_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The forward pass's output shape for an NHWC ``input_shape``, without running it."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    graphdef, state = nnx.split(model)

    def forward(state, x):
        return nnx.merge(graphdef, state)(x)

    x = jax.ShapeDtypeStruct(input_shape, jnp.float32)
    with linear_tracing():
        return tuple(jax.eval_shape(forward, state, x).shape)


def count(model: Any) -> tuple[int, int]:
    """``(parameters, BatchNorm buffers)`` of a (possibly abstract) model."""
    from flax import nnx

    def total(kind) -> int:
        leaves = nnx.to_flat_state(nnx.state(model, kind))
        return sum(math.prod(v.get_value().shape) for _, v in leaves)

    return total(nnx.Param), total(nnx.BatchStat)


def ir_param_names(g: Graph) -> set[str]:
    """IR nodes that own tensors (convs, BatchNorms and the classifier)."""
    return tensor_owners(g)


def check(g: Graph, source: str) -> list[tuple[str, Any, Any, bool]]:
    """Build the emitted model (shapes only) and compare it with the IR, for ``build --check``.

    Returns ``(what, IR value, model value, ok)`` rows: parameters, buffers, output shape and
    the module paths holding tensors.
    """
    from rescompile.backends.flax.convert import module_paths

    model = abstract_model(load_module(source, g.class_name))
    params, buffers = count(model)
    c, h, w = g.input_shape
    # batch 2: in training mode a 1x1 map of a single image has no batch statistics
    out = output_shape(model, (2, h, w, c))
    expected_out = (2, *g[g.output].meta["shape"])
    names = set(module_paths(model))
    expected_names = ir_param_names(g)
    return [
        ("parameters", g.totals["params"], params, params == g.totals["params"]),
        ("BN buffers", g.totals["buffers"], buffers, buffers == g.totals["buffers"]),
        ("output shape", expected_out, out, out == expected_out),
        ("modules with tensors", len(expected_names), len(names), names == expected_names),
    ]
