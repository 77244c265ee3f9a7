"""An exponential moving average of a run's weights (a recipe's ``ema``), for either backend.

Kept by the driver on the host from the runtime's portable state, so both backends average the
same way by construction: every ``every`` steps, each floating-point model tensor (weights and
BatchNorm statistics, as torchvision's ``ExponentialMovingAverage`` with ``use_buffers=True``)
moves towards the current one, ``ema += (1 - decay) * (current - ema)`` (``torch.lerp``, as
``torch.optim.swa_utils.get_ema_multi_avg_fn``); integer counters are copied. The first update
and every update during the warm-up copy the weights (torchvision resets its average during
warm-up). The average is evaluated next to the model at each evaluation and checkpointed as
``optim/<tensor>.ema``: out of the model's state_dict, like the momentum.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from rescompile.errors import UserError
from rescompile.harness.checkpoint import OPTIM_PREFIX

__all__ = ["WeightAverage", "averaged_weights"]

SUFFIX = ".ema"


class WeightAverage:
    """The average of the model tensors of a portable state (see the module docstring)."""

    def __init__(self, decay: float, every: int = 1) -> None:
        self.decay = decay
        self.every = every
        self.tensors: dict[str, np.ndarray] | None = None

    def update(self, state: Mapping[str, np.ndarray], *, reset: bool = False) -> None:
        current = {k: v for k, v in state.items() if not k.startswith(OPTIM_PREFIX)}
        if self.tensors is None or reset:
            self.tensors = {k: np.array(v, copy=True) for k, v in current.items()}
            return
        for key, value in current.items():
            average = self.tensors[key]
            if value.dtype.kind == "f":
                weight = average.dtype.type(1.0 - self.decay)
                average += weight * (value - average)
            else:
                self.tensors[key] = np.array(value, copy=True)

    def checkpoint_tensors(self) -> dict[str, np.ndarray]:
        """The average as checkpoint entries (``optim/<key>.ema``)."""
        if self.tensors is None:
            return {}
        return {f"{OPTIM_PREFIX}{k}{SUFFIX}": v for k, v in self.tensors.items()}

    def restore(self, tensors: Mapping[str, np.ndarray]) -> None:
        """Take the average back from a checkpoint's tensors (none in a checkpoint without)."""
        found = _average_in(tensors)
        self.tensors = {k: np.array(v, copy=True) for k, v in found.items()} or None


def _average_in(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {
        k.removeprefix(OPTIM_PREFIX).removesuffix(SUFFIX): v
        for k, v in tensors.items()
        if k.startswith(OPTIM_PREFIX) and k.endswith(SUFFIX)
    }


def averaged_weights(tensors: Mapping[str, np.ndarray], where: str) -> dict[str, np.ndarray]:
    """A checkpoint's weight average as model tensors (a whole state_dict: parameters and
    BatchNorm statistics), for ``eval``, ``weights`` and ``export`` with ``--ema``.

    Raises:
        UserError: the checkpoint (``where``) holds no average.
    """
    found = _average_in(tensors)
    if not found:
        raise UserError(
            f"{where} holds no weight average: its run's recipe has no ema (drop --ema)"
        )
    return found
