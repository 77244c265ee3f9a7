"""`rescompile train` and `rescompile plot` as a user runs them: separate processes, run
directories, exit codes, SIGKILL and resume, divergence, and data parallelism on two CPU
processes (torchrun, gloo) and two XLA host devices (jax.sharding).

Small nets (digits ResNet-8: one block per stage), small batches and few steps keep it fast.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rescompile.errors import UserError
from rescompile.harness.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from rescompile.harness.metrics import read_metrics
from tests.harness.common import (
    DIGITS,
    ROOT,
    SMALL,
    THIRTY_STEPS,
    TINY,
    assert_same_early_losses,
    cli,
    early_loss_gaps,
    free_port,
    max_rel_diff,
    start,
    torchrun,
)


def records(
    run: Path, keys=("kind", "step", "loss", "train_error", "lr", "test_error", "test_loss")
) -> list[tuple]:
    return [tuple(r.get(k) for k in keys) for r in read_metrics(run)]


# -- a run and its directory ---------------------------------------------------------------------


def test_train_writes_a_complete_run_directory_and_plot_overlays_runs(tmp_path, env):
    run = tmp_path / "run"
    p = cli("train", *THIRTY_STEPS, "--out", str(run), env=env)
    assert p.returncode == 0, p.stderr
    for name in (
        "config.json",
        "spec.json",
        "model.py",
        "metrics.jsonl",
        "summary.json",
        "curves.png",
        "latest",
        "ckpt-000030.safetensors",
        "ckpt-000030.json",
    ):
        assert (run / name).is_file(), name
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    config = json.loads((run / "config.json").read_text())
    assert config["config"]["backend"] == "torch" and config["config"]["overrides"]
    assert config["spec"] == json.loads((run / "spec.json").read_text())
    assert config["plan"]["total_steps"] == 30 and config["plan"]["milestones"] == [15, 22]
    assert config["plan"]["recipe"]["weight_decay"] == 1e-4
    assert "every parameter" in config["weight_decay_note"]
    assert config["layers"] == 8 and config["settings"]["precision"] == "fp32"

    recs = read_metrics(run)
    train_steps = [r["step"] for r in recs if r["kind"] == "train"]
    assert train_steps == list(range(1, 31))  # 30 steps < 200: every step is logged
    assert [r["step"] for r in recs if r["kind"] == "eval"] == [10, 20, 30]
    assert all(0 <= r["train_error"] <= 1 and r["lr"] > 0 for r in recs if r["kind"] == "train")

    s = json.loads((run / "summary.json").read_text())
    assert s["status"] == "completed" and s["steps"] == 30 and s["backend"] == "torch"
    for key in (
        "final_train_error",
        "final_train_error_running",
        "final_test_error",
        "best_test_error",
    ):
        assert 0 <= s[key] <= 1, key
    assert s["final_test_error"] < 0.5  # it learned something
    assert s["images_per_s"] > 0 and s["wall_time_s"] > 0 and s["device"].startswith("cpu")
    assert [c.name for c in list_checkpoints(run)] == [
        "ckpt-000010.safetensors",
        "ckpt-000020.safetensors",
        "ckpt-000030.safetensors",
    ]

    fig = tmp_path / "fig.png"
    p = cli("plot", str(run), str(run), "-o", str(fig), "--label", "a", "--label", "b", env=env)
    assert p.returncode == 0, p.stderr
    assert fig.read_bytes()[:4] == b"\x89PNG"
    p = cli("plot", str(tmp_path), "-o", str(fig), env=env)
    assert p.returncode == 1 and "is not a run directory" in p.stderr


def test_bad_data_path_is_a_clear_error(tmp_path, env):
    p = cli(
        "train",
        DIGITS,
        "--data",
        f"cifar10:{tmp_path / 'nowhere'}",
        "--steps",
        "1",
        "--out",
        str(tmp_path / "r"),
        env=env,
    )
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert "does not exist" in p.stderr and "cifar-10-batches-py" in p.stderr
    assert "never downloads" in p.stderr


def test_spec_that_does_not_fit_the_data_is_a_clear_error(tmp_path, env):
    spec = str(ROOT / "specs" / "paper" / "cifar-resnet20.yaml")
    p = cli(
        "train", spec, "--data", "digits", "--steps", "1", "--out", str(tmp_path / "r"), env=env
    )
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert "digits images are 8x8x1" in p.stderr and "32x32x3" in p.stderr
    assert "--set input.channels=1 --set input.size=8" in p.stderr


def test_option_errors_need_no_training(tmp_path):
    from rescompile.cli import train as train_command
    from rescompile.harness.loop import TrainConfig, train

    # --steps extends a resumed run (tests/harness/test_extend.py); --lr is the run's own
    with pytest.raises(UserError, match=r"drop --lr \(see"):
        train_command(resume=str(tmp_path), lr=0.1, steps=3)
    with pytest.raises(UserError, match=r"drop SPEC, --set, --compile \(see"):
        train_command(DIGITS, ["depth=8"], resume=str(tmp_path), compile_=False)
    with pytest.raises(UserError, match="is not a run directory"):
        train_command(resume=str(tmp_path))
    with pytest.raises(UserError, match="give the data"):
        train_command(DIGITS)
    with pytest.raises(UserError, match="unknown recipe 'paper'"):
        train_command(DIGITS, data="digits", recipe="paper")
    with pytest.raises(UserError, match="--keep must be positive"):
        train(TrainConfig(spec=DIGITS, keep=0, out=str(tmp_path / "k")))
    assert not (tmp_path / "k").exists()
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UserError, match="already holds a run; continue it with --resume"):
        train(TrainConfig(spec=DIGITS, out=str(tmp_path)))


# -- reliability ---------------------------------------------------------------------------------


# Both tests below compare against the same uninterrupted runs (one per backend, started once).
RELIABILITY = [
    "train",
    *SMALL,
    "--steps",
    "160",
    "--ckpt-every",
    "10",
    "--eval-every",
    "40",
    "--keep",
    "2",
]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, env):
    """``get(backend) -> (run directory, process)``: the uninterrupted reference run of
    RELIABILITY, started on first use and shared by the tests of this module."""
    runs: dict[str, tuple[Path, subprocess.Popen]] = {}

    def get(backend: str) -> tuple[Path, subprocess.Popen]:
        if backend not in runs:
            run = tmp_path_factory.mktemp(f"uninterrupted-{backend}") / "run"
            runs[backend] = (
                run,
                start(*RELIABILITY, "--backend", backend, "--out", str(run), env=env, sigint=True),
            )
        return runs[backend]

    yield get
    for _, proc in runs.values():
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


@pytest.mark.parametrize("backend", ["torch", "flax"])
def test_sigkill_then_resume_ends_bitwise_like_an_uninterrupted_run(
    tmp_path, env, uninterrupted, backend
):
    args = [*RELIABILITY, "--backend", backend]
    victim = tmp_path / "victim"
    ref, reference = uninterrupted(backend)
    killed = start(*args, "--out", str(victim), env=env, sigint=True)
    deadline = time.monotonic() + 600  # a hang check
    while (
        latest_checkpoint(victim) is None
        or latest_checkpoint(victim).name < "ckpt-000030.safetensors"
    ):
        assert killed.poll() is None, killed.communicate()[1]
        assert time.monotonic() < deadline
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    killed.communicate()
    assert killed.returncode == -signal.SIGKILL
    assert not (victim / "summary.json").exists()  # it really died mid-run

    p = cli("train", "--resume", str(victim), "--quiet", env=env, timeout=600)
    assert p.returncode == 0, p.stderr
    assert reference.wait(timeout=600) == 0, reference.communicate()[1]

    a, meta_a = load_checkpoint(ref)
    b, meta_b = load_checkpoint(victim)
    assert meta_a["state"]["step"] == meta_b["state"]["step"] == 160
    assert sorted(a) == sorted(b)
    assert any(k.startswith("optim/") for k in a)
    different = [k for k in a if not np.array_equal(a[k], b[k])]
    assert different == []
    # the log reads as one uninterrupted run: same records, no step twice
    assert records(victim) == records(ref)
    summary = json.loads((victim / "summary.json").read_text())
    assert (
        summary["final_test_error"]
        == json.loads((ref / "summary.json").read_text())["final_test_error"]
    )


def _trained_steps(run: Path) -> int:
    """The last step with a training record (0 while there is none)."""
    try:
        return max((r["step"] for r in read_metrics(run) if r["kind"] == "train"), default=0)
    except (OSError, ValueError):
        return 0


def _sigint_then_resume(tmp_path: Path, env, uninterrupted, backend: str, seed: int, n: int):
    """Ctrl-C the run ``n`` times at random moments (a random step of the first half, then a
    random delay of up to a few steps: inside a step, an evaluation or a checkpoint), resuming
    after each; the final checkpoint and the log must equal those of a run never interrupted."""
    rng = np.random.default_rng(seed)
    moments = sorted(rng.choice(np.arange(2, 80), size=n, replace=False).tolist())
    victim = tmp_path / "victim"
    ref, reference = uninterrupted(backend)
    proc = start(*RELIABILITY, "--backend", backend, "--out", str(victim), env=env, sigint=True)
    deadline = time.monotonic() + 600  # a hang check
    done = 0  # steps trained when the last Ctrl-C landed: the resumed process goes past them
    for at in moments:
        while _trained_steps(victim) < max(at, done + 1):
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline
            time.sleep(0.002)
        time.sleep(rng.uniform(0, 0.05))
        proc.send_signal(signal.SIGINT)
        err = proc.communicate(timeout=600)[1]
        assert proc.returncode == 130, err  # interrupted, not finished
        assert "Traceback" not in err
        assert not (victim / "summary.json").exists()
        done = _trained_steps(victim)
        proc = start("train", "--resume", str(victim), "--quiet", env=env, sigint=True)
    assert proc.wait(timeout=600) == 0, proc.communicate()[1]
    assert reference.wait(timeout=600) == 0, reference.communicate()[1]

    a, meta_a = load_checkpoint(ref)
    b, meta_b = load_checkpoint(victim)
    assert meta_a["state"]["step"] == meta_b["state"]["step"] == 160
    assert sorted(a) == sorted(b)
    assert any(k.endswith("running_mean") for k in a)
    different = [k for k in a if not np.array_equal(a[k], b[k])]
    assert different == [], f"Ctrl-C at steps {moments}"
    assert records(victim) == records(ref)


@pytest.mark.parametrize("backend", ["torch", "flax"])
def test_sigint_then_resume_ends_bitwise_like_an_uninterrupted_run(
    tmp_path, env, uninterrupted, backend
):
    _sigint_then_resume(tmp_path, env, uninterrupted, backend, seed=0, n=1)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(1, 5))
@pytest.mark.parametrize("backend", ["torch", "flax"])
def test_sigint_at_many_moments_then_resume_is_bitwise_uninterrupted(
    tmp_path, env, uninterrupted, backend, seed
):
    _sigint_then_resume(tmp_path, env, uninterrupted, backend, seed=seed, n=4)


def test_a_diverging_run_stops_and_keeps_its_last_good_checkpoint(tmp_path, env):
    run = tmp_path / "run"
    # the paper's warm-up (lr 0.01 for the first 6 of 1000 steps) then an absurd lr 1e6
    p = cli(
        "train",
        *SMALL,
        "--steps",
        "1000",
        "--warmup",
        "--lr",
        "1e6",
        "--ckpt-every",
        "2",
        "--eval-every",
        "1000",
        "--out",
        str(run),
        env=env,
    )
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert "became nan" in p.stderr or "became inf" in p.stderr
    assert "the last good checkpoint is" in p.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["step"] <= 20
    good = latest_checkpoint(run)
    assert good is not None and str(good) == summary["last_checkpoint"]
    tensors, meta = load_checkpoint(good)
    assert meta["state"]["step"] < summary["step"]
    assert all(np.isfinite(v).all() for v in tensors.values())
    assert not any(r["step"] > summary["step"] for r in read_metrics(run))
    # strict JSON: the non-finite value is the string "NaN" / "Infinity", never bare
    assert summary["value"] in ("NaN", "Infinity", "-Infinity")
    strict = json.JSONDecoder(parse_constant=lambda c: pytest.fail(f"bare {c} in JSON"))
    for line in (run / "metrics.jsonl").read_text().splitlines():
        strict.decode(line)
    assert not math.isfinite(read_metrics(run)[-1]["loss"])


# -- data parallel -------------------------------------------------------------------------------


DDP = ["train", *SMALL, "--steps", "20", "--eval-every", "10", "--ckpt-every", "10"]


def test_torchrun_two_cpu_processes_on_gloo(tmp_path, env):
    """Two processes, BatchNorm synchronised (the default): the run is the single-process run
    of the same global batch, up to float32 summation order; with --no-sync-bn (statistics of
    each rank's half batch) it is not."""
    run, single = tmp_path / "ddp", tmp_path / "single"
    alone = subprocess.Popen(
        [sys.executable, "-m", "rescompile", *DDP, "--out", str(single)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    cmd = torchrun(*DDP, "--out", str(run))
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    s = json.loads((run / "summary.json").read_text())
    assert s["world_size"] == 2 and s["settings"]["process_group"] == "gloo"
    assert s["settings"]["sync_bn"] is True
    assert s["status"] == "completed" and 0 <= s["final_test_error"] < 0.9
    assert [r["step"] for r in read_metrics(run) if r["kind"] == "eval"] == [10, 20]
    assert (run / "curves.png").is_file()
    tensors, meta = load_checkpoint(run)
    assert meta["state"]["world_size"] == 2 and meta["state"]["step"] == 20
    assert sorted(q.name for q in tmp_path.iterdir()) == ["ddp", "single"]  # rank 1 wrote nothing
    assert alone.wait(timeout=600) == 0, alone.communicate()[1]
    # float32 sums in another order: the first losses agree (early_loss_gaps in common.py says
    # why the weights after 20 steps need not, on every machine); per-rank statistics: below
    assert_same_early_losses(run, single)

    # the same job over two "nodes": two torchrun launches of one process each, the commands two
    # machines would run (README); rank 1 on the second node trains its half of every batch
    nodes_run, port = tmp_path / "two-nodes", free_port()
    launches = [
        subprocess.Popen(
            torchrun(*DDP, "--out", str(nodes_run), node=(rank, port)),
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    for launch in launches:
        assert launch.wait(timeout=600) == 0, launch.communicate()[1][-3000:]
    s = json.loads((nodes_run / "summary.json").read_text())
    assert s["world_size"] == 2 and s["status"] == "completed"
    # the same two ranks and the same gloo sums as the one-node job: the same run
    assert max_rel_diff(load_checkpoint(nodes_run)[0], tensors) <= 1e-6

    unsynced_run = tmp_path / "ddp-no-sync"
    cmd = torchrun(*DDP, "--no-sync-bn", "--out", str(unsynced_run))
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    s = json.loads((unsynced_run / "summary.json").read_text())
    assert s["settings"]["sync_bn"] is False
    # statistics of half a batch change the network's function from step 1 on
    assert early_loss_gaps(unsynced_run, single, 1)[0] > 30 * 1e-6


def test_flax_data_parallel_over_two_host_devices(tmp_path, env):
    run = tmp_path / "sharded"
    e = {**env, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    p = cli(
        "train",
        *SMALL,
        "--backend",
        "flax",
        "--steps",
        "20",
        "--eval-every",
        "10",
        "--ckpt-every",
        "10",
        "--out",
        str(run),
        env=e,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr
    s = json.loads((run / "summary.json").read_text())
    assert s["settings"]["devices"] == 2 and s["device"].startswith("cpu x2")
    assert s["status"] == "completed" and 0 <= s["final_test_error"] < 0.9
    assert load_checkpoint(run)[1]["state"]["step"] == 20

    # the state is replicated over both devices and a batch is split between them
    code = (
        "import numpy as np, jax\n"
        "from rescompile.compiler import compile_spec\n"
        "from rescompile.backends import flax as fb\n"
        "from rescompile.harness.runtime import Batch, RuntimeOptions, TrainData, make_runtime\n"
        f"g = compile_spec({DIGITS!r}, {TINY!r})[1]\n"
        "rt = make_runtime('flax', g, fb.emit(g), RuntimeOptions())\n"
        "x = np.zeros((8, 8, 8, 1), np.float32); y = np.zeros(8, np.int64)\n"
        "rt.set_data(TrainData(x, y, x, y, np.zeros(1, np.float32), np.ones(1, np.float32)))\n"
        "leaf = jax.tree.leaves(rt.params)[0]\n"
        "idx = rt._batch_args(Batch(0, np.arange(8)), 'train')[1]\n"
        "rt.collect([rt.train_step(Batch(0, np.arange(8)), 0.1)])\n"
        "print(len(leaf.sharding.device_set), leaf.sharding.is_fully_replicated,\n"
        "      [s.data.shape[0] for s in idx.addressable_shards])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=e, timeout=600
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[0] == "2 True [4, 4]"


# -- the plan a run gets -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "layers", "warmup"),
    [
        ("paper/resnet50.yaml", 50, 0),  # projection shortcuts are not layers
        ("paper/cifar-resnet56.yaml", 56, 0),
        ("paper/cifar-resnet110.yaml", 110, 400),  # the paper warms up ResNet-110 at lr 0.01
    ],
)
def test_paper_layer_count_decides_the_warm_up(spec, layers, warmup):
    from rescompile.compiler import compile_spec
    from rescompile.harness.config import TrainConfig, make_plan, weighted_layers
    from rescompile.harness.data import synthetic

    graph = compile_spec(ROOT / "specs" / spec)[1]
    assert weighted_layers(graph) == layers
    data = synthetic((32, 32, 3), n_train=128 * 390, n_test=10)
    p = make_plan(TrainConfig(spec=spec, recipe="paper-cifar"), graph, data, world_size=1)
    assert p.plan.total_steps == 64_000 and p.plan.milestones == (32_000, 48_000)
    assert p.plan.warmup_steps == warmup and p.batch_size == 128
    assert p.plan.lr(0) == (0.01 if warmup else 0.1) and p.plan.lr(48_000) == pytest.approx(1e-3)
    assert p.augment  # synthetic images take the CIFAR augmentation
    assert (p.eval_every, p.ckpt_every, p.log_every) == (1280, 1280, 320)


@pytest.mark.slow
def test_torch_compile_channels_last_bf16_on_cpu(tmp_path, env):
    """The GPU defaults (torch.compile, channels_last, bf16 autocast) on the CPU: slow (inductor
    compiles C++), so not in the default run."""
    run = tmp_path / "compiled"
    p = cli(
        "train",
        *SMALL,
        "--steps",
        "10",
        "--compile",
        "--channels-last",
        "--precision",
        "bf16",
        "--out",
        str(run),
        env=env,
        timeout=900,
    )
    assert p.returncode == 0, p.stderr
    s = json.loads((run / "summary.json").read_text())
    assert s["settings"]["compile"] and s["settings"]["channels_last"]
    assert s["settings"]["precision"] == "bf16" and s["final_test_error"] < 0.9
