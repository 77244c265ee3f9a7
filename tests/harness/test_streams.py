"""Shards read front to back (``--data webdataset:INDEX.json``): the epoch's order, exact resume
reading only what is needed, bounded memory, files = http = pipe:, rank splits, bad input."""

from __future__ import annotations

import functools
import http.server
import json
import threading
from pathlib import Path

import numpy as np
import pytest

from rescompile.harness import streams
from rescompile.harness.data import DataError, load_dataset
from rescompile.harness.shards import index_shards, pack_shards
from rescompile.harness.streams import epoch_plan, rank_shards
from tests.harness.common import cli
from tests.harness.test_image_data import make_folder


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> Path:
    """60 training images (one corrupt) in 15 shards of 4, 9 validation images in 3 of 4."""
    root = tmp_path_factory.mktemp("streams")
    folder = make_folder(root / "data", per_class=18)  # 54 + grey, cmyk, alpha, corrupt = 58
    pack_shards(folder, root / "shards", per_shard=4)
    return root / "shards"


@pytest.fixture
def small_buffer(monkeypatch):
    """A buffer of 6 and 2 shards at once: a 58-image epoch is many buffers long."""
    monkeypatch.setattr(streams, "SHUFFLE_BUFFER", 6)
    monkeypatch.setattr(streams, "PARALLEL", 2)


def _source(location: str):
    source = load_dataset(f"webdataset:{location}", (24, 24))
    source.workers = 0
    return source


def _take(source, start: int, count: int, **kw) -> list:
    kw = {"seed": 3, "augment": True, **kw}
    it = source.train_batches(start, 4, **kw)
    try:
        return [next(it) for _ in range(count)]
    finally:
        source.close()


# -- the order of an epoch -------------------------------------------------------------------------


def test_shards_are_split_over_ranks_without_overlap_and_balanced():
    counts = np.random.default_rng(0).integers(1, 50, 23)
    for world in (1, 2, 3, 8):
        parts = [rank_shards(counts, r, world) for r in range(world)]
        assert sorted(np.concatenate(parts).tolist()) == list(range(23))
        totals = [int(counts[p].sum()) for p in parts]
        assert max(totals) - min(totals) <= counts.max()  # greedy: within one shard


def test_the_epoch_order_is_a_bounded_shuffle_of_the_ranks_examples():
    counts = np.array([5, 0, 7, 3, 9, 4, 6])
    starts = np.concatenate([[0], np.cumsum(counts)])
    shards = np.array([0, 1, 2, 4, 6])
    mine = np.concatenate([np.arange(starts[s], starts[s + 1]) for s in shards])
    reads, order, before = epoch_plan(counts, shards, seed=1, epoch=0, rank=0, parallel=2, buffer=4)
    assert sorted(reads.tolist()) == sorted(order.tolist()) == sorted(mine.tolist())
    for s in shards:  # a shard is read front to back
        own = [r for r in reads.tolist() if starts[s] <= r < starts[s + 1]]
        assert own == list(range(starts[s], starts[s + 1]))
    read_at = {int(e): t for t, e in enumerate(reads)}
    for p, e in enumerate(order.tolist()):
        assert read_at[e] < before[p]  # an example leaves after it was read
        assert before[p] - p <= 4  # the buffer never holds more than 4
    again = epoch_plan(counts, shards, seed=1, epoch=0, rank=0, parallel=2, buffer=4)
    assert all(np.array_equal(a, b) for a, b in zip(again, (reads, order, before), strict=True))
    other = epoch_plan(counts, shards, seed=1, epoch=1, rank=0, parallel=2, buffer=4)[1]
    assert not np.array_equal(other, order)


# -- reading ---------------------------------------------------------------------------------------


def test_a_resumed_stream_gives_the_same_batches_and_reads_only_what_it_needs(packed, small_buffer):
    """Steps 20-27 of a run from step 0 and of a run resumed at step 20 (epoch 1 of 14 steps,
    position 24): the same images. The resumed reader opens only the shards that still hold an
    example the epoch needs; the reader never holds more than the buffer and its lookahead."""
    source = _source(f"{packed}/train.json")
    assert source.n_train == 58 and source.steps_per_epoch(4) == 14
    whole = _take(source, 0, 28)
    resumed = _take(source, 20, 8)
    for a, b in zip(whole[20:], resumed, strict=True):
        assert a.step == b.step
        assert np.array_equal(a.labels, b.labels) and np.array_equal(a.images, b.images)
    # every example of the epoch, once (labels as the index says), and mixed classes
    epoch = np.concatenate([b.labels for b in whole[:14]])
    assert len(epoch) == 56 and sorted(set(epoch.tolist())) == [0, 1, 2]


def test_resume_opens_only_the_shards_still_needed_and_memory_stays_bounded(packed, small_buffer):
    index = streams.read_shard_index(f"{packed}/train.json")
    used, per = 56, 4
    reader = streams._RankReader(index, 3, 0, 1, used, used + 24, lookahead=3 * per)
    try:
        for p in range(24, used, per):
            assert len(reader.take(1, range(p, p + per))) == per
    finally:
        reader.close()
    counts = index.counts
    shards = rank_shards(counts, 0, 1)
    _, order, _ = epoch_plan(counts, shards, 3, 1, 0, parallel=2, buffer=6)
    shard_of = np.repeat(np.arange(len(counts)), counts)
    needed = set(shard_of[order[24:used]].tolist())
    opened = {s for e, s in reader.opened if e == 1}
    assert opened == needed and len(needed) < len(counts)
    assert reader.peak <= 6 + 3 * per


@pytest.fixture(scope="module")
def served(packed):
    """The shard folder on a local http server."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(packed))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_files_http_and_pipe_commands_give_the_same_batches(packed, served, tmp_path):
    piped = tmp_path / "piped"
    piped.mkdir()
    for split, last in (("train", 14), ("val", 2)):
        n = index_shards(
            f"pipe:cat {packed}/{split}-{{000000..{last:06d}}}.tar", piped / f"{split}.json"
        )
        assert n == (58 if split == "train" else 9)
    urls = json.loads((piped / "train.json").read_text())["shardlist"]
    assert urls[0]["url"] == f"pipe:cat {packed}/train-000000.tar"
    runs = [
        _take(_source(where), 0, 3)
        for where in (f"{packed}/train.json", f"{served}/train.json", f"{piped}/train.json")
    ]
    for other in runs[1:]:
        for a, b in zip(runs[0], other, strict=True):
            assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    # evaluation reads the validation shards in order: the same images from each
    views = [
        _source(w).train_data().x_test for w in (f"{packed}/train.json", f"{served}/train.json")
    ]
    assert np.array_equal(views[0][np.arange(9)], views[1][np.arange(9)])


def test_ranks_read_disjoint_shards_and_take_as_many_batches(packed):
    source = _source(f"{packed}/train.json")
    spe = source.steps_per_epoch(4, 2)
    names = []
    for rank in (0, 1):
        reader = streams._RankReader(source.train_index, 0, rank, 2, spe * 2, 0, lookahead=8)
        try:
            taken = reader.take(0, range(spe * 2))
        finally:
            reader.close()
        names.append({name.rsplit(":", 1)[0] for _, _, name in taken})
    assert names[0] and names[1] and not names[0] & names[1]
    assert (
        spe
        == min(
            sum(source.train_index.counts[rank_shards(source.train_index.counts, r, 2)])
            for r in (0, 1)
        )
        // 2
    )


# -- bad input ------------------------------------------------------------------------------------


def _error(location: str) -> str:
    with pytest.raises(DataError) as info:
        source = _source(location)
        _take(source, 0, 14)
    return str(info.value)


def test_bad_indexes_and_shards_are_one_line_errors(packed, served, tmp_path, monkeypatch, capfd):
    monkeypatch.setattr(streams, "RETRY_WAIT", 0.0)
    assert "cannot read" in _error(f"{tmp_path}/train.json")
    (tmp_path / "train.json").write_text("{not json")
    assert "is not a JSON shard index" in _error(f"{tmp_path}/train.json")
    (tmp_path / "train.json").write_text('{"shardlist": []}')
    assert '"__kind__" is not "wids-shard-index-v1"' in _error(f"{tmp_path}/train.json")
    assert "needs the shards' index" in _error(f"{served}/train-{{000000..000014}}.tar")
    assert "HTTP 404" in _error(f"{served}/nothing/train.json")
    # an index that no longer matches its shards: a count, a label
    index = _local_copy(packed, tmp_path)
    stale = json.loads(json.dumps(index))
    stale["shardlist"][0]["labels"].append(0)
    stale["shardlist"][0]["nsamples"] += 1
    (tmp_path / "train.json").write_text(json.dumps(stale))
    assert "holds 4 examples, the index" in _error(f"{tmp_path}/train.json")
    stale = json.loads(json.dumps(index))
    stale["shardlist"][3]["labels"][1] = (stale["shardlist"][3]["labels"][1] + 1) % 3
    (tmp_path / "train.json").write_text(json.dumps(stale))
    assert "does not match the index" in _error(f"{tmp_path}/train.json")
    # an index from the network may not run commands here
    (packed / "evil-train.json").write_text(
        json.dumps(
            {
                "__kind__": "wids-shard-index-v1",
                "shardlist": [
                    {"url": "pipe:touch /tmp/owned; cat x.tar", "nsamples": 1, "labels": [0]}
                ],
            }
        )
    )
    try:
        assert "which an index fetched over the network may not run" in _error(
            f"{served}/evil-train.json"
        )
    finally:
        (packed / "evil-train.json").unlink()
    # a command that fails: its status and last line of error output
    broken = json.loads(json.dumps(index))
    broken["shardlist"][5]["url"] = f"pipe:cat {tmp_path}/missing.tar"
    (tmp_path / "train.json").write_text(json.dumps(broken))
    message = _error(f"{tmp_path}/train.json")
    command = f"cat {tmp_path}/missing.tar"
    assert message.startswith(f"webdataset: the command `{command}` failed (exit 1)")
    assert "No such file or directory" in message
    tries = [line for line in capfd.readouterr().err.splitlines() if command in line]
    assert len(tries) == streams.RETRIES  # tried again, then the error


def _local_copy(packed: Path, tmp_path: Path) -> dict:
    """The packed index with absolute shard paths, its val.json written to ``tmp_path``."""
    index = json.loads((packed / "train.json").read_text())
    for shard in index["shardlist"]:
        shard["url"] = str(packed / shard["url"])
    (tmp_path / "val.json").write_text(
        (packed / "val.json").read_text().replace('"url":"', f'"url":"{packed}/')
    )
    return index


def test_a_remote_read_that_fails_is_tried_again_from_where_it_stopped(
    packed, tmp_path, monkeypatch, capfd
):
    """A command that dies half-way through a shard the first time it runs (a dropped
    connection): the run warns, reads the shard again, and gets exactly the batches of the
    files themselves."""
    monkeypatch.setattr(streams, "RETRY_WAIT", 0.0)
    index = _local_copy(packed, tmp_path)
    flaky = index["shardlist"][2]["url"]
    marker = tmp_path / "failed-once"
    index["shardlist"][2]["url"] = (
        f"pipe:if [ -e {marker} ]; then cat {flaky}; else touch {marker}; "
        f"head -c 2000 {flaky}; echo connection reset >&2; exit 1; fi"
    )
    (tmp_path / "train.json").write_text(json.dumps(index))
    files = _take(_source(f"{packed}/train.json"), 0, 14)
    retried = _take(_source(f"{tmp_path}/train.json"), 0, 14)
    assert marker.exists()
    for a, b in zip(files, retried, strict=True):
        assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    (warning,) = [line for line in capfd.readouterr().err.splitlines() if "trying again" in line]
    assert "connection reset" in warning and "(1 of 3)" in warning


def test_index_shards_command(packed, tmp_path):
    out = tmp_path / "train.json"
    p = cli("index-shards", f"{packed}/train-{{000000..000014}}.tar", "-o", str(out), env=None)
    assert p.returncode == 0, p.stderr
    assert p.stderr.strip() == f"wrote {out} (58 examples)"
    written = json.loads(out.read_text())
    packed_index = json.loads((packed / "train.json").read_text())
    assert [s["labels"] for s in written["shardlist"]] == [
        s["labels"] for s in packed_index["shardlist"]
    ]
    p = cli("index-shards", f"{packed}/nope-{{0..1}}.tar", "-o", str(out), env=None)
    assert p.returncode == 1 and p.stderr.strip().splitlines() == [
        f"error: webdataset: the shard {packed}/nope-0.tar does not exist"
    ]


def test_torchrun_two_processes_train_from_streamed_shards(packed, tmp_path, env):
    """Two processes (torchrun, gloo) each read their own shards: the plan's epoch is the
    smaller share's (58 images in shards of 4 and 2 split 28/30: 7 batches of 2 x 4), the run
    completes, and its final evaluation covers every validation image once."""
    import subprocess

    from tests.harness.common import DIGITS, ROOT, TINY, set_args, torchrun

    fit = [*TINY, "input.channels=3", "input.size=24", "num_classes=3"]
    args = ["train", DIGITS, *set_args(fit), "--data", f"webdataset:{packed}/train.json"]
    args += ["--batch-size", "8", "--steps", "9", "--eval-every", "9", "--quiet"]
    p = subprocess.run(
        torchrun(*args, "--out", str(tmp_path / "run")),
        cwd=ROOT,
        env=dict(env, RESCOMPILE_DATA_WORKERS="0"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert summary["world_size"] == 2 and summary["status"] == "completed"
    counts = streams.read_shard_index(f"{packed}/train.json").counts
    shares = sorted(int(counts[rank_shards(counts, r, 2)].sum()) for r in (0, 1))
    assert shares[0] + shares[1] == 58
    assert config["plan"]["steps_per_epoch"] == shares[0] // 4
    assert summary["epochs"] == round(9 / (shares[0] // 4), 3)
    assert round(summary["final_test_error"] * 9, 6) == round(summary["final_test_error"] * 9)
