"""Tar shards in the webdataset layout: ``rescompile pack-shards`` writes them, ``--data
webdataset:PATTERN`` reads them.

A shard is a plain POSIX tar file; the files of one example share a key (``000123.jpg`` and
``000123.cls``, the label as decimal text), as webdataset, timm and the torchvision references
expect. ``pack-shards FOLDER -o DIR`` writes ``DIR/train-000000.tar, ...`` (the training images
in a fixed shuffled order, so a streaming reader with a shuffle buffer sees mixed classes),
``DIR/val-000000.tar, ...``, ``DIR/classes.txt`` and the shard indexes ``DIR/train.json`` and
``DIR/val.json`` that a sequential reader needs (:mod:`rescompile.harness.streams`).
``PATTERN`` names the training shards with webdataset's brace notation
(``DIR/train-{000000..000009}.tar``); the validation shards are the shards whose file name is
the pattern's with ``val`` for ``train`` (any number of them).

Reading indexes every shard once (the tar headers only: offset and size of each member) and
then reads examples by offset, so shards go through the same deterministic, resumable pipeline as
image folders (:mod:`rescompile.harness.images`), and ranks split the samples without overlap.
Only the standard library's ``tarfile`` and ``braceexpand`` are used: the core imports no
framework (webdataset's own package imports torch).
"""

from __future__ import annotations

import os
import re
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

from rescompile.harness.data import DataError, epoch_permutation
from rescompile.harness.images import (
    CLASSES_FILE,
    IMAGE_EXTENSIONS,
    ImageSource,
    _Split,
    open_image_folder,
    read_tar_index,
)

__all__ = ["expand_pattern", "index_shards", "open_shards", "pack_shards"]

_IMAGE_EXT = tuple(e.lstrip(".") for e in IMAGE_EXTENSIONS)
MAX_LABEL_BYTES = 64


def expand_pattern(pattern: str) -> list[str]:
    """The files of a brace pattern (``a-{000..003}.tar`` -> 4 names), in order."""
    from braceexpand import braceexpand

    try:
        return list(braceexpand(pattern))
    except Exception as exc:  # noqa: BLE001 - braceexpand raises plain errors on bad braces
        raise DataError(f"webdataset: cannot expand the pattern {pattern!r}: {exc}") from None


def _val_files(pattern: str) -> list[str]:
    """The validation shards: the training file name with ``val`` for ``train`` and any brace
    group as a wildcard (the two splits have different shard counts)."""
    head, _, name = pattern.rpartition("/")
    if "train" not in name:
        raise DataError(
            f"webdataset: {pattern!r} does not say 'train' in its file name, so the validation "
            "shards (the same name with 'val') cannot be found; name the training shards "
            "train-{000000..N}.tar as rescompile pack-shards does"
        )
    glob = re.sub(r"\{[^}]*\}", "*", name.replace("train", "val"))
    files = sorted(str(p) for p in Path(head or ".").glob(glob))
    if not files:
        raise DataError(f"webdataset: no validation shards {Path(head or '.') / glob}")
    return files


def _index(shards: list[str], what: str) -> _Split:
    """Labels, shard numbers, data offsets, sizes and names of every example of the shards."""
    labels, shard_of, offsets, sizes, members = [], [], [], [], []
    for number, shard in enumerate(shards):
        if not os.path.isfile(shard):
            raise DataError(f"webdataset: the {what} shard {shard} does not exist")
        examples: dict[str, dict[str, tuple[int, int]]] = {}
        try:
            for key, ext, offset, size in read_tar_index(shard):
                examples.setdefault(key, {})[ext] = (offset, size)
            with open(shard, "rb") as f:
                for key, parts in examples.items():
                    ext = next((e for e in _IMAGE_EXT if e in parts), None)
                    if ext is None or "cls" not in parts:
                        raise DataError(
                            f"webdataset: {shard}: the example {key!r} needs an image "
                            f"({', '.join(_IMAGE_EXT)}) and a .cls label, found "
                            f"{', '.join(sorted(parts))}"
                        )
                    offset, size = parts["cls"]
                    if size > MAX_LABEL_BYTES:
                        raise DataError(f"webdataset: {shard}: {key}.cls is not a label")
                    f.seek(offset)
                    text = f.read(size).decode("ascii", "replace").strip()
                    if not text.isdigit():
                        raise DataError(
                            f"webdataset: {shard}: {key}.cls holds {text[:20]!r}, not a label"
                        )
                    labels.append(int(text))
                    shard_of.append(number)
                    offsets.append(parts[ext][0])
                    sizes.append(parts[ext][1])
                    members.append(f"{key}.{ext}".encode())
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise DataError(f"webdataset: {shard} is not a readable tar shard ({exc})") from None
    if not labels:
        raise DataError(f"webdataset: the {what} shards hold no examples")
    return _Split(
        np.asarray(labels, np.int64),
        np.asarray(shard_of, np.int32),
        np.asarray(offsets, np.int64),
        np.asarray(sizes, np.int64),
        tuple(shards),
        np.array(members, dtype=bytes),
    )


def open_shards(pattern: str, image_size: tuple[int, int] = (224, 224), **options: Any) -> Any:
    """Training shards named by ``pattern`` and the matching validation shards."""
    train_files = expand_pattern(os.path.expanduser(pattern))
    train = _index(train_files, "training")
    splits = [train, _index(_val_files(os.path.expanduser(pattern)), "validation")]
    classes_file = Path(train_files[0]).parent / CLASSES_FILE
    top = int(max(splits[0].labels.max(), splits[1].labels.max())) + 1
    if classes_file.is_file():
        classes = classes_file.read_text(encoding="utf-8").splitlines()
        if len(classes) < top:
            raise DataError(
                f"webdataset: {classes_file} names {len(classes)} classes but the shards have "
                f"label {top - 1}"
            )
    else:
        classes = [str(k) for k in range(top)]
    return ImageSource(
        Path(train_files[0]).parent.name or "shards",
        splits[0],
        splits[1],
        classes,
        image_size,
        where=pattern,
        **options,
    )


def pack_shards(folder: str | Path, out: str | Path, per_shard: int = 1000) -> list[str]:
    """Pack an image folder (``train/<class>/*``, ``val/<class>/*``) into tar shards in ``out``;
    returns the brace patterns written (train, val). The files are copied byte for byte."""
    if per_shard <= 0:
        raise DataError(f"--per-shard must be positive, got {per_shard}")
    source = open_image_folder(folder)
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create {out}: {exc.strerror or exc}") from None
    if any(out.glob("train-*.tar")) or any(out.glob("val-*.tar")):
        raise DataError(f"{out} already holds shards; choose an empty directory")
    from rescompile.harness.streams import write_shard_index

    patterns = []
    for name, split, order in (
        ("train", source.train, epoch_permutation(len(source.train), 0, 0)),
        ("val", source.test, np.arange(len(source.test))),
    ):
        count = -(-len(order) // per_shard)
        urls, labels = [], []
        for s in range(count):
            path = out / f"{name}-{s:06d}.tar"
            chunk = order[s * per_shard : (s + 1) * per_shard]
            urls.append(path.name)
            labels.append([int(split.labels[k]) for k in chunk])
            with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
                for k in chunk:
                    file = os.fsdecode(split.paths[k])
                    key = f"{int(k):08d}"
                    ext = Path(file).suffix.lower().lstrip(".")
                    ext = "jpg" if ext == "jpeg" else ext
                    _add(tar, f"{key}.{ext}", Path(file).read_bytes())
                    _add(tar, f"{key}.cls", f"{int(split.labels[k])}\n".encode())
        patterns.append(str(out / f"{name}-{{000000..{count - 1:06d}}}.tar"))
        write_shard_index(out / f"{name}.json", urls, labels, name)
    (out / CLASSES_FILE).write_text("".join(f"{c}\n" for c in source.classes), encoding="utf-8")
    return patterns


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    import io

    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def index_shards(pattern: str, out: str | Path) -> int:
    """Write the shard index (:mod:`rescompile.harness.streams`) of the shards a brace pattern
    names (files, ``http(s)`` URLs or ``pipe:`` commands), reading each once front to back;
    returns the number of examples. A local shard is named relative to the index when it lies
    beside it or below (the folder can then move, or be served over http, as one)."""
    from rescompile.harness.streams import read_examples, write_shard_index

    out = Path(out)
    urls, labels = [], []
    for url in expand_pattern(pattern):
        if not url.startswith("pipe:") and "://" not in url:
            path = Path(url).expanduser().absolute()
            if not path.is_file():
                raise DataError(f"webdataset: the shard {url} does not exist")
            try:
                url = str(path.relative_to(out.absolute().parent))
            except ValueError:
                url = str(path)
            source = str(path)
        else:
            source = url
        labels.append([label for _, _, label, _ in read_examples(source, keep=lambda m: False)])
        urls.append(url)
    write_shard_index(out, urls, labels, out.stem)
    return sum(len(a) for a in labels)
