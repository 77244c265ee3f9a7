"""Cross-backend equivalence: the PyTorch and flax models emitted from one IR compute one function.

Weights go from the emitted PyTorch model (torch state_dict, as numpy arrays) into the emitted flax
model through ``rescompile.backends.flax.torch_state_dict_to_nnx``; both run in float32 on the same
input (NCHW for PyTorch, NHWC for flax).

* eval mode, every spec in specs/ and every variant in spec_cases.VARIANTS: the logits agree to a
  relative error (max |difference| / max |logit|) below 1e-4;
* train mode, a set of specs covering every feature: logits, every BatchNorm's updated running
  mean and variance and every parameter's gradient agree;
* the portable checkpoint written by either backend loads into the other.

The test weights: PyTorch's own He initialisation for convolutions and fc; BatchNorm gamma drawn
from U(0.5, 1.5), beta from N(1, 0.2), and running statistics set from a calibration batch (one
training-mode pass with momentum 1). Beta around +1 keeps most ReLUs in their linear regime. With
zero-mean betas a deep *plain* net in eval mode is chaotic: for cifar-plain110, PyTorch's own
float32 and float64 logits then differ by 2e-1 (cifar-plain56: 7e-4), so no two float32
implementations could agree to 1e-4; with beta around +1 the same comparison gives 2e-5 (5e-7).
ImageNet-size specs run at 32x32 (their final maps are 1x1), which keeps the suite fast.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
jax = pytest.importorskip("jax")
pytest.importorskip("flax")

import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402
from spec_cases import (  # noqa: E402
    ROOT,
    SPECS,
    VARIANTS,
    compiled,
    executed,
    small,
    spec_id,
    variant_id,
    variant_path,
)

from rescompile.harness.checkpoint import CheckpointError, load_checkpoint, save_checkpoint  # noqa: E402

TOL = 1e-4
F64_TOL = 1e-8  # float64 in both frameworks: see the train-mode test

torch.set_num_threads(1)


@functools.cache
def torch_class(path: Path, overrides: tuple[str, ...] = ()):
    from rescompile.backends import torch as tb

    g = compiled(path, overrides)[1]
    return tb.load_module(tb.emit(g), g.class_name)


@functools.cache
def flax_class(path: Path, overrides: tuple[str, ...] = ()):
    from rescompile.backends import flax as fb

    g = compiled(path, overrides)[1]
    return fb.load_module(fb.emit(g), g.class_name)


def rel_err(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))


def numpy_state_dict(model) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def nhwc(x) -> jax.Array:
    return jnp.asarray(x.numpy().transpose(0, 2, 3, 1))


def randomise_batchnorm(model, gen, *, calibrate=None, stats=False):
    """Randomise BatchNorm affine parameters (and statistics) of a PyTorch model in place."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for bn in bns:
            bn.weight.uniform_(0.5, 1.5, generator=gen)
            bn.bias.normal_(1.0, 0.2, generator=gen)
            if stats:
                bn.running_mean.normal_(0.0, 0.5, generator=gen)
                bn.running_var.uniform_(0.5, 2.0, generator=gen)
        if calibrate is not None:
            saved = [bn.momentum for bn in bns]
            for bn in bns:
                bn.momentum = 1.0
            model.train()
            model(calibrate)
            for bn, m in zip(bns, saved, strict=True):
                bn.momentum = m
    return model


def flax_from_torch(path: Path, overrides: tuple[str, ...], state_dict):
    """The emitted flax model holding exactly ``state_dict``'s weights (built shape-only first)."""
    from rescompile.backends import flax as fb
    from rescompile.backends.flax.tools import abstract_model

    model = abstract_model(flax_class(path, overrides))
    return fb.torch_state_dict_to_nnx(model, state_dict)


def eval_pair(path: Path, overrides: tuple[str, ...]):
    g = compiled(path, overrides)[1]
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    tm = torch_class(path, overrides)()
    randomise_batchnorm(tm, gen, calibrate=torch.randn(4, *g.input_shape, generator=gen))
    fm = flax_from_torch(path, overrides, numpy_state_dict(tm))
    x = torch.randn(2, *g.input_shape, generator=gen)
    tm.eval()
    fm.eval()
    with torch.no_grad():
        want = tm(x).numpy()
    got = np.asarray(fm(nhwc(x)))
    return got, want


# ---------------------------------------------------------------------------------------------
# eval mode: every spec


@pytest.mark.parametrize("path", executed(SPECS), ids=spec_id)
def test_eval_logits_agree(path):
    got, want = eval_pair(path, small(path))
    assert got.shape == want.shape
    assert rel_err(got, want) < TOL


@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
def test_eval_logits_agree_on_variants(variant):
    got, want = eval_pair(variant_path(variant), variant[1])
    assert rel_err(got, want) < TOL


# ---------------------------------------------------------------------------------------------
# train mode: outputs, BatchNorm statistics, gradients


def _depths(*depths: int) -> tuple[str, ...]:
    """Overrides giving each stage that many blocks: every block design of a deep net, at a
    fraction of its cost (the full depth runs in the preact ResNet-50 case)."""
    return tuple(f"stages.{i}.depth={d}" for i, d in enumerate(depths))


TRAIN_CASES = [
    ("paper/cifar-resnet20", ()),  # cifar stem, basic blocks, option A
    ("paper/cifar-plain20", ()),  # no shortcuts
    ("variants/cifar-resnet56-C", _depths(2, 2, 2)),  # projections everywhere
    ("paper/cifar-resnet20", ("preact=true", "shortcut=B")),  # pre-activation, projection
    # imagenet stem, max pool, groups
    ("torchvision/resnext50_32x4d", ("input.size=32", *_depths(1, 2, 1, 1))),
    # deep stem, ceil-mode avg pool on 5x5, 3x3
    ("variants/resnet50-d", ("input.size=40", *_depths(2, 1, 1, 1))),
    ("torchvision/resnet50", ("input.size=32", "downsample=avgpool", "preact=true")),
    ("variants/digits-resnet20", ()),  # one input channel, 8x8
    ("paper/cifar-resnet20", ("stages.1.shortcut=B", "norm.eps=0.001", "norm.momentum=0.01")),
]


@pytest.mark.parametrize("case", TRAIN_CASES, ids=variant_id)
def test_train_mode_outputs_statistics_and_gradients_agree(case):
    """One training step's forward and backward in both frameworks.

    float32, as users train: the logits and every BatchNorm's updated running statistics agree to
    1e-4 (the forward pass is well-conditioned).

    Gradients are compared in float64 in both frameworks, where they agree to 1e-8. They are not
    compared in float32, because there no implementation is a yardstick for another: training-mode
    BatchNorm over few values per channel (these nets end in 1x1 maps at batch 4) makes the
    backward pass ill-conditioned, so a float32 gradient's error is the rounding of whichever
    kernels ran, amplified up to ~6e6 times. Measured for the preact ResNet-50 case against a
    float64 reference (``benchmarks/RESULTS.md``, "float32 gradients"): PyTorch's own float32
    ``conv1.weight`` gradient is 2.2e-4 off with oneDNN's AVX2 kernels, 1.5e-2 with its AVX-512
    ones, 6.5e-3 without oneDNN and 1.4e-2 in channels_last; the worst tensor ranges from 5.4e-4
    to 3.5e-1 across those runs, on one machine. flax's 1.58e-2 is the same on every processor
    tried. In float64 the unit roundoff 1.1e-16 times that amplification bounds the difference by
    ~7e-10; measured: 4.5e-13.
    """
    import copy

    import optax
    from rescompile.backends import flax as fb
    from rescompile.backends.flax.tools import linear_tracing

    path, overrides = variant_path(case), case[1]
    g = compiled(path, overrides)[1]
    gen = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    tm = randomise_batchnorm(torch_class(path, overrides)(), gen, stats=True)
    state = {k: v.copy() for k, v in numpy_state_dict(tm).items()}  # before the step updates it
    reference = copy.deepcopy(tm).double()
    x = torch.randn(4, *g.input_shape, generator=gen)
    labels = torch.randint(0, g.num_classes, (4,), generator=gen)

    def loss_fn(model, x, y):
        out = model(x)
        return optax.softmax_cross_entropy_with_integer_labels(out, y).mean(), out

    def flax_step(model, x):
        model.train()
        with linear_tracing():
            grads, out = nnx.jit(nnx.grad(loss_fn, has_aux=True))(
                model, x, jnp.asarray(labels.numpy())
            )
        graphdef, _, rest = nnx.split(model, nnx.Param, ...)
        return out, fb.nnx_to_torch_state_dict(nnx.merge(graphdef, grads, rest))

    def running_stats(state_dict):
        return {k: v for k, v in state_dict.items() if k.endswith(("running_mean", "running_var"))}

    # float32: logits and BatchNorm statistics
    tm.train()
    with torch.no_grad():
        logits = tm(x).numpy()
    fm = flax_from_torch(path, overrides, state)
    fm.train()
    with linear_tracing():  # the forward pass alone: training mode updates the statistics
        out = nnx.jit(lambda model, x: model(x))(fm, nhwc(x))
    assert rel_err(out, logits) < TOL
    got_stats = running_stats(fb.nnx_to_torch_state_dict(fm))
    for name, want in running_stats(numpy_state_dict(tm)).items():
        assert rel_err(got_stats[name], want) < TOL, name

    # float64: the same function, gradients included
    reference.train()
    want_logits = reference(x.double())
    torch.nn.functional.cross_entropy(want_logits, labels).backward()
    with jax.enable_x64(True):
        graphdef, variables = nnx.split(flax_from_torch(path, overrides, state))
        fm = nnx.merge(
            graphdef,
            jax.tree.map(
                lambda a: a.astype(jnp.float64) if a.dtype == jnp.float32 else a, variables
            ),
        )
        out, grads = flax_step(fm, nhwc(x.double()))
        assert out.dtype == jnp.float64
        assert rel_err(out, want_logits.detach().numpy()) < F64_TOL
        got_stats = running_stats(fb.nnx_to_torch_state_dict(fm))
        for name, want in running_stats(numpy_state_dict(reference)).items():
            assert rel_err(got_stats[name], want) < F64_TOL, name
        # A gradient that is zero in exact arithmetic (a BatchNorm shift whose every ReLU is open
        # feeds a convolution then a training-mode BatchNorm, which removes any constant) is
        # rounding noise in both frameworks: both must stay below the noise bound (the unit
        # roundoff times the amplification, ~7e-10 of the largest gradient) instead.
        scale = max(np.abs(p.grad.numpy()).max() for p in reference.parameters())
        for name, p in reference.named_parameters():
            want = p.grad.numpy()
            if np.abs(want).max() < 1e-9 * scale:
                assert np.abs(np.asarray(grads[name])).max() < 1e-9 * scale, name
            else:
                assert rel_err(grads[name], want) < F64_TOL, name


# ---------------------------------------------------------------------------------------------
# initialisation and the portable checkpoint


def test_initialisation_matches_torch_statistically():
    """He (fan_out) normal convolutions, torch.nn.Linear's uniform fc, unit BatchNorm."""
    from rescompile.backends import flax as fb

    path, overrides = ROOT / "specs/paper/cifar-resnet20.yaml", ("shortcut=B",)
    torch.manual_seed(0)
    want = numpy_state_dict(torch_class(path, overrides)())
    got = fb.nnx_to_torch_state_dict(flax_class(path, overrides)(rngs=nnx.Rngs(0)))
    assert set(got) == set(want)
    for name, w in want.items():
        assert got[name].shape == w.shape, name
        if name.endswith("num_batches_tracked"):
            continue
        if w.size >= 9000:  # enough samples for the spread to be within a few percent
            assert np.std(got[name]) == pytest.approx(np.std(w), rel=0.05), name
            assert np.abs(got[name]).max() <= 6 * np.std(w), name
        if name == "fc.bias":  # U(-1/sqrt(in), 1/sqrt(in)), as torch.nn.Linear
            bound = 1 / np.sqrt(want["fc.weight"].shape[1])
            assert np.abs(got[name]).max() <= bound and np.std(got[name]) > bound / 3
        elif w.ndim == 1:  # BatchNorm parameters and statistics are constants at init
            np.testing.assert_array_equal(got[name], w, err_msg=name)


def test_zero_init_residual_zeroes_the_same_batchnorms():
    from rescompile.backends import flax as fb

    path, overrides = (
        ROOT / "specs/paper/cifar-resnet20.yaml",
        ("block=bottleneck", "init.zero_init_residual=true"),
    )
    torch.manual_seed(0)
    want = numpy_state_dict(torch_class(path, overrides)())
    got = fb.nnx_to_torch_state_dict(flax_class(path, overrides)(rngs=nnx.Rngs(0)))
    zero = {k for k, v in want.items() if k.endswith(".weight") and v.ndim == 1 and not v.any()}
    assert zero == {
        k for k, v in got.items() if k.endswith(".weight") and v.ndim == 1 and not v.any()
    }
    assert zero == {f"layer{i}.{j}.bn3.weight" for i in (1, 2, 3) for j in range(3)}


def test_portable_checkpoint_crosses_backends(tmp_path):
    from rescompile.backends import flax as fb
    from rescompile.backends.flax.tools import abstract_model

    path, overrides = ROOT / "specs/variants/resnet50-d.yaml", ("input.size=40",)
    resolved, g = compiled(path, overrides)
    spec = resolved.spec.model_dump(mode="json")
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, *g.input_shape, generator=gen)

    # flax -> torch: save_portable, then the harness reader and a strict load_state_dict
    torch.manual_seed(3)
    weights = numpy_state_dict(randomise_batchnorm(torch_class(path, overrides)(), gen, stats=True))
    fm = flax_from_torch(path, overrides, weights)  # weights that no torch model holds any more
    fm.eval()
    want = np.asarray(fm(nhwc(x)))
    fb.save_portable(fm, tmp_path / "from_flax.safetensors", spec, g.spec_hash)
    tensors, meta = load_checkpoint(tmp_path / "from_flax.safetensors", spec_hash=g.spec_hash)
    assert meta["spec"] == spec and meta["spec_hash"] == g.spec_hash
    tm = torch_class(path, overrides)()
    tm.load_state_dict({k: torch.from_numpy(v) for k, v in tensors.items()}, strict=True)
    tm.eval()
    with torch.no_grad():
        assert rel_err(tm(x).numpy(), want) < TOL

    # torch -> flax: the harness writer, then load_portable
    torch.manual_seed(4)
    tm = randomise_batchnorm(torch_class(path, overrides)(), gen, stats=True).eval()
    save_checkpoint(
        tmp_path / "from_torch.safetensors", numpy_state_dict(tm), spec, g.spec_hash, {"step": 0}
    )
    fm = abstract_model(flax_class(path, overrides))
    meta = fb.load_portable(fm, tmp_path / "from_torch.safetensors", spec_hash=g.spec_hash)
    assert meta["spec_hash"] == g.spec_hash
    fm.eval()
    with torch.no_grad():
        want = tm(x).numpy()
    assert rel_err(np.asarray(fm(nhwc(x))), want) < TOL

    # a torch checkpoint of another spec names the first tensor that does not fit
    other = ROOT / "specs/torchvision/resnet50.yaml"
    r2, g2 = compiled(other, ("input.size=40",))
    torch.manual_seed(0)
    save_checkpoint(
        tmp_path / "resnet50.safetensors",
        numpy_state_dict(torch_class(other, ("input.size=40",))()),
        r2.spec.model_dump(mode="json"),
        g2.spec_hash,
        {"step": 0},
    )
    with pytest.raises(CheckpointError, match=r"conv1\.0\.weight"):
        fb.load_portable(fm, tmp_path / "resnet50.safetensors")
