"""The runtime contract, in-process: batch assembly, state in and out, the two backends agreeing.

Small nets (digits ResNet-8: one block per stage) and small data keep this file fast.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from rescompile.harness.data import batch_rng, pad_crop_flip
from rescompile.harness.runtime import (
    Batch,
    RuntimeOptions,
    TrainData,
    augment_params,
    crop_flip,
    host_batch,
    make_runtime,
)
from tests.harness.common import DIGITS, ROOT, TINY


@pytest.fixture(scope="module", autouse=True)
def _environment(tmp_path_factory):
    """One torch thread (tiny convolutions only lose from a second, contended one) and a
    compilation cache for the XLA programs of this module."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    mp = pytest.MonkeyPatch()
    mp.setenv("RESCOMPILE_JAX_CACHE", str(tmp_path_factory.mktemp("jax-cache")))
    yield
    mp.undo()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny():
    from rescompile.compiler import compile_spec

    return compile_spec(DIGITS, TINY)[1]


def small_data(augment: bool, n: int = 64, seed: int = 0) -> TrainData:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, 8, 8, 1), dtype=np.uint8)
    y = rng.integers(0, 10, size=n)
    # a test split shaped like the training split: one compiled evaluation serves both
    return TrainData(
        x,
        y,
        x[::-1].copy(),
        y[::-1].copy(),
        np.array([0.5], np.float32),
        np.array([0.29], np.float32),
        augment=augment,
    )


def batch(step: int, data: TrainData, size: int = 16) -> Batch:
    order = np.random.default_rng(step).permutation(len(data.x_train))[:size]
    crop = augment_params(batch_rng(0, 0, step), size) if data.augment else ()
    return Batch(step, order, *crop)


def runtime(backend: str, graph, **options):
    from rescompile.backends import flax as fb
    from rescompile.backends import torch as tb

    source = (tb if backend == "torch" else fb).emit(graph)
    opts = RuntimeOptions(**{"seed": 0, "precision": "fp32", "compile": False, **options})
    return make_runtime(backend, graph, source, opts)


# -- backend-neutral pieces ----------------------------------------------------------------------


def test_augment_params_reproduce_pad_crop_flip():
    x = np.random.default_rng(1).integers(0, 256, size=(12, 8, 8, 3), dtype=np.uint8)
    expected = pad_crop_flip(x, np.random.default_rng(7))
    got = crop_flip(x, *augment_params(np.random.default_rng(7), len(x)))
    np.testing.assert_array_equal(got, expected)


def test_batch_shard_splits_every_field():
    b = Batch(3, np.arange(8), np.arange(8), np.arange(8) + 1, np.arange(8) % 2 == 0)
    halves = [b.shard(r, 2) for r in range(2)]
    np.testing.assert_array_equal(np.concatenate([h.index for h in halves]), b.index)
    assert all(h.step == 3 and len(h.top) == 4 for h in halves)
    with pytest.raises(ValueError, match="does not split"):
        b.shard(0, 3)


def test_host_batch_normalises_after_cropping():
    data = small_data(augment=True)
    b = batch(0, data)
    x, y = host_batch(data, b)
    raw = crop_flip(data.x_train[b.index], b.top, b.left, b.flip)
    np.testing.assert_allclose(x, (raw / 255.0 - 0.5) / 0.29, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(y, data.y_train[b.index])


def test_loop_and_runtime_import_no_framework():
    code = (
        "import sys\n"
        "import rescompile.harness.loop, rescompile.harness.runtime\n"
        "heavy = ('torch', 'jax', 'flax', 'matplotlib', 'sklearn')\n"
        "print(','.join(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == ""


# -- the torch runtime ---------------------------------------------------------------------------


def test_torch_device_side_batches_equal_host_batches(tiny):
    """The GPU data path (gather, crop, flip, normalise with torch ops) run on the CPU gives
    bitwise the batches, and so the training, of the numpy host path."""
    data = small_data(augment=True)
    runs = []
    for on_device in (False, True):
        rt = runtime("torch", tiny, data_on_device=on_device)
        rt.set_data(data)
        x, _ = rt._inputs(batch(0, data), "train")
        stats = rt.collect([rt.train_step(batch(s, data), 0.05) for s in range(3)])
        runs.append((x.numpy(), stats, rt.state_dict()))
    (x0, s0, t0), (x1, s1, t1) = runs
    np.testing.assert_array_equal(x0, x1)
    np.testing.assert_array_equal(s0[0], s1[0])
    assert all(np.array_equal(t0[k], t1[k]) for k in t0)


def test_torch_state_round_trip_continues_identically(tiny):
    data = small_data(augment=False)
    a = runtime("torch", tiny)
    a.set_data(data)
    for s in range(3):
        a.train_step(batch(s, data), 0.1)
    state = a.state_dict()
    assert any(k.startswith("optim/") and k.endswith(".momentum") for k in state)
    assert state["bn1.num_batches_tracked"].shape == ()
    b = runtime("torch", tiny, seed=123)  # different init: everything must come from `state`
    b.set_data(data)
    b.load_state_dict(state)
    la = a.collect([a.train_step(batch(s, data), 0.1) for s in range(3, 6)])
    lb = b.collect([b.train_step(batch(s, data), 0.1) for s in range(3, 6)])
    np.testing.assert_array_equal(la[0], lb[0])
    sa, sb = a.state_dict(), b.state_dict()
    assert all(np.array_equal(sa[k], sb[k]) for k in sa)


def test_torch_channels_last_and_bf16_on_cpu(tiny):
    data = small_data(augment=True)
    rt = runtime("torch", tiny, channels_last=True, precision="bf16")
    rt.set_data(data)
    loss, correct = rt.collect([rt.train_step(batch(s, data), 0.05) for s in range(2)])
    assert np.isfinite(loss).all() and rt.settings["precision"] == "bf16"
    assert rt.state_dict()["conv1.weight"].flags.c_contiguous  # logical NCHW on the way out
    assert rt.evaluate("test", 16)[2] == 64


def test_torch_compiled_evaluation_keeps_one_batch_shape(tiny):
    """With a compiled model the last, short batch is padded (no recompilation for its shape);
    the padding is not counted: same totals as the unpadded evaluation."""
    data = small_data(augment=False)
    rt = runtime("torch", tiny)
    rt.set_data(data)
    rt.train_step(batch(0, data), 0.05)
    plain = rt.evaluate("test", 24)  # 64 examples: batches of 24, 24 and 16
    shapes = []
    model = rt.eval_net
    rt.eval_net = lambda x: shapes.append(tuple(x.shape)) or model(x)
    rt.compiled = True  # what the padding depends on (inductor itself is too slow to run here)
    padded = rt.evaluate("test", 24)
    assert shapes == [(24, 1, 8, 8)] * 3
    assert padded[1:] == plain[1:] == (plain[1], 64)
    assert padded[0] == pytest.approx(plain[0], rel=1e-6)


def test_torch_rejects_checkpoint_of_another_net(tiny):
    from rescompile.compiler import compile_spec
    from rescompile.harness.checkpoint import CheckpointError

    other = compile_spec(DIGITS, ["stages.0.depth=1", "stages.1.depth=1", "stages.2.depth=2"])[1]
    state = runtime("torch", tiny).state_dict()
    with pytest.raises(CheckpointError, match=r"layer3\.1\.conv1\.weight .* is missing"):
        runtime("torch", other).load_state_dict(state)


# -- the two backends agree ----------------------------------------------------------------------


def test_checkpoint_state_crosses_backends(tiny):
    """Torch state (weights, statistics, momentum) loaded into flax evaluates the same, and one
    more SGD step from it lands on the same weights in both frameworks; and back."""
    data = small_data(augment=False)
    torch_rt = runtime("torch", tiny)
    torch_rt.set_data(data)
    for s in range(3):
        torch_rt.train_step(batch(s, data), 0.1)
    state = torch_rt.state_dict()

    flax_rt = runtime("flax", tiny)
    flax_rt.set_data(data)
    flax_rt.load_state_dict(state)
    for split in ("test", "train"):
        t_loss, t_correct, t_n = torch_rt.evaluate(split, 32)
        f_loss, f_correct, f_n = flax_rt.evaluate(split, 32)
        assert t_n == f_n == len(data.split(split)[1])
        assert abs(t_loss - f_loss) <= 1e-4 * abs(t_loss)
        assert t_correct == f_correct

    nxt = batch(3, data)
    t_loss = torch_rt.collect([torch_rt.train_step(nxt, 0.1)])[0][0]
    f_loss = flax_rt.collect([flax_rt.train_step(nxt, 0.1)])[0][0]
    assert abs(t_loss - f_loss) <= 1e-4 * abs(t_loss)
    ts, fs = torch_rt.state_dict(), flax_rt.state_dict()
    assert set(fs) == set(ts)
    for key in ts:
        if key.endswith("num_batches_tracked"):
            continue
        np.testing.assert_allclose(fs[key], ts[key], rtol=1e-3, atol=1e-5, err_msg=key)

    back = runtime("torch", tiny, seed=5)
    back.set_data(data)
    back.load_state_dict(fs)
    assert back.evaluate("test", 32)[1] == flax_rt.evaluate("test", 32)[1]
