"""How fast is the analysis? spec -> IR -> all passes, in-process and as a whole CLI process.

    python benchmarks/report_speed.py [--repeat 20]

Prints the median in-process time of load + lower + verify + shapes + costs for torchvision
ResNet-152, timm's largest 152-layer models (ResNet-152-D, SE-ResNet-152-D, ResNet-RS-152: deep
stems, average-pool shortcuts, SE modules) and CIFAR ResNet-1202, wall and CPU (process) time (the
CPU time is less sensitive to other jobs on a shared machine), the median wall time of a whole
`rescompile report` process,
and, when torch is installed, the time torch.utils.flop_counter (and fvcore, if importable) take
to count the same model, measured in the same run. Targets (issue 2): ResNet-152 under 20 ms
in-process; the whole `rescompile report` process under 0.6 s on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPECS = {
    "torchvision resnet152": ROOT / "specs" / "torchvision" / "resnet152.yaml",
    "timm resnet152d": ROOT / "specs" / "timm" / "resnet152d.yaml",
    "timm seresnet152d": ROOT / "specs" / "timm" / "seresnet152d.yaml",
    "timm resnetrs152": ROOT / "specs" / "timm" / "resnetrs152.yaml",
    "cifar-resnet1202": ROOT / "specs" / "paper" / "cifar-resnet1202.yaml",
}


def median_time(fn, repeat: int, clock=time.perf_counter) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t = clock()
        fn()
        times.append(clock() - t)
    return statistics.median(times)


def framework_counter(path: Path, repeat: int) -> dict[str, float]:
    """Time torch's own FLOP counter (and fvcore's) on the emitted model, if available."""
    try:
        import torch
        from torch.utils.flop_counter import FlopCounterMode
    except ImportError:
        return {}
    from rescompile.backends import torch as tb

    from rescompile import compile_spec

    _, g = compile_spec(path)
    model = tb.load_module(tb.emit(g), g.class_name)().eval()
    x = torch.randn(1, *g.input_shape)
    out: dict[str, float] = {}

    def flop_counter():
        with torch.no_grad(), FlopCounterMode(display=False):
            model(x)

    out["torch.utils.flop_counter"] = median_time(flop_counter, max(3, repeat // 5))
    try:
        from fvcore.nn import FlopCountAnalysis
    except ImportError:
        return out
    out["fvcore"] = median_time(lambda: FlopCountAnalysis(model, x).total(), max(3, repeat // 5))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--no-framework", action="store_true", help="skip the torch FLOP counter")
    ap.add_argument("--no-process", action="store_true", help="skip the whole-process timing")
    ap.add_argument("--only", nargs="*", help="spec labels to time (default: all)")
    args = ap.parse_args()
    from rescompile import compile_spec

    print(f"python {sys.version.split()[0]}, repeat {args.repeat} (medians)")
    for label, path in SPECS.items():
        if args.only and label not in args.only:
            continue
        t = median_time(lambda p=path: compile_spec(p), args.repeat)
        cpu = median_time(lambda p=path: compile_spec(p), args.repeat, time.process_time)
        _, g = compile_spec(path)
        print(
            f"in-process  {label:24s} {len(g):5d} IR nodes  {t * 1e3:8.2f} ms wall  "
            f"{cpu * 1e3:8.2f} ms CPU"
        )
        counters = {} if args.no_framework else framework_counter(path, args.repeat)
        for name, ft in counters.items():
            print(
                f"            {'':24s} {name:28s} {ft * 1e3:8.2f} ms  "
                f"(ratio framework/rescompile {ft / t:6.1f}x)"
            )
    if args.no_process:
        return
    cli = [
        sys.executable,
        "-m",
        "rescompile",
        "report",
        str(SPECS["torchvision resnet152"]),
        "--format",
        "json",
    ]
    bare = [sys.executable, "-c", "pass"]
    t_cli = median_time(lambda: subprocess.run(cli, check=True, capture_output=True), 5)
    t_py = median_time(lambda: subprocess.run(bare, check=True, capture_output=True), 5)
    print(
        f"process     rescompile report resnet152     {t_cli:8.3f} s "
        f"(bare python start-up {t_py:.3f} s; target < 0.6 s)"
    )


if __name__ == "__main__":
    main()
