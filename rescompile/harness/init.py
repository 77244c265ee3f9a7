"""``rescompile train --init-from FILE``: start a new run from existing weights (fine-tuning).

The file is a rescompile checkpoint (``ckpt-NNNNNN.safetensors`` with its sidecar, or a run
directory: its latest), a plain ``.safetensors`` state_dict (``rescompile weights``, timm), or a
PyTorch ``.pth``/``.pt`` state_dict (torchvision, timm) read with
``torch.load(weights_only=True)``. Keys are the emitted PyTorch model's (IR node names, which are
torchvision's for the specs/torchvision library), so the weights enter either backend through
its runtime's ``load_state_dict`` (the Flax runtime converts the layout).

Every tensor must fit the model exactly, with one exception: a classifier (the last fc layer)
of another shape (another ``num_classes``) keeps the run's own fresh initialisation, and the
run's config.json and header say so. Optimizer state in the file is not used (a fine-tuning run
starts its own momentum); BatchNorm counters the file lacks stay 0.

Nothing here imports a framework (``.pth`` files are read by the torch backend).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from rescompile.errors import UserError

__all__ = ["fit_weights", "read_weights"]

COUNTER = ".num_batches_tracked"


def read_weights(path: str | Path) -> dict[str, np.ndarray]:
    """The model tensors of ``path`` (see the module docstring for what it may be)."""
    from rescompile.harness.checkpoint import load_checkpoint, split_optimizer

    p = Path(path)
    if not p.exists():
        raise UserError(f"--init-from {path}: no such file or directory")
    if p.is_dir() or (p.suffix == ".safetensors" and p.with_suffix(".json").is_file()):
        tensors, _ = load_checkpoint(p)
        return split_optimizer(tensors)[0]
    if p.suffix == ".safetensors":
        from safetensors.numpy import load_file

        try:
            tensors = load_file(p)
        except Exception as exc:  # safetensors raises its own error types
            raise UserError(f"{path} is not a valid safetensors file: {exc}") from None
        return split_optimizer(tensors)[0]
    if p.suffix in (".pth", ".pt", ".bin"):
        try:
            from rescompile.backends.torch.weights import read_state_dict
        except ImportError:
            raise UserError(f"reading {path} needs PyTorch: install rescompile[torch]") from None
        return split_optimizer(read_state_dict(p))[0]
    raise UserError(
        f"--init-from {path}: expected a run directory, a .safetensors file or a .pth/.pt "
        "PyTorch state_dict"
    )


def classifier_keys(graph: Any) -> set[str]:
    """The tensors of the network's last fc layer."""
    from rescompile.ir.graph import Op

    linear = graph.nodes_of(Op.LINEAR)
    return {f"{linear[-1].name}.weight", f"{linear[-1].name}.bias"} if linear else set()


def _shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"


def fit_weights(
    tensors: Mapping[str, np.ndarray], own: Mapping[str, np.ndarray], classifier: set[str]
) -> tuple[dict[str, np.ndarray], list[str]]:
    """``(the model state to load, the classifier tensors kept from ``own``)``.

    ``own`` is the new run's freshly initialised model state (its keys and shapes are the
    model's). Raises :class:`UserError` naming the first tensor that does not fit.
    """
    out: dict[str, np.ndarray] = {}
    fresh: list[str] = []
    problems: list[str] = []
    for key, mine in own.items():
        if key not in tensors:
            if key.endswith(COUNTER):
                out[key] = mine
            else:
                problems.append(f"{key} {_shape(mine.shape)} is missing from the file")
            continue
        theirs = np.asarray(tensors[key])
        if theirs.shape == mine.shape:
            out[key] = theirs.astype(mine.dtype, copy=False)
        elif key in classifier:
            out[key] = mine
            fresh.append(key)
        else:
            problems.append(
                f"{key} has shape {_shape(theirs.shape)} in the file, "
                f"the model expects {_shape(mine.shape)}"
            )
    problems += [
        f"{k} is in the file but not in the model" for k in sorted(set(tensors) - set(own))
    ]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise UserError(f"the --init-from weights do not fit the model: {problems[0]}{more}")
    return out, fresh
