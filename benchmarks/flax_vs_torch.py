"""Training-step speed: the emitted flax.nnx model (jitted) against the emitted PyTorch model.

For each model both backends run the same step on the same batch: forward, cross-entropy,
backward and an SGD update with momentum 0.9, in training mode (BatchNorm on batch statistics).
Flax's step is one ``jax.jit``-compiled function (the nnx graph split once, state donated);
PyTorch's is eager, optionally ``torch.compile``-d. Compilation is timed separately from the
steady-state steps; the two backends' steps are timed in alternating rounds so that a change in
machine load hits both alike; the median step time of each is reported, with the ratio.

    python benchmarks/flax_vs_torch.py                                # CPU, float32, small
    python benchmarks/flax_vs_torch.py --device gpu --batch 256       # GPU, bfloat16

On the GPU both run in bfloat16 mixed precision: flax modules compute in bfloat16 with float32
parameters (``dtype`` set on every Conv, BatchNorm and Linear); PyTorch uses autocast and
channels-last memory. BatchNorm statistics stay float32 in both.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = {
    "resnet50": ROOT / "specs/torchvision/resnet50.yaml",
    "cifar-resnet56": ROOT / "specs/paper/cifar-resnet56.yaml",
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    p.add_argument(
        "--models", default=",".join(MODELS), help="comma-separated: " + ", ".join(MODELS)
    )
    p.add_argument("--batch", type=int, default=None, help="default: 8 on cpu, 256 on gpu")
    p.add_argument(
        "--steps", type=int, default=None, help="timed steps per backend (default 10/50)"
    )
    p.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 2/5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation")
    p.add_argument("--imagenet-size", type=int, default=224, help="input size of ImageNet specs")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all)")
    p.add_argument("--torch-compile", action="store_true", help="also time torch.compile")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# flax


def flax_runner(graph, batch, device, x_np, y_np):
    """(compile seconds, step function running one training step, blocking until it is done)."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx
    from rescompile.backends.flax import emit, load_module
    from rescompile.backends.flax.tools import linear_tracing

    dev = jax.devices("gpu" if device == "gpu" else "cpu")[0]
    Model = load_module(emit(graph), graph.class_name)
    with jax.default_device(dev):
        model = Model(rngs=nnx.Rngs(0))
        if device == "gpu":
            model.set_attributes(dtype=jnp.bfloat16, raise_if_not_found=False)
        model.train()
        optimizer = nnx.Optimizer(model, optax.sgd(0.1, momentum=0.9), wrt=nnx.Param)
        graphdef, state = nnx.split((model, optimizer))
        x = jax.device_put(jnp.asarray(x_np.transpose(0, 2, 3, 1)), dev)
        y = jax.device_put(jnp.asarray(y_np), dev)
        if device == "gpu":
            x = x.astype(jnp.bfloat16)

    def train_step(state, x, y):
        model, optimizer = nnx.merge(graphdef, state)

        def loss_fn(model):
            logits = model(x).astype(jnp.float32)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return nnx.state((model, optimizer)), loss

    t0 = time.perf_counter()
    with linear_tracing():
        compiled = jax.jit(train_step, donate_argnums=0).lower(state, x, y).compile()
    compile_s = time.perf_counter() - t0
    box = {"state": state}

    def step():
        box["state"], loss = compiled(box["state"], x, y)
        loss.block_until_ready()
        return float(loss)

    return compile_s, step


# ---------------------------------------------------------------------------------------------
# torch


def torch_runner(graph, batch, device, x_np, y_np, compile_model=False):
    import torch
    from rescompile.backends.torch import emit, load_module

    dev = torch.device("cuda" if device == "gpu" else "cpu")
    Model = load_module(emit(graph), graph.class_name)
    torch.manual_seed(0)
    model = Model().to(dev).train()
    x = torch.from_numpy(x_np).to(dev)
    y = torch.from_numpy(y_np).long().to(dev)
    if device == "gpu":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    forward = torch.compile(model) if compile_model else model

    def sync():
        if device == "gpu":
            torch.cuda.synchronize()

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "gpu"):
            logits = forward(x)
        loss = torch.nn.functional.cross_entropy(logits.float(), y)
        loss.backward()
        optimizer.step()
        sync()
        return loss.detach().item()

    t0 = time.perf_counter()
    step()  # the first step: allocations, cuDNN/oneDNN autotuning, torch.compile's compilation
    first_s = time.perf_counter() - t0
    return first_s, step


# ---------------------------------------------------------------------------------------------


def timed(step, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        step()
        out.append(time.perf_counter() - t0)
    return out


def bench(name: str, args) -> dict:
    import numpy as np

    from rescompile import compile_spec

    path = MODELS[name]
    overrides = []
    _, g = compile_spec(path)
    if g.input_shape[1] > 64:  # ImageNet-size spec
        overrides = [f"input.size={args.imagenet_size}"]
        _, g = compile_spec(path, overrides)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, *g.input_shape)).astype(np.float32)
    y = rng.integers(0, g.num_classes, args.batch).astype(np.int32)

    flax_compile, flax_step = flax_runner(g, args.batch, args.device, x, y)
    torch_first, torch_step = torch_runner(g, args.batch, args.device, x, y)
    runners = {"flax": flax_step, "torch": torch_step}
    if args.torch_compile:
        first, runners["torch.compile"] = torch_runner(g, args.batch, args.device, x, y, True)
    for step in runners.values():
        timed(step, args.warmup)
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(args.rounds):
        for k, step in runners.items():
            times[k] += timed(step, args.steps)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "model": name,
        "spec": str(path.relative_to(ROOT)),
        "overrides": overrides,
        "input": list(g.input_shape),
        "batch": args.batch,
        "macs_per_image": g.totals["macs"],
        "flax_compile_s": round(flax_compile, 2),
        "torch_first_step_s": round(torch_first, 2),
        "step_ms": {k: round(1e3 * v, 2) for k, v in med.items()},
        "step_ms_min": {k: round(1e3 * min(v), 2) for k, v in times.items()},
        "images_per_s": {k: round(args.batch / v, 1) for k, v in med.items()},
        "flax_over_torch": round(med["flax"] / med["torch"], 3),
    }
    if args.torch_compile:
        result["torch_compile_first_step_s"] = round(first, 2)
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    gpu = args.device == "gpu"
    args.batch = args.batch or (256 if gpu else 8)
    args.steps = args.steps or (50 if gpu else 10)
    args.rounds = args.rounds or (5 if gpu else 2)
    if not gpu:
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    info = {
        "device": args.device,
        "jax": jax.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "precision": "bfloat16 mixed" if gpu else "float32",
        "gpu": torch.cuda.get_device_name() if gpu and torch.cuda.is_available() else None,
    }
    print(json.dumps(info))
    header = (
        f"{'model':16} {'batch':>5} {'flax ms':>9} {'torch ms':>9} {'flax/torch':>10} "
        f"{'flax compile s':>14} {'torch 1st step s':>16}"
    )
    print(header)
    results = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        if name not in MODELS:
            print(f"unknown model {name!r}; available: {', '.join(MODELS)}", file=sys.stderr)
            return 2
        r = bench(name, args)
        results.append(r)
        print(
            f"{name:16} {r['batch']:>5} {r['step_ms']['flax']:>9.1f} {r['step_ms']['torch']:>9.1f} "
            f"{r['flax_over_torch']:>10.3f} {r['flax_compile_s']:>14.1f} "
            f"{r['torch_first_step_s']:>16.2f}",
            flush=True,
        )
        if args.torch_compile:
            print(f"{'':16} torch.compile: {r['step_ms']['torch.compile']:.1f} ms/step")
    if args.json:
        args.json.write_text(json.dumps({"info": info, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
