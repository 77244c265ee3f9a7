"""Train a ResNet-18 on an image folder with both backends, evaluate it, plot it.

Generates a small ImageNet-style folder (``train/<class>/*.jpg``, ``val/<class>/*.jpg``: three
classes of shapes -- discs, squares, triangles -- of random colour, size and place on textured
backgrounds, as 64-112 px JPEGs), packs it into webdataset tar shards, then trains torchvision's
ResNet-18 (``specs/torchvision/resnet18.yaml`` at 32 px input, 3 classes) from the folder with
PyTorch and from the shards with Flax, evaluates each run's last checkpoint with
``rescompile eval``'s function, and overlays both runs' curves in ``image_folder.png``.

    .venv/bin/python examples/image_folder/run.py                 # ~15 min on 2 busy cores
    .venv/bin/python examples/image_folder/run.py --steps 60 --images 300

The same as commands::

    rescompile pack-shards data -o shards
    rescompile train specs/torchvision/resnet18.yaml --set input.size=32 --set num_classes=3 \\
        --data imagefolder:data --recipe fast --steps 150 --batch-size 32 --out runs/r18-torch
    rescompile train specs/torchvision/resnet18.yaml --set input.size=32 --set num_classes=3 \\
        --data 'webdataset:shards/train-{000000..000001}.tar' -b flax --recipe fast ...
    rescompile eval runs/r18-torch
    rescompile plot runs/r18-torch runs/r18-flax -o image_folder.png
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SPEC = str(ROOT / "specs" / "torchvision" / "resnet18.yaml")
CLASSES = ("disc", "square", "triangle")


def draw(kind: str, rng: np.random.Generator):
    from PIL import Image, ImageDraw, ImageFilter

    w, h = (int(v) for v in rng.integers(64, 113, 2))
    low = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    image = Image.fromarray(low).resize((w, h), Image.BICUBIC)
    pen = ImageDraw.Draw(image)
    r = int(rng.integers(min(w, h) // 4, min(w, h) // 2 - 2))
    cx, cy = int(rng.integers(r, w - r)), int(rng.integers(r, h - r))
    colour = tuple(int(v) for v in rng.integers(0, 256, 3))
    if kind == "disc":
        pen.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    elif kind == "square":
        pen.rectangle((cx - r, cy - r, cx + r, cy + r), fill=colour)
    else:
        pen.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    return image.filter(ImageFilter.GaussianBlur(0.6))


def make_folder(root: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for split, count in (("train", n), ("val", max(30, n // 5))):
        for i in range(count):
            kind = CLASSES[i % len(CLASSES)]
            folder = root / split / kind
            folder.mkdir(parents=True, exist_ok=True)
            draw(kind, rng).save(folder / f"{i:05d}.jpg", quality=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=600, help="training images")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--work", default=str(HERE / "work"), help="data and runs go here")
    parser.add_argument("--backends", default="torch,flax")
    args = parser.parse_args()

    from rescompile.harness.evaluate import evaluate
    from rescompile.harness.loop import TrainConfig, train
    from rescompile.harness.plots import plot_curves
    from rescompile.harness.shards import pack_shards

    work = Path(args.work)
    data, shards = work / "data", work / "shards"
    if not data.is_dir():
        make_folder(data, args.images)
    if not shards.is_dir():
        pack_shards(data, shards, per_shard=max(1, args.images // 2))
    count = len(list(shards.glob("train-*.tar")))
    train_pattern = str(shards / f"train-{{000000..{count - 1:06d}}}.tar")
    sources = {"torch": f"imagefolder:{data}", "flax": f"webdataset:{train_pattern}"}
    runs, rows = [], []
    for backend in args.backends.split(","):
        out = work / f"r18-{backend}"
        if out.exists():
            shutil.rmtree(out)
        summary = train(
            TrainConfig(
                spec=SPEC,
                overrides=["input.size=32", f"num_classes={len(CLASSES)}"],
                backend=backend,
                data=sources[backend],
                recipe="fast",
                steps=args.steps,
                batch_size=args.batch_size,
                out=str(out),
                quiet=True,
            )
        )
        e = evaluate(out)
        runs.append(str(out))
        rows.append(
            f"| {backend} | {sources[backend].split(':')[0]} | {summary['steps']} | "
            f"{100 * summary['final_test_error']:.1f}% | {100 * e.top1_error:.1f}% | "
            f"{summary['images_per_s']:.0f} | {summary['skipped_images']} |"
        )
        print(json.dumps(e.to_dict()))
    figure = plot_curves(runs, HERE / "image_folder.png", title="ResNet-18, 32 px, 3 shapes")
    table = "\n".join(
        [
            "| backend | data | steps | final test error | eval top-1 error | train images/s "
            "| skipped |",
            "|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
    (HERE / "RESULTS.md").write_text(
        f"# ResNet-18 on a generated image folder\n\n`python examples/image_folder/run.py "
        f"--images {args.images} --steps {args.steps} --batch-size {args.batch_size}`\n\n"
        f"{table}\n\n![curves](image_folder.png)\n"
    )
    print(table)
    print(f"wrote {figure} and {HERE / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
