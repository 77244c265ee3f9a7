"""Training-pipeline speed at 224 px: rescompile's image pipeline against a torchvision-style
torch DataLoader, measured in the same run on the same generated JPEGs with the same workers.

    python benchmarks/data_speed.py --images 3000 --workers 2 --batch 64

Generates ImageNet-like JPEGs (500x375 and 375x500, quality 90, smooth content with texture,
10 classes) in a temporary folder, then runs each pipeline in a fresh process over one epoch
(every image once, RandomResizedCrop to 224 + flip; uint8 NHWC batches for ours, normalised
float NCHW tensors for the baseline), and prints images/s (epoch images / time from the first
batch to the last: worker start-up is reported apart), images per CPU-second (the same images /
the user + system CPU time of the process tree over that window: the per-core figure, which
other jobs on the machine disturb far less than wall time) and the peak resident memory of the
process tree (main process + workers, sampled every 20 ms):

- ``rescompile``: :class:`rescompile.harness.images.ImageSource` (spawned worker processes
  through ``ProcessPoolExecutor``, PIL draft-mode decoding, one ``resize(box=...)``);
- ``rescompile-grain``: the same per-step loader run by grain (``MapDataset.map`` +
  ``mp_prefetch``), the library the issue suggested;
- ``torch-baseline``: what torchvision's ``ImageFolder`` + ``RandomResizedCrop(224)`` +
  ``RandomHorizontalFlip`` + ``ToTensor`` + ``Normalize`` do, written out with PIL and torch
  (torchvision itself ships only with CUDA builds of torch on this index): full-size PIL decode,
  ``crop`` then ``resize(BILINEAR)``, a torch ``DataLoader(shuffle=True, num_workers=W)``;
- ``torch-draft``: the torch DataLoader running rescompile's decode (library vs decoding);
- ``rescompile-stream``: the same shards read front to back through their index
  (:mod:`rescompile.harness.streams`: 4 shards at once, a 2,048-example shuffle buffer, the
  bytes sent to the same worker processes), as from an object store without random access;
- ``webdataset``: the folder packed into tar shards of 250 (``rescompile pack-shards``), read by
  webdataset's ``WebDataset`` + ``shuffle(1000)`` + rescompile's decode + ``batched`` (uint8
  batches, as ours) in its ``WebLoader`` (a torch DataLoader) with the same workers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

PIPELINES = (
    "rescompile",
    "rescompile-grain",
    "rescompile-stream",
    "webdataset",
    "torch-baseline",
    "torch-draft",
)


def make_images(root: Path, n: int, classes: int = 10, seed: int = 0) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(n):
        d = root / "train" / f"c{i % classes:02d}"
        d.mkdir(parents=True, exist_ok=True)
        w, h = (500, 375) if i % 4 else (375, 500)
        low = rng.integers(0, 256, (h // 25 + 1, w // 25 + 1, 3), dtype=np.uint8)
        image = Image.fromarray(low).resize((w, h), Image.BICUBIC)
        noise = rng.normal(0, 12, (h, w, 3))
        pixels = np.clip(np.asarray(image, np.float64) + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(d / f"{i:06d}.jpg", quality=90)
    for c in range(classes):  # a token val split (the pipelines measured read train only)
        d = root / "val" / f"c{c:02d}"
        d.mkdir(parents=True, exist_ok=True)
        src = next((root / "train" / f"c{c:02d}").iterdir())
        (d / src.name).write_bytes(src.read_bytes())


class TreeRSS:
    """Peak summed RSS of this process and its descendants, sampled on a thread."""

    def __init__(self, every: float = 0.02) -> None:
        self.peak = 0
        self.every = every
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _tree(self) -> list[int]:
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat = Path(f"/proc/{entry}/stat").read_text()
                except OSError:
                    continue
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
        out, todo = [], [os.getpid()]
        while todo:
            pid = todo.pop()
            out.append(pid)
            todo.extend(children.get(pid, []))
        return out

    def _rss(self, pid: int) -> int:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def cpu_s(self) -> float:
        """User + system CPU seconds used so far by the live processes of the tree."""
        total = 0
        for pid in self._tree():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / os.sysconf("SC_CLK_TCK")

    def _run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, sum(self._rss(p) for p in self._tree()))
            time.sleep(self.every)

    def __enter__(self) -> TreeRSS:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


# -- the pipelines ---------------------------------------------------------------------------------

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


class TorchvisionStyle:
    """ImageFolder + RandomResizedCrop(224) + RandomHorizontalFlip + ToTensor + Normalize, as
    torchvision computes them on PIL images."""

    def __init__(self, files: list[str], labels: list[int], size: int, draft: bool) -> None:
        self.files, self.labels, self.size, self.draft = files, labels, size, draft

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        import torch
        from PIL import Image

        from rescompile.harness.images import decode_train, random_resized_crop_box

        rng = np.random.default_rng([7, i, int(torch.initial_seed()) & 0xFFFF])
        if self.draft:
            with open(self.files[i], "rb") as f:
                x = decode_train(f.read(), (self.size, self.size), rng)
            t = torch.from_numpy(x).permute(2, 0, 1).float().div_(255)
        else:
            with open(self.files[i], "rb") as f:
                image = Image.open(f).convert("RGB")  # torchvision's pil_loader
            left, top, w, h = random_resized_crop_box(*image.size, rng)
            image = image.crop((left, top, left + w, top + h)).resize(
                (self.size, self.size), Image.BILINEAR
            )
            if rng.random() < 0.5:
                image = image.transpose(Image.FLIP_LEFT_RIGHT)
            t = torch.from_numpy(np.asarray(image, np.uint8).copy()).permute(2, 0, 1)
            t = t.float().div_(255)
        mean = torch.from_numpy(MEAN)[:, None, None]
        std = torch.from_numpy(STD)[:, None, None]
        return (t - mean) / std, self.labels[i]


def _timed_batches(it, steps: int, rss) -> tuple[int, tuple[float, float], tuple[float, float]]:
    """Take up to ``steps`` batches of ``(x, y)`` from ``it``: the images taken, and (wall time,
    CPU time) after the first batch and after the last. Not to exhaustion: the workers stay
    alive for the CPU reading."""
    x, _ = next(it)
    first = time.perf_counter(), rss.cpu_s()
    count = len(x)
    for _ in range(steps - 1):
        try:
            x, _ = next(it)
        except StopIteration:
            break
        count += len(x)
    return count, first, (time.perf_counter(), rss.cpu_s())


def run_one(name: str, folder: Path, workers: int, batch: int, size: int) -> dict:
    from rescompile.harness.images import open_image_folder

    source = open_image_folder(folder, (size, size), workers=workers)
    n = source.n_train
    steps = n // batch
    t0 = time.perf_counter()
    with TreeRSS() as rss:
        if name in ("rescompile", "rescompile-grain", "rescompile-stream"):
            if name == "rescompile-grain":
                source._pipeline = lambda loader, start: _grain(loader, start, workers)
            if name == "rescompile-stream":
                import rescompile.harness.streams as streams
                from rescompile.harness.streams import open_stream_source

                streams.SHUFFLE_BUFFER = int(os.environ.get("STREAM_BUFFER", "2048"))
                index = _shards(folder) / "train.json"
                source = open_stream_source(str(index), (size, size), workers=workers)
                steps = source.steps_per_epoch(batch)
            it = source.train_batches(0, batch, seed=0, augment=True)
            first = next(it)
            t1, c1 = time.perf_counter(), rss.cpu_s()
            count = len(first.labels)
            for _ in range(steps - 1):
                count += len(next(it).labels)
            t2, c2 = time.perf_counter(), rss.cpu_s()
            source.close()
        elif name == "webdataset":
            import torch
            import webdataset as wds

            from rescompile.harness.images import decode_train
            from rescompile.harness.shards import expand_pattern

            torch.set_num_threads(1)
            shards = _shards(folder)
            count = len(list(shards.glob("train-*.tar")))
            urls = expand_pattern(str(shards / f"train-{{000000..{count - 1:06d}}}.tar"))

            def decode(sample):
                key = int(sample["__key__"].rsplit("/", 1)[-1])
                rng = np.random.default_rng([7, key])
                return decode_train(sample["jpg"], (size, size), rng), int(sample["cls"])

            def collate(samples):
                xs, ys = zip(*samples, strict=True)
                return np.stack(xs), np.asarray(ys)

            ds = (
                wds.WebDataset(urls, shardshuffle=len(urls), empty_check=False)
                .shuffle(1000)
                .map(decode)
                .batched(batch, collation_fn=collate, partial=False)
            )
            it = iter(wds.WebLoader(ds, batch_size=None, num_workers=workers))
            count, (t1, c1), (t2, c2) = _timed_batches(it, steps, rss)
        else:
            import torch

            torch.set_num_threads(1)
            files = [os.fsdecode(p) for p in source.train.paths]
            ds = TorchvisionStyle(files, source.train.labels.tolist(), size, name == "torch-draft")
            loader = torch.utils.data.DataLoader(
                ds,
                batch_size=batch,
                shuffle=True,
                num_workers=workers,
                drop_last=True,
                persistent_workers=False,
                prefetch_factor=2 if workers else None,
            )
            it = iter(loader)
            count, (t1, c1), (t2, c2) = _timed_batches(it, steps, rss)
    timed = count - batch
    return {
        "pipeline": name,
        "images": count,
        "images_per_s": round(timed / (t2 - t1), 1),
        "images_per_cpu_s": round(timed / (c2 - c1), 1),
        "startup_s": round(t1 - t0, 2),
        "peak_rss_mib": round(rss.peak / 2**20),
    }


def _shards(folder: Path) -> Path:
    """The folder packed into shards of 250 beside it (once), with their indexes."""
    from rescompile.harness.shards import pack_shards

    shards = folder.parent / f"{folder.name}-shards"
    if not shards.is_dir():
        pack_shards(folder, shards, per_shard=250)
    return shards


def _grain(loader, start: int, workers: int):
    import grain
    from absl import flags

    flags.FLAGS.mark_as_parsed()  # grain reads absl flags

    ds = grain.MapDataset.range(start, start + (1 << 40)).map(loader)
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=1))
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=2))

    class Pipeline:
        def __iter__(self):
            return iter(ds)

        def close(self):
            pass

    return Pipeline()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--pipelines", default=",".join(PIPELINES))
    parser.add_argument("--folder", help="use (or create) this folder instead of a temporary one")
    parser.add_argument(
        "--stream-buffer", type=int, default=2048, help="rescompile-stream's shuffle buffer"
    )
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        result = run_one(args.one, Path(args.folder), args.workers, args.batch, args.size)
        print(json.dumps(result))
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.folder or tmp)
        if not (folder / "train").is_dir():
            t = time.perf_counter()
            make_images(folder, args.images)
            print(f"wrote {args.images} JPEGs in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        rows = []
        for name in args.pipelines.split(","):
            cmd = [sys.executable, __file__, "--one", name, "--folder", str(folder)]
            cmd += ["--workers", str(args.workers), "--batch", str(args.batch)]
            cmd += ["--size", str(args.size)]
            env = dict(os.environ, OMP_NUM_THREADS="1", STREAM_BUFFER=str(args.stream_buffer))
            p = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if p.returncode:
                print(f"{name} failed:\n{p.stderr[-2000:]}", file=sys.stderr)
                continue
            rows.append(json.loads(p.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), file=sys.stderr)
    base = next((r["images_per_s"] for r in rows if r["pipeline"] == "torch-baseline"), None)
    print(f"\n{args.images} JPEGs, {args.workers} workers, batch {args.batch}, {args.size} px")
    cpu_base = next((r["images_per_cpu_s"] for r in rows if r["pipeline"] == "torch-baseline"), 0)
    print(
        "| pipeline | images/s | vs baseline | images per CPU-second | vs baseline "
        "| start-up s | peak RSS (tree) MiB |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['images_per_s'] / base:.2f}x" if base else "n/a"
        cpu_ratio = f"{r['images_per_cpu_s'] / cpu_base:.2f}x" if cpu_base else "n/a"
        print(
            f"| {r['pipeline']} | {r['images_per_s']:,.0f} | {ratio} | "
            f"{r['images_per_cpu_s']:,.0f} | {cpu_ratio} | {r['startup_s']} | "
            f"{r['peak_rss_mib']} |"
        )


if __name__ == "__main__":
    main()
