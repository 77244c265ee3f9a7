"""What a backend implements so the training driver (:mod:`rescompile.harness.loop`) can run it.

The driver owns everything that does not depend on a framework: the data, the batch order and
augmentation draws, the learning-rate schedule, logging, evaluation cadence, checkpoints and the
summary. A backend contributes one object, a :class:`Runtime`, built by the function
``make_runtime(graph, source, options)`` in its ``training`` module
(``rescompile.backends.torch.training``, ``rescompile.backends.flax.training``).

Contract:

- **Data** is handed over once (:meth:`Runtime.set_data`), as NHWC numpy arrays with the
  per-channel statistics. A runtime may keep it on the host and assemble each batch with
  :func:`host_batch`, or copy it to the accelerator once and gather, crop, flip and normalise
  there; either way the batch it trains on is the one described by :class:`Batch`. Streamed
  data (:attr:`TrainData.streamed`: image folders, shards) stays on the host: each training
  :class:`Batch` brings its decoded, augmented ``uint8`` images, and the evaluation splits are
  sequences that decode the images an index array names.
- **A step** (:meth:`Runtime.train_step`) trains on the examples ``batch.index`` of the training
  split with the augmentation draws in ``batch`` and learning rate ``lr``, and returns an opaque
  handle to that step's (mean loss, number correct). Nothing is synchronised per step:
  :meth:`Runtime.collect` turns a list of handles into numbers (over all data-parallel ranks),
  and that is where the driver checks for a non-finite loss.
- **State** leaves and enters as numpy arrays in the portable checkpoint layout of
  :mod:`rescompile.harness.checkpoint`: model tensors keyed like the emitted PyTorch model's
  ``state_dict()`` (IR node names, OIHW convolution kernels), and the SGD momentum buffer of
  each parameter as ``optim/<parameter>.momentum``. So a checkpoint written by one backend
  resumes or evaluates in the other.
- **Optimiser**: SGD with momentum (optionally Nesterov) and L2 weight decay added to the
  gradient of every parameter (convolution and fc weights, fc bias, BatchNorm scale and shift),
  as in He et al. (2016) and PyTorch's ``SGD(weight_decay=...)``:
  ``g = clip(g); g += wd * p; buf = momentum * buf + g; p -= lr * (g + momentum * buf if nesterov
  else buf)``, where ``wd`` is :func:`weight_decay_of` the parameter (normalisation layers and
  biases may have their own) and ``clip`` rescales every gradient by
  ``min(1, max_norm / (global L2 norm + 1e-6))`` when ``clip_grad_norm`` is set
  (``torch.nn.utils.clip_grad_norm_``).
- **Data parallelism** is the runtime's business: a runtime with ``world_size > 1`` receives in
  each :class:`Batch` only its own rank's share of the global batch, reduces gradients itself,
  and returns global figures from :meth:`Runtime.collect` and :meth:`Runtime.evaluate`. Only
  rank 0 writes files.

Nothing here imports a framework.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

__all__ = [
    "Batch",
    "Runtime",
    "RuntimeOptions",
    "TrainData",
    "augment_params",
    "crop_flip",
    "host_batch",
    "load_training_module",
    "make_runtime",
    "split_state",
    "weight_decay_of",
]

Precision = Literal["fp32", "bf16"]


@dataclass(frozen=True)
class RuntimeOptions:
    """How to build and run the model. ``None`` means "the runtime picks for its device":
    bf16, channels_last and compilation on a GPU; float32, no compilation on a CPU."""

    seed: int = 0
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = False
    label_smoothing: float = 0.0
    norm_weight_decay: float | None = None  # normalisation scale and shift (None: weight_decay)
    bias_weight_decay: float | None = None  # every `bias` (None: as the parameter's layer)
    clip_grad_norm: float | None = None  # max global L2 norm of the gradients (before decay)
    sync_bn: bool | None = None  # BatchNorm over the global batch (None: yes when data-parallel)
    precision: Precision | None = None
    compile: bool | None = None
    channels_last: bool | None = None
    data_on_device: bool | None = None
    device: str | None = None  # "cpu", "cuda", "gpu" (flax), None: the best available

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainData:
    """The dataset as the runtime receives it (NHWC numpy, ``uint8`` 0..255 or ``float32``
    0..1), with its normalisation statistics and whether training batches are augmented
    (pad by ``pad`` pixels, random crop, random horizontal flip)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    augment: bool = False
    pad: int = 4

    @property
    def streamed(self) -> bool:
        """Whether the images are decoded on demand (image folders, shards) rather than held in
        arrays: training batches then bring their images (:attr:`Batch.images`) and the splits
        are read-only sequences indexed by arrays of indices (never copied to a device)."""
        return not isinstance(self.x_train, np.ndarray)

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        if name == "train":
            return self.x_train, self.y_train
        if name == "test":
            return self.x_test, self.y_test
        raise ValueError(f"unknown split {name!r}")


@dataclass(frozen=True)
class Batch:
    """One step's examples: indices into the training split and, when the data is augmented,
    each example's crop offsets (``top``, ``left`` in ``[0, 2 * pad]``) and flip flag.

    ``step`` is the global step (0-based); a runtime may derive per-step randomness (dropout)
    from it, so a resumed run draws the same numbers.
    """

    step: int
    index: np.ndarray
    top: np.ndarray | None = None
    left: np.ndarray | None = None
    flip: np.ndarray | None = None
    images: np.ndarray | None = None  # a streamed source's decoded, augmented uint8 NHWC batch
    labels: np.ndarray | None = None  # ... and its int64 labels (``index`` then names the files)

    def shard(self, rank: int, world_size: int) -> Batch:
        """Rank ``rank``'s contiguous share of the batch."""
        n = len(self.index)
        if n % world_size:
            raise ValueError(f"a batch of {n} does not split over {world_size} ranks")
        per = n // world_size
        sl = slice(rank * per, (rank + 1) * per)

        def cut(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[sl]

        return Batch(
            self.step,
            self.index[sl],
            cut(self.top),
            cut(self.left),
            cut(self.flip),
            cut(self.images),
            cut(self.labels),
        )


# --------------------------------------------------------------------------------------------
# Host-side batch assembly, shared by every runtime that keeps the data on the host
# --------------------------------------------------------------------------------------------


def augment_params(
    rng: np.random.Generator, n: int, pad: int = 4
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The random draws of :func:`rescompile.harness.data.pad_crop_flip` for ``n`` images, in
    the same order: crop rows, crop columns, flips. ``crop_flip(x, *augment_params(rng, len(x)))``
    equals ``pad_crop_flip(x, rng)`` for the same generator state."""
    top = rng.integers(0, 2 * pad + 1, size=n)
    left = rng.integers(0, 2 * pad + 1, size=n)
    flip = rng.random(n) < 0.5
    return top, left, flip


def crop_flip(
    x: np.ndarray, top: np.ndarray, left: np.ndarray, flip: np.ndarray, pad: int = 4
) -> np.ndarray:
    """Zero-pad NHWC ``x`` by ``pad``, crop each image at ``(top, left)``, flip where ``flip``."""
    n, h, w, _ = x.shape
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    rows = top[:, None] + np.arange(h)
    cols = left[:, None] + np.arange(w)
    cols = np.where(flip[:, None], cols[:, ::-1], cols)
    return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def host_batch(
    data: TrainData, batch: Batch, split: str = "train"
) -> tuple[np.ndarray, np.ndarray]:
    """The normalised ``float32`` NHWC images and ``int64`` labels that ``batch`` describes."""
    from rescompile.harness.data import normalize

    if batch.images is not None:  # a streamed batch brings its images
        return normalize(batch.images, data.mean, data.std), batch.labels
    x_all, y_all = data.split(split)
    x = x_all[batch.index]
    if batch.top is not None:
        x = crop_flip(x, batch.top, batch.left, batch.flip, data.pad)
    return normalize(x, data.mean, data.std), y_all[batch.index]


# --------------------------------------------------------------------------------------------
# The protocol
# --------------------------------------------------------------------------------------------


@runtime_checkable
class Runtime(Protocol):
    """A backend's training state and steps (see the module docstring for the contract)."""

    backend: str
    """``"torch"``, ``"flax"``, ..."""
    device: str
    """Where it runs, in words (``"cpu"``, ``"cuda:0 (NVIDIA H100 80GB HBM3)"``)."""
    rank: int
    world_size: int
    settings: dict[str, Any]
    """The effective choices (precision, compile, channels_last, data_on_device, ...)."""

    def set_data(self, data: TrainData) -> None:
        """Take the dataset (called once, before any step)."""

    def train_step(self, batch: Batch, lr: float) -> Any:
        """One SGD update on ``batch``; returns a handle for :meth:`collect`."""

    def collect(self, handles: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
        """``(loss, correct)`` per step: the global-batch mean loss and the number of correctly
        classified examples in the global batch. Synchronises with the device (and the ranks)."""

    def evaluate(self, split: str, batch_size: int) -> tuple[float, int, int]:
        """``(summed loss, correct, count)`` over a whole split (``"train"`` or ``"test"``), in
        evaluation mode (BatchNorm running statistics), without augmentation, over all ranks."""

    # Optional: ``predict(split, batch_size)`` yields the float32 logits of a whole split,
    # batch by batch in order, in evaluation mode (``rescompile eval``; both built-ins have it).
    # Optional: ``all_gather(value)``, with ``world_size > 1``: every rank's ``value`` (JSON:
    # dicts, lists, strings, numbers), a list in rank order; a collective, so every rank calls it
    # at the same point (both built-ins have it). The driver gathers the data source's state with
    # it (the unreadable files each rank met); a runtime without it leaves that to rank 0's own.

    def state_dict(self) -> dict[str, np.ndarray]:
        """Model tensors and ``optim/...`` momentum buffers in the portable layout."""

    def load_state_dict(self, tensors: Mapping[str, np.ndarray]) -> None:
        """Load what :meth:`state_dict` returns (from either backend). Momentum buffers are
        optional (a checkpoint of step 0 has none); model tensors must fit exactly."""

    def close(self, *, aborted: bool = False) -> None:
        """Release process groups and the like. At the normal end of a run (``aborted`` false)
        a data-parallel runtime first waits for every rank to get there."""


def weight_decay_of(graph: Any, options: RuntimeOptions) -> dict[str, float]:
    """The weight decay of each parameter, keyed like the emitted PyTorch model's parameters,
    following torchvision's ``set_weight_decay``: a parameter called ``bias`` takes
    ``bias_weight_decay`` when that is set; else a normalisation layer's takes
    ``norm_weight_decay`` when that is set; else ``weight_decay``."""
    from rescompile.emission.state import state_dict_layout
    from rescompile.ir.graph import Op

    norms = {n.name for n in graph if n.op in (Op.BATCHNORM, Op.GROUPNORM)}
    buffers = (".running_mean", ".running_var", ".num_batches_tracked")
    out: dict[str, float] = {}
    for key in state_dict_layout(graph):
        if key.endswith(buffers):
            continue
        module, _, name = key.rpartition(".")
        if name == "bias" and options.bias_weight_decay is not None:
            out[key] = options.bias_weight_decay
        elif module in norms and options.norm_weight_decay is not None:
            out[key] = options.norm_weight_decay
        else:
            out[key] = options.weight_decay
    return out


def load_training_module(backend: str) -> Any:
    """The ``training`` module of a backend (see :func:`rescompile.backends.load_backend`)."""
    from rescompile.backends import load_backend

    return load_backend(backend).training


def make_runtime(backend: str, graph: Any, source: str, options: RuntimeOptions) -> Runtime:
    """Build the runtime of ``backend`` for ``graph`` from its emitted ``source``."""
    return load_training_module(backend).make_runtime(graph, source, options)


def split_state(
    tensors: Mapping[str, np.ndarray],
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``(model tensors, momentum buffers keyed by parameter name)`` of a portable state."""
    from rescompile.harness.checkpoint import split_optimizer

    model, optim = split_optimizer(tensors)
    momentum = {k.removesuffix(".momentum"): v for k, v in optim.items() if k.endswith(".momentum")}
    return model, momentum
