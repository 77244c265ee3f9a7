"""The emitted PyTorch models against the IR: parameters, every shape, FLOPs, init, gradients.

ImageNet-size specs run at 64x64 (``input.size=64``): shapes, parameter counts and FLOPs are
checked against the IR compiled at that size, so nothing is lost but time.
"""

from __future__ import annotations

import inspect
import math

import pytest
from rescompile.backends.torch import EmitError, build_model, check, load_module
from torch_backend_cases import (
    ROOT,
    SPECS,
    VARIANTS,
    compiled,
    emitted,
    small,
    spec_id,
    variant_id,
    variant_path,
)

from rescompile.ir.graph import Op

torch = pytest.importorskip("torch")
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

CIFAR20 = ROOT / "specs" / "paper" / "cifar-resnet20.yaml"


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _failures(rows):
    return [r for r in rows if not r[3]]


@pytest.mark.parametrize("path", SPECS, ids=spec_id)
def test_check_every_spec(path):
    """Output shape, every intermediate shape, params, buffers, state_dict, FLOPs, gradients."""
    ov = small(path)
    _, g = compiled(path, ov)
    rows = check(g, emitted(path, ov))
    assert not _failures(rows), _failures(rows)
    by = {r[0]: r for r in rows}
    assert by["parameters (trainable)"][2] == f"{g.totals['params']:,}"
    assert by["FLOPs, forward, batch 2 (2 x MACs x batch)"][2] == f"{4 * g.totals['macs']:,}"
    n_modules = sum(1 for n in g if n.op in (Op.CONV2D, Op.BATCHNORM, Op.LINEAR))
    assert int(by["intermediate shapes"][2].split()[0]) >= n_modules + len(g.blocks)


@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
def test_check_variants(variant):
    _, g = compiled(variant_path(variant), variant[1])
    rows = check(g, emitted(variant_path(variant), variant[1]))
    assert not _failures(rows), _failures(rows)


@pytest.mark.parametrize(
    "name",
    [
        "paper/cifar-resnet20",
        "torchvision/resnext50_32x4d",
        "variants/resnet50-d",
        "paper/preact-resnet164",
    ],
)
def test_params_shapes_and_flops_measured_directly(name):
    """The same facts as check(), measured here without it."""
    path = ROOT / "specs" / f"{name}.yaml"
    ov = small(path)
    _, g = compiled(path, ov)
    torch.manual_seed(0)
    model = build_model(g, emitted(path, ov))
    assert sum(p.numel() for p in model.parameters()) == g.totals["params"]
    shapes = {}
    ir = {n.name for n in g}
    for name_, mod in model.named_modules():
        if name_ in ir:
            mod.register_forward_hook(
                lambda m, i, o, k=name_: shapes.__setitem__(k, tuple(o.shape[1:]))
            )
    x = torch.randn(3, *g.input_shape)
    with FlopCounterMode(display=False) as counter:
        y = model(x)
    assert counter.get_total_flops() == 2 * g.totals["macs"] * 3
    assert tuple(y.shape) == (3, g.num_classes)
    for n in g:
        if n.op in (Op.CONV2D, Op.BATCHNORM, Op.LINEAR, Op.MAXPOOL, Op.PAD_CHANNELS):
            assert shapes[n.name] == n.meta["shape"], n.name


def test_check_reports_a_model_that_disagrees_with_the_ir():
    _, g = compiled(CIFAR20)
    src = emitted(CIFAR20)
    bad = src.replace(
        "self.conv1 = conv3x3(3, 16)",
        "self.conv1 = nn.Conv2d(3, 16, kernel_size=5, padding=2, bias=False)",
    )
    assert bad != src
    failed = {r[0] for r in _failures(check(g, bad))}
    assert {
        "parameters (trainable)",
        "state_dict keys and shapes",
        "state_dict conv1.weight",
        "FLOPs, forward, batch 2 (2 x MACs x batch)",
    } <= failed
    wrong_shape = src.replace(
        "self.conv1 = conv3x3(3, 16)",
        "self.conv1 = nn.Conv2d(3, 16, kernel_size=3, padding=2, bias=False)",
    )
    failed = {r[0] for r in _failures(check(g, wrong_shape))}
    assert {"intermediate shapes", "shape of conv1", "shape of layer1.0.conv1"} <= failed
    assert "parameters (trainable)" not in failed
    broken = src.replace("BasicBlock(32, 64, 2,", "BasicBlock(32, 64, 1,")
    assert broken != src
    (row,) = check(g, broken)
    assert row[0] == "forward pass" and not row[3] and "RuntimeError" in row[2]


# -- initialisation ----------------------------------------------------------------------------


def test_he_init_as_torchvision():
    path = ROOT / "specs" / "torchvision" / "resnet50.yaml"
    _, g = compiled(path, small(path))
    torch.manual_seed(0)
    model = build_model(g, emitted(path, small(path)))
    conv = model.get_submodule("layer3.0.conv2")  # 256 x 256 x 3 x 3
    fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.02)
    assert abs(conv.weight.mean().item()) < 0.002
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0), name
            assert m.eps == 1e-5 and m.momentum == 0.1
    fc = model.fc  # nn.Linear's default: U(-1/sqrt(in), 1/sqrt(in)) for weight and bias
    bound = 1 / math.sqrt(fc.in_features)
    assert fc.weight.abs().max() <= bound and fc.bias.abs().max() <= bound
    assert fc.weight.abs().max() > 0.9 * bound


@pytest.mark.parametrize(
    "name", ["paper/cifar-resnet20", "torchvision/resnet50", "variants/resnet50-d"]
)
def test_zero_init_residual_honoured(name):
    path = ROOT / "specs" / f"{name}.yaml"
    ov = (*small(path), "init.zero_init_residual=true")
    _, g = compiled(path, ov)
    model = build_model(g, emitted(path, ov))
    zeroed = 0
    for n in g.nodes_of(Op.BATCHNORM):
        w = model.get_submodule(n.name).weight
        if n.attrs["zero_init"]:
            zeroed += 1
            assert torch.all(w == 0), n.name
        else:
            assert torch.all(w == 1), n.name
    assert zeroed == len(g.blocks)
    # Without the option, no BN starts at zero.
    _, g0 = compiled(path, small(path))
    model0 = build_model(g0, emitted(path, small(path)))
    assert all(
        torch.all(m.weight == 1) for m in model0.modules() if isinstance(m, torch.nn.BatchNorm2d)
    )


def test_bn_hyperparameters_and_dropout_reach_the_modules():
    ov = ("head.dropout=0.25", "norm.eps=0.001", "norm.momentum=0.01")
    _, g = compiled(CIFAR20, ov)
    model = build_model(g, emitted(CIFAR20, ov))
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(m.eps == 0.001 and m.momentum == 0.01 for m in bns)
    assert isinstance(model.dropout, torch.nn.Dropout) and model.dropout.p == 0.25
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(x), model(x))  # dropout off in eval mode


# -- option A ----------------------------------------------------------------------------------


def test_option_a_shortcut_is_parameter_free_zero_padding():
    _, g = compiled(CIFAR20)
    model = build_model(g, emitted(CIFAR20))
    sc = model.get_submodule("layer2.0.shortcut")
    assert not list(sc.parameters()) and not list(sc.buffers())
    x = torch.randn(2, 16, 32, 32)
    y = sc(x)
    assert y.shape == (2, 32, 16, 16)
    assert torch.equal(y[:, :16], x[:, :, ::2, ::2])
    assert torch.all(y[:, 16:] == 0)
    odd = sc(torch.randn(1, 16, 33, 33))  # ceil(33 / 2) = 17, as the IR's shape rule
    assert odd.shape == (1, 32, 17, 17)


def test_residual_block_computes_relu_of_branch_plus_shortcut():
    _, g = compiled(CIFAR20)
    model = build_model(g, emitted(CIFAR20)).eval()
    blk = model.get_submodule("layer2.0")
    x = torch.randn(2, 16, 32, 32)
    with torch.no_grad():
        branch = blk.bn2(blk.conv2(torch.relu(blk.bn1(blk.conv1(x)))))
        want = torch.relu(branch + blk.shortcut(x))
        assert torch.allclose(blk(x), want, atol=1e-6)


# -- load_module ---------------------------------------------------------------------------------


def test_load_module_gives_a_class_with_source():
    src = emitted(CIFAR20)
    cls = load_module(src, "CifarResnet20")
    assert issubclass(cls, torch.nn.Module) and cls.__name__ == "CifarResnet20"
    assert "def forward" in inspect.getsource(cls)
    assert load_module(src, "CifarResnet20") is not cls  # a fresh namespace each time
    with pytest.raises(ValueError, match="no nn.Module"):
        load_module(src, "Missing")
    with pytest.raises(EmitError):
        load_module(src, "import os")


def test_model_trains_one_step_and_updates_bn_statistics():
    _, g = compiled(CIFAR20)
    torch.manual_seed(0)
    model = build_model(g, emitted(CIFAR20)).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, t = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    before = model.bn1.running_mean.clone()
    loss0 = torch.nn.functional.cross_entropy(model(x), t)
    loss0.backward()
    opt.step()
    assert not torch.equal(before, model.bn1.running_mean)
    assert int(model.bn1.num_batches_tracked) == 1
