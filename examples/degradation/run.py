"""The degradation experiment of He et al. (2016), Figure 6, on scikit-learn's 8x8 digits.

Plain and residual CIFAR nets of depth 20 and 56 (specs/paper/cifar-{plain,resnet}{20,56}.yaml,
adapted to 8x8x1 input with ``--set input.channels=1 --set input.size=8``) trained with the
paper-cifar recipe shortened to ``--steps`` (the lr drops at 50% and 75% of the run), with
PyTorch and with Flax. Writes the run directories (under ``--runs``), ``degradation.png``
(training error dashed, test error solid, one panel per backend and family) and
``RESULTS.md`` (the table of final errors).

    .venv/bin/python examples/degradation/run.py               # both backends, ~15 min on 2 cores
    .venv/bin/python examples/degradation/run.py --backends torch --steps 200

Deterministic on a CPU: the same command gives the same errors (timings vary).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
NETS = [("plain", 20), ("plain", 56), ("resnet", 20), ("resnet", 56)]
ADAPT = ["input.channels=1", "input.size=8"]


def run_one(args: argparse.Namespace, backend: str, family: str, depth: int, seed: int) -> dict:
    """Train one net (or reuse its finished run directory) and return its summary."""
    import shutil

    from rescompile.harness.loop import TrainConfig, train

    out = run_dir(args, backend, family, depth, seed)
    if (out / "summary.json").is_file() and not args.force:
        print(f"{out}: done before, reusing (--force to retrain)")
        return json.loads((out / "summary.json").read_text())
    if out.exists():
        shutil.rmtree(out)
    t0 = time.perf_counter()
    summary = train(
        TrainConfig(
            spec=str(ROOT / f"specs/paper/cifar-{family}{depth}.yaml"),
            overrides=ADAPT,
            backend=backend,
            data="digits",
            recipe="paper-cifar",
            steps=args.steps,
            batch_size=args.batch_size,
            seed=seed,
            out=str(out),
            eval_every=args.eval_every,
            log_every=args.log_every,
            ckpt_every=args.steps,
            keep=1,
            quiet=True,
        )
    )
    print(
        f"{out}: train {100 * summary['final_train_error_running']:.2f}% "
        f"test {100 * summary['final_test_error']:.2f}% "
        f"({time.perf_counter() - t0:.0f} s, {summary['images_per_s']} img/s)",
        flush=True,
    )
    return summary


def run_dir(args: argparse.Namespace, backend: str, family: str, depth: int, seed: int) -> Path:
    suffix = "" if seed == args.seed else f"-seed{seed}"
    return Path(args.runs) / f"{backend}-{family}{depth}{suffix}"


def run_all(args: argparse.Namespace) -> dict[tuple[str, str, int], dict]:
    return {
        (backend, family, depth): run_one(args, backend, family, depth, args.seed)
        for backend in args.backends
        for family, depth in NETS
    }


def run_seeds(args: argparse.Namespace) -> dict[tuple[str, str, int], list[dict]]:
    """The same nets from other initialisations (and batch orders), for the robustness table."""
    return {
        (args.seeds_backend, family, depth): [
            run_one(args, args.seeds_backend, family, depth, seed)
            for seed in [args.seed, *args.extra_seeds]
        ]
        for family, depth in NETS
    }


def figure(args: argparse.Namespace, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from rescompile.harness.metrics import read_metrics

    fig = Figure(figsize=(10, 3.6 * len(args.backends)), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(args.backends), 2, squeeze=False, sharey=True)
    colors = {20: "C1", 56: "C3"}
    for row, backend in enumerate(args.backends):
        for col, family in enumerate(("plain", "resnet")):
            ax = axes[row][col]
            for depth in (20, 56):
                records = read_metrics(run_dir(args, backend, family, depth, args.seed))
                train = sorted(
                    (r["step"], 100 * r["train_error"]) for r in records if r["kind"] == "train"
                )
                test = sorted(
                    (r["step"], 100 * r["test_error"]) for r in records if r["kind"] == "eval"
                )
                name = f"{'plain' if family == 'plain' else 'ResNet'}-{depth}"
                ax.plot(*zip(*_smooth(train), strict=True), "--", color=colors[depth], linewidth=1)
                ax.plot(*zip(*test, strict=True), "-", color=colors[depth], linewidth=2, label=name)
            ax.set_title(f"{'plain' if family == 'plain' else 'residual'} nets, {backend}")
            ax.set_xlabel("iter.")
            ax.set_ylim(0, 90)
            ax.grid(True, linewidth=0.4, alpha=0.5)
            ax.legend(loc="best", title="dashed: train, bold: test", title_fontsize="small")
            if col == 0:
                ax.set_ylabel("error (%)")
    fig.suptitle(
        f"digits (8x8), {args.steps} iterations of batch {args.batch_size}, "
        "paper-cifar schedule shortened",
        fontsize="medium",
    )
    fig.tight_layout()
    fig.savefig(path)


def _smooth(points: list[tuple[int, float]], k: int = 5) -> list[tuple[int, float]]:
    """A trailing moving average over ``k`` logged points (mini-batch error is noisy)."""
    out = []
    for i, (step, _) in enumerate(points):
        window = [e for _, e in points[max(0, i - k + 1) : i + 1]]
        out.append((step, sum(window) / len(window)))
    return out


def table(args: argparse.Namespace, results: dict) -> str:
    lines = [
        "| backend | net | layers | train error, running (%) | train error, eval mode (%) "
        "| test error (%) | best test (%) | images/s | wall (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (backend, family, depth), s in results.items():
        name = f"{'plain' if family == 'plain' else 'ResNet'}-{depth}"
        lines.append(
            f"| {backend} | {name} | {depth} | {100 * s['final_train_error_running']:.2f} "
            f"| {100 * s['final_train_error']:.2f} | {100 * s['final_test_error']:.2f} "
            f"| {100 * s['best_test_error']:.2f} | {s['images_per_s']:.0f} "
            f"| {s['wall_time_s']:.0f} |"
        )
    return "\n".join(lines)


THROUGHPUT = [("torch", "1"), ("torch", "2"), ("flax", "")]


def throughput(args: argparse.Namespace) -> dict[tuple[str, str], dict]:
    """Training images/s of digits ResNet-20 (batch 128, 150 steps), each in its own process so
    that the thread count (OMP_NUM_THREADS for torch; XLA picks its own) is the process's."""
    import os
    import shutil
    import subprocess
    import sys

    out = {}
    for backend, threads in THROUGHPUT:
        run = Path(args.runs) / f"throughput-{backend}{threads}"
        if not (run / "summary.json").is_file() or args.force:
            shutil.rmtree(run, ignore_errors=True)
            env = {**os.environ, "OMP_NUM_THREADS": threads} if threads else dict(os.environ)
            if not threads:
                env.pop("OMP_NUM_THREADS", None)
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "rescompile",
                    "train",
                    str(ROOT / "specs/variants/digits-resnet20.yaml"),
                    "-b",
                    backend,
                    "--data",
                    "digits",
                    "--steps",
                    "150",
                    "--batch-size",
                    "128",
                    "--eval-every",
                    "150",
                    "--out",
                    str(run),
                    "--quiet",
                ],
                check=True,
                env=env,
                cwd=ROOT,
            )
        out[(backend, threads)] = json.loads((run / "summary.json").read_text())
    return out


def throughput_table(results: dict) -> str:
    if not results:
        return ""
    lines = [
        "| backend | threads | images/s | first step, compilation included (s) |",
        "|---|---|---|---|",
    ]
    for (backend, threads), s in results.items():
        lines.append(
            f"| {backend} | {threads or 'XLA default'} | {s['images_per_s']:.0f} "
            f"| {s['first_step_s']:.2f} |"
        )
    return "\n".join(lines)


def seeds_table(args: argparse.Namespace, seeds: dict) -> str:
    if not seeds:
        return ""
    all_seeds = [args.seed, *args.extra_seeds]
    head = " | ".join(f"seed {s}" for s in all_seeds)
    lines = [
        f"Final training error (running, %) of the {args.seeds_backend} runs from "
        f"{len(all_seeds)} seeds (`--extra-seeds {' '.join(map(str, args.extra_seeds))}`):",
        "",
        f"| net | {head} |",
        "|---|" + "---|" * len(all_seeds),
    ]
    for (_, family, depth), runs in seeds.items():
        name = f"{'plain' if family == 'plain' else 'ResNet'}-{depth}"
        cells = " | ".join(f"{100 * r['final_train_error_running']:.2f}" for r in runs)
        lines.append(f"| {name} | {cells} |")
    return "\n".join(lines) + "\n"


def verdicts(results: dict) -> list[str]:
    out = []
    for backend in sorted({k[0] for k in results}):
        r = {(f, d): results[(backend, f, d)] for (b, f, d) in results if b == backend}
        p20, p56 = (100 * r[("plain", d)]["final_train_error_running"] for d in (20, 56))
        r20, r56 = (100 * r[("resnet", d)]["final_train_error_running"] for d in (20, 56))
        degr = "higher" if p56 > p20 else "not higher"
        res = "lower or equal" if r56 <= r20 else "higher"
        out.append(
            f"- {backend}: plain-56 ends with a {degr} training error than plain-20 "
            f"({p56:.2f}% vs {p20:.2f}%); ResNet-56's is {res} than ResNet-20's "
            f"({r56:.2f}% vs {r20:.2f}%), and {'below' if r56 < p56 else 'not below'} "
            f"plain-56's."
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", nargs="+", default=["torch", "flax"])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-every", type=int, default=20)
    parser.add_argument("--log-every", type=int, default=4)
    parser.add_argument("--runs", default=str(ROOT / "runs" / "degradation"))
    parser.add_argument("--force", action="store_true", help="retrain runs already done")
    parser.add_argument("--results", default=str(HERE / "RESULTS.md"))
    parser.add_argument(
        "--extra-seeds",
        type=int,
        nargs="*",
        default=[1, 2],
        help="also train from these seeds (robustness table)",
    )
    parser.add_argument("--seeds-backend", default="torch", help="backend of the extra seeds")
    parser.add_argument(
        "--no-throughput",
        dest="throughput",
        action="store_false",
        help="skip the throughput measurement",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (the results depend on it in the last bits)",
    )
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    results = run_all(args)
    seeds = run_seeds(args) if args.extra_seeds else {}
    speed = throughput(args) if args.throughput else {}
    figure(args, HERE / "degradation.png")
    body = RESULTS_TEMPLATE.format(
        steps=args.steps,
        batch=args.batch_size,
        seed=args.seed,
        epochs=args.steps * args.batch_size / 1347,
        table=table(args, results),
        verdicts="\n".join(verdicts(results)),
        threads=args.threads,
        discussion=DISCUSSION,
        seeds=seeds_table(args, seeds),
        throughput=throughput_table(speed),
    )
    Path(args.results).write_text(body)
    print(f"wrote {HERE / 'degradation.png'} and {args.results}")


RESULTS_TEMPLATE = """# Degradation on digits: plain vs residual nets, depth 20 and 56

Made by `examples/degradation/run.py` (`--steps {steps} --batch-size {batch} --seed {seed}`):
the CIFAR nets of He et al. (2016), section 4.2, adapted to scikit-learn's 8x8x1 digits
(1347 training / 450 test images) with `--set input.channels=1 --set input.size=8`, trained
from the same seed with the `paper-cifar` recipe (SGD, momentum 0.9, weight decay 1e-4 on every
parameter, lr 0.1 divided by 10 at 50% and 75% of the run), shortened to {steps} iterations of
batch {batch} (about {epochs:.0f} epochs), no augmentation, on a 2-core CPU (PyTorch with
`--threads {threads}`).

![training (dashed) and test (solid) error](degradation.png)

{table}

- *train error, running*: mean mini-batch error (train mode) over the last 5% of the run, the
  quantity of the paper's Figure 6 (dashed curves; smoothed over 5 log points in the figure).
- *train error, eval mode*: the final model on the whole training set with BatchNorm's running
  statistics. *test error*: the final model on the 450 test images.
- images/s: training throughput measured during the run (after the first, compiling step), on a
  2-core CPU that other jobs were sharing at the time: a rough figure only.

## Throughput on this CPU

Digits ResNet-20 (the full 20-layer net), batch 128, 150 steps, fp32, measured by the same script
(`runs/degradation/throughput-*`) on the 2-core CPU, which other jobs were sharing at the time:
PyTorch loses badly from a second thread that has to compete for a busy core. Repeated
measurements on this shared machine varied by a factor of two or more (PyTorch with one thread
1.6k-4.1k images/s, Flax 1.0k-1.2k, PyTorch with two threads 0.06k-1.6k): read the table as
orders of magnitude.

{throughput}

## Does the degradation problem appear?

{verdicts}

{seeds}
{discussion}
"""

DISCUSSION = """\
In the committed run (400 iterations of 64, seed 0) the degradation problem shows clearly, in both
frameworks: the 56-layer plain net cannot fit a training set that the 20-layer plain net fits
almost perfectly, so its *training* error is far higher: this is an optimisation failure, not
overfitting (its test error is no worse than its training error). The residual connections
remove most of it: ResNet-56 trains to a low error where plain-56 stalls. What does *not*
show at this scale is the paper's other half, deeper ResNets reaching *lower* training error than
shallow ones: on 1347 tiny images a 20-layer net already fits the training set within a few
hundred iterations, and in this short budget ResNet-56 is still catching up (the paper trains
for 64k iterations on 50k images).

The two frameworks start from different random initialisations (same distributions, different
random streams), so their curves differ in detail; how far plain-56 gets in 400 iterations
depends on the initialisation (it ends at a different error in each framework), while the
ordering plain-56 >> plain-20 and ResNet-56 << plain-56 holds in both, and for each of three
torch seeds (the table above): plain-56 ends at 64-76% training error where plain-20 ends at
0-0.2%, ResNet-56 at 1.5-5.8% and ResNet-20 at 0%. With so few iterations the exact
percentages of the 56-layer nets are noisy; the gaps between them are not."""

if __name__ == "__main__":
    main()
