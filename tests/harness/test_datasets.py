"""Digits, synthetic data and the dataset dispatcher."""

from __future__ import annotations

import numpy as np
import pytest

from rescompile.harness.data import (
    DataError,
    Dataset,
    load_dataset,
    load_digits_dataset,
    synthetic,
)


def test_digits_split_sizes_and_scaling() -> None:
    ds = load_digits_dataset()
    assert (len(ds.x_train), len(ds.x_test)) == (1347, 450)
    assert ds.x_train.shape[1:] == (8, 8, 1) and ds.input_shape == (8, 8, 1)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
    assert ds.num_classes == 10 and ds.augment == "none"
    # Stratified: every class has its share (the whole set has 174..183 per class) in the test set.
    counts = np.bincount(ds.y_test, minlength=10)
    assert counts.min() >= 43 and counts.max() <= 46
    np.testing.assert_allclose(ds.mean, [ds.x_train.mean()], rtol=1e-5)


def test_digits_split_is_deterministic_and_seeded() -> None:
    a, b = load_digits_dataset(), load_digits_dataset()
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    c = load_digits_dataset(seed=1)
    assert not np.array_equal(a.y_train, c.y_train)
    # Same images overall, just split differently.
    assert sorted(
        a.x_train.sum(axis=(1, 2, 3)).tolist() + a.x_test.sum(axis=(1, 2, 3)).tolist()
    ) == (sorted(c.x_train.sum(axis=(1, 2, 3)).tolist() + c.x_test.sum(axis=(1, 2, 3)).tolist()))


def test_synthetic_shapes_and_determinism() -> None:
    ds = synthetic((16, 12, 1), num_classes=5, n_train=64, n_test=8, seed=3)
    assert ds.x_train.shape == (64, 16, 12, 1) and ds.x_test.shape == (8, 16, 12, 1)
    assert ds.y_train.max() < 5 and ds.y_train.min() >= 0
    assert ds.image_size == (16, 12) and ds.channels == 1
    np.testing.assert_array_equal(ds.x_train, synthetic((16, 12, 1), 5, 64, 8, seed=3).x_train)
    assert not np.array_equal(ds.x_train, synthetic((16, 12, 1), 5, 64, 8, seed=4).x_train)


def test_dataset_rejects_inconsistent_arrays() -> None:
    x = np.zeros((4, 8, 8, 1), np.float32)
    y = np.zeros(3, np.int64)
    stats = np.zeros(1, np.float32)
    with pytest.raises(ValueError, match="4 images but 3 labels"):
        Dataset("d", x, y, x, np.zeros(4, np.int64), 2, stats, stats, (8, 8), 1)
    with pytest.raises(ValueError, match="expected"):
        Dataset("d", x, np.zeros(4, np.int64), x, np.zeros(4, np.int64), 2, stats, stats, (8, 8), 3)


@pytest.mark.parametrize(
    ("spec", "shape", "classes"),
    [
        ("synthetic", (32, 32, 3), 10),
        ("synthetic:8x8x1", (8, 8, 1), 10),
        ("synthetic:4x6x2:7", (4, 6, 2), 7),
    ],
)
def test_load_dataset_synthetic(spec: str, shape: tuple[int, int, int], classes: int) -> None:
    ds = load_dataset(spec)
    assert ds.input_shape == shape and ds.num_classes == classes


def test_load_dataset_digits() -> None:
    assert load_dataset("digits").name == "digits"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("mnist", r"unknown dataset 'mnist'; choose one of: cifar10:PATH, cifar100:PATH, digits"),
        ("cifar10", "cifar10 needs the path of the data"),
        ("synthetic:32x32", "synthetic:HxWxC"),
        ("synthetic:axbxc", "synthetic:HxWxC"),
        ("synthetic:0x32x3", "positive sizes"),
        ("digits:3", "digits takes no argument"),
    ],
)
def test_load_dataset_errors(spec: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        load_dataset(spec)


def test_a_recipes_augmentation_leaves_in_memory_batches_alone() -> None:
    """``augmentation`` (image folders' crop) is not used by arrays: pad-crop-flip as before."""
    from rescompile.harness.data import synthetic

    data = synthetic((8, 8, 3), n_train=64, n_test=8)
    plain = data.train_batches(0, 16, seed=1, augment=True)
    jitter = data.train_batches(0, 16, seed=1, augment=True, augmentation="scale_jitter")
    for _ in range(5):
        a, b = next(plain), next(jitter)
        for field in ("index", "top", "left", "flip"):
            assert np.array_equal(getattr(a, field), getattr(b, field))
