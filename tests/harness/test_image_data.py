"""Image folders and tar shards: decoding, augmentation, determinism and resume, rank splits,
bad input, and both backends training from each (tiny PIL-written data, no download)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rescompile.harness.data import DataError, load_dataset
from rescompile.harness.images import (
    decode_eval,
    decode_train,
    open_image_folder,
    random_resized_crop_box,
)
from rescompile.harness.shards import open_shards, pack_shards
from tests.harness.common import (
    DIGITS,
    ROOT,
    TINY,
    assert_same_early_losses,
    cli,
    free_port,
    set_args,
    torchrun,
)

FIT = [*TINY, "input.channels=3", "input.size=32", "num_classes=3"]
CLASSES = ("cat", "dog", "eel")
SIZES = [(50, 40), (40, 60), (33, 33), (80, 45)]  # (W, H)


def _jpeg(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    Image.fromarray(array, mode).save(path, quality=90)


def make_folder(root: Path, per_class: int = 8, val: int = 3, seed: int = 0) -> Path:
    """``train/`` and ``val/`` of three classes: RGB JPEGs of several sizes, plus in train one
    grey-scale JPEG, one CMYK JPEG, one PNG with alpha and one corrupt ``.jpg``."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class), ("val", val)):
        for c in CLASSES:
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                w, h = SIZES[i % len(SIZES)]
                _jpeg(d / f"{i:03d}.jpg", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    _jpeg(root / "train/cat/grey.jpg", rng.integers(0, 256, (40, 44), dtype=np.uint8))
    _jpeg(root / "train/dog/cmyk.jpg", rng.integers(0, 256, (36, 48, 4), dtype=np.uint8), "CMYK")
    Image.fromarray(rng.integers(0, 256, (30, 30, 4), dtype=np.uint8), "RGBA").save(
        root / "train/eel/alpha.png"
    )
    (root / "train/eel/corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    (root / "train/eel/notes.txt").write_text("not an image extension: ignored")
    return root


def make_corrupt_folder(root: Path) -> tuple[Path, list[str]]:
    """:func:`make_folder` with two more corrupt ``.jpg`` files in train, and the names of its
    three. Train's 30 images, sorted by class then name, put them at positions 4, 15 and 29.
    Process 1 of 2 alone meets position 15: the first 6 batches of 8 of seed 0 give it to
    process 1 (each process takes its contiguous half of a batch; worked out by hand from
    ``epoch_permutation``), and the final evaluation of the training split too (alternate images
    under torch, halves under flax), each process meeting others there."""
    make_folder(root)
    for extra in ("cat/003b.jpg", "dog/004b.jpg"):
        (root / "train" / extra).write_bytes(b"\xff\xd8\xff\xe0 not a JPEG either")
    return root, ["003b.jpg", "004b.jpg", "corrupt.jpg"]


def named_unreadable(stderr: str, who: str = "") -> list[str]:
    """The file names of the ``warning: {who}skipped an unreadable image PATH (why)`` lines."""
    lead = f"warning: {who}skipped an unreadable image "
    lines = [line for line in stderr.splitlines() if "skipped an unreadable image" in line]
    assert all(line.startswith(lead) for line in lines), lines
    return sorted(Path(line.removeprefix(lead).split(" (")[0]).name for line in lines)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("images") / "data")


@pytest.fixture(scope="module")
def shards(tmp_path_factory, folder) -> str:
    train, _ = pack_shards(folder, tmp_path_factory.mktemp("shards"), per_shard=10)
    return train


def _decoded_sizes(monkeypatch) -> list[tuple[int, int]]:
    """The sizes (W, H) at which JPEGs are decoded from now on, appended to the list returned."""
    from rescompile.harness import images

    seen: list[tuple[int, int]] = []
    original = images._Encoded.rgb

    def spy(self, need):
        out = original(self, need)
        seen.append(out.size)
        return out

    monkeypatch.setattr(images._Encoded, "rgb", spy)
    return seen


# -- decoding and augmentation -------------------------------------------------------------------


def test_random_resized_crop_boxes_follow_the_scale_and_ratio_ranges():
    rng = np.random.default_rng(0)
    width, height = 500, 375
    for _ in range(2000):
        left, top, w, h = random_resized_crop_box(width, height, rng)
        assert 0 <= left and left + w <= width and 0 <= top and top + h <= height
        # rounding w and h to whole pixels moves the area and ratio by at most ~1 pixel's worth
        assert 0.08 * width * height * 0.98 <= w * h <= width * height
        assert 3 / 4 - 0.02 <= w / h <= 4 / 3 + 0.02


def test_eval_crop_matches_resize_then_centre_crop_done_separately(tmp_path):
    """decode_eval does resize + centre crop in one Image.resize(box=...); the reference does
    the two steps as torchvision does them (PNG: no reduced-size decoding). They differ only by
    where the crop falls: the reference rounds the resized width (49.33 -> 49) and the crop
    offset (8.67 -> 8) to whole pixels, ours does not: under one output pixel. On this ramp an
    output pixel (8.1 input pixels) spans at most 0.4 * 8.1 + 0.3 * 8.1 = 5.7 levels, so half a
    pixel moves a value by under 3 levels; with rounding, 4."""
    x = np.add.outer(np.arange(300) * 0.4, np.arange(400) * 0.3).astype(np.uint8)
    image = np.stack([x, x[::-1], 255 - x], axis=-1)
    path = tmp_path / "ramp.png"
    Image.fromarray(image).save(path)
    ours = decode_eval(path.read_bytes(), (32, 32))
    short = round(32 * 256 / 224)  # 37
    resized = Image.fromarray(image).resize((round(400 * short / 300), short), Image.BILINEAR)
    left, top = (resized.width - 32) // 2, (resized.height - 32) // 2
    reference = np.asarray(resized.crop((left, top, left + 32, top + 32)))
    assert ours.shape == (32, 32, 3) and ours.dtype == np.uint8
    assert np.abs(ours.astype(int) - reference.astype(int)).max() <= 4


@pytest.mark.parametrize(
    ("mode", "channels", "expected"),
    [("L", None, (90, 90, 90)), ("CMYK", 4, (255, 255, 255)), ("RGB", 3, (200, 30, 90))],
)
def test_grey_and_cmyk_jpegs_become_rgb(tmp_path, mode, channels, expected):
    """A uniform image keeps its colour through decode, crop and resize (JPEG: within 3
    levels); CMYK (0, 0, 0, 0) is white."""
    shape = (60, 80) if channels is None else (60, 80, channels)
    value = {"L": 90, "CMYK": 0, "RGB": (200, 30, 90)}[mode]
    array = np.zeros(shape, np.uint8) + np.asarray(value, np.uint8)
    path = tmp_path / "one.jpg"
    Image.fromarray(array, mode).save(path, quality=95)
    for x in (
        decode_train(path.read_bytes(), (24, 24), np.random.default_rng(1)),
        decode_eval(path.read_bytes(), (24, 24)),
    ):
        assert x.shape == (24, 24, 3)
        assert np.abs(x.astype(int) - np.asarray(expected)).max() <= 3


@pytest.mark.parametrize("decoder", ["simplejpeg", "pillow"])
def test_large_jpegs_are_decoded_at_a_reduced_size(tmp_path, monkeypatch, decoder):
    """DCT scaling: a 1600x1200 JPEG cropped to 32 px decodes at 1/8 scale (200x150), whichever
    decoder runs (simplejpeg, or Pillow's draft mode when simplejpeg is absent)."""
    from rescompile.harness import images

    if decoder == "pillow":
        monkeypatch.setattr(images, "_simplejpeg", lambda: None)
    path = tmp_path / "big.jpg"
    _jpeg(path, np.random.default_rng(0).integers(0, 256, (1200, 1600, 3), dtype=np.uint8))
    seen = _decoded_sizes(monkeypatch)
    decode_eval(path.read_bytes(), (32, 32))
    assert seen == [(200, 150)]


def test_simplejpeg_and_pillow_decode_alike(tmp_path, monkeypatch):
    """Both wrap libjpeg-turbo with its defaults (accurate integer IDCT, fancy upsampling), so
    the choice of decoder does not change a batch; 1 level allowed for another build's
    rounding. Full size (train crop) and 1/8 scale (eval at 32 px of a large image)."""
    from rescompile.harness import images

    rng = np.random.default_rng(0)
    low = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    path = tmp_path / "photo.jpg"
    Image.fromarray(low).resize((1600, 1200), Image.BICUBIC).save(path, quality=90)
    data = path.read_bytes()

    def decode():
        return (
            decode_train(data, (224, 224), np.random.default_rng(5)),
            decode_eval(data, (32, 32)),
        )

    turbo = decode()
    monkeypatch.setattr(images, "_simplejpeg", lambda: None)
    pillow = decode()
    for a, b in zip(turbo, pillow, strict=True):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def _ramp_jpeg(path: Path, width: int, height: int) -> bytes:
    """A horizontal ramp (dark left, bright right), so a flip shows in the output."""
    row = np.linspace(0, 255, width).astype(np.uint8)
    _jpeg(path, np.repeat(np.tile(row, (height, 1))[..., None], 3, axis=-1))
    return path.read_bytes()


@pytest.mark.parametrize(
    ("width", "height", "size"),
    [(500, 375, (224, 224)), (300, 640, (224, 224)), (500, 375, (64, 64))],
)
def test_scale_jitter_resizes_the_shorter_side_into_the_papers_range(
    tmp_path, monkeypatch, width, height, size
):
    """He et al. (2016), sec. 3.4: shorter side resized to a random length in [256, 480] (x
    S/224 at input size S), a random S x S crop, a flip half of the time. Observed from outside
    the code under test: the box and the output size handed to PIL's resize (whatever size
    the JPEG was decoded at), the array returned, and the direction of a ramp in it."""
    from PIL import Image as PILImage

    data = _ramp_jpeg(tmp_path / "ramp.jpg", width, height)
    seen = []
    resize = PILImage.Image.resize

    def spy(self, out, resample=None, box=None, *args, **kwargs):
        seen.append((self.size, out, box))
        return resize(self, out, resample, box, *args, **kwargs)

    monkeypatch.setattr(PILImage.Image, "resize", spy)
    s = size[0]
    low, high = 256 * s / 224, 480 * s / 224
    shorter, offsets, flips = [], [], []
    for seed in range(300):
        seen.clear()
        x = decode_train(data, size, np.random.default_rng(seed), "scale_jitter")
        assert x.shape == (*size, 3) and x.dtype == np.uint8
        (((w, h), out, (left, top, right, bottom)),) = seen
        assert out == (s, s)
        assert -1e-6 <= left < right <= w + 1e-6 and -1e-6 <= top < bottom <= h + 1e-6
        sx, sy = s / (right - left), s / (bottom - top)
        assert sx == pytest.approx(sy, rel=1e-9)  # one scale: the aspect ratio is kept
        shorter.append(min(w, h) * sx)  # the shorter side of the image resized as the crop is
        if right - left < w - 1:
            offsets.append(left / (w - (right - left)))
        columns = x.astype(float).mean(axis=(0, 2))
        flips.append(columns[0] > columns[-1])  # the ramp runs bright to dark: flipped
    shorter = np.array(shorter)
    # whole pixels: the length is a whole number in [round(low), round(high)]
    assert shorter.min() >= round(low) - 1e-6 and shorter.max() <= round(high) + 1e-6
    # the draws cover the range (a uniform draw misses its lowest or highest tenth 300 times
    # with probability 2 * 0.9 ** 300 < 1e-13) and centre on its middle (5 standard errors)
    span = high - low
    assert shorter.min() < low + span / 10 and shorter.max() > high - span / 10
    assert abs(shorter.mean() - (low + high) / 2) < 5 * span / np.sqrt(12 * 300)
    assert min(offsets) < 0.1 and max(offsets) > 0.9
    assert abs(np.mean(flips) - 0.5) < 5 * 0.5 / np.sqrt(300)


def test_scale_jitter_decodes_large_jpegs_at_a_reduced_size(tmp_path, monkeypatch):
    """At 32 px the shorter side is resized to 37..69: a 1600x1200 JPEG decodes at 1/8 scale
    (200x150, still larger than any resized image), never at full size."""

    data = _ramp_jpeg(tmp_path / "big.jpg", 1600, 1200)
    seen = _decoded_sizes(monkeypatch)
    for seed in range(5):
        decode_train(data, (32, 32), np.random.default_rng(seed), "scale_jitter")
    assert seen == [(200, 150)] * 5


def test_the_final_train_evaluation_of_a_large_source_is_a_fixed_subset(tmp_path):
    """Past 10,000 training images the end of a run evaluates a fixed random 10,000 of them:
    the same for every source opened on the data (any seed, any number of processes); the
    whole split on request (rescompile eval --split train). No file is read here."""
    from rescompile.harness.images import ImageSource, _Split

    n = 12_345
    split = _Split(np.arange(n, dtype=np.int64) % 7, np.array([b"x"] * n, dtype=bytes))

    def source():
        return ImageSource("big", split, split, list("abcdefg"), (8, 8), where="here", workers=0)

    a, b = source(), source()
    index = a.train_eval_index()
    assert len(index) == 10_000 and len(np.unique(index)) == 10_000
    assert np.all(np.diff(index) > 0) and index[0] >= 0 and index[-1] < n
    assert np.array_equal(index, b.train_eval_index())
    assert not np.array_equal(index, np.arange(10_000))  # drawn, not the first 10,000
    data = a.train_data()
    assert len(data.x_train) == 10_000 and np.array_equal(data.y_train, split.labels[index])
    assert len(data.x_test) == n  # the test split is evaluated whole
    assert len(a.train_data(whole_train=True).x_train) == n
    assert a.train_eval == "a fixed random 10,000 of the 12,345 training images"
    small = open_image_folder(make_folder(tmp_path / "small"), (8, 8), workers=0)
    assert small.train_eval == "the whole training set"
    assert len(small.train_data().x_train) == small.n_train


# -- the source ------------------------------------------------------------------------------------


def _take(source, start, count, **kw):
    it = source.train_batches(start, 8, seed=3, augment=True, **kw)
    return [next(it) for _ in range(count)]


def test_folder_source_metadata_classes_and_bad_files(folder):
    source = open_image_folder(folder, (32, 32), workers=0)
    try:
        assert source.classes == list(CLASSES)
        assert source.n_train == 3 * 8 + 4 and source.n_test == 9
        assert source.input_shape == (32, 32, 3)
        assert source.run_files() == {"classes.txt": "cat\ndog\neel\n"}
        batches = _take(source, 0, 4)  # more than an epoch (28 // 8 = 3 steps)
        for b in batches:
            assert b.images.shape == (8, 32, 32, 3) and b.images.dtype == np.uint8
            assert b.labels.dtype == np.int64 and set(b.labels) <= {0, 1, 2}
        source.train_data().x_train[np.arange(source.n_train)]  # every file, once
        assert source.skipped == 1 and "corrupt.jpg" in next(iter(source.bad))
        data = source.train_data()
        assert data.streamed and data.x_test[np.arange(3)].shape == (3, 32, 32, 3)
    finally:
        source.close()


@pytest.mark.parametrize("augmentation", ["random_resized_crop", "scale_jitter"])
def test_batches_depend_only_on_seed_and_step_whatever_the_workers(folder, augmentation):
    """A resumed pipeline (start at step 5) and one with two worker processes give the same
    batches as an uninterrupted single-threaded one: what exact resume rests on."""
    a = open_image_folder(folder, (32, 32), workers=0)
    b = open_image_folder(folder, (32, 32), workers=2)
    try:
        straight = _take(a, 0, 7, augmentation=augmentation)
        resumed = _take(b, 5, 2, augmentation=augmentation)
        for x, y in zip(straight[5:], resumed, strict=True):
            assert x.step == y.step
            assert np.array_equal(x.images, y.images) and np.array_equal(x.labels, y.labels)
        assert not np.array_equal(straight[0].images, straight[1].images)
    finally:
        a.close()
        b.close()


def test_ranks_split_each_batch_without_overlap(folder, shards):
    for source in (open_image_folder(folder, (16, 16), workers=0), open_shards(shards, (16, 16))):
        source.workers = 0
        try:
            whole = _take(source, 0, 3)
            parts = [_take(source, 0, 3, rank=r, world_size=2) for r in (0, 1)]
            for k in range(3):
                joined = np.concatenate([parts[0][k].index, parts[1][k].index])
                assert np.array_equal(joined, whole[k].index)
                assert not set(parts[0][k].index) & set(parts[1][k].index)
                assert np.array_equal(
                    np.concatenate([parts[0][k].images, parts[1][k].images]), whole[k].images
                )
        finally:
            source.close()


def test_shards_hold_the_folder(folder, shards):
    source = open_shards(shards, (32, 32), workers=0)
    reference = open_image_folder(folder, (32, 32), workers=0)
    try:
        assert source.classes == list(CLASSES)
        assert source.n_train == reference.n_train and source.n_test == reference.n_test
        assert sorted(source.train.labels) == sorted(reference.train.labels)
        # the validation shards keep the folder's order: the same images, decoded the same way
        assert np.array_equal(
            source.train_data().x_test[np.arange(9)], reference.train_data().x_test[np.arange(9)]
        )
        source.train_data().x_train[np.arange(source.n_train)]  # every file, once
        assert source.skipped == 1 and next(iter(source.bad)).endswith(".jpg")
    finally:
        source.close()
        reference.close()


# -- bad input -------------------------------------------------------------------------------------


def test_bad_folders_are_one_line_errors(tmp_path):
    with pytest.raises(DataError, match="is not a directory"):
        load_dataset(f"imagefolder:{tmp_path / 'nowhere'}")
    (tmp_path / "a/train/cat").mkdir(parents=True)
    with pytest.raises(DataError, match="has no val/ folder"):
        load_dataset(f"imagefolder:{tmp_path / 'a'}")
    (tmp_path / "a/val/cat").mkdir(parents=True)
    with pytest.raises(DataError, match=r"class folder .*train/cat holds no"):
        load_dataset(f"imagefolder:{tmp_path / 'a'}")
    _jpeg(tmp_path / "a/train/cat/1.jpg", np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "a/val/cow").mkdir()
    with pytest.raises(DataError, match=r"val/cow is a class that .*train does not have"):
        load_dataset(f"imagefolder:{tmp_path / 'a'}")
    with pytest.raises(DataError, match="imagefolder needs PATH"):
        load_dataset("imagefolder:")
    with pytest.raises(DataError, match="training shard .* does not exist"):
        load_dataset(f"webdataset:{tmp_path}/train-{{000000..000001}}.tar")
    (tmp_path / "train-000000.tar").write_bytes(b"garbage" * 100)
    (tmp_path / "val-000000.tar").write_bytes(b"garbage" * 100)
    with pytest.raises(DataError, match="is not a readable tar shard"):
        load_dataset(f"webdataset:{tmp_path}/train-000000.tar")


def test_too_many_unreadable_files_stop_with_one_line(folder):
    source = open_image_folder(folder, (16, 16), workers=0, max_bad=0)
    try:
        with pytest.raises(
            DataError,
            match=r"1 unreadable images .* limit of 0; the first is .*corrupt\.jpg \(",
        ):
            source.train_data().x_train[np.arange(source.n_train)]
    finally:
        source.close()


def test_a_dead_worker_is_a_one_line_error(folder):
    source = open_image_folder(folder, (16, 16), workers=1)
    try:
        it = source.train_batches(0, 8, seed=0, augment=True)
        next(it)
        (pid,) = source._iterators[0].pool._processes
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(DataError, match="a data worker process died"):
            for _ in range(8):  # the batches already computed may still arrive
                next(it)
    finally:
        source.close()


def test_cli_reports_a_missing_val_folder_without_a_traceback(tmp_path):
    (tmp_path / "d/train/cat").mkdir(parents=True)
    p = cli(
        "train", DIGITS, "--data", f"imagefolder:{tmp_path / 'd'}", "--quiet", env=None, timeout=300
    )
    assert p.returncode == 1
    assert p.stderr.strip().splitlines() == [
        f"error: imagefolder: {tmp_path / 'd'} has no val/ folder; expected "
        "PATH/train/<class>/*.jpg and PATH/val/<class>/*.jpg (torchvision's ImageFolder)"
    ]


def test_pack_shards_command(tmp_path, folder):
    def run(*args):
        return cli("pack-shards", *args, env=None, timeout=300)

    out = tmp_path / "shards"
    p = run(str(folder), "-o", str(out), "--per-shard", "12")
    assert p.returncode == 0, p.stderr
    pattern = f"{out}/train-{{000000..000002}}.tar"  # 28 training images, 12 a shard
    assert p.stdout.strip().splitlines() == [
        f"train with --data webdataset:{pattern}",
        f"or, read front to back (shards on an object store), --data webdataset:{out}/train.json",
    ]
    assert sorted(f.name for f in out.iterdir()) == [
        "classes.txt",
        *(f"train-00000{k}.tar" for k in range(3)),
        "train.json",
        "val-000000.tar",
        "val.json",
    ]
    index = json.loads((out / "train.json").read_text())
    assert index["__kind__"] == "wids-shard-index-v1"
    assert [(s["url"], s["nsamples"]) for s in index["shardlist"]] == [
        ("train-000000.tar", 12),
        ("train-000001.tar", 12),
        ("train-000002.tar", 4),
    ]
    p = run(str(folder), "-o", str(out))
    assert p.returncode == 1
    assert p.stderr.strip().splitlines() == [
        f"error: {out} already holds shards; choose an empty directory"
    ]


# -- training ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("backend", "kind"),
    [
        ("torch", "imagefolder"),
        ("torch", "webdataset"),
        ("torch", "stream"),
        pytest.param("flax", "imagefolder", marks=pytest.mark.slow),
        ("flax", "webdataset"),
        ("flax", "stream"),
    ],
)
def test_both_backends_train_from_folders_and_shards(
    tmp_path, folder, shards, backend, kind, monkeypatch
):
    from rescompile.harness.loop import TrainConfig, train

    monkeypatch.setenv("RESCOMPILE_DATA_WORKERS", "0")
    data = {
        "imagefolder": f"imagefolder:{folder}",
        "webdataset": f"webdataset:{shards}",
        "stream": f"webdataset:{Path(shards).parent}/train.json",  # read front to back
    }[kind]
    run = tmp_path / "run"
    summary = train(
        TrainConfig(
            spec=DIGITS,
            overrides=FIT,
            backend=backend,
            data=data,
            steps=4,
            batch_size=8,
            out=str(run),
            quiet=True,
        )
    )
    assert summary["status"] == "completed" and summary["steps"] == 4
    assert summary["skipped_images"] == 1  # the corrupt file
    assert np.isfinite(summary["final_test_loss"])
    assert (run / "classes.txt").read_text() == "cat\ndog\neel\n"
    config = json.loads((run / "config.json").read_text())
    assert "3 classes" in config["dataset"]
    if backend == "torch":  # rescompile eval on the run: its data, its final test figures
        from rescompile.harness.evaluate import evaluate

        e = evaluate(run)
        assert e.images == 9 and e.step == 4
        assert e.normalised_with == f"{data} (ImageNet mean and std)"
        assert e.top1_error == summary["final_test_error"]
        # the run sums float32 cross-entropies, eval computes them in float64 from the same
        # float32 logits: they agree to float32 rounding
        assert abs(e.loss - summary["final_test_loss"]) < 1e-5 * max(1.0, e.loss)


@pytest.mark.parametrize("backend", ["torch", "flax"])
def test_the_paper_recipe_trains_from_a_folder_with_its_scale_augmentation(
    tmp_path, folder, backend, monkeypatch
):
    """paper-imagenet's augmentation (scale_jitter) is what a run from an image folder uses;
    the end of the run evaluates a fixed subset of the training images (here the limit is
    lowered to 12 of the 28) and the summary says so."""
    from rescompile.harness import images
    from rescompile.harness.loop import TrainConfig, train

    monkeypatch.setenv("RESCOMPILE_DATA_WORKERS", "0")  # decoded in this process: spied on
    monkeypatch.setattr(images, "TRAIN_EVAL_IMAGES", 12)
    calls = []
    jitter, crop = images.scale_jitter_box, images.random_resized_crop_box
    monkeypatch.setattr(images, "scale_jitter_box", lambda *a: calls.append("jitter") or jitter(*a))
    monkeypatch.setattr(
        images, "random_resized_crop_box", lambda *a: calls.append("rrc") or crop(*a)
    )
    handed = []
    train_data = images.ImageSource.train_data
    monkeypatch.setattr(
        images.ImageSource,
        "train_data",
        lambda self, *a, **k: handed.append(train_data(self, *a, **k)) or handed[-1],
    )
    run = tmp_path / "run"
    summary = train(
        TrainConfig(
            spec=DIGITS,
            overrides=FIT,
            backend=backend,
            data=f"imagefolder:{folder}",
            recipe="paper-imagenet",
            steps=2,
            batch_size=8,
            out=str(run),
            quiet=True,
        )
    )
    assert summary["status"] == "completed" and summary["steps"] == 2
    assert np.isfinite(summary["final_test_loss"])
    # every training image of the 2 steps (a corrupt one's substitute included) was jittered
    assert set(calls) == {"jitter"} and len(calls) >= 16
    config = json.loads((run / "config.json").read_text())
    assert config["plan"]["recipe"]["augmentation"] == "scale_jitter"
    assert summary["notes"]["final_train_error"] == (
        "eval mode, a fixed random 12 of the 28 training images, no augmentation"
    )
    (data,) = handed  # what the runtime evaluated the training split on: 12 images
    assert len(data.x_train) == len(data.y_train) == 12
    assert round(summary["final_train_error"] * 12, 9) == round(summary["final_train_error"] * 12)
    if backend == "torch":  # rescompile eval --split train: every training image
        from rescompile.harness.evaluate import evaluate

        assert evaluate(run, split="train").images == 28


@pytest.mark.parametrize(
    ("backend", "kind"),
    [
        ("torch", "imagefolder"),
        pytest.param("flax", "imagefolder", marks=pytest.mark.slow),
        ("torch", "stream"),
    ],
)
def test_sigkill_then_resume_from_an_image_folder_ends_bitwise_equal(
    tmp_path, env, folder, shards, backend, kind
):
    """The sigkill test of test_train_runs.py on an image folder with two worker processes, and
    on its shards read front to back (the resumed reader re-reads only what it needs)."""
    from rescompile.harness.checkpoint import latest_checkpoint, load_checkpoint

    env = dict(env, RESCOMPILE_DATA_WORKERS="2")
    data = f"imagefolder:{folder}"
    if kind == "stream":
        data = f"webdataset:{Path(shards).parent}/train.json"
    args = [sys.executable, "-m", "rescompile", "train", DIGITS, *set_args(FIT)]
    args += ["--data", data, "--batch-size", "8", "--backend", backend]
    args += ["--steps", "16", "--ckpt-every", "4", "--eval-every", "8", "--quiet"]
    ref, victim = tmp_path / "ref", tmp_path / "victim"
    logs = [open(tmp_path / f"{name}.log", "w") for name in ("ref", "victim")]  # noqa: SIM115
    reference = subprocess.Popen([*args, "--out", str(ref)], cwd=ROOT, env=env, stderr=logs[0])
    killed = subprocess.Popen([*args, "--out", str(victim)], cwd=ROOT, env=env, stderr=logs[1])
    deadline = time.monotonic() + 600  # a hang check
    while (
        latest_checkpoint(victim) is None
        or latest_checkpoint(victim).name < "ckpt-000008.safetensors"
    ):
        assert killed.poll() is None, (tmp_path / "victim.log").read_text()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=60)
    assert not (victim / "summary.json").exists()
    p = subprocess.run(
        [sys.executable, "-m", "rescompile", "train", "--resume", str(victim), "--quiet"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr
    assert reference.wait(timeout=600) == 0, (tmp_path / "ref.log").read_text()
    a, meta_a = load_checkpoint(ref)
    b, meta_b = load_checkpoint(victim)
    assert meta_a["state"]["step"] == meta_b["state"]["step"] == 16
    assert sorted(a) == sorted(b)
    assert [k for k in a if not np.array_equal(a[k], b[k])] == []
    # the unreadable file met before the kill is in the checkpoint: the resumed session keeps
    # counting (it is not named again, and the run's total is 1, not 1 per session)
    unreadable = list(meta_b["state"]["data"]["unreadable"])
    assert len(unreadable) == 1 and unreadable[0] not in p.stderr
    if kind == "imagefolder":
        assert Path(unreadable[0]).name == "corrupt.jpg"
    assert json.loads((victim / "summary.json").read_text())["skipped_images"] == 1


def test_torchrun_over_two_nodes_trains_from_an_image_folder_as_one_process(tmp_path, env):
    """The two-node job of README (two torchrun launches of one process each, gloo, standing in
    for two machines) from an image folder, with the paper's scale augmentation: each rank
    decodes its half of every global batch, and the run is the single-process run up to
    float32 summation order (the bound of test_train_runs.py's DDP test). The unreadable files
    the two ranks met are counted together, as the single process counts them."""
    from rescompile.harness.checkpoint import load_checkpoint

    folder, corrupt = make_corrupt_folder(tmp_path / "data")
    env = dict(env, RESCOMPILE_DATA_WORKERS="0")
    args = ["train", DIGITS, *set_args(FIT)]
    args += ["--data", f"imagefolder:{folder}", "--recipe", "paper-imagenet", "--batch-size", "8"]
    args += ["--steps", "6", "--eval-every", "6", "--ckpt-every", "6", "--quiet"]
    single, nodes, port = tmp_path / "single", tmp_path / "two-nodes", free_port()

    def start(command):
        return subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )

    alone = start([sys.executable, "-m", "rescompile", *args, "--out", str(single)])
    launches = [start(torchrun(*args, "--out", str(nodes), node=(r, port))) for r in (0, 1)]
    errors = []
    for p in (*launches, alone):
        err = p.communicate(timeout=600)[1]
        assert p.returncode == 0, err[-3000:]
        errors.append(err)
    s = json.loads((nodes / "summary.json").read_text())
    assert s["world_size"] == 2 and s["settings"]["process_group"] == "gloo"
    assert s["status"] == "completed" and s["steps"] == 6
    assert (nodes / "classes.txt").read_text() == "cat\ndog\neel\n"
    tensors, meta = load_checkpoint(nodes)
    assert meta["state"]["world_size"] == 2 and meta["state"]["step"] == 6
    _, meta_single = load_checkpoint(single)
    assert_same_early_losses(nodes, single)  # float32 sums in another order (common.py)
    # Each rank names, prefixed with its rank, the unreadable files it meets before it knows of
    # them; the final evaluation of the training split meets all three, so between them the
    # ranks name all three; a single process names each once, unprefixed
    named = [named_unreadable(err, f"process {r} of 2: ") for r, err in enumerate(errors[:2])]
    assert sorted(set(named[0] + named[1])) == corrupt
    assert "004b.jpg" in named[1] and "004b.jpg" not in named[0]  # rank 1's alone
    assert named_unreadable(errors[2]) == corrupt
    # The run counts the files both ranks met, not rank 0's two; the checkpoint (step 6,
    # before the final evaluation) keeps the files that the single process met in the same
    # batches: those both ranks met between them
    assert s["skipped_images"] == len(corrupt)
    assert json.loads((single / "summary.json").read_text())["skipped_images"] == len(corrupt)
    unreadable = meta["state"]["data"]["unreadable"]
    assert sorted(unreadable) == sorted(meta_single["state"]["data"]["unreadable"])
