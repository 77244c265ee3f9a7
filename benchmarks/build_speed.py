"""How long does `rescompile build --backend torch` take, and does it import torch?

    python benchmarks/build_speed.py [--spec specs/paper/cifar-resnet1202.yaml] [--repeat 5]

Times the whole process ``rescompile build SPEC --backend torch -o OUT`` (interpreter start-up,
imports, spec loading, lowering, passes, emission, writing), the median of ``--repeat`` runs,
its CPU time (user + sys, which other load on the machine does not inflate), and checks with
``python -X importtime`` that torch is never imported. When the CLI has no
``build`` command yet, it times ``python -c`` doing the same through the library instead. It also
prints the in-process split: compile (load + lower + passes) and emit. Target (issue 3): CIFAR
ResNet-1202, about 4,000 IR nodes, in under 1 s as a whole process on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FALLBACK = (
    "import sys\n"
    "from pathlib import Path\n"
    "from rescompile import compile_spec\n"
    "from rescompile.backends.torch import emit\n"
    "Path(sys.argv[2]).write_text(emit(compile_spec(sys.argv[1])[1]))\n"
)


def command(spec: Path, out: Path, use_cli: bool) -> list[str]:
    if use_cli:
        return [
            sys.executable,
            "-m",
            "rescompile",
            "build",
            str(spec),
            "--backend",
            "torch",
            "-o",
            str(out),
        ]
    return [sys.executable, "-c", FALLBACK, str(spec), str(out)]


def has_build_command() -> bool:
    r = subprocess.run(
        [sys.executable, "-m", "rescompile", "build", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    return r.returncode == 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", type=Path, default=ROOT / "specs" / "paper" / "cifar-resnet1202.yaml")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()

    use_cli = has_build_command()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "model.py"
        cmd = command(args.spec, out, use_cli)
        subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)  # warm the file cache
        times, cpu = [], []
        for _ in range(args.repeat):
            r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            t = time.perf_counter()
            subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
            times.append(time.perf_counter() - t)
            r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu.append(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime)
        lines = len(out.read_text().splitlines())
        trace = subprocess.run(
            [cmd[0], "-X", "importtime", *cmd[1:]],
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        ).stderr
    imported = sorted(
        {
            line.rsplit("|", 1)[-1].strip()
            for line in trace.splitlines()
            if line.startswith("import time:")
        }
    )
    torch_imported = any(m == "torch" or m.startswith("torch.") for m in imported)

    from rescompile.backends.torch import emit

    from rescompile import compile_spec

    compile_s, emit_s = [], []
    for _ in range(args.repeat):
        t = time.perf_counter()
        _, g = compile_spec(args.spec)
        t1 = time.perf_counter()
        emit(g)
        t2 = time.perf_counter()
        compile_s.append(t1 - t)
        emit_s.append(t2 - t1)

    how = "rescompile build --backend torch" if use_cli else "python -c (no `build` command yet)"
    print(
        f"spec:            {args.spec.relative_to(ROOT)} ({len(g):,} IR nodes, "
        f"{len(g.blocks)} blocks) -> {lines} lines of PyTorch"
    )
    print(f"whole process:   {how}")
    print(
        f"  wall: median {statistics.median(times):.3f} s, min {min(times):.3f} s "
        f"over {args.repeat} runs (target < 1 s)"
    )
    print(
        f"  CPU (user + sys): median {statistics.median(cpu):.3f} s; load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    print(
        f"  torch imported: {'YES' if torch_imported else 'no'} "
        f"({len(imported)} modules imported in all)"
    )
    print(
        f"in-process:      compile {statistics.median(compile_s) * 1e3:.1f} ms, "
        f"emit {statistics.median(emit_s) * 1e3:.1f} ms (medians)"
    )


if __name__ == "__main__":
    main()
