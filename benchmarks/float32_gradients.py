"""How far float32 gradients are from float64 ones, for one ill-conditioned training step.

    python benchmarks/float32_gradients.py            # about a minute on 2 cores

The case is the cross-backend test's hardest: torchvision's ResNet-50 at 32x32 with avg-pool
downsampling and pre-activation units (tests/backends/test_cross_backend.py), batch 4, training
mode, random BatchNorm statistics. Its last stage has 1x1 maps, so training-mode BatchNorm
normalises 4 values per channel and its backward pass amplifies rounding by up to ~6e6.

It prints, for one float64 PyTorch reference, the relative error (max |difference| / max |value|,
per tensor) of `conv1.weight`'s gradient and the worst and median tensor, for:
* PyTorch float32 under several equally valid kernel choices on this machine (oneDNN on or off,
  channels_last, and oneDNN limited to AVX2 in a subprocess: ONEDNN_MAX_CPU_ISA);
* the emitted flax model in float32 and in float64 (jax_enable_x64).
A check that compares one float32 implementation's error with another's measures which kernels
ran, not the emitted code; the float64 row is what the test asserts.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "backends"))
CASE = ("torchvision/resnet50", ("input.size=32", "downsample=avgpool", "preact=true"))


def rel_err(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))


def setup():
    import test_cross_backend as t
    import torch

    path, overrides = t.variant_path(CASE), CASE[1]
    g = t.compiled(path, overrides)[1]
    gen = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    tm = t.randomise_batchnorm(t.torch_class(path, overrides)(), gen, stats=True)
    state = {k: v.clone() for k, v in tm.state_dict().items()}
    x = torch.randn(4, *g.input_shape, generator=gen)
    labels = torch.randint(0, g.num_classes, (4,), generator=gen)
    return t, path, overrides, tm, state, x, labels


def torch_grads(tm, state, x, labels, *, dtype, channels_last=False, mkldnn=True):
    import torch

    torch.backends.mkldnn.enabled = mkldnn
    model = copy.deepcopy(tm).to(dtype)
    model.load_state_dict(state)
    xx = x.to(dtype)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        xx = xx.contiguous(memory_format=torch.channels_last)
    model.train()
    torch.nn.functional.cross_entropy(model(xx), labels).backward()
    torch.backends.mkldnn.enabled = True
    return {n: p.grad.double().numpy() for n, p in model.named_parameters()}


def flax_grads(t, path, overrides, state, x, labels, *, x64: bool):
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx
    from rescompile.backends import flax as fb
    from rescompile.backends.flax.runtime import linear_tracing

    def loss_fn(model, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

    numpy_state = {k: v.numpy() for k, v in state.items()}
    with jax.enable_x64(x64):
        graphdef, variables = nnx.split(t.flax_from_torch(path, overrides, numpy_state))
        dtype = jnp.float64 if x64 else jnp.float32
        cast = lambda a: a.astype(dtype) if a.dtype == jnp.float32 else a  # noqa: E731
        model = nnx.merge(graphdef, jax.tree.map(cast, variables))
        model.train()
        with linear_tracing():
            grads = nnx.jit(nnx.grad(loss_fn))(
                model,
                jnp.asarray(x.double().numpy().transpose(0, 2, 3, 1), dtype),
                jnp.asarray(labels.numpy()),
            )
        graphdef, _, rest = nnx.split(model, nnx.Param, ...)
        out = fb.nnx_to_torch_state_dict(nnx.merge(graphdef, grads, rest))
        return {k: np.asarray(v, np.float64) for k, v in out.items()}


def summary(grads, reference) -> dict[str, float]:
    errs = [rel_err(grads[n], reference[n]) for n in reference]
    return {"conv1.weight": rel_err(grads["conv1.weight"], reference["conv1.weight"]),
            "worst": max(errs), "median": float(np.median(errs))}  # fmt: skip


def main() -> None:
    import torch

    torch.set_num_threads(1)
    t, path, overrides, tm, state, x, labels = setup()
    reference = torch_grads(tm, state, x, labels, dtype=torch.float64)
    if os.environ.get("ONEDNN_MAX_CPU_ISA"):  # the subprocess below: one row
        row = summary(torch_grads(tm, state, x, labels, dtype=torch.float32), reference)
        print(json.dumps(row))
        return
    rows = {
        "torch float32": torch_grads(tm, state, x, labels, dtype=torch.float32),
        "torch float32, no oneDNN": torch_grads(
            tm, state, x, labels, dtype=torch.float32, mkldnn=False
        ),  # fmt: skip
        "torch float32, channels_last": torch_grads(
            tm, state, x, labels, dtype=torch.float32, channels_last=True
        ),  # fmt: skip
    }
    table = {name: summary(g, reference) for name, g in rows.items()}
    avx2 = subprocess.run([sys.executable, __file__], capture_output=True, text=True,
                          env={**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}, check=True)  # fmt: skip
    table["torch float32, oneDNN AVX2"] = json.loads(avx2.stdout.strip().splitlines()[-1])
    table["flax float32"] = summary(flax_grads(t, path, overrides, state, x, labels, x64=False),
                                    reference)  # fmt: skip
    table["flax float64"] = summary(flax_grads(t, path, overrides, state, x, labels, x64=True),
                                    reference)  # fmt: skip
    print(f"{'gradient vs float64 PyTorch':34s} {'conv1.weight':>12s} {'worst':>9s} {'median':>9s}")
    for name, row in table.items():
        print(f"{name:34s} {row['conv1.weight']:12.2e} {row['worst']:9.2e} {row['median']:9.2e}")


if __name__ == "__main__":
    main()
