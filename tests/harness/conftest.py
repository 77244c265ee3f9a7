"""Fixtures for the harness tests: the environment of a `rescompile` subprocess, and small CIFAR
files written in the real on-disk format. Plain helpers and constants are in ``common.py``."""

from __future__ import annotations

import io
import os
import pickle
import struct
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    """The environment of the module's `rescompile` processes: one thread per process (two
    processes share two cores in several tests), unbuffered output, no launcher's rank variables,
    and a compilation cache shared by the module's flax processes."""
    e = dict(os.environ)
    e.update(
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
        RESCOMPILE_JAX_CACHE=str(tmp_path_factory.mktemp("jax-cache")),
    )
    for name in ("WORLD_SIZE", "RANK"):
        e.pop(name, None)
    return e


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes pickles the way Python 2's cPickle wrote the CIFAR files: every string (keys,
    dtype codes, array payloads) as a byte string, and ``numpy.core`` module names."""

    dispatch = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def _save_as_byte_string(self, obj: str | bytes) -> None:
        data = obj if isinstance(obj, bytes) else obj.encode("latin1")
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = _save_as_byte_string
    dispatch[str] = _save_as_byte_string


def py2_pickle(obj: Any) -> bytes:
    buffer = io.BytesIO()
    _Py2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue().replace(b"numpy._core.", b"numpy.core.")


def cifar_batch(n: int, label_key: bytes, num_classes: int, seed: int) -> dict[bytes, Any]:
    rng = np.random.default_rng(seed)
    batch: dict[bytes, Any] = {
        b"batch_label": b"fake batch",
        label_key: [int(v) for v in rng.integers(0, num_classes, n)],
        b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }
    if label_key == b"fine_labels":
        batch[b"coarse_labels"] = [v // 5 for v in batch[label_key]]
    return batch


CifarWriter = Callable[..., Path]


@pytest.fixture
def write_cifar(tmp_path: Path) -> CifarWriter:
    """``write_cifar(which=10, n=4, archive=False)``: the batches directory, or the .tar.gz.

    Returns the directory ``.../cifar-10-batches-py`` (or ``cifar-100-python``), or the
    archive path. The batches as written are kept on the function as ``write_cifar.batches``.
    """

    def write(which: int = 10, n: int = 4, archive: bool = False) -> Path:
        if which == 10:
            folder, names, key, classes = (
                "cifar-10-batches-py",
                [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"],
                b"labels",
                10,
            )
        else:
            folder, names, key, classes = (
                "cifar-100-python",
                ["train", "test"],
                b"fine_labels",
                100,
            )
        batches = {name: cifar_batch(n, key, classes, seed) for seed, name in enumerate(names)}
        write.batches = batches  # type: ignore[attr-defined]
        root = tmp_path / f"cifar{which}"
        if archive:
            root.mkdir(parents=True, exist_ok=True)
            path = root / f"{folder.replace('-batches-py', '-python')}.tar.gz"
            with tarfile.open(path, "w:gz") as tar:
                for name, batch in batches.items():
                    data = py2_pickle(batch)
                    info = tarfile.TarInfo(f"{folder}/{name}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
            return path
        directory = root / folder
        directory.mkdir(parents=True)
        for name, batch in batches.items():
            (directory / name).write_bytes(py2_pickle(batch))
        return directory

    return write
