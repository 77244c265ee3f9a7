"""Trained weights in the emitted PyTorch model: loading a portable checkpoint's model tensors,
and a quiet, checked ONNX export of the result (``rescompile export``, ``rescompile weights``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rescompile.harness.checkpoint import check_compatible, split_optimizer
from rescompile.ir.graph import Graph

from .tools import build_model, expected_state_dict, export, onnx_max_abs_diff

__all__ = ["ONNX_RTOL", "export_checked", "model_state_dict", "read_state_dict", "trained_model"]

COUNTER = "num_batches_tracked"
# onnxruntime folds BatchNorm into the convolutions and reorders float32 sums: its logits equal
# PyTorch's up to float32 rounding, 1e-4 relative to the largest logit (or 1e-4 absolute)
ONNX_RTOL = 1e-4


def model_state_dict(graph: Graph, tensors: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """The checkpoint's model tensors as the plain ``state_dict`` of the emitted model: no
    ``optim/`` entries, every key the model has (BatchNorm counters a checkpoint lacks are 0),
    dtypes as the model's. Shapes are checked (:class:`CheckpointError` names a mismatch)."""
    model, _ = split_optimizer(tensors)
    expected = expected_state_dict(graph)
    check_compatible(
        {k: v for k, v in model.items() if not k.endswith(COUNTER)},
        {k: v for k, v in expected.items() if not k.endswith(COUNTER)},
        ignore_prefix=None,
    )
    reference = build_model(graph).state_dict()
    out = {}
    for key, like in reference.items():
        if key in model:
            array = np.array(model[key]).reshape(like.shape)
            out[key] = torch.from_numpy(array).to(like.dtype)
        else:  # a counter
            out[key] = torch.zeros_like(like)
    return out


def trained_model(graph: Graph, source: str, tensors: Mapping[str, np.ndarray]) -> nn.Module:
    """The emitted model with a checkpoint's weights, in evaluation mode."""
    model = build_model(graph, source)
    model.load_state_dict(model_state_dict(graph, tensors), strict=True)
    return model.eval()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporter's warnings, log lines and prints (a successful export says nothing)."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def export_checked(
    graph: Graph,
    source: str,
    out_path: str | Path,
    *,
    tensors: Mapping[str, np.ndarray] | None = None,
    opset: int = 18,
    seed: int = 0,
) -> tuple[float, float]:
    """Export to ONNX the model with ``tensors`` (or seeded random weights when ``None``) and
    compare onnxruntime's logits with PyTorch's on a random batch of 3.

    Returns ``(max |onnxruntime - torch|, the bound it had to meet)``; raises ``ValueError``
    when the bound is exceeded.
    """
    torch.manual_seed(seed)
    model = build_model(graph, source) if tensors is None else trained_model(graph, source, tensors)
    model.eval()
    with _quiet():
        export(graph, source, out_path, "onnx", model=model, opset=opset, seed=seed)
    x = torch.randn(3, *graph.input_shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        scale = float(model(x).abs().max())
    bound = ONNX_RTOL * max(1.0, scale)
    diff = onnx_max_abs_diff(out_path, model, x)
    if not diff <= bound or not math.isfinite(diff):
        raise ValueError(
            f"onnxruntime's output differs from PyTorch's by {diff:.3g} (more than {bound:.3g})"
        )
    return diff, bound


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """A PyTorch ``state_dict`` file (``.pth``/``.pt``, as torchvision and timm publish them),
    read with ``torch.load(weights_only=True)`` (no code runs), as numpy arrays. A checkpoint
    dict holding the weights under ``state_dict`` or ``model`` is accepted too."""
    from rescompile.errors import UserError

    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, a zip that is not torch's, refused globals, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path} is not a PyTorch state_dict file: {first}") from None
    if isinstance(data, dict):
        for key in ("state_dict", "model"):
            if isinstance(data.get(key), dict):
                data = data[key]
                break
    if not isinstance(data, dict) or not data:
        raise UserError(f"{path} holds no state_dict (a mapping of names to tensors)")
    out = {}
    for key, value in data.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise UserError(f"{path}: {key!r} is not a tensor; expected a plain state_dict")
        out[key] = value.detach().cpu().numpy()
    return out
