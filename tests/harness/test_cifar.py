"""CIFAR loading from the real pickle format: directories, archives, and the ways they go wrong."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from rescompile.harness.data import DataError, load_cifar, load_dataset
from rescompile.harness.safepickle import UnsafePickleError, safe_loads

from .conftest import CifarWriter, py2_pickle


def _expected_images(data: np.ndarray) -> np.ndarray:
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def test_cifar10_directory_matches_the_batches(write_cifar: CifarWriter) -> None:
    directory = write_cifar(10, n=4)
    batches = write_cifar.batches  # type: ignore[attr-defined]
    ds = load_cifar(directory, 10)

    train = [batches[f"data_batch_{i}"] for i in range(1, 6)]
    assert ds.name == "cifar10" and ds.num_classes == 10
    assert ds.x_train.shape == (20, 32, 32, 3) and ds.x_train.dtype == np.uint8
    assert ds.x_test.shape == (4, 32, 32, 3)
    assert ds.y_train.dtype == np.int64
    np.testing.assert_array_equal(ds.y_train, np.concatenate([b[b"labels"] for b in train]))
    np.testing.assert_array_equal(ds.y_test, batches["test_batch"][b"labels"])
    # One pixel by hand: row layout is 1024 red, 1024 green, 1024 blue values, row-major.
    row = batches["test_batch"][b"data"][2]
    assert ds.x_test[2, 5, 7, 1] == row[1024 + 5 * 32 + 7]
    np.testing.assert_array_equal(ds.x_train[:4], _expected_images(train[0][b"data"]))
    all_train = np.concatenate([b[b"data"] for b in train]).reshape(-1, 3, 1024) / 255.0
    np.testing.assert_allclose(ds.mean, all_train.mean(axis=(0, 2)), rtol=1e-5)
    np.testing.assert_allclose(ds.std, all_train.std(axis=(0, 2)), rtol=1e-4)
    assert ds.augment == "pad_crop_flip"


def test_cifar10_parent_directory_and_archive_give_the_same_data(
    write_cifar: CifarWriter,
) -> None:
    directory = write_cifar(10, n=3)
    from_dir = load_cifar(directory)
    from_parent = load_cifar(directory.parent)
    archive = write_cifar(10, n=3, archive=True)
    from_archive = load_cifar(archive)
    from_archive_parent = load_cifar(archive.parent)
    for ds in (from_parent, from_archive, from_archive_parent):
        np.testing.assert_array_equal(ds.x_train, from_dir.x_train)
        np.testing.assert_array_equal(ds.y_test, from_dir.y_test)


@pytest.mark.parametrize("archive", [False, True])
def test_cifar100_uses_fine_labels(write_cifar: CifarWriter, archive: bool) -> None:
    path = write_cifar(100, n=6, archive=archive)
    batches = write_cifar.batches  # type: ignore[attr-defined]
    ds = load_cifar(path, 100)
    assert ds.name == "cifar100" and ds.num_classes == 100
    assert ds.x_train.shape == (6, 32, 32, 3)
    np.testing.assert_array_equal(ds.y_train, batches["train"][b"fine_labels"])
    np.testing.assert_array_equal(ds.y_test, batches["test"][b"fine_labels"])


def test_python3_pickles_are_accepted(tmp_path: Path) -> None:
    directory = tmp_path / "cifar-10-batches-py"
    directory.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8), "labels": [1, 9]}
        (directory / name).write_bytes(pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL))
    ds = load_cifar(directory)
    assert ds.x_train.shape == (10, 32, 32, 3)
    assert ds.y_test.tolist() == [1, 9]


def test_load_dataset_dispatches_to_cifar(write_cifar: CifarWriter) -> None:
    directory = write_cifar(10, n=2)
    assert load_dataset(f"cifar10:{directory}").x_train.shape == (10, 32, 32, 3)


def test_missing_path_says_what_was_expected(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_cifar(tmp_path / "nowhere")
    message = str(info.value)
    assert str(tmp_path / "nowhere") in message
    assert "cifar-10-batches-py" in message and "cifar-10-python.tar.gz" in message
    assert "never downloads" in message


def test_directory_without_cifar_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no CIFAR files in"):
        load_cifar(tmp_path, 100)


def test_missing_batch_file_is_named(write_cifar: CifarWriter) -> None:
    directory = write_cifar(10)
    (directory / "data_batch_3").unlink()
    with pytest.raises(DataError, match=r"missing CIFAR file .*data_batch_3"):
        load_cifar(directory)


def test_missing_archive_member_is_named(tmp_path: Path) -> None:
    archive = tmp_path / "cifar-100-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        data = py2_pickle({b"data": np.zeros((1, 3072), np.uint8), b"fine_labels": [0]})
        info = tarfile.TarInfo("cifar-100-python/train")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(DataError, match=r"missing CIFAR file cifar-100-python/test in the archive"):
        load_cifar(archive, 100)


def test_truncated_pickle(write_cifar: CifarWriter) -> None:
    directory = write_cifar(10)
    blob = (directory / "test_batch").read_bytes()
    (directory / "test_batch").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match=r"test_batch is not a valid CIFAR pickle \(truncated"):
        load_cifar(directory)


def test_corrupt_archive(tmp_path: Path) -> None:
    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(b"\x1f\x8b this is not gzip data at all")
    with pytest.raises(DataError, match="is not a readable cifar-10-python.tar.gz archive"):
        load_cifar(archive)


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        ({b"data": np.zeros((2, 3000), np.uint8), b"labels": [0, 1]}, r"shape \(N, 3072\)"),
        ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, "uint8"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "2 images but 'labels'"),
        (
            {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]},
            r"labels must be in \[0, 10\)",
        ),
        ({b"labels": [0, 1]}, "no 'data' entry"),
        ([1, 2, 3], "expected a dict"),
    ],
)
def test_wrongly_shaped_batch(write_cifar: CifarWriter, batch: object, message: str) -> None:
    directory = write_cifar(10)
    (directory / "data_batch_2").write_bytes(py2_pickle(batch))
    with pytest.raises(DataError, match=message) as info:
        load_cifar(directory)
    assert "data_batch_2" in str(info.value)


class _Hostile:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_hostile_pickle_is_refused_before_running(write_cifar: CifarWriter, tmp_path: Path) -> None:
    directory = write_cifar(10)
    marker = tmp_path / "pwned"
    evil = {b"data": _Hostile(marker), b"labels": [0]}
    (directory / "data_batch_1").write_bytes(pickle.dumps(evil, protocol=2))
    with pytest.raises(
        DataError, match=r"data_batch_1 is not a plain CIFAR pickle: refusing to load"
    ):
        load_cifar(directory)
    assert not marker.exists()


def test_hostile_pickle_in_archive_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        data = pickle.dumps(_Hostile(marker))
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(DataError, match="refusing to load"):
        load_cifar(archive)
    assert not marker.exists()


def test_safe_loads_refuses_other_globals_and_object_arrays() -> None:
    with pytest.raises(UnsafePickleError, match="collections.OrderedDict"):
        safe_loads(pickle.dumps(__import__("collections").OrderedDict(a=1)))
    with pytest.raises(UnsafePickleError, match="objects"):
        safe_loads(pickle.dumps(np.array([1, "x"], dtype=object)))
    with pytest.raises(UnsafePickleError, match="encoding 'base64'"):
        safe_loads(
            b"\x80\x02c_codecs\nencode\nX\x04\x00\x00\x00YWJjq\x00X\x06\x00\x00\x00base64q\x01\x86R."
        )
    value = {"a": [1, 2.5, b"x"], "b": np.arange(3)}
    loaded = safe_loads(pickle.dumps(value, protocol=2), encoding="latin1")
    assert loaded["a"] == [1, 2.5, b"x"]
    np.testing.assert_array_equal(loaded["b"], np.arange(3))
