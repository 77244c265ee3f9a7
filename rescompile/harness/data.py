"""Datasets, numpy augmentation and a resumable batch order.

Conventions:

- Images are NHWC numpy arrays: ``uint8`` (raw pixels, 0..255) or ``float32`` (already in 0..1).
- Labels are ``int64`` class indices.
- ``Dataset.mean`` and ``Dataset.std`` are per-channel statistics of the *training* images on
  the 0..1 scale; :func:`normalize` divides ``uint8`` input by 255 before using them.
- Nothing is ever downloaded. CIFAR is read from files the user already has; ``digits`` ships
  with scikit-learn.
- Randomness is a pure function of ``(seed, epoch, index)``: :func:`epoch_permutation` and
  :func:`batch_rng` rebuild the same batch order and augmentation after a resume, so a run that
  restarts from a checkpoint at step *k* sees exactly the batches it would have seen.
"""

from __future__ import annotations

import pickle
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from rescompile.errors import UserError
from rescompile.harness.safepickle import UnsafePickleError, safe_loads

__all__ = [
    "DataError",
    "DataSource",
    "Dataset",
    "batch_rng",
    "batches",
    "channel_stats",
    "epoch_permutation",
    "load_cifar",
    "load_dataset",
    "load_digits_dataset",
    "normalize",
    "pad_crop_flip",
    "steps_per_epoch",
    "synthetic",
]

Augment = Literal["pad_crop_flip", "random_resized_crop", "none"]

DATASET_CHOICES = (
    "cifar10:PATH",
    "cifar100:PATH",
    "digits",
    "synthetic[:HxWxC[:CLASSES]]",
    "imagefolder:PATH",
    "webdataset:PATTERN",
)
_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
_MAX_MEMBER_BYTES = 512 * 1024 * 1024  # largest archive member read into memory


class DataError(UserError):
    """A dataset could not be found or read. The message is meant for the user as is."""


@dataclass
class Dataset:
    """An in-memory image classification dataset.

    Attributes:
        name: short name, e.g. ``"cifar10"``.
        x_train, x_test: NHWC images, ``uint8`` (0..255) or ``float32`` (0..1).
        y_train, y_test: ``int64`` labels in ``[0, num_classes)``.
        num_classes: number of classes.
        mean, std: per-channel ``float32`` statistics of ``x_train`` on the 0..1 scale.
        image_size: ``(H, W)``.
        channels: ``C``.
        augment: the train-time augmentation this dataset is conventionally trained with.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    mean: np.ndarray
    std: np.ndarray
    image_size: tuple[int, int]
    channels: int
    augment: Augment = "none"

    def __post_init__(self) -> None:
        splits = (("train", self.x_train, self.y_train), ("test", self.x_test, self.y_test))
        for split, x, y in splits:
            if x.ndim != 4 or x.shape[1:] != (*self.image_size, self.channels):
                raise ValueError(
                    f"{self.name} {split} images have shape {x.shape}, expected "
                    f"(N, {self.image_size[0]}, {self.image_size[1]}, {self.channels})"
                )
            if len(x) != len(y):
                raise ValueError(f"{self.name} {split}: {len(x)} images but {len(y)} labels")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(H, W, C)`` of one image."""
        return (*self.image_size, self.channels)

    # -- the data-source interface (see DataSource) ---------------------------------------------

    @property
    def n_train(self) -> int:
        return len(self.x_train)

    @property
    def n_test(self) -> int:
        return len(self.x_test)

    train_eval = "the whole training set"
    """What the final train-split evaluation of a run covers, in words."""

    def train_data(self, augment: bool = False, *, whole_train: bool = False) -> Any:
        """What the backend runtime receives: the whole arrays (it may copy them to a device;
        the train split is always whole, so ``whole_train`` changes nothing)."""
        from rescompile.harness.runtime import TrainData

        return TrainData(
            self.x_train, self.y_train, self.x_test, self.y_test, self.mean, self.std, augment
        )

    def train_batches(
        self,
        start: int,
        batch_size: int,
        *,
        seed: int,
        augment: bool,
        rank: int = 0,
        world_size: int = 1,
        augmentation: str | None = None,
    ) -> Iterator[Any]:
        """This rank's :class:`~rescompile.harness.runtime.Batch` of every global step from
        ``start`` on: indices into the arrays and the pad-crop-flip draws, all fixed by
        ``(seed, epoch, index)`` (:func:`epoch_permutation`, :func:`batch_rng`). In-memory
        images are augmented by pad-crop-flip: a recipe's ``augmentation`` (the crop of a
        streamed source's full-size images) is not used."""
        from rescompile.harness.runtime import Batch, augment_params

        spe = steps_per_epoch(self.n_train, batch_size)
        order, order_epoch = np.arange(0), -1
        step = start
        while True:
            epoch, index = divmod(step, spe)
            if epoch != order_epoch:
                order, order_epoch = epoch_permutation(self.n_train, seed, epoch), epoch
            idx = order[index * batch_size : (index + 1) * batch_size]
            crop = augment_params(batch_rng(seed, epoch, index), batch_size) if augment else ()
            yield Batch(step, idx, *crop).shard(rank, world_size)
            step += 1

    def run_files(self) -> dict[str, str]:
        """Files a run directory keeps about its data (none for in-memory arrays)."""
        return {}

    def close(self) -> None:
        """In-memory data holds no workers."""

    def state(self) -> dict[str, Any]:
        """In-memory data has no state beyond the step."""
        return {}

    def restore(self, state: dict[str, Any]) -> None:
        """Nothing to restore (see :meth:`state`)."""

    def summary(self) -> str:
        """One line, e.g. ``cifar10: 50000 train / 10000 test, 32x32x3, 10 classes``."""
        h, w, c = self.input_shape
        return (
            f"{self.name}: {len(self.x_train)} train / {len(self.x_test)} test, "
            f"{h}x{w}x{c}, {self.num_classes} classes"
        )


class DataSource(Protocol):
    """What the training loop and ``rescompile eval`` need from a dataset.

    Two kinds implement it: :class:`Dataset` (in-memory arrays, which a runtime may copy to the
    device and gather by index) and the streamed image sources of
    :mod:`rescompile.harness.images` (image folders and tar shards, decoded and augmented by
    worker processes, delivered batch by batch as ``uint8`` NHWC). Either way the batch of a
    global step is a pure function of ``(seed, step)``, so a resumed run sees the batches the
    uninterrupted run saw.
    """

    name: str
    num_classes: int
    mean: np.ndarray  # per-channel, on the 0..1 scale
    std: np.ndarray
    augment: str  # the conventional train-time augmentation ("none": none)
    train_eval: str  # what the final train-split evaluation covers, in words

    @property
    def input_shape(self) -> tuple[int, int, int]: ...  # (H, W, C)

    @property
    def n_train(self) -> int: ...

    @property
    def n_test(self) -> int: ...

    def summary(self) -> str: ...

    def train_data(self, augment: bool = False, *, whole_train: bool = False) -> Any:
        """The :class:`~rescompile.harness.runtime.TrainData` handed to a runtime. Its train
        split is what the end of a run evaluates (:attr:`train_eval`: a streamed source's is a
        fixed subset of at most 10,000 images), or with ``whole_train`` the whole split."""

    def train_batches(
        self,
        start: int,
        batch_size: int,
        *,
        seed: int,
        augment: bool,
        rank: int,
        world_size: int,
        augmentation: str | None,
    ) -> Iterator[Any]:
        """This rank's share of the batch of every global step from ``start`` on, augmented
        (when ``augment``) as the recipe's ``augmentation`` says where the source crops
        full-size images (image folders, shards); in-memory arrays keep pad-crop-flip."""

    def run_files(self) -> dict[str, str]:
        """``{file name: text}`` a new run directory keeps (e.g. the class list)."""

    def close(self) -> None:
        """Stop worker processes."""

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps of the source beyond the step (JSON), e.g. the unreadable
        files met so far, so that a resumed run counts them against its limit once. Under
        several processes this process's; the driver gathers every rank's (checkpoints and the
        end of a run) and restores each into every rank."""

    def restore(self, state: dict[str, Any]) -> None:
        """Take back :meth:`state` from a checkpoint (checked: it is read from a file), or
        another rank's: it adds to what the source holds (a merge), never replaces it."""


# --------------------------------------------------------------------------------------------
# Statistics and augmentation
# --------------------------------------------------------------------------------------------


def channel_stats(x: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and (population) standard deviation of NHWC images on the 0..1 scale.

    Works in chunks so a ``uint8`` CIFAR train set is never copied to float64 in full.
    """
    scale = 255.0 if x.dtype == np.uint8 else 1.0
    channels = x.shape[-1]
    total = np.zeros(channels)
    total_sq = np.zeros(channels)
    count = 0
    for start in range(0, len(x), chunk):
        block = x[start : start + chunk].reshape(-1, channels).astype(np.float64) / scale
        total += block.sum(axis=0)
        total_sq += np.square(block).sum(axis=0)
        count += len(block)
    if count == 0:
        raise ValueError("cannot compute statistics of an empty image set")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    return mean.astype(np.float32), std.astype(np.float32)


def normalize(batch: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``(x - mean) / std`` per channel, as ``float32``; ``uint8`` input is first divided by 255."""
    x = batch.astype(np.float32)
    if batch.dtype == np.uint8:
        x /= 255.0
    return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def pad_crop_flip(batch: np.ndarray, rng: np.random.Generator, pad: int = 4) -> np.ndarray:
    """The CIFAR augmentation of He et al. (2016), section 4.2.

    Each NHWC image is zero-padded by ``pad`` pixels on every side, a crop of the original size
    is taken at a random offset, and the crop is flipped horizontally with probability 1/2.
    Padding happens on whatever values ``batch`` holds: on raw pixels (as torchvision's
    ``RandomCrop(32, padding=4)`` does) the border is black; on normalized input it is the mean.
    Returns a new array of the same shape and dtype.
    """
    n, h, w, _ = batch.shape
    padded = np.pad(batch, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    top = rng.integers(0, 2 * pad + 1, size=n)
    left = rng.integers(0, 2 * pad + 1, size=n)
    flip = rng.random(n) < 0.5
    rows = top[:, None] + np.arange(h)  # (n, h)
    cols = left[:, None] + np.arange(w)  # (n, w)
    cols = np.where(flip[:, None], cols[:, ::-1], cols)
    return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


# --------------------------------------------------------------------------------------------
# Deterministic, resumable batch order
# --------------------------------------------------------------------------------------------

_ORDER_STREAM = 0x0D0E  # keeps the order stream and the augmentation stream independent
_AUGMENT_STREAM = 0xA06


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The example order of ``epoch``: a permutation of ``range(n)`` fixed by ``(seed, epoch)``."""
    return np.random.default_rng([seed, _ORDER_STREAM, epoch]).permutation(n)


def batch_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The random generator for augmenting batch ``index`` of ``epoch``, fixed by its arguments."""
    return np.random.default_rng([seed, _AUGMENT_STREAM, epoch, index])


def steps_per_epoch(n: int, batch_size: int, drop_last: bool = True) -> int:
    """Number of batches :func:`batches` yields for ``n`` examples."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    return n // batch_size if drop_last else -(-n // batch_size)


def batches(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    *,
    seed: int = 0,
    epoch: int = 0,
    start: int = 0,
    shuffle: bool = True,
    drop_last: bool = True,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(x_batch, y_batch)`` for one epoch, beginning at batch index ``start``.

    The order is :func:`epoch_permutation` ``(len(x), seed, epoch)`` when ``shuffle`` is true and
    the natural order otherwise, so it depends on nothing but the arguments: a run resumed at
    global step ``k`` calls ``batches(..., epoch=k // spe, start=k % spe)`` (``spe`` from
    :func:`steps_per_epoch`) and continues with exactly the batches it would have seen.
    With ``drop_last`` the final incomplete batch is skipped (train); without it, it is
    yielded short (evaluation).
    """
    n = len(x)
    if len(y) != n:
        raise ValueError(f"{n} images but {len(y)} labels")
    total = steps_per_epoch(n, batch_size, drop_last)
    if not 0 <= start <= total:
        raise ValueError(f"start must be in [0, {total}], got {start}")
    order = epoch_permutation(n, seed, epoch) if shuffle else np.arange(n)
    for index in range(start, total):
        idx = order[index * batch_size : (index + 1) * batch_size]
        yield x[idx], y[idx]


# --------------------------------------------------------------------------------------------
# CIFAR
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _CifarLayout:
    name: str
    folder: str
    archive: str
    train: tuple[str, ...]
    test: str
    label_key: str
    num_classes: int


_CIFAR = {
    10: _CifarLayout(
        name="cifar10",
        folder="cifar-10-batches-py",
        archive="cifar-10-python.tar.gz",
        train=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test="test_batch",
        label_key="labels",
        num_classes=10,
    ),
    100: _CifarLayout(
        name="cifar100",
        folder="cifar-100-python",
        archive="cifar-100-python.tar.gz",
        train=("train",),
        test="test",
        label_key="fine_labels",
        num_classes=100,
    ),
}


def load_cifar(path: str | Path, which: Literal[10, 100] = 10) -> Dataset:
    """Load CIFAR-10 or CIFAR-100 (the "python version") from local files.

    ``path`` may be the batches directory itself (``cifar-10-batches-py/`` or
    ``cifar-100-python/``), a directory containing it or the archive, or the ``.tar.gz``
    archive as downloaded; the archive is read in memory and never extracted.
    The pickles are read with a restricted unpickler (see :mod:`rescompile.harness.safepickle`).
    CIFAR-100 uses the 100 fine labels.

    Raises:
        DataError: the files are missing, unreadable, unsafe or not shaped like CIFAR.
    """
    if which not in _CIFAR:
        raise DataError(f"CIFAR comes in two sizes, 10 and 100; got {which!r}")
    layout = _CIFAR[which]
    read = _cifar_reader(Path(path).expanduser(), layout)
    x_parts, y_parts = [], []
    for member in layout.train:
        x, y = _parse_cifar_batch(*read(member), layout)
        x_parts.append(x)
        y_parts.append(y)
    x_train, y_train = np.concatenate(x_parts), np.concatenate(y_parts)
    x_test, y_test = _parse_cifar_batch(*read(layout.test), layout)
    mean, std = channel_stats(x_train)
    return Dataset(
        name=layout.name,
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=layout.num_classes,
        mean=mean,
        std=std,
        image_size=(32, 32),
        channels=3,
        augment="pad_crop_flip",
    )


def _cifar_reader(path: Path, layout: _CifarLayout) -> Callable[[str], tuple[bytes, str]]:
    """Find the CIFAR files under ``path``; return a function reading one member by name."""
    expected = (
        f"expected the directory {layout.folder}/ (with {', '.join(layout.train)} and "
        f"{layout.test}) or the archive {layout.archive} from {_CIFAR_URL}; "
        "rescompile never downloads data"
    )
    if not path.exists():
        raise DataError(f"{layout.name}: {path} does not exist; {expected}")
    if path.is_dir():
        for directory in (path, path / layout.folder):
            if (directory / layout.test).is_file() or (directory / layout.train[0]).is_file():
                return _directory_reader(directory)
        if (path / layout.archive).is_file():
            return _archive_reader(path / layout.archive, layout)
        raise DataError(f"{layout.name}: no CIFAR files in {path}; {expected}")
    return _archive_reader(path, layout)


def _directory_reader(directory: Path) -> Callable[[str], tuple[bytes, str]]:
    def read(member: str) -> tuple[bytes, str]:
        file = directory / member
        if not file.is_file():
            raise DataError(f"missing CIFAR file {file}")
        try:
            return file.read_bytes(), str(file)
        except OSError as exc:
            raise DataError(f"cannot read {file}: {exc.strerror or exc}") from exc

    return read


def _archive_reader(archive: Path, layout: _CifarLayout) -> Callable[[str], tuple[bytes, str]]:
    """Read the wanted members of the archive in one pass (a .tar.gz cannot seek cheaply)."""
    wanted = {f"{layout.folder}/{m}": m for m in (*layout.train, layout.test)}
    wanted.update({m: m for m in (*layout.train, layout.test)})
    found: dict[str, tuple[bytes, str]] = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for info in tar:
                name = info.name.removeprefix("./")
                member = wanted.get(name)
                if member is None or member in found or not info.isfile():
                    continue
                source = f"{archive}:{name}"
                if info.size > _MAX_MEMBER_BYTES:
                    raise DataError(f"{source} is {info.size} bytes, far larger than a CIFAR batch")
                handle = tar.extractfile(info)
                if handle is None:  # pragma: no cover - isfile() members always have data
                    raise DataError(f"cannot read {source}")
                found[member] = (handle.read(), source)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(
            f"{archive} is not a readable {layout.archive} archive ({exc}); expected the "
            f"directory {layout.folder}/ or the archive {layout.archive} from {_CIFAR_URL}"
        ) from exc

    def read(member: str) -> tuple[bytes, str]:
        if member not in found:
            raise DataError(f"missing CIFAR file {layout.folder}/{member} in the archive {archive}")
        return found[member]

    return read


def _parse_cifar_batch(
    data: bytes, source: str, layout: _CifarLayout
) -> tuple[np.ndarray, np.ndarray]:
    """Validate one unpickled batch; ``source`` names the file in error messages."""
    try:
        batch: Any = safe_loads(data, encoding="bytes")
    except UnsafePickleError as exc:
        raise DataError(f"{source} is not a plain CIFAR pickle: {exc}") from exc
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise DataError(
            f"{source} is not a valid CIFAR pickle (truncated or corrupt: {exc})"
        ) from exc
    except (
        MemoryError,
        OverflowError,
        RecursionError,
    ) as exc:  # sizes or nesting of a hostile file
        raise DataError(
            f"{source} is not a plain CIFAR pickle: it asks for more memory or nesting than "
            f"a CIFAR batch needs ({type(exc).__name__})"
        ) from None
    if not isinstance(batch, dict):
        raise DataError(f"{source}: expected a dict of arrays, found {type(batch).__name__}")
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    for key in ("data", layout.label_key):
        if key not in batch:
            raise DataError(f"{source}: no '{key}' entry (found {sorted(map(str, batch))})")
    x = batch["data"]
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072:
        found = (
            f"a {x.dtype} array of shape {x.shape}"
            if isinstance(x, np.ndarray)
            else type(x).__name__
        )
        raise DataError(f"{source}: 'data' must be a uint8 array of shape (N, 3072), found {found}")
    try:
        y = np.asarray(batch[layout.label_key], dtype=np.int64)
    except (TypeError, ValueError, OverflowError, RecursionError, MemoryError) as exc:
        raise DataError(f"{source}: '{layout.label_key}' is not a list of integers") from exc
    if y.shape != (len(x),):
        raise DataError(f"{source}: {len(x)} images but '{layout.label_key}' has shape {y.shape}")
    if len(y) and (y.min() < 0 or y.max() >= layout.num_classes):
        raise DataError(
            f"{source}: labels must be in [0, {layout.num_classes}), found {y.min()}..{y.max()}"
        )
    # Rows are 1024 red, 1024 green, 1024 blue values in row-major order: (N, C, H, W).
    images = np.ascontiguousarray(x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return images, y


# --------------------------------------------------------------------------------------------
# Digits and synthetic data
# --------------------------------------------------------------------------------------------


def load_digits_dataset(seed: int = 0) -> Dataset:
    """scikit-learn's bundled 8x8 handwritten digits (1797 images, no download).

    Split 1347 train / 450 test, stratified by class, with ``train_test_split(random_state=seed)``.
    Images are ``float32`` NHWC ``(N, 8, 8, 1)`` scaled from 0..16 to 0..1.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[..., None]
    labels = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=450, random_state=seed, stratify=labels
    )
    mean, std = channel_stats(x_train)
    return Dataset(
        name="digits",
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=10,
        mean=mean,
        std=std,
        image_size=(8, 8),
        channels=1,
    )


def synthetic(
    shape: tuple[int, int, int] = (32, 32, 3),
    num_classes: int = 10,
    n_train: int = 10_000,
    n_test: int = 2_000,
    seed: int = 0,
) -> Dataset:
    """Uniform random ``uint8`` images with random labels, for throughput measurements only."""
    h, w, c = shape
    if min(h, w, c, num_classes, n_train, n_test) <= 0:
        raise DataError(
            f"synthetic data needs positive sizes, got {h}x{w}x{c} images, {num_classes} classes, "
            f"{n_train} train / {n_test} test"
        )
    rng = np.random.default_rng(seed)
    x_train = rng.integers(0, 256, size=(n_train, h, w, c), dtype=np.uint8)
    x_test = rng.integers(0, 256, size=(n_test, h, w, c), dtype=np.uint8)
    y_train = rng.integers(0, num_classes, size=n_train, dtype=np.int64)
    y_test = rng.integers(0, num_classes, size=n_test, dtype=np.int64)
    # Statistics of the uniform distribution on {0, ..., 255} / 255, exactly.
    mean = np.full(c, 0.5, np.float32)
    std = np.full(c, np.sqrt((256**2 - 1) / 12) / 255, np.float32)
    return Dataset(
        name=f"synthetic-{h}x{w}x{c}",
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=num_classes,
        mean=mean,
        std=std,
        image_size=(h, w),
        channels=c,
        augment="pad_crop_flip",
    )


# --------------------------------------------------------------------------------------------
# Dispatcher
# --------------------------------------------------------------------------------------------


def load_dataset(spec: str, image_size: tuple[int, int] | None = None) -> Any:
    """Load (or, for image folders and shards, open) a dataset named on the command line.

    Accepted forms: ``cifar10:PATH``, ``cifar100:PATH``, ``digits``, ``synthetic``,
    ``synthetic:HxWxC`` and ``synthetic:HxWxC:CLASSES`` (default ``32x32x3``, 10 classes), which
    return an in-memory :class:`Dataset`; ``imagefolder:PATH`` and ``webdataset:PATTERN``, which
    return a streamed source (:mod:`rescompile.harness.images`) whose images are cropped to
    ``image_size`` (the model's input size; 224 when not given). Every one is a
    :class:`DataSource`.
    """
    kind, _, arg = spec.partition(":")
    kind = kind.strip().lower()
    if kind in ("imagefolder", "webdataset"):
        from rescompile.harness.images import open_image_source

        return open_image_source(kind, arg, image_size or (224, 224))
    if kind in ("cifar10", "cifar100"):
        if not arg:
            raise DataError(
                f"{kind} needs the path of the data: {kind}:PATH (rescompile never downloads data)"
            )
        return load_cifar(arg, 10 if kind == "cifar10" else 100)
    if kind == "digits":
        if arg:
            raise DataError(f"digits takes no argument, got {spec!r}")
        return load_digits_dataset()
    if kind == "synthetic":
        return _synthetic_from_spec(arg, spec)
    raise DataError(f"unknown dataset {spec!r}; choose one of: {', '.join(DATASET_CHOICES)}")


def _synthetic_from_spec(arg: str, spec: str) -> Dataset:
    shape_text, _, classes_text = arg.partition(":")
    try:
        shape = tuple(int(v) for v in shape_text.lower().split("x")) if shape_text else (32, 32, 3)
        num_classes = int(classes_text) if classes_text else 10
    except ValueError:
        shape = ()
        num_classes = 0
    if len(shape) != 3 or num_classes <= 0:
        raise DataError(
            f"cannot read {spec!r}; write synthetic, synthetic:HxWxC or synthetic:HxWxC:CLASSES "
            "(e.g. synthetic:32x32x3:10)"
        )
    h, w, c = shape
    images = 12_000  # synthetic()'s default train + test sizes
    need = images * h * w * c
    if min(h, w, c) > 0 and (need > MAX_SYNTHETIC_BYTES or num_classes > MAX_CLASSES):
        raise DataError(
            f"{_short(spec)} would need {need:,} bytes for {images:,} images of "
            f"{h}x{w}x{c} and {num_classes:,} classes; the limits are "
            f"{MAX_SYNTHETIC_BYTES:,} bytes and {MAX_CLASSES:,} classes"
        )
    return synthetic((h, w, c), num_classes=num_classes)


MAX_SYNTHETIC_BYTES = 16 << 30  # checked before anything is allocated
MAX_CLASSES = 1 << 20


def _short(text: str, limit: int = 60) -> str:
    return repr(text) if len(text) <= limit else repr(text[: limit - 3] + "...")
