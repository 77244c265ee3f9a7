"""Is the emitted ResNet-50 as fast as a hand-written one? Forward + backward, same process.

    python benchmarks/torch_vs_handwritten.py [--batch 8] [--size 224] [--iters 10]
    python benchmarks/torch_vs_handwritten.py --device cuda --batch 128   # bf16, channels_last

The emitted model is ``specs/torchvision/resnet50.yaml`` built by the PyTorch backend; the
reference is torchvision's ``resnet50`` when torchvision is importable, else the hand-written
torchvision-architecture ResNet-50 of ``tests/backends/torch/torchvision_reference.py``. Both get
the same weights (the reference's state_dict, loaded with ``strict=True``) and the same batch; each
iteration times one training step's forward and backward of each model, alternating which goes
first, after ``--warmup`` untimed iterations. Prints the median step time of each, images/s and
the ratio emitted / reference (target: within 1.03): the median of the per-iteration ratios (the
two runs of an iteration are adjacent in time, so slow changes in machine load cancel), and the
ratios of the median and of the minimum times. On CUDA the models run in channels_last
under bf16 autocast, timed with CUDA synchronisation.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "specs" / "torchvision" / "resnet50.yaml"


def reference_model(name: str) -> tuple[torch.nn.Module, str]:
    path = ROOT / "tests" / "backends" / "torch" / "torchvision_reference.py"
    spec = importlib.util.spec_from_file_location("torchvision_reference", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.torchvision_or_reference(name)


def step_time(model, x, target, device: str) -> float:
    model.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=device == "cuda"):
        loss = torch.nn.functional.cross_entropy(model(x), target)
    loss.backward()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from rescompile.backends.torch import build_model

    from rescompile import compile_spec

    _, graph = compile_spec(SPEC, [f"input.size={args.size}"])
    torch.manual_seed(0)
    reference, what = reference_model(graph.name)
    emitted = build_model(graph)
    emitted.load_state_dict(reference.state_dict(), strict=True)
    fmt = torch.channels_last if args.device == "cuda" else torch.contiguous_format
    models = {"emitted": emitted, "reference": reference}
    for m in models.values():
        m.to(args.device, memory_format=fmt).train()
    x = torch.randn(args.batch, *graph.input_shape, device=args.device).to(memory_format=fmt)
    target = torch.randint(0, graph.num_classes, (args.batch,), device=args.device)

    times: dict[str, list[float]] = {k: [] for k in models}
    order = list(models)
    for i in range(args.warmup + args.iters):
        for name in order if i % 2 == 0 else order[::-1]:
            t = step_time(models[name], x, target, args.device)
            if i >= args.warmup:
                times[name].append(t)

    med = {k: statistics.median(v) for k, v in times.items()}
    dev = (
        torch.cuda.get_device_name()
        if args.device == "cuda"
        else (f"cpu, {torch.get_num_threads()} threads")
    )
    print(
        f"ResNet-50 ({SPEC.relative_to(ROOT)}), forward + backward, batch {args.batch}, "
        f"{args.size}x{args.size}, {args.iters} timed iterations (+{args.warmup} warm-up), "
        f"alternating; torch {torch.__version__} on {dev}"
        + (", bf16 autocast, channels_last" if args.device == "cuda" else ", float32")
    )
    print(f"reference: {what}")
    for k in models:
        print(
            f"  {k:9s} median {med[k] * 1e3:8.1f} ms/step  min {min(times[k]) * 1e3:8.1f} ms"
            f"  {args.batch / med[k]:8.1f} images/s"
        )
    # Each iteration times the two models back to back, so the ratio within an iteration is
    # insensitive to slow drifts in machine load; its median is the headline number.
    paired = statistics.median(
        e / r for e, r in zip(times["emitted"], times["reference"], strict=True)
    )
    print(
        f"ratio emitted / reference: {paired:.3f} (median of per-iteration ratios; target "
        f"<= 1.03); of median times {med['emitted'] / med['reference']:.3f}; of minimum "
        f"times {min(times['emitted']) / min(times['reference']):.3f}"
    )


if __name__ == "__main__":
    main()
