"""Tar shards read front to back: ``--data webdataset:INDEX.json`` for shards on object stores
without random access (``https://`` URLs, ``pipe:`` commands such as ``pipe:aws s3 cp URL -``,
or plain files).

The shards are named by a **shard index**, the JSON file of webdataset's ``wids``
(``{"__kind__": "wids-shard-index-v1", "shardlist": [{"url": ..., "nsamples": ...}, ...]}``)
with one addition: each shard's ``labels`` (its examples' classes, in order). ``rescompile
pack-shards`` writes ``train.json`` and ``val.json`` beside the shards; ``rescompile
index-shards PATTERN -o FILE`` writes one for shards that exist already (reading each once).
A relative ``url`` is relative to the index (a file or an ``http(s)`` URL); the validation
index is the training index's name with ``val`` for ``train``. Knowing the counts and labels
before any image is read lets a run plan its epochs, split the shards over processes, and
evaluate, exactly as for indexed data.

**The order of an epoch** is a pure function of the index, the seed, the epoch and the rank
(:func:`epoch_plan`): the rank's shards (a fixed, balanced share: :func:`rank_shards`) in a
random order, :data:`PARALLEL` of them read at once and interleaved example by example, through
a shuffle buffer of :data:`SHUFFLE_BUFFER` examples (webdataset's algorithm). A process reads
only its own shards; every rank takes the same number of batches per epoch, the smallest
share's (the rest of the larger shares is left out, at most about a shard per rank).

**Exact resume**: because the order is computed from the counts alone, the reader knows which
examples a step needs and which are already consumed. Resuming in the middle of an epoch, it
opens only the shards that still hold needed examples (the few being read and those with
examples still in the buffer), reads each from its start, and keeps only what is needed: the
batches are bitwise those of an uninterrupted run, at the cost of re-reading a few shards.
Memory is bounded by the buffer, the batches in flight and :data:`READ_AHEAD` examples per open
shard (each is read by a thread of its own, so the shards download at once), whatever the data
set's size. A remote read that fails is tried again (:data:`RETRIES`) from where it stopped.

Decoding and augmentation are those of :mod:`rescompile.harness.images`, in the same worker
processes; only the bytes come from the stream. Only the standard library is used (``tarfile``
in stream mode, ``urllib``, ``subprocess``).
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import json
import os
import queue
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from rescompile.harness.data import DataError
from rescompile.harness.images import (
    CLASSES_FILE,
    IMAGE_EXTENSIONS,
    TRAIN_EVAL_IMAGES,
    ImageSource,
    _read_error,
    _Split,
    decode_eval,
    decode_train,
)

__all__ = [
    "PARALLEL",
    "SHUFFLE_BUFFER",
    "ShardIndex",
    "StreamSource",
    "epoch_plan",
    "open_stream_source",
    "rank_shards",
    "read_examples",
    "read_shard_index",
    "write_shard_index",
]

INDEX_KIND = "wids-shard-index-v1"
PARALLEL = 4
"""Shards a process reads at once (their examples interleaved): more connections to a store."""
SHUFFLE_BUFFER = 2048
"""Examples in the shuffle buffer (webdataset's algorithm): about 230 MB of ImageNet JPEGs."""
TIMEOUT = 120.0
"""Seconds an ``http(s)`` read may stall before it counts as failed."""
RETRIES = 3
"""Times a failed ``http(s)`` or ``pipe:`` read is tried again (after 1, 2, 4 s), from the
example it stopped at, before the run stops with the error."""
RETRY_WAIT = 1.0
READ_AHEAD = 16
"""Examples each open shard's thread reads ahead of the reader."""
_ORDER_STREAM = 0x5EA1  # the shard order and the buffer's draws (independent of other streams)
_SAMPLE_STREAM = 0x1A6E  # the per-example augmentation stream (as images.py)
_IMAGE_EXT = tuple(e.lstrip(".") for e in IMAGE_EXTENSIONS)
MAX_INDEX_BYTES = 256 << 20
MAX_LABEL_BYTES = 64


# --------------------------------------------------------------------------------------------
# The index
# --------------------------------------------------------------------------------------------


class StreamError(DataError):
    """Reading a shard failed (a connection, a command, a stream cut short): worth another try
    when the shard is remote."""


@dataclass(frozen=True)
class ShardIndex:
    """The shards of one split: where each is, its examples' labels; ``where`` is the index's
    own location (for messages)."""

    urls: tuple[str, ...]
    labels: tuple[np.ndarray, ...]  # int64, one array per shard
    where: str

    @functools.cached_property
    def counts(self) -> np.ndarray:
        return np.array([len(a) for a in self.labels], np.int64)

    @functools.cached_property
    def starts(self) -> np.ndarray:
        """The global number of each shard's first example (``len(urls) + 1`` entries)."""
        return np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)

    @functools.cached_property
    def shard_of(self) -> np.ndarray:
        """The shard of each example (by global number)."""
        return np.repeat(np.arange(len(self.counts)), self.counts)

    def all_labels(self) -> np.ndarray:
        return np.concatenate(self.labels) if self.labels else np.zeros(0, np.int64)


def _is_url(location: str) -> bool:
    return location.startswith(("http://", "https://"))


def _fetch(location: str) -> bytes:
    """The bytes of a small file (an index, a class list) at a path or an http(s) URL."""
    try:
        if _is_url(location):
            with urllib.request.urlopen(location, timeout=TIMEOUT) as response:  # noqa: S310
                return response.read(MAX_INDEX_BYTES + 1)
        with open(os.path.expanduser(location), "rb") as f:
            return f.read(MAX_INDEX_BYTES + 1)
    except urllib.error.HTTPError as exc:
        raise DataError(
            f"webdataset: cannot fetch {location} (HTTP {exc.code} {exc.reason})"
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        why = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
        raise DataError(f"webdataset: cannot read {location} ({why})") from None


def _resolve(url: str, index: str) -> str:
    """A shard's ``url`` as written in the index at ``index``: ``pipe:`` and absolute URLs and
    paths as they are, a relative one against the index's location."""
    if url.startswith("pipe:") or _is_url(url) or os.path.isabs(url):
        return url
    if _is_url(index):
        return urllib.parse.urljoin(index, url)
    return str(Path(os.path.expanduser(index)).parent / url)


def read_shard_index(location: str) -> ShardIndex:
    """The shard index at ``location`` (a path or an http(s) URL), checked."""
    text = _fetch(location)
    if len(text) > MAX_INDEX_BYTES:
        raise DataError(f"webdataset: {location} is larger than {MAX_INDEX_BYTES >> 20} MB")
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"webdataset: {location} is not a JSON shard index ({exc})") from None

    def bad(why: str) -> DataError:
        return DataError(
            f"webdataset: {location} is not a shard index as rescompile index-shards writes it: "
            f"{why}"
        )

    if not isinstance(data, dict) or data.get("__kind__") != INDEX_KIND:
        raise bad(f'its "__kind__" is not "{INDEX_KIND}"')
    shards = data.get("shardlist")
    if not isinstance(shards, list) or not shards:
        raise bad('"shardlist" is not a list of shards')
    urls, labels = [], []
    for k, shard in enumerate(shards):
        if not isinstance(shard, dict) or not isinstance(shard.get("url"), str):
            raise bad(f"shard {k} has no url")
        n, classes = shard.get("nsamples"), shard.get("labels")
        if not isinstance(classes, list):
            raise bad(f'shard {k} ({shard["url"]}) has no "labels" (run rescompile index-shards)')
        if not all(type(c) is int and c >= 0 for c in classes):
            raise bad(f"shard {k} ({shard['url']}): its labels are not whole numbers >= 0")
        if n != len(classes):
            raise bad(f"shard {k} ({shard['url']}): nsamples {n} but {len(classes)} labels")
        if shard["url"].startswith("pipe:") and _is_url(location):
            raise bad(
                f"shard {k} is a pipe: command, which an index fetched over the network may not "
                "run; download the index and check it"
            )
        urls.append(_resolve(shard["url"], location))
        labels.append(np.asarray(classes, np.int64))
    index = ShardIndex(tuple(urls), tuple(labels), location)
    if not index.counts.sum():
        raise DataError(f"webdataset: the shards of {location} hold no examples")
    return index


def write_shard_index(
    path: str | Path, urls: list[str], labels: list[list[int]], name: str
) -> None:
    """Write a shard index (wids's format with each shard's labels), atomically."""
    shardlist = [
        {"url": url, "nsamples": len(classes), "labels": classes}
        for url, classes in zip(urls, labels, strict=True)
    ]
    from rescompile.files import write_file

    data = {"__kind__": INDEX_KIND, "wids_version": 1, "name": name, "shardlist": shardlist}
    write_file(path, json.dumps(data, separators=(",", ":")) + "\n")  # atomic, no links


def _val_location(location: str) -> str:
    head, sep, name = location.rpartition("/")
    if "train" not in name:
        raise DataError(
            f"webdataset: {location!r} does not say 'train' in its file name, so the validation "
            "index (the same name with 'val') cannot be found; name it train.json as rescompile "
            "pack-shards does"
        )
    return head + sep + name.replace("train", "val")


# --------------------------------------------------------------------------------------------
# Reading a shard front to back
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def open_stream(url: str) -> Iterator[IO[bytes]]:
    """A shard's bytes as a stream: ``pipe:CMD`` (the command's standard output; its failure is
    an error naming it and its last line of error output), an ``http(s)`` URL, or a file."""
    if url.startswith("pipe:"):
        with _command_output(url[5:]) as stream:
            yield stream
        return
    try:
        if _is_url(url):
            stream: Any = urllib.request.urlopen(url, timeout=TIMEOUT)  # noqa: S310
        else:
            stream = open(url, "rb")  # noqa: SIM115 - closed below
    except urllib.error.HTTPError as exc:
        failed = StreamError if exc.code >= 500 or exc.code == 429 else DataError
        raise failed(f"webdataset: cannot fetch {url} (HTTP {exc.code} {exc.reason})") from None
    except (urllib.error.URLError, OSError) as exc:
        why = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
        raise StreamError(f"webdataset: cannot read the shard {url} ({why})") from None
    with stream:
        yield stream


@contextlib.contextmanager
def _command_output(command: str) -> Iterator[IO[bytes]]:
    """The standard output of a shell command. Left early (a resumed run needs only part of a
    shard), the command is killed; a command that fails is a :class:`DataError` with its exit
    status and last line of error output, even when the reader saw only a short stream."""
    with tempfile.TemporaryFile() as err:
        process = subprocess.Popen(  # noqa: S602 - the user's own shell command
            command, shell=True, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL
        )
        assert process.stdout is not None

        def failure() -> StreamError | None:
            try:
                code = process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                return None
            if code == 0:
                return None
            err.seek(0)
            lines = err.read().decode("utf-8", "replace").strip().splitlines()
            why = f": {lines[-1][:200]}" if lines else ""
            return StreamError(f"webdataset: the command `{command}` failed (exit {code}){why}")

        try:
            yield process.stdout
        except GeneratorExit:
            process.kill()
            raise
        except Exception:
            error = failure()
            if error is None:
                raise
            raise error from None
        finally:
            if process.poll() is None:
                process.kill()
            process.stdout.close()
            process.wait()
        error = None if process.returncode < 0 else failure()
        if error is not None:
            raise error


def _examples(
    tar: tarfile.TarFile, keep: Any
) -> Iterator[tuple[int, str, dict[str, bytes | None]]]:
    """``(number, key, {extension: bytes})`` of each example of a stream-mode tar: the files
    sharing a key, consecutive as webdataset requires. A stream cannot go back, so the bytes are
    read as each file passes: the ``.cls`` label always, an image where ``keep(number)`` (else
    None: skipped in the stream)."""
    key: str | None = None
    number = -1
    parts: dict[str, bytes | None] = {}
    for info in tar:
        if not info.isfile():
            continue
        directory, _, base = info.name.rpartition("/")
        stem, dot, ext = base.partition(".")
        if not dot:
            continue
        name = f"{directory}/{stem}" if directory else stem
        if name != key:
            if key is not None:
                yield number, key, parts
            key, parts, number = name, {}, number + 1
        ext = ext.lower()
        if ext == "cls":
            parts[ext] = tar.extractfile(info).read(MAX_LABEL_BYTES)  # type: ignore[union-attr]
        elif ext in _IMAGE_EXT:
            keep_it = keep is None or keep(number)
            parts[ext] = tar.extractfile(info).read() if keep_it else None  # type: ignore[union-attr]
    if key is not None:
        yield number, key, parts


def read_examples(
    url: str, keep: Any = None, stop: int | None = None
) -> Iterator[tuple[int, bytes | None, int, str]]:
    """``(number, image bytes, label, name)`` of each example of the shard at ``url``, in order;
    the image bytes are read only where ``keep(number)`` (else None: skipped in the stream);
    reading stops after example ``stop - 1`` when ``stop`` is given."""
    try:
        with open_stream(url) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
            for number, key, parts in _examples(tar, keep):
                ext = next((e for e in _IMAGE_EXT if e in parts), None)
                if ext is None or "cls" not in parts:
                    raise DataError(
                        f"webdataset: {url}: the example {key!r} needs an image "
                        f"({', '.join(_IMAGE_EXT)}) and a .cls label, found "
                        f"{', '.join(sorted(parts)) or 'nothing'}"
                    )
                text = (parts["cls"] or b"").decode("ascii", "replace").strip()
                if not text.isdigit():
                    raise DataError(
                        f"webdataset: {url}: {key}.cls holds {text[:20]!r}, not a label"
                    )
                yield number, parts[ext], int(text), f"{url}:{key}.{ext}"
                if stop is not None and number + 1 >= stop:
                    return
    except (tarfile.TarError, EOFError) as exc:
        raise StreamError(f"webdataset: {url} is not a readable tar shard ({exc})") from None
    except (OSError, http.client.HTTPException) as exc:
        why = getattr(exc, "strerror", None) or exc or type(exc).__name__
        raise StreamError(f"webdataset: reading {url} failed ({why})") from None


def _checked(
    index: ShardIndex, shard: int, keep: Any = None, stop: int | None = None
) -> Iterator[tuple[int, bytes | None, int, str]]:
    """:func:`read_examples` of one shard of ``index``, each label and the count checked
    against the index (a stale index is an error, not a silent mislabelling). A remote read
    that fails is tried again :data:`RETRIES` times from the example it stopped at (the stream
    is read anew from its start, the examples already given skipped)."""
    url, labels = index.urls[shard], index.labels[shard]
    given = 0  # examples handed out so far

    def wanted(m: int) -> bool:
        return m >= given and (keep is None or keep(m))

    for attempt in range(RETRIES + 1):
        try:
            with contextlib.closing(read_examples(url, wanted, stop)) as examples:
                for number, data, label, name in examples:
                    if number < given:
                        continue
                    if number >= len(labels) or label != labels[number]:
                        what = (
                            "more examples than it says"
                            if number >= len(labels)
                            else ("another label")
                        )
                        raise DataError(
                            f"webdataset: {name} does not match the index {index.where} "
                            f"({what}); rebuild it with rescompile index-shards"
                        )
                    yield number, data, label, name
                    given = number + 1
            break
        except StreamError as exc:
            remote = url.startswith("pipe:") or _is_url(url)
            if not remote or attempt == RETRIES:
                raise
            wait = RETRY_WAIT * 2**attempt
            print(
                f"warning: {exc}; trying again in {wait:g} s from example {given} "
                f"({attempt + 1} of {RETRIES})",
                file=sys.stderr,
                flush=True,
            )
            time.sleep(wait)
    if stop is None and given != len(labels):
        raise DataError(
            f"webdataset: {url} holds {given} examples, the index {index.where} says "
            f"{len(labels)}; rebuild it with rescompile index-shards"
        )


# --------------------------------------------------------------------------------------------
# The order of an epoch: a pure function of the counts
# --------------------------------------------------------------------------------------------


def rank_shards(counts: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """The shards of process ``rank``: the largest shard first to the process with the fewest
    examples so far (ties: the lower rank), the same in every epoch; ascending."""
    totals = np.zeros(world_size, np.int64)
    owner = np.empty(len(counts), np.int64)
    for shard in sorted(range(len(counts)), key=lambda s: (-int(counts[s]), s)):
        r = int(np.argmin(totals))
        owner[shard] = r
        totals[r] += counts[shard]
    return np.flatnonzero(owner == rank)


def epoch_plan(
    counts: np.ndarray,
    shards: np.ndarray,
    seed: int,
    epoch: int,
    rank: int,
    parallel: int = PARALLEL,
    buffer: int = SHUFFLE_BUFFER,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(reads, order, reads_before)`` of one epoch of a rank: ``reads``, the examples (global
    numbers) in the order they come off the streams (``shards`` in a random order, ``parallel``
    read at once, one example from each in turn); ``order``, the order they leave the shuffle
    buffer (each arriving example joins the buffer; once it holds ``buffer``, one drawn at
    random leaves; at the end the rest leave in a random order); ``reads_before[p]``, how many
    reads have happened when position ``p`` of ``order`` leaves."""
    rng = np.random.default_rng([seed, _ORDER_STREAM, epoch, rank])
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    sequence = [int(s) for s in rng.permutation(shards)]
    reads: list[int] = []
    active: list[list[int]] = []  # [next global number, end]
    waiting = iter(sequence)
    for s in waiting:
        if counts[s]:
            active.append([int(starts[s]), int(starts[s + 1])])
        if len(active) == parallel:
            break
    while active:
        still = []
        for cursor in active:
            reads.append(cursor[0])
            cursor[0] += 1
            if cursor[0] < cursor[1]:
                still.append(cursor)
            else:
                for s in waiting:  # the next shard takes this one's place
                    if counts[s]:
                        still.append([int(starts[s]), int(starts[s + 1])])
                        break
        active = still
    n = len(reads)
    draws = rng.random(n)
    order = np.empty(n, np.int64)
    reads_before = np.empty(n, np.int64)
    held: list[int] = []
    out = 0
    for t, example in enumerate(reads):
        held.append(example)
        if len(held) >= buffer:
            j = int(draws[t] * len(held))
            order[out], reads_before[out] = held[j], t + 1
            held[j] = held[-1]
            held.pop()
            out += 1
    rest = rng.permutation(len(held))
    order[out:] = np.asarray(held, np.int64)[rest]
    reads_before[out:] = n
    return np.asarray(reads, np.int64), order, reads_before


# --------------------------------------------------------------------------------------------
# One process's reader: a thread that keeps the examples the next batches need
# --------------------------------------------------------------------------------------------


class _ReadAhead:
    """The items of a shard's iterator, read ahead by a thread of their own (at most ``depth``
    in hand): the shards a process reads at once download at once. An error of the iterator is
    raised by ``next``; :meth:`close` stops the thread, which closes the iterator (a command
    is killed)."""

    def __init__(self, items: Iterator[Any], depth: int = READ_AHEAD) -> None:
        self.items = items
        self.queue: queue.Queue[Any] = queue.Queue(depth)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="shard-stream", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for item in self.items:
                while not self._put(("item", item)):
                    if self.stop.is_set():
                        return
            self._put(("end", None))
        except BaseException as exc:  # noqa: BLE001 - raised by __next__
            self._put(("error", exc))
        finally:
            with contextlib.suppress(Exception):
                self.items.close()  # type: ignore[attr-defined]

    def _put(self, entry: tuple[str, Any]) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> _ReadAhead:
        return self

    def __next__(self) -> Any:
        kind, value = self.queue.get()
        if kind == "error":
            raise value
        if kind == "end":
            raise StopIteration
        return value

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=TIMEOUT)


class _RankReader:
    """Reads this rank's shards in the order of :func:`epoch_plan`, from global position
    ``start`` (``epoch * used + position``) on, keeping the bytes of the examples still needed
    and skipping the rest; :meth:`take` hands out the examples of positions in order. The
    thread reads at most ``lookahead`` positions beyond what was taken, so it holds at most the
    shuffle buffer plus that many examples."""

    def __init__(
        self,
        index: ShardIndex,
        seed: int,
        rank: int,
        world_size: int,
        used: int,
        start: int,
        lookahead: int,
    ) -> None:
        self.index, self.seed, self.rank = index, seed, rank
        self.counts, self.starts, self.shard_of = index.counts, index.starts, index.shard_of
        self.shards = rank_shards(self.counts, rank, world_size)
        self.used, self.start, self.lookahead = used, start, lookahead
        self.taken = start  # the next global position to hand out
        self.cache: dict[tuple[int, int], tuple[bytes, int, str]] = {}
        self.peak = 0  # the most examples ever held (a test reads it)
        self.opened: list[tuple[int, int]] = []  # (epoch, shard) of every stream opened
        self.error: BaseException | None = None
        self.closed = False
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._run, name="shard-reader", daemon=True)
        self.thread.start()

    # -- the thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            epoch, first = divmod(self.start, self.used)
            while not self.closed:
                self._epoch(epoch, first)
                epoch, first = epoch + 1, 0
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            with self.cond:
                self.error = exc
                self.cond.notify_all()

    def _allowed(self, epoch: int, reads_before: np.ndarray) -> int:
        """How many reads of ``epoch`` may happen now (under the lock)."""
        furthest = self.taken + self.lookahead - epoch * self.used - 1
        if furthest < 0:
            return 0
        return int(reads_before[min(furthest, self.used - 1)])

    def _epoch(self, epoch: int, first: int) -> None:
        reads, order, reads_before = epoch_plan(
            self.counts, self.shards, self.seed, epoch, self.rank, PARALLEL, SHUFFLE_BUFFER
        )
        position = np.full(int(self.starts[-1]), -1, np.int64)
        position[order[: self.used]] = np.arange(min(self.used, len(order)))
        needed = position >= first
        last_read = int(reads_before[self.used - 1])  # later reads feed only dropped positions
        streams: dict[int, Iterator[Any]] = {}
        remaining = {}  # shard -> needed examples not yet read
        for s in self.shards:
            k = int(needed[self.starts[s] : self.starts[s + 1]].sum())
            if k:
                remaining[int(s)] = k
        try:
            for t in range(last_read):
                example = int(reads[t])
                shard = int(self.shard_of[example])
                if shard not in remaining:
                    continue  # nothing of this shard is needed (any more): not read
                with self.cond:
                    while not self.closed and t >= self._allowed(epoch, reads_before):
                        self.cond.wait()
                    if self.closed:
                        return
                if shard not in streams:
                    self.opened.append((epoch, shard))
                    base = int(self.starts[shard])
                    streams[shard] = _ReadAhead(
                        _checked(self.index, shard, keep=lambda m, b=base: bool(needed[b + m]))
                    )
                number, data, label, name = next(streams[shard])
                assert number == example - self.starts[shard], "the stream is out of step"
                if not needed[example]:
                    continue
                with self.cond:
                    self.cache[(epoch, int(position[example]))] = (data, label, name)
                    self.peak = max(self.peak, len(self.cache))
                    self.cond.notify_all()
                remaining[shard] -= 1
                if not remaining[shard]:  # the rest of the shard is not needed: stop reading
                    del remaining[shard]
                    streams.pop(shard).close()
        finally:
            for stream in streams.values():
                stream.close()

    # -- the consumer --------------------------------------------------------------------------

    def take(self, epoch: int, positions: range) -> list[tuple[bytes, int, str]]:
        """The examples of ``positions`` of ``epoch`` (the next ones in order), waiting for the
        reader; an error of the reader is raised here."""
        out = []
        with self.cond:
            for p in positions:
                key = (epoch, p)
                while key not in self.cache:
                    if self.error is not None:
                        raise self.error
                    self.cond.wait()
                out.append(self.cache.pop(key))
                self.taken = epoch * self.used + p + 1
            self.cond.notify_all()
        return out

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        self.thread.join()


# --------------------------------------------------------------------------------------------
# Decoding a batch of bytes (in a worker process)
# --------------------------------------------------------------------------------------------


@dataclass
class _BytesLoader:
    """Decodes and augments the examples of a task ``(step, epoch, first position, examples)``;
    an unreadable image is replaced by the next readable one of the batch (its augmentation
    draws stay those of its own position) and reported."""

    size: tuple[int, int]
    per: int
    seed: int
    rank: int
    augmentation: str | None

    @property
    def batch_bytes(self) -> int:
        return self.per * self.size[0] * self.size[1] * 3

    def __call__(self, task: tuple[int, int, int, list[tuple[bytes, int, str]]]) -> dict[str, Any]:
        step, epoch, first, examples = task
        n = len(examples)
        images = np.empty((n, *self.size, 3), np.uint8)
        labels = np.empty(n, np.int64)
        bad: list[tuple[str, str]] = []
        for k in range(n):
            rng = (
                np.random.default_rng([self.seed, _SAMPLE_STREAM, epoch, self.rank, first + k])
                if self.augmentation is not None
                else None
            )
            for j in range(n):
                data, label, name = examples[(k + j) % n]
                try:
                    images[k] = (
                        decode_eval(data, self.size)
                        if rng is None
                        else decode_train(data, self.size, rng, self.augmentation)
                    )
                    labels[k] = label
                    break
                except Exception as exc:  # noqa: BLE001 - PIL raises many kinds for a bad file
                    if (name, _read_error(exc)) not in bad:
                        bad.append((name, _read_error(exc)))
            else:
                raise DataError(
                    f"every image of a batch is unreadable, e.g. {bad[0][0]}: {bad[0][1]}"
                )
        index = np.arange(first, first + n)
        return {"step": step, "index": index, "images": images, "labels": labels, "bad": bad}


# --------------------------------------------------------------------------------------------
# Evaluation: a split read in order, seen as an array
# --------------------------------------------------------------------------------------------


class _StreamImages:
    """The first ``n`` examples of a split (in index order) seen as a read-only ``uint8`` NHWC
    array indexed by arrays of indices, as a runtime's evaluation asks for them: in ascending
    order (with repeats of the first example as padding). Read front to back; an index before
    the stream's position reopens the stream at that example's shard."""

    def __init__(self, source: StreamSource, index: ShardIndex, n: int) -> None:
        self.source, self.index = source, index
        self.dtype = np.dtype(np.uint8)
        self.shape = (n, *source.input_shape)
        self.ndim = 4
        self.shard_of = index.shard_of
        self.stream: Iterator[Any] | None = None
        self.next = 0  # the global number of the stream's next example
        self.first: tuple[bytes, str] | None = None
        self.lock = threading.Lock()

    def __len__(self) -> int:
        return self.shape[0]

    def _seek(self, i: int) -> None:
        if self.stream is not None:
            self.stream.close()
        shard = int(self.shard_of[i])
        base = int(self.index.starts[shard])
        self.stream = self._from(shard, i - base)
        self.next = base

    def _from(self, shard: int, skip: int) -> Iterator[Any]:
        for s in range(shard, len(self.index.urls)):
            base = int(self.index.starts[s])
            yield from (
                (base + m, data, name)
                for m, data, _, name in _checked(self.index, s, keep=lambda m, k=skip: m >= k)
            )
            skip = 0

    def _read(self, i: int) -> tuple[bytes, str]:
        if i == 0 and self.first is not None:
            return self.first
        if self.stream is None or i < self.next:
            self._seek(i)
        assert self.stream is not None
        while True:
            number, data, name = next(self.stream)
            self.next = number + 1
            if number == i:
                if i == 0:
                    self.first = (data, name)
                return data, name

    def __getitem__(self, index: Any) -> np.ndarray:
        idx = np.arange(len(self))[index]
        if idx.ndim == 0:
            return self[idx[None]][0]
        with self.lock:
            wanted: dict[int, tuple[bytes, str]] = {}
            for i in idx.tolist():
                if i not in wanted:
                    wanted[i] = self._read(i)
        size = self.source.image_size

        def decode(item: tuple[bytes, str]) -> tuple[np.ndarray, list[tuple[str, str]]]:
            data, name = item
            try:
                return decode_eval(data, size), []
            except Exception as exc:  # noqa: BLE001 - evaluated as a black image, counted
                return np.zeros((*size, 3), np.uint8), [(name, _read_error(exc))]

        decoded = dict(zip(wanted, self.source.pool().map(decode, wanted.values()), strict=True))
        for _, bad in decoded.values():
            self.source.note_bad(bad)
        if not len(idx):
            return np.empty((0, *self.source.input_shape), np.uint8)
        return np.stack([decoded[i][0] for i in idx.tolist()])

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()
            self.stream = None


# --------------------------------------------------------------------------------------------
# The source
# --------------------------------------------------------------------------------------------


class StreamSource(ImageSource):
    """Shards read front to back (see the module): an :class:`ImageSource` whose training
    batches come from a :class:`_RankReader` and whose evaluation reads the splits in order."""

    def __init__(
        self, train: ShardIndex, val: ShardIndex, classes: list[str], image_size, **options: Any
    ) -> None:
        self.train_index, self.val_index = train, val
        name = Path(urllib.parse.urlparse(train.where).path).parent.name or "shards"
        super().__init__(
            name,
            _Split(train.all_labels(), np.zeros(0, bytes)),
            _Split(val.all_labels(), np.zeros(0, bytes)),
            classes,
            image_size,
            where=train.where,
            **options,
        )
        self._readers: list[_RankReader] = []
        self._views: list[_StreamImages] = []

    def steps_per_epoch(self, batch_size: int, world_size: int = 1) -> int:
        """Batches per epoch: every process takes the same number of its share of ``batch_size``,
        as many as the smallest share of the shards allows."""
        per = batch_size // world_size
        counts = self.train_index.counts
        smallest = min(
            int(counts[rank_shards(counts, r, world_size)].sum()) for r in range(world_size)
        )
        return smallest // per

    def train_eval_index(self) -> np.ndarray:
        """The first :data:`TRAIN_EVAL_IMAGES` training examples in the index's order (a stream
        has no cheap random access; shards written by pack-shards are in a shuffled order)."""
        return np.arange(min(self.n_train, TRAIN_EVAL_IMAGES))

    @property
    def train_eval(self) -> str:
        n = self.n_train
        if n <= TRAIN_EVAL_IMAGES:
            return "the whole training set"
        return f"the first {TRAIN_EVAL_IMAGES:,} of the {n:,} training images in shard order"

    def train_data(self, augment: bool = False, *, whole_train: bool = False) -> Any:
        from rescompile.harness.runtime import TrainData

        n = self.n_train if whole_train else len(self.train_eval_index())
        views = [
            _StreamImages(self, self.train_index, n),
            _StreamImages(self, self.val_index, self.n_test),
        ]
        self._views.extend(views)
        return TrainData(
            views[0],
            self.train.labels[:n],
            views[1],
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
        """This rank's batch of every global step from ``start`` on (see the module)."""
        from rescompile.harness.images import _check_augmentation, _Prefetcher

        if batch_size % world_size:
            raise ValueError(f"a batch of {batch_size} does not split over {world_size} ranks")
        augmentation = _check_augmentation(augmentation)
        per = batch_size // world_size
        spe = self.steps_per_epoch(batch_size, world_size)
        if spe <= 0:
            raise DataError(
                f"webdataset: over {world_size} process(es) the smallest share of the shards "
                f"holds fewer than {per} examples (a batch's share)"
            )
        used = spe * per
        depth = max(1, self.workers) * max(1, self.prefetch)
        reader = _RankReader(
            self.train_index, seed, rank, world_size, used, start * per, lookahead=(depth + 1) * per
        )
        self._readers.append(reader)
        loader = _BytesLoader(self.image_size, per, seed, rank, augmentation if augment else None)

        def task(step: int) -> tuple[int, int, int, list[tuple[bytes, int, str]]]:
            epoch, index = divmod(step, spe)
            first = index * per
            return step, epoch, first, reader.take(epoch, range(first, first + per))

        return self._batches(_Prefetcher(loader, start, self.workers, self.prefetch, task=task))

    def close(self) -> None:
        super().close()
        for reader in self._readers:
            reader.close()
        self._readers.clear()
        for view in self._views:
            view.close()
        self._views.clear()


def open_stream_source(location: str, image_size: tuple[int, int] = (224, 224), **options: Any):
    """The shards of the training index at ``location`` and of its validation index."""
    if not location.rstrip("/").lower().endswith(".json"):
        raise DataError(
            f"webdataset: {location!r} is read as a stream, which needs the shards' index: give "
            "--data webdataset:LOCATION/train.json (rescompile index-shards PATTERN -o train.json "
            "writes it; rescompile pack-shards writes it beside the shards)"
        )
    train = read_shard_index(location)
    val = read_shard_index(_val_location(location))
    top = int(max(train.all_labels().max(), val.all_labels().max())) + 1
    classes_at = _resolve(CLASSES_FILE, location)
    try:
        classes = _fetch(classes_at).decode("utf-8").splitlines()
    except (DataError, UnicodeDecodeError):
        classes = [str(k) for k in range(top)]
    if len(classes) < top:
        raise DataError(
            f"webdataset: {classes_at} names {len(classes)} classes but the shards have label "
            f"{top - 1}"
        )
    return StreamSource(train, val, classes, image_size, **options)
