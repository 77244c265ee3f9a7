"""Weights between the emitted flax.nnx model and PyTorch's state_dict layout, and the portable
checkpoint (imports jax and flax).

An nnx module path joined with dots is the IR node name (``layer1.0.downsample.0``); the tensor
names are PyTorch's, so the keys are those of the emitted PyTorch model's ``state_dict()``:

=====================  ==========================  ==================================
flax (NHWC)            PyTorch (NCHW)              conversion
=====================  ==========================  ==================================
Conv ``kernel``        ``weight``                  HWIO <-> OIHW (1-d, ECA: WIO <-> OIW)
Conv ``bias``          ``bias``                    as is (SE's 1x1 convs)
Linear ``kernel``      ``weight``                  (in, out) <-> (out, in)
Linear ``bias``        ``bias``                    as is
BatchNorm ``scale``    ``weight``                  as is (GroupNorm's too)
BatchNorm ``bias``     ``bias``                    as is
BatchNorm ``mean``     ``running_mean``            as is
BatchNorm ``var``      ``running_var``             as is (both hold the unbiased estimate)
(none)                 ``num_batches_tracked``     written as 0, ignored when read
=====================  ==========================  ==================================

``num_batches_tracked`` only matters to PyTorch when BatchNorm's momentum is ``None`` (a
cumulative average), which the IR never uses.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from rescompile.harness.checkpoint import (
    CheckpointError,
    check_compatible,
    load_checkpoint,
    save_checkpoint,
    split_optimizer,
)

COUNTER = "num_batches_tracked"


def module_paths(model: Any) -> dict[str, Any]:
    """IR node name -> the nnx Conv, BatchNorm or Linear at that path.

    Ordered naturally (``layer1.2`` before ``layer1.10``), so "the first mismatching tensor" of a
    checkpoint is the one nearest the input.
    """
    from flax import nnx

    found = [
        (path, module)
        for path, module in nnx.iter_modules(model)
        if isinstance(module, nnx.Conv | nnx.BatchNorm | nnx.GroupNorm | nnx.Linear)
    ]
    found.sort(key=lambda item: _natural(item[0]))
    return {".".join(str(p) for p in path): module for path, module in found}


def _natural(path: tuple) -> tuple:
    """Sort key: the stem, then stages and blocks by number, then the head."""
    head = 2 if path[0] in ("norm", "fc") else 1 if str(path[0]).startswith("layer") else 0
    return (head, *((0, int(p), "") if str(p).isdigit() else (1, 0, str(p)) for p in path))


def _tensors(module: Any) -> dict[str, tuple[str, Any]]:
    """PyTorch tensor name -> (nnx attribute, value) of one layer."""
    from flax import nnx

    if isinstance(module, nnx.BatchNorm):
        names = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}
    elif isinstance(module, nnx.GroupNorm):
        names = {"weight": "scale", "bias": "bias"}
    else:
        names = {"weight": "kernel", "bias": "bias"}
    out = {}
    for torch_name, attr in names.items():
        var = getattr(module, attr, None)
        if var is not None:
            out[torch_name] = (attr, var.get_value())
    return out


def _to_torch(value: Any) -> np.ndarray:
    a = np.asarray(value)
    if a.ndim == 4:  # conv kernel HWIO -> OIHW
        return a.transpose(3, 2, 0, 1)
    if a.ndim == 3:  # 1-d conv kernel WIO -> OIW (ECA)
        return a.transpose(2, 1, 0)
    if a.ndim == 2:  # linear kernel (in, out) -> (out, in)
        return a.T
    return a


def _from_torch(value: np.ndarray) -> np.ndarray:
    if value.ndim == 4:  # OIHW -> HWIO
        return value.transpose(2, 3, 1, 0)
    if value.ndim == 3:  # OIW -> WIO
        return value.transpose(2, 1, 0)
    if value.ndim == 2:
        return value.T
    return value


def torch_shapes(model: Any) -> dict[str, tuple[int, ...]]:
    """The state_dict key -> shape that ``model`` expects, in the model's order (no counters)."""
    shapes = {}
    for name, module in module_paths(model).items():
        for tname, (_, value) in _tensors(module).items():
            shapes[f"{name}.{tname}"] = _to_torch(np.empty(value.shape, np.uint8)).shape
    return shapes


def nnx_to_torch_state_dict(model: Any) -> dict[str, np.ndarray]:
    """The model's parameters and BatchNorm statistics as numpy arrays keyed like PyTorch's
    ``state_dict()`` (OIHW conv weights, (out, in) linear weights), counters included."""
    import jax
    from flax import nnx

    out: dict[str, np.ndarray] = {}
    for name, module in module_paths(model).items():
        for tname, (_, value) in _tensors(module).items():
            if isinstance(value, jax.ShapeDtypeStruct):
                raise ValueError(
                    f"{name}.{tname} has no value: the model was built with nnx.eval_shape "
                    "and its weights were never loaded"
                )
            out[f"{name}.{tname}"] = np.array(_to_torch(value), order="C")  # a copy
        if isinstance(module, nnx.BatchNorm):
            out[f"{name}.{COUNTER}"] = np.array(0, dtype=np.int64)
    return out


def torch_state_dict_to_nnx(model: Any, state_dict: Mapping[str, Any]) -> Any:
    """Load PyTorch-layout arrays (numpy, or anything ``np.asarray`` takes) into ``model``.

    The keys must be exactly the model's (``num_batches_tracked`` counters may be present or
    not); otherwise :class:`~rescompile.harness.checkpoint.CheckpointError` names the first
    missing, unexpected or wrongly shaped tensor. Values are cast to each variable's dtype.
    Returns ``model``, updated in place.
    """
    import jax.numpy as jnp

    layers = module_paths(model)
    counters = {f"{name}.{COUNTER}" for name, m in layers.items() if _is_bn(m)}
    tensors = {k: v for k, v in state_dict.items() if k not in counters}
    check_compatible(tensors, torch_shapes(model), ignore_prefix=None)
    for name, module in layers.items():
        for tname, (attr, value) in _tensors(module).items():
            new = _from_torch(np.asarray(tensors[f"{name}.{tname}"]))
            # a copy: on CPU, jnp.asarray may alias the numpy buffer (a torch tensor's memory)
            getattr(module, attr).set_value(jnp.array(new, dtype=value.dtype, copy=True))
    return model


def _is_bn(module: Any) -> bool:
    from flax import nnx

    return isinstance(module, nnx.BatchNorm)


# ---------------------------------------------------------------------------------------------
# the portable checkpoint: rescompile.harness.checkpoint's format, written from / read into nnx


def save_portable(
    model: Any,
    path: str | Path,
    resolved_spec: Mapping[str, Any],
    spec_hash: str,
    state: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` as a portable checkpoint: ``NAME.safetensors`` keyed like PyTorch's
    state_dict plus the ``NAME.json`` sidecar holding ``resolved_spec`` and ``spec_hash``.

    ``path`` names the tensor file (``.safetensors`` is appended when missing). Returns it.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_name(path.name + ".safetensors")
    return save_checkpoint(
        path, nnx_to_torch_state_dict(model), dict(resolved_spec), spec_hash, dict(state or {})
    )


def load_portable(model: Any, path: str | Path, *, spec_hash: str | None = None) -> dict:
    """Load a portable checkpoint (written by either backend) into ``model``; return its sidecar.

    Raises :class:`~rescompile.harness.checkpoint.CheckpointError` naming the first tensor that
    does not fit (a checkpoint of another spec), and, when ``spec_hash`` is given and the
    tensors fit, if the checkpoint was written for another spec hash.
    """
    tensors, meta = load_checkpoint(path)
    weights, _ = split_optimizer(tensors)
    weights = {k: v for k, v in weights.items() if not k.endswith(f".{COUNTER}")}
    check_compatible(weights, torch_shapes(model), ignore_prefix=None)
    if spec_hash is not None and meta.get("spec_hash") != spec_hash:
        raise CheckpointError(
            f"{path} was written for spec hash {meta.get('spec_hash')}, "
            f"but the model's spec hashes to {spec_hash}"
        )
    torch_state_dict_to_nnx(model, weights)
    return meta
