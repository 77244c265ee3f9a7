"""Augmentation, normalization and the resumable batch order."""

from __future__ import annotations

import numpy as np
import pytest

from rescompile.harness.data import (
    batch_rng,
    batches,
    channel_stats,
    epoch_permutation,
    normalize,
    pad_crop_flip,
    steps_per_epoch,
)


class _FixedRng:
    """Stands in for a Generator: every offset is ``offset``, every uniform draw is ``u``."""

    def __init__(self, offset: int, u: float) -> None:
        self.offset, self.u = offset, u

    def integers(self, low: int, high: int, size: int) -> np.ndarray:
        return np.full(size, self.offset)

    def random(self, size: int) -> np.ndarray:
        return np.full(size, self.u)


def _images(n: int = 16, h: int = 8, w: int = 8, c: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 256, size=(n, h, w, c), dtype=np.uint8)


def test_crop_keeps_shape_and_dtype() -> None:
    x = _images()
    out = pad_crop_flip(x, np.random.default_rng(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    out_f = pad_crop_flip(x.astype(np.float32) / 255, np.random.default_rng(0), pad=2)
    assert out_f.shape == x.shape and out_f.dtype == np.float32


def test_centre_crop_is_identity_and_flip_really_flips() -> None:
    x = _images()
    np.testing.assert_array_equal(pad_crop_flip(x, _FixedRng(4, 0.9)), x)  # type: ignore[arg-type]
    np.testing.assert_array_equal(pad_crop_flip(x, _FixedRng(4, 0.1)), x[:, :, ::-1])  # type: ignore[arg-type]


def test_corner_crop_shifts_in_zero_padding() -> None:
    x = _images(n=2)
    out = pad_crop_flip(x, _FixedRng(0, 0.9), pad=4)  # type: ignore[arg-type]
    assert (out[:, :4] == 0).all() and (out[:, :, :4] == 0).all()
    np.testing.assert_array_equal(out[:, 4:, 4:], x[:, :4, :4])


def test_every_output_is_a_padded_crop_possibly_flipped() -> None:
    x = _images(n=64, h=6, w=6, c=1, seed=1)
    pad = 2
    out = pad_crop_flip(x, np.random.default_rng(7), pad=pad)
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))

    def crop(i: int, dy: int, dx: int, flip: bool) -> np.ndarray:
        window = padded[i, dy : dy + 6, dx : dx + 6]
        return window[:, ::-1] if flip else window

    seen_flips, seen_offsets = set(), set()
    for i in range(len(x)):
        matches = [
            (dy, dx, flip)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            for flip in (False, True)
            if np.array_equal(out[i], crop(i, dy, dx, flip))
        ]
        assert matches, f"image {i} is not a crop of its padded original"
        seen_flips.add(matches[0][2])
        seen_offsets.add(matches[0][:2])
    assert seen_flips == {False, True}
    assert len(seen_offsets) > 10
    # Zero padding: with all-nonzero inputs, zeros appear only through the border.
    assert (out == 0).any()


def test_augmentation_is_deterministic_given_the_rng() -> None:
    x = _images()
    a = pad_crop_flip(x, batch_rng(0, 3, 5))
    b = pad_crop_flip(x, batch_rng(0, 3, 5))
    c = pad_crop_flip(x, batch_rng(0, 3, 6))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_normalize_uint8_and_float() -> None:
    x = np.array([[[[0, 255]]]], dtype=np.uint8)  # (1, 1, 1, 2)
    mean, std = np.array([0.5, 0.5]), np.array([0.25, 0.5])
    out = normalize(x, mean, std)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.ravel(), [-2.0, 1.0])
    np.testing.assert_allclose(normalize(x.astype(np.float32) / 255, mean, std), out)


def test_channel_stats_match_numpy() -> None:
    x = _images(n=10, c=3)
    mean, std = channel_stats(x, chunk=3)
    ref = x.astype(np.float64) / 255
    np.testing.assert_allclose(mean, ref.mean(axis=(0, 1, 2)), rtol=1e-6)
    np.testing.assert_allclose(std, ref.std(axis=(0, 1, 2)), rtol=1e-5)


def test_steps_per_epoch() -> None:
    assert steps_per_epoch(50_000, 128) == 390
    assert steps_per_epoch(50_000, 128, drop_last=False) == 391
    with pytest.raises(ValueError):
        steps_per_epoch(10, 0)


def test_batches_cover_the_epoch_once() -> None:
    x = np.arange(10)[:, None]
    y = np.arange(10)
    got = list(batches(x, y, 3, seed=1, epoch=0, drop_last=False))
    assert [len(b) for b, _ in got] == [3, 3, 3, 1]
    assert sorted(np.concatenate([b for _, b in got]).tolist()) == list(range(10))
    for xb, yb in got:
        np.testing.assert_array_equal(xb[:, 0], yb)
    assert [len(b) for b, _ in batches(x, y, 3, seed=1)] == [3, 3, 3]


def test_batch_order_depends_only_on_seed_and_epoch() -> None:
    n = 100
    np.testing.assert_array_equal(epoch_permutation(n, 0, 4), epoch_permutation(n, 0, 4))
    assert not np.array_equal(epoch_permutation(n, 0, 4), epoch_permutation(n, 0, 5))
    assert not np.array_equal(epoch_permutation(n, 0, 4), epoch_permutation(n, 1, 4))
    x, y = np.arange(n)[:, None], np.arange(n)
    unshuffled = np.concatenate([b for _, b in batches(x, y, 10, shuffle=False)])
    np.testing.assert_array_equal(unshuffled, np.arange(n))


def test_resume_mid_epoch_continues_exactly() -> None:
    x, y = np.arange(50)[:, None], np.arange(50)
    full = [yb for _, yb in batches(x, y, 8, seed=2, epoch=3)]
    resumed = [yb for _, yb in batches(x, y, 8, seed=2, epoch=3, start=4)]
    assert len(resumed) == len(full) - 4
    for a, b in zip(full[4:], resumed, strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="start"):
        next(batches(x, y, 8, start=7))
