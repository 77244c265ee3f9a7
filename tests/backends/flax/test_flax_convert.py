"""Weight conversion nnx <-> PyTorch state_dict layout, and the portable checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flax_cases import ROOT, abstract, compiled, model_class

jax = pytest.importorskip("jax")
nnx = pytest.importorskip("flax.nnx")

from rescompile.backends import flax as fb  # noqa: E402

from rescompile.emission.state import state_dict_layout as expected_state_dict  # noqa: E402
from rescompile.harness.checkpoint import CheckpointError  # noqa: E402

DEEP = ROOT / "specs/variants/resnet50-d.yaml", ("input.size=40",)  # deep stem, avg-pool, B
SMALL = ROOT / "specs/paper/cifar-resnet20.yaml", ()


def random_state_dict(g, seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in expected_state_dict(g).items():
        if name.endswith("num_batches_tracked"):
            out[name] = np.array(7, dtype=np.int64)
        elif name.endswith("running_var"):
            out[name] = rng.uniform(0.5, 2.0, shape).astype(np.float32)
        else:
            out[name] = rng.standard_normal(shape).astype(np.float32)
    return out


@pytest.mark.parametrize(
    "case",
    [SMALL, DEEP, (ROOT / "specs/torchvision/resnext50_32x4d.yaml", ("input.size=32",))],
    ids=["cifar-resnet20", "resnet50-d", "resnext50_32x4d"],
)
def test_keys_and_layouts_are_pytorchs(case):
    g = compiled(*case)[1]
    want = {k: v for k, v in expected_state_dict(g).items() if "num_batches" not in k}
    assert fb.torch_shapes(abstract(*case)) == want
    with pytest.raises(ValueError, match="never loaded"):
        fb.nnx_to_torch_state_dict(abstract(*case))


def test_a_real_model_exports_every_key_with_pytorchs_shape():
    g = compiled(*SMALL)[1]
    sd = fb.nnx_to_torch_state_dict(model_class(*SMALL)(rngs=nnx.Rngs(0)))
    assert {k: v.shape for k, v in sd.items()} == expected_state_dict(g)
    assert all(v.dtype == np.float32 for k, v in sd.items() if "num_batches" not in k)


@pytest.mark.parametrize("case", [SMALL, DEEP], ids=["cifar-resnet20", "resnet50-d"])
def test_round_trip_torch_to_nnx_to_torch_is_exact(case):
    g = compiled(*case)[1]
    want = random_state_dict(g)
    model = fb.torch_state_dict_to_nnx(abstract(*case), want)
    got = fb.nnx_to_torch_state_dict(model)
    assert set(got) == set(want)
    for name, value in want.items():
        if name.endswith("num_batches_tracked"):
            assert got[name] == 0  # flax keeps no counter; PyTorch only uses it with momentum=None
        else:
            np.testing.assert_array_equal(got[name], value, err_msg=name)
    # flax layouts: HWIO kernels, (in, out) fc kernel, BatchNorm scale/bias/mean/var
    if case == DEEP:
        pairs = [
            (model.conv1[0].kernel, "conv1.0.weight"),
            (model.layer2[0].downsample[1].kernel, "layer2.0.downsample.1.weight"),
        ]
    else:
        pairs = [
            (model.conv1.kernel, "conv1.weight"),
            (model.layer2[0].conv1.kernel, "layer2.0.conv1.weight"),
        ]
    for var, key in pairs:
        np.testing.assert_array_equal(var.get_value(), want[key].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(model.fc.kernel.get_value(), want["fc.weight"].T)
    np.testing.assert_array_equal(model.bn1.scale.get_value(), want["bn1.weight"])
    np.testing.assert_array_equal(model.bn1.var.get_value(), want["bn1.running_var"])


def test_round_trip_nnx_to_torch_to_nnx_is_exact():
    path, overrides = SMALL
    a = model_class(path, overrides)(rngs=nnx.Rngs(0))
    b = fb.torch_state_dict_to_nnx(abstract(path, overrides), fb.nnx_to_torch_state_dict(a))
    sa, sb = nnx.state(a, nnx.Param, nnx.BatchStat), nnx.state(b, nnx.Param, nnx.BatchStat)
    assert jax.tree.all(jax.tree.map(lambda x, y: bool((x == y).all()), sa, sb))


def test_loading_copies_the_arrays():
    """Loaded weights never alias the caller's buffers (jnp.asarray may, on CPU)."""
    g = compiled(*SMALL)[1]
    sd = random_state_dict(g)
    model = fb.torch_state_dict_to_nnx(abstract(*SMALL), sd)
    before = np.asarray(model.bn1.mean.get_value()).copy()
    sd["bn1.running_mean"] += 1
    np.testing.assert_array_equal(model.bn1.mean.get_value(), before)


def test_counters_are_optional_when_loading():
    g = compiled(*SMALL)[1]
    sd = {k: v for k, v in random_state_dict(g).items() if "num_batches_tracked" not in k}
    fb.torch_state_dict_to_nnx(abstract(*SMALL), sd)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda sd: sd.pop("layer2.1.bn2.running_var"),
            r"layer2\.1\.bn2\.running_var \(32\) is missing",
        ),
        (
            lambda sd: sd.update({"layer1.0.conv1.weight": np.zeros((16, 16, 1, 1), np.float32)}),
            r"layer1\.0\.conv1\.weight has shape \(16, 16, 1, 1\) in the checkpoint, the model "
            r"expects \(16, 16, 3, 3\)",
        ),
        (
            lambda sd: sd.update({"layer1.0.downsample.0.weight": np.zeros((16, 16, 1, 1))}),
            r"layer1\.0\.downsample\.0\.weight is in the checkpoint but not in the model",
        ),
    ],
)
def test_a_mismatch_names_the_tensor_and_changes_nothing(edit, message):
    g = compiled(*SMALL)[1]
    model = model_class(*SMALL)(rngs=nnx.Rngs(0))
    before = fb.nnx_to_torch_state_dict(model)
    sd = random_state_dict(g)
    edit(sd)
    with pytest.raises(CheckpointError, match=message):
        fb.torch_state_dict_to_nnx(model, sd)
    after = fb.nnx_to_torch_state_dict(model)
    assert all((before[k] == after[k]).all() for k in before)


# ---------------------------------------------------------------------------------------------
# the portable checkpoint


def test_portable_checkpoint_round_trip(tmp_path):
    path, overrides = DEEP
    resolved, g = compiled(path, overrides)
    spec = resolved.spec.model_dump(mode="json")
    model = fb.torch_state_dict_to_nnx(abstract(path, overrides), random_state_dict(g, seed=3))
    written = fb.save_portable(model, tmp_path / "ckpt", spec, g.spec_hash, {"step": 12})
    assert written == tmp_path / "ckpt.safetensors"
    sidecar = json.loads((tmp_path / "ckpt.json").read_text())
    assert sidecar["spec"] == spec and sidecar["spec_hash"] == g.spec_hash
    assert sidecar["state"] == {"step": 12}

    from safetensors.numpy import load_file

    keys = set(load_file(written))
    assert keys == set(expected_state_dict(g))

    fresh = abstract(path, overrides)
    meta = fb.load_portable(fresh, written, spec_hash=g.spec_hash)
    assert meta["spec_hash"] == g.spec_hash
    a, b = fb.nnx_to_torch_state_dict(model), fb.nnx_to_torch_state_dict(fresh)
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_portable_checkpoint_of_another_spec_names_the_first_mismatching_tensor(tmp_path):
    digits, g_digits = compiled(ROOT / "specs/variants/digits-resnet20.yaml")
    model = fb.torch_state_dict_to_nnx(
        abstract(ROOT / "specs/variants/digits-resnet20.yaml"), random_state_dict(g_digits)
    )
    fb.save_portable(
        model,
        tmp_path / "digits.safetensors",
        digits.spec.model_dump(mode="json"),
        g_digits.spec_hash,
    )
    target = model_class(*SMALL)(rngs=nnx.Rngs(0))
    with pytest.raises(
        CheckpointError,
        match=r"conv1\.weight has shape \(16, 1, 3, 3\) in the "
        r"checkpoint, the model expects \(16, 3, 3, 3\)",
    ):
        fb.load_portable(target, tmp_path / "digits.safetensors")

    # cifar-plain20 has exactly cifar-resnet20's tensors: only the spec hash tells them apart
    plain, g_plain = compiled(ROOT / "specs/paper/cifar-plain20.yaml")
    fb.save_portable(
        target,
        tmp_path / "plain.safetensors",
        plain.spec.model_dump(mode="json"),
        g_plain.spec_hash,
    )
    g = compiled(*SMALL)[1]
    with pytest.raises(CheckpointError, match=f"spec hash {g_plain.spec_hash}"):
        fb.load_portable(target, tmp_path / "plain.safetensors", spec_hash=g.spec_hash)
    fb.load_portable(target, tmp_path / "plain.safetensors")  # without a hash: tensors fit
