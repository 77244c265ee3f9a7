"""Streamed image data: ImageNet-style folders and webdataset tar shards.

``--data imagefolder:PATH`` reads ``PATH/train/<class>/*`` and ``PATH/val/<class>/*`` (the layout
of torchvision's ``ImageFolder`` and of ImageNet after extraction; JPEG and PNG; the classes are
the sorted folder names). ``--data webdataset:PATTERN`` reads tar shards in the webdataset layout
(``KEY.jpg`` or ``KEY.png`` with ``KEY.cls``, the label), brace patterns included, as
:mod:`rescompile.harness.shards` writes them. Both give a :class:`ImageSource`, a
:class:`~rescompile.harness.data.DataSource`:

- **Training batches** are built in worker processes (the standard library's
  ``ProcessPoolExecutor``, chosen over grain and the torch DataLoader by measurement: see
  docs/design-notes.md) with a bounded prefetch (``RESCOMPILE_DATA_WORKERS``, default: the
  usable cores, at most 8; ``0`` decodes in the training process on a thread). The batch of
  global step ``s`` is a pure function of ``(seed, s)``: the example order of the epoch is
  :func:`~rescompile.harness.data.epoch_permutation`, each example's augmentation draws come from
  a generator seeded with ``(seed, epoch, position)``, and rank ``r`` of ``w`` takes the ``r``-th
  contiguous share of the global batch (no overlap). So the position *is* the step: a run killed
  with ``kill -9`` and resumed from its checkpoint sees exactly the batches it would have seen:
  the step in the checkpoint is the whole iterator state.
- **Augmentation**, the recipe's ``augmentation``: ``random_resized_crop`` (area 0.08-1, aspect
  3/4-4/3, torchvision's algorithm) to the model's input size, or ``scale_jitter``, the scale
  augmentation of He et al. (2016, sec. 3.4) after Simonyan & Zisserman: the shorter side resized
  to a random length in ``[256, 480] * size / 224``, a random ``size`` crop; either way a
  horizontal flip. Evaluation resizes the shorter side to ``size * 256 / 224`` and takes the
  centre crop. JPEGs are decoded by simplejpeg (libjpeg-turbo) when it is installed, else by
  Pillow, at a reduced size where the crop allows it (libjpeg's DCT scaling by 1/2, 1/4, 1/8;
  Pillow's ``draft`` mode), and the crop and resize are one ``Image.resize(box=...)`` call.
  Grey-scale, CMYK, palette and RGBA images are converted to RGB. Batches are ``uint8`` NHWC;
  the runtime normalises them with the ImageNet mean and standard deviation on the device.
- **The end of a run** evaluates the training split on :meth:`ImageSource.train_eval_index`:
  all of it up to :data:`TRAIN_EVAL_IMAGES` (10,000) images, else a fixed random 10,000 of them,
  the same whatever the seed or the number of processes (:attr:`ImageSource.train_eval` says
  which in words); ``train_data(whole_train=True)`` gives the whole split
  (``rescompile eval --split train``).
- **Bad files**: an unreadable, truncated or non-image file is skipped (the next file of the
  data set takes its place, deterministically), reported once on stderr with its path and
  counted (:attr:`ImageSource.skipped`, ``skipped_images`` in ``summary.json``: under several
  processes, the files all of them met); past ``max_bad`` distinct bad files the run stops with
  a one-line error (checked by each process: :meth:`ImageSource.note_bad`). A missing ``val/``, an
  empty class folder or a val class unknown to train is refused before training starts.
"""

from __future__ import annotations

import io
import math
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import tarfile
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from functools import lru_cache
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path
from typing import Any

import numpy as np

from rescompile.harness.data import DataError, epoch_permutation, steps_per_epoch
from rescompile.harness.schedules import TRAIN_AUGMENTATIONS

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "TRAIN_AUGMENTATIONS",
    "TRAIN_EVAL_IMAGES",
    "ImageSource",
    "decode_eval",
    "decode_train",
    "open_image_source",
    "random_resized_crop_box",
    "scale_jitter_box",
]

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
CLASSES_FILE = "classes.txt"
_SAMPLE_STREAM = 0x1A6E  # the per-example augmentation stream (independent of the order stream)
_SUBSTITUTES = 16  # files tried in place of an unreadable one before the run stops
_EVAL_SUBSET_STREAM = 0x7E5B  # the fixed subset of training images evaluated at a run's end
TRAIN_EVAL_IMAGES = 10_000
"""At most this many training images are evaluated at the end of a run (a fixed random subset)."""
PAPER_SCALES = (256, 480)
"""He et al. (2016), sec. 3.4: the shorter side is resized to a random length in this range
(for a 224 crop; proportionally for another input size)."""


# --------------------------------------------------------------------------------------------
# Decoding and augmentation (pure functions of the bytes and a generator)
# --------------------------------------------------------------------------------------------


def random_resized_crop_box(
    width: int,
    height: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """``(left, top, crop width, crop height)`` drawn as torchvision's ``RandomResizedCrop``
    draws them: ten tries at an area fraction in ``scale`` and a log-uniform aspect ratio in
    ``ratio``; failing that, the centre crop with the aspect ratio clamped into ``ratio``."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, w, h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def scale_jitter_box(
    width: int,
    height: int,
    size: tuple[int, int],
    rng: np.random.Generator,
    scales: tuple[int, int] = PAPER_SCALES,
) -> tuple[float, float, float, float]:
    """``(left, top, crop width, crop height)`` in the original image's pixels of the paper's
    scale augmentation (He et al. 2016, sec. 3.4, after Simonyan & Zisserman 2015): the image
    resized so that its shorter side is a length drawn uniformly from the whole numbers in
    ``scales * max(size) / 224`` (``[256, 480]`` for a 224 crop), then a ``size`` (H, W) crop
    at a uniformly drawn whole-pixel offset of the resized image."""
    out_h, out_w = size
    base = max(out_h, out_w) / 224
    low, high = round(scales[0] * base), round(scales[1] * base)
    shorter = int(rng.integers(low, high + 1))
    scale = shorter / min(width, height)
    # the whole pixels of the resized image (the shorter side: exactly `shorter`)
    resized_w, resized_h = math.floor(width * scale + 1e-6), math.floor(height * scale + 1e-6)
    top = int(rng.integers(0, max(0, resized_h - out_h) + 1))
    left = int(rng.integers(0, max(0, resized_w - out_w) + 1))
    w, h = out_w / scale, out_h / scale
    return min(left / scale, width - w), min(top / scale, height - h), w, h


def _open(data: bytes) -> Any:
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    image.size  # noqa: B018 - the header is read: a non-image fails here
    return image


@lru_cache(maxsize=1)
def _simplejpeg() -> Any:
    """simplejpeg (libjpeg-turbo through TurboJPEG) when installed: it decodes a JPEG about
    2.5 times faster than Pillow here (benchmarks/RESULTS.md); else None (Pillow only)."""
    try:
        import simplejpeg
    except ImportError:
        return None
    return simplejpeg


class _Encoded:
    """An encoded image: its size read from the header, then decoded at a reduced size.

    JPEGs in grey or YCbCr go through simplejpeg when it is installed (DCT scaling to the
    smallest size at least the one asked for); anything else (CMYK JPEGs, PNGs, a JPEG
    simplejpeg refuses) through Pillow (draft mode for JPEGs: the same DCT scaling). The size
    comes from the header before any decoding, so the augmentation draws never depend on which
    decoder runs."""

    def __init__(self, data: bytes) -> None:
        self.data, self.image, self.turbo = data, None, None
        turbo = _simplejpeg() if data[:3] == b"\xff\xd8\xff" else None
        if turbo is not None:
            try:
                height, width, colorspace, _ = turbo.decode_jpeg_header(data)
                if colorspace in ("Gray", "YCbCr") and width > 0 and height > 0:
                    self.turbo, self.size = turbo, (width, height)
            except ValueError:
                pass
        if self.turbo is None:
            self.image = _open(data)
            self.size = self.image.size

    def rgb(self, need: tuple[int, int]) -> Any:
        """A PIL RGB image of at least ``need`` (W, H) where the original is that large."""
        from PIL import Image

        if self.turbo is not None:
            try:
                # min_factor 2: scale by 1/2, 1/4, 1/8 only (a 3/4 scale decodes slower
                # than full size)
                pixels = self.turbo.decode_jpeg(
                    self.data, "RGB", min_width=need[0], min_height=need[1], min_factor=2
                )
                return Image.fromarray(pixels)
            except ValueError:  # e.g. a truncated file: Pillow decides (and names the error)
                self.image = _open(self.data)
        image = self.image
        if image.format == "JPEG":
            image.draft("RGB", need)  # libjpeg scales by 1/2, 1/4 or 1/8 while >= need
        if image.mode != "RGB":
            image = image.convert("RGB")  # grey, CMYK, palette, RGBA
        return image


def _crop_resize(
    picture: _Encoded, box: tuple[float, float, float, float], size: tuple[int, int], flip: bool
) -> np.ndarray:
    """Crop ``box`` (original pixel coordinates) and resize it to ``size`` (H, W) as RGB,
    decoding a JPEG at the smallest DCT scale that keeps the crop at least ``size``."""
    from PIL import Image

    out_h, out_w = size
    width, height = picture.size
    left, top, right, bottom = box
    need = (
        math.ceil(width * out_w / max(right - left, 1e-6)),
        math.ceil(height * out_h / max(bottom - top, 1e-6)),
    )
    image = picture.rgb(need)
    sx, sy = _decoded_scale(image.size, picture.size)
    box = (left * sx, top * sy, right * sx, bottom * sy)
    out = image.resize((out_w, out_h), Image.Resampling.BILINEAR, box=box)
    if flip:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(out, dtype=np.uint8)


def _decoded_scale(decoded: tuple[int, int], original: tuple[int, int]) -> tuple[float, float]:
    """How much smaller (x, y) the decoded image is than the original. libjpeg's DCT scaling by
    1/2, 1/4 or 1/8 rounds the decoded size up (375 rows at 1/2: 188), its last row covering
    the rest of the image: the scale is the factor, not the ratio of the sizes."""
    for factor in (1.0, 0.5, 0.25, 0.125):
        if decoded == (math.ceil(original[0] * factor), math.ceil(original[1] * factor)):
            return factor, factor
    return decoded[0] / original[0], decoded[1] / original[1]


def decode_train(
    data: bytes,
    size: tuple[int, int],
    rng: np.random.Generator,
    augmentation: str = "random_resized_crop",
) -> np.ndarray:
    """A training crop of ``size`` (H, W), ``augmentation`` being ``random_resized_crop``
    (:func:`random_resized_crop_box`) or ``scale_jitter`` (:func:`scale_jitter_box`), then a
    flip with probability 1/2: ``uint8`` HxWx3."""
    picture = _Encoded(data)
    if augmentation == "scale_jitter":
        left, top, w, h = scale_jitter_box(*picture.size, size, rng)
    else:
        left, top, w, h = random_resized_crop_box(*picture.size, rng)
    flip = bool(rng.random() < 0.5)
    return _crop_resize(picture, (left, top, left + w, top + h), size, flip)


def decode_eval(data: bytes, size: tuple[int, int]) -> np.ndarray:
    """Resize the shorter side to ``size * 256 / 224`` and take the centre ``size`` crop (as
    torchvision's ``Resize(256)`` + ``CenterCrop(224)`` at 224): ``uint8`` HxWx3."""
    picture = _Encoded(data)
    width, height = picture.size
    out_h, out_w = size
    scale = round(max(out_h, out_w) * 256 / 224) / min(width, height)
    cw, ch = out_w / scale, out_h / scale
    left, top = (width - cw) / 2, (height - ch) / 2
    return _crop_resize(picture, (left, top, left + cw, top + ch), size, flip=False)


# --------------------------------------------------------------------------------------------
# Where the bytes are: files, or members of tar shards
# --------------------------------------------------------------------------------------------


@dataclass
class _Split:
    """One split's examples: where each example's bytes are, and its label. Stored as numpy
    arrays (no per-example Python objects) so worker processes share them cheaply."""

    labels: np.ndarray  # int64
    paths: np.ndarray  # bytes: a file per example, or the shard of each example
    offsets: np.ndarray | None = None  # tar shards: where each member's data starts
    sizes: np.ndarray | None = None
    shards: tuple[str, ...] = ()
    members: np.ndarray | None = None  # tar shards: each example's image member name (bytes)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: np.ndarray) -> _Split:
        """The examples ``index`` (in that order) as a split of their own."""

        def take(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[index]

        return _Split(
            self.labels[index],
            self.paths[index],
            take(self.offsets),
            take(self.sizes),
            self.shards,
            take(self.members),
        )

    def name(self, i: int) -> str:
        if self.offsets is None:
            return os.fsdecode(self.paths[i])
        member = os.fsdecode(self.members[i]) if self.members is not None else self.offsets[i]
        return f"{self.shards[int(self.paths[i])]}:{member}"

    def read(self, i: int) -> bytes:
        if self.offsets is None:
            with open(os.fsdecode(self.paths[i]), "rb") as f:
                return f.read()
        with open(self.shards[int(self.paths[i])], "rb") as f:
            f.seek(int(self.offsets[i]))
            return f.read(int(self.sizes[i]))


def _read_error(exc: BaseException) -> str:
    from PIL import UnidentifiedImageError

    if isinstance(exc, UnidentifiedImageError):
        return "not an image PIL can read"
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:160]


class _Decoder:
    """Reads and decodes examples of a split; an unreadable one is replaced by the next
    readable file (deterministically) and reported in the returned list of bad names."""

    def __init__(
        self, split: _Split, size: tuple[int, int], augmentation: str = "random_resized_crop"
    ) -> None:
        self.split, self.size, self.augmentation = split, size, augmentation

    def one(
        self, i: int, rng: np.random.Generator | None
    ) -> tuple[np.ndarray, int, list[tuple[str, str]]]:
        bad: list[tuple[str, str]] = []
        n = len(self.split)
        for k in range(_SUBSTITUTES):
            j = (i + k) % n
            try:
                data = self.split.read(j)
                x = (
                    decode_eval(data, self.size)
                    if rng is None
                    else decode_train(data, self.size, rng, self.augmentation)
                )
                return x, int(self.split.labels[j]), bad
            except Exception as exc:  # noqa: BLE001 - PIL raises many kinds for a bad file
                bad.append((self.split.name(j), _read_error(exc)))
        raise DataError(f"{_SUBSTITUTES} unreadable images in a row from {bad[0][0]}: {bad[0][1]}")


class _StepLoader:
    """Decodes and augments one rank's share of the batch of a global step (grain map);
    ``augmentation`` None: the evaluation transform (no augmentation)."""

    def __init__(self, split, size, batch_size, seed, augmentation, rank, world_size) -> None:
        self.decoder = _Decoder(split, size, augmentation or "random_resized_crop")
        self.n = len(split)
        self.batch_size, self.seed = batch_size, seed
        self.augment = augmentation is not None
        self.per = batch_size // world_size
        self.rank = rank
        self.spe = steps_per_epoch(self.n, batch_size)
        self._order: tuple[int, np.ndarray] = (-1, np.arange(0))

    @property
    def batch_bytes(self) -> int:
        return self.per * math.prod(self.decoder.size) * 3

    def order(self, epoch: int) -> np.ndarray:
        if self._order[0] != epoch:
            self._order = (epoch, epoch_permutation(self.n, self.seed, epoch))
        return self._order[1]

    def __call__(self, step: int) -> dict[str, Any]:
        epoch, index = divmod(step, self.spe)
        first = index * self.batch_size + self.rank * self.per
        positions = range(first, first + self.per)
        idx = self.order(epoch)[first : first + self.per]
        images = np.empty((self.per, *self.decoder.size, 3), np.uint8)
        labels = np.empty(self.per, np.int64)
        bad: list[tuple[str, str]] = []
        for k, (position, i) in enumerate(zip(positions, idx, strict=True)):
            rng = (
                np.random.default_rng([self.seed, _SAMPLE_STREAM, epoch, position])
                if self.augment
                else None
            )
            images[k], labels[k], skipped = self.decoder.one(int(i), rng)
            bad.extend(skipped)
        return {"step": step, "index": idx, "images": images, "labels": labels, "bad": bad}


class _EvalImages(Sequence):
    """A split's images seen as a read-only ``uint8`` NHWC array indexed by arrays of indices
    (what a runtime's evaluation asks for), decoded by a thread pool (PIL releases the GIL)."""

    def __init__(self, source: ImageSource, split: _Split) -> None:
        self.source, self.split = source, split
        self.dtype = np.dtype(np.uint8)
        self.shape = (len(split), *source.input_shape)
        self.ndim = 4

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: Any) -> np.ndarray:
        idx = np.arange(len(self))[index]
        if idx.ndim == 0:
            return self[idx[None]][0]
        decoder = _Decoder(self.split, self.source.image_size)
        results = list(self.source.pool().map(lambda i: decoder.one(int(i), None), idx))
        for _, _, bad in results:
            self.source.note_bad(bad)
        if not results:
            return np.empty((0, *self.source.input_shape), np.uint8)
        return np.stack([x for x, _, _ in results])


# --------------------------------------------------------------------------------------------
# Worker processes with a bounded prefetch
# --------------------------------------------------------------------------------------------

_worker_loader: _StepLoader | None = None


def _install_loader(loader: _StepLoader) -> None:
    global _worker_loader
    _worker_loader = loader
    parent = multiprocessing.parent_process()
    if parent is not None:  # a worker: leave when the training process dies, even by kill -9
        threading.Thread(target=_exit_with, args=(parent.sentinel,), daemon=True).start()
        # a terminal's Ctrl-C reaches the whole process group: the training process finishes its
        # step and saves (rescompile.harness.interrupt), which needs its workers alive
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _exit_with(sentinel: int) -> None:
    multiprocessing.connection.wait([sentinel])
    os._exit(0)


def _load_step(task: Any, shared: bool = False) -> dict[str, Any]:
    """A worker's task (a step number, or what the source's ``task`` made of it). With
    ``shared`` the images travel through a shared-memory block (one copy in, one copy out)
    instead of being pickled through the result pipe (four copies)."""
    assert _worker_loader is not None
    item = _worker_loader(task)
    if shared:
        images = item["images"]
        block = SharedMemory(create=True, size=max(1, images.nbytes))
        np.ndarray(images.shape, images.dtype, buffer=block.buf)[...] = images
        item["images"] = (block.name, images.shape, images.dtype.str)
        block.close()
    return item


def _receive(item: dict[str, Any]) -> dict[str, Any]:
    """The images of a worker's result, out of (and freeing) their shared-memory block."""
    if isinstance(item["images"], tuple):
        name, shape, dtype = item["images"]
        block = SharedMemory(name=name)
        try:
            item["images"] = np.ndarray(shape, dtype, buffer=block.buf).copy()
        finally:
            block.close()
            block.unlink()
    return item


class _Prefetcher:
    """The batches of steps ``start, start + 1, ...`` in order, computed ahead by ``workers``
    processes (``spawn``: safe next to a framework's threads), at most ``workers * prefetch``
    of them in flight: memory is bounded by that many batches whatever the data set's size.
    The loader (with the split's file table) is sent to each worker once, a task is a step
    number; the images come back through shared memory when ``/dev/shm`` has room for twice
    the batches in flight (else through the result pipe). ``workers == 0``: one thread of this
    process (decoding releases the GIL). ``task`` makes a worker's task of a step number, in
    this process (default: the step itself; streamed shards send the step's bytes)."""

    def __init__(
        self, loader: Any, start: int, workers: int, prefetch: int, task: Any = None
    ) -> None:
        from concurrent.futures import ProcessPoolExecutor

        self.task = task or (lambda step: step)
        self.next_step = start
        self.depth = max(1, workers) * max(1, prefetch)
        self.pending: deque[Any] = deque()
        self.shared = False
        if workers == 0:
            _install_loader(loader)
            self.pool: Any = ThreadPoolExecutor(1, thread_name_prefix="batches")
        else:
            self.pool = ProcessPoolExecutor(
                workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_install_loader,
                initargs=(loader,),
            )
            self.shared = _shm_free() > 2 * self.depth * loader.batch_bytes

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            while len(self.pending) < self.depth:
                task = self.task(self.next_step)
                self.pending.append(self.pool.submit(_load_step, task, self.shared))
                self.next_step += 1
            try:
                yield _receive(self.pending.popleft().result())
            except BrokenProcessPool:
                raise DataError(
                    "a data worker process died (out of memory? killed?); resume the run with "
                    "--resume, with fewer workers (RESCOMPILE_DATA_WORKERS) if memory is short"
                ) from None

    def close(self) -> None:
        """Stop the workers after the batches they are computing (at most one each), and free
        the shared memory of every batch computed but not consumed."""
        for future in self.pending:
            future.cancel()
        self.pool.shutdown(wait=True)
        for future in self.pending:
            if not future.cancelled() and future.exception() is None:
                _receive(future.result())
        self.pending.clear()


def _check_augmentation(augmentation: str | None) -> str:
    """``augmentation``, checked (None: ``random_resized_crop``)."""
    augmentation = augmentation or "random_resized_crop"
    if augmentation not in TRAIN_AUGMENTATIONS:
        raise ValueError(
            f"unknown augmentation {augmentation!r}; one of {', '.join(TRAIN_AUGMENTATIONS)}"
        )
    return augmentation


def _shm_free() -> int:
    import shutil

    try:
        return shutil.disk_usage("/dev/shm").free
    except OSError:
        return 0


# --------------------------------------------------------------------------------------------
# The source
# --------------------------------------------------------------------------------------------


def _default_workers() -> int:
    value = os.environ.get("RESCOMPILE_DATA_WORKERS")
    if value is not None:
        try:
            workers = int(value)
        except ValueError:
            workers = -1
        if workers < 0:
            raise DataError(f"RESCOMPILE_DATA_WORKERS must be a whole number >= 0, not {value!r}")
        return workers
    return min(8, len(os.sched_getaffinity(0)))


class ImageSource:
    """Image files or tar shards, decoded and augmented by worker processes (see the module)."""

    augment = "random_resized_crop"
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    stats_from = "ImageNet mean and std"
    channels = 3

    def __init__(
        self,
        name: str,
        train: _Split,
        test: _Split,
        classes: list[str],
        image_size: tuple[int, int],
        *,
        where: str,
        workers: int | None = None,
        max_bad: int | None = None,
        prefetch: int = 2,
    ) -> None:
        self.name, self.train, self.test, self.classes = name, train, test, classes
        self.where = where
        self.num_classes = len(classes)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.workers = _default_workers() if workers is None else workers
        self.max_bad = max(10, len(train) // 1000) if max_bad is None else max_bad
        self.prefetch = prefetch
        self.bad: dict[str, str] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._iterators: list[Any] = []

    # -- DataSource ----------------------------------------------------------------------------

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (*self.image_size, self.channels)

    @property
    def n_train(self) -> int:
        return len(self.train)

    @property
    def n_test(self) -> int:
        return len(self.test)

    @property
    def skipped(self) -> int:
        """Distinct unreadable files met so far (skipped in training, black in evaluation): under
        several processes, this one's and those of all processes as of the last merge (see
        :meth:`note_bad`)."""
        return len(self.bad)

    def summary(self) -> str:
        h, w, c = self.input_shape
        return (
            f"{self.name}: {self.n_train} train / {self.n_test} val images from {self.where}, "
            f"{self.num_classes} classes, cropped to {h}x{w}x{c}"
        )

    def train_eval_index(self) -> np.ndarray:
        """The training images a run evaluates at its end: all of them when there are at most
        :data:`TRAIN_EVAL_IMAGES`, else that many drawn at random (ascending), the same for
        every run of this data set whatever its seed or number of processes (decoding 1.28 M
        ImageNet images would take about an hour)."""
        n = self.n_train
        if n <= TRAIN_EVAL_IMAGES:
            return np.arange(n)
        rng = np.random.default_rng([_EVAL_SUBSET_STREAM, n])
        return np.sort(rng.choice(n, TRAIN_EVAL_IMAGES, replace=False))

    @property
    def train_eval(self) -> str:
        """What the final train-split evaluation covers, in words (summary.json's note)."""
        n = self.n_train
        if n <= TRAIN_EVAL_IMAGES:
            return "the whole training set"
        return f"a fixed random {TRAIN_EVAL_IMAGES:,} of the {n:,} training images"

    def train_data(self, augment: bool = False, *, whole_train: bool = False) -> Any:
        """The runtime's data. Its train split is :meth:`train_eval_index` (what the end of a
        run evaluates), or with ``whole_train`` every training image (``rescompile eval
        --split train``); training batches come from :meth:`train_batches` either way."""
        from rescompile.harness.runtime import TrainData

        train = self.train if whole_train else self.train.subset(self.train_eval_index())
        return TrainData(
            _EvalImages(self, train),
            train.labels,
            _EvalImages(self, self.test),
            self.test.labels,
            self.mean,
            self.std,
            augment,
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
        """This rank's batch of every global step from ``start`` on, augmented with
        ``augmentation`` (one of :data:`TRAIN_AUGMENTATIONS`; None: ``random_resized_crop``)
        when ``augment``."""
        if batch_size % world_size:
            raise ValueError(f"a batch of {batch_size} does not split over {world_size} ranks")
        augmentation = _check_augmentation(augmentation)
        loader = _StepLoader(
            self.train,
            self.image_size,
            batch_size,
            seed,
            augmentation if augment else None,
            rank,
            world_size,
        )
        return self._batches(self._pipeline(loader, start))

    def _batches(self, pipeline: _Prefetcher) -> Iterator[Any]:
        """The pipeline's batches as the loop takes them, its unreadable files counted; the
        pipeline is closed with the source."""
        from rescompile.harness.runtime import Batch

        self._iterators.append(pipeline)
        for item in pipeline:
            self.note_bad(item["bad"])
            yield Batch(item["step"], item["index"], images=item["images"], labels=item["labels"])

    def _pipeline(self, loader: _StepLoader, start: int) -> _Prefetcher:
        return _Prefetcher(loader, start, self.workers, self.prefetch)

    def note_bad(self, bad: list[tuple[str, str]]) -> None:
        """Count and report unreadable files; stop past the limit.

        Under several processes (torchrun, jax.distributed) each decodes only its share of
        every batch, so each names on its own stderr, prefixed ``process R of W:``, the files
        it meets that it does not know of yet; the training driver merges the files of all
        processes at every checkpoint and at the end of the run (:meth:`restore`), so the
        checkpoint and ``skipped_images`` count them all. The limit ``max_bad`` is checked by
        each process against the files it knows of: those it met, and those every process had
        met by the last checkpoint (a file met by two processes in between is named by both)."""
        from rescompile.harness.distributed import current

        launch = current()
        who = f"process {launch.rank} of {launch.world_size}: " if launch.world_size > 1 else ""
        with self._lock:
            for name, why in bad:
                if name in self.bad:
                    continue
                self.bad[name] = why
                print(
                    f"warning: {who}skipped an unreadable image {name} ({why}); "
                    f"{len(self.bad)} so far",
                    file=sys.stderr,
                    flush=True,
                )
            if len(self.bad) > self.max_bad:
                first, why = next(iter(self.bad.items()))
                raise DataError(
                    f"{len(self.bad)} unreadable images in {self.where}, more than the limit of "
                    f"{self.max_bad}; the first is {first} ({why})"
                )

    def state(self) -> dict[str, Any]:
        """The unreadable files met so far, ``{name: why}``: a resumed run keeps counting (under
        several processes, the driver gathers every process's before rank 0 writes it)."""
        with self._lock:
            return {"unreadable": dict(self.bad)}

    def restore(self, state: dict[str, Any]) -> None:
        """Take back the unreadable files of :meth:`state`, a checkpoint's or another
        process's, adding them to those already known (a malformed entry is ignored: the file
        will be met, named and counted again)."""
        unreadable = state.get("unreadable") if isinstance(state, dict) else None
        if not isinstance(unreadable, dict):
            return
        with self._lock:
            for name, why in unreadable.items():
                if isinstance(name, str) and isinstance(why, str):
                    self.bad.setdefault(name, why)

    def pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max(1, self.workers), thread_name_prefix="decode")
        return self._pool

    def run_files(self) -> dict[str, str]:
        """The class list, one name a line: line ``k`` (from 0) is label ``k``."""
        return {CLASSES_FILE: "".join(f"{c}\n" for c in self.classes)}

    def close(self) -> None:
        for pipeline in self._iterators:
            pipeline.close()
        self._iterators.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


# --------------------------------------------------------------------------------------------
# Opening a folder or shards
# --------------------------------------------------------------------------------------------


def open_image_source(kind: str, arg: str, image_size: tuple[int, int]) -> ImageSource:
    """``imagefolder:PATH`` or ``webdataset:PATTERN`` (see ``load_dataset``)."""
    if not arg:
        what = "PATH" if kind == "imagefolder" else "PATTERN"
        raise DataError(f"{kind} needs {what}: --data {kind}:{what}")
    if kind == "imagefolder":
        return open_image_folder(arg, image_size)
    if arg.startswith("pipe:") or arg.rstrip("/").lower().endswith(".json") or "://" in arg:
        from rescompile.harness.streams import open_stream_source

        return open_stream_source(arg, image_size)
    from rescompile.harness.shards import open_shards

    return open_shards(arg, image_size)


def _class_files(folder: Path) -> list[Path]:
    try:
        files = [
            Path(e.path)
            for e in os.scandir(folder)
            if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS)
        ]
    except OSError as exc:
        raise DataError(f"cannot read the folder {folder}: {exc.strerror or exc}") from None
    return sorted(files)


def _class_folders(split_dir: Path) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(split_dir) if e.is_dir())
    except OSError as exc:
        raise DataError(f"cannot read the folder {split_dir}: {exc.strerror or exc}") from None


def open_image_folder(
    path: str | Path, image_size: tuple[int, int] = (224, 224), **options: Any
) -> ImageSource:
    """An image folder with ``train/<class>/*`` and ``val/<class>/*`` (JPEG and PNG files)."""
    root = Path(path).expanduser()
    layout = "PATH/train/<class>/*.jpg and PATH/val/<class>/*.jpg (torchvision's ImageFolder)"
    if not root.is_dir():
        raise DataError(f"imagefolder: {root} is not a directory; expected {layout}")
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise DataError(f"imagefolder: {root} has no {split}/ folder; expected {layout}")
    classes = _class_folders(root / "train")
    if not classes:
        raise DataError(f"imagefolder: {root / 'train'} has no class folders; expected {layout}")
    label_of = {c: k for k, c in enumerate(classes)}
    splits = {}
    for split in ("train", "val"):
        paths: list[bytes] = []
        labels: list[int] = []
        for c in _class_folders(root / split):
            if c not in label_of:
                raise DataError(
                    f"imagefolder: {root / split / c} is a class that "
                    f"{root / 'train'} does not have"
                )
            files = _class_files(root / split / c)
            if not files and split == "train":
                raise DataError(
                    f"imagefolder: the class folder {root / split / c} holds no "
                    f"{'/'.join(IMAGE_EXTENSIONS)} images"
                )
            paths.extend(os.fsencode(f) for f in files)
            labels.extend([label_of[c]] * len(files))
        if not paths:
            raise DataError(f"imagefolder: {root / split} holds no images; expected {layout}")
        splits[split] = _Split(np.asarray(labels, np.int64), np.array(paths, dtype=bytes))
    return ImageSource(
        root.name or str(root),
        splits["train"],
        splits["val"],
        classes,
        image_size,
        where=str(root),
        **options,
    )


def read_tar_index(shard: str) -> Iterator[tuple[str, str, int, int]]:
    """``(key, extension, data offset, size)`` of every file member of a tar shard, with
    webdataset's key convention (the member name up to the first dot of its base name)."""
    with tarfile.open(shard, "r:") as tar:
        for info in tar:
            if not info.isfile():
                continue
            directory, _, base = info.name.rpartition("/")
            stem, dot, ext = base.partition(".")
            if not dot:
                continue
            key = f"{directory}/{stem}" if directory else stem
            yield key, ext.lower(), info.offset_data, info.size
