"""timm's ResNet family through the emitters, feature by feature (no timm needed).

For a few ``specs/timm`` models per family feature a backend declares (``FEATURES`` in
``backends/<name>/__init__.py``):

* the emitted PyTorch model's ``state_dict`` has exactly timm's keys, order and shapes, read from
  the committed fixture ``tests/fixtures/timm/resnet.json`` (recorded from timm itself by
  ``scripts/timm_fixture.py``), so it loads timm's weights with ``strict=True``;
* ``check()`` finds the emitted model equal to its IR (shapes, parameters, buffers, FLOPs);
* the emitted flax model, given the PyTorch model's weights, computes the same logits in eval mode
  (relative error below 1e-4, as tests/backends/test_cross_backend.py).

Outputs against timm's own models need timm: ``scripts/timm_outputs_check.py`` (results in
docs/timm-family.md). The models run at 32x32 (their final maps are 1x1).
"""

from __future__ import annotations

import pytest
from emitted_classes import assert_same_definitions
from rescompile.backends import flax as flax_backend
from rescompile.backends import torch as torch_backend
from spec_cases import ROOT, compiled, small, variant_id, variant_path
from test_cross_backend import TOL, eval_pair, jax, np, rel_err
from test_timm_family import decode_layout, fixture

from rescompile.ir.features import features

torch = pytest.importorskip("torch")

# feature -> the small models of timm's resnet.py that the default suite emits for it
CASES: dict[str, list[str]] = {
    "stem_widths": ["resnet10t", "resnet26t"],
    "attention_se": ["seresnet18", "seresnext26d_32x4d"],
    "attention_eca": ["ecaresnet26t"],
    "stem_pool": ["resnetrs50"],
    "reduce_first": ["senet154"],
    "downsample_kernel": ["senet154"],
    "anti_alias_blur": ["resnetblur18"],
    "anti_alias_avgpool": ["resnetaa34d"],
    "block_widths": ["ecaresnet50d_pruned"],  # and ECA kernels from the unpruned width
    "group_norm": ["resnet50_gn"],
}
MODELS = sorted({m for ms in CASES.values() for m in ms})
# Too large to run in the default suite (115M parameters): its layout and definitions are checked
# here, its forward pass by the variants below and by scripts/timm_outputs_check.py.
LAYOUT_ONLY = {"senet154"}
RUN = [m for m in MODELS if m not in LAYOUT_ONLY]
# The features' non-default forms, which no timm model uses: SE with its own ratio and divisor,
# ECA with a given kernel, attention overridden per stage (blocks of two classes).
VARIANTS = [
    (
        "paper/cifar-resnet20",
        ("block={kind: basic, attention: {kind: se, rd_ratio: 0.25, rd_divisor: 4}}",),
    ),
    ("paper/cifar-resnet20", ("stages.1.attention={kind: eca, kernel_size: 5}",)),
    ("torchvision/resnet50", ("input.size=32", "stages.2.attention=se", "stages.3.attention=eca")),
    # SENet-154's reduced first conv and 3x3 projections, at a small size
    (
        "torchvision/resnext50_32x4d",
        ("input.size=32", "block.reduce_first=2", "downsample={kind: conv, kernel_size: 3}"),
    ),
    ("paper/cifar-resnet20", ("shortcut=B", "block.reduce_first=2", "stem.pool=conv")),
    # anti-aliasing: a blur conv stem pool; a stage without it (two block classes)
    ("paper/cifar-resnet20", ("shortcut=B", "anti_alias=blur", "stem.pool=conv")),
    ("torchvision/resnet50", ("input.size=64", "anti_alias=avgpool", "stages.1.anti_alias=none")),
    ("torchvision/resnet18", ("input.size=64", "anti_alias=blur", "block.attention=eca")),
    # block dropout (no timm model has it; eval mode: the identity)
    ("paper/cifar-resnet20", ("block.dropout=0.3", "block.attention=se")),
    # stochastic depth (timm's drop_path_rate; the identity in eval mode)
    ("torchvision/resnet50", ("input.size=32", "drop_path=0.1", "anti_alias=blur")),
    # pruned widths, ECA kernels that follow the unpruned width (eca_kernel_size)
    (
        "paper/cifar-resnet20",
        (
            "block={kind: basic, attention: eca}",
            "stages.2.out_channels=200",
            "stages.2.block_widths=[[20], [24], [28]]",
        ),
    ),
]


def _path(name: str):
    return ROOT / "specs" / "timm" / f"{name}.yaml"


def test_both_backends_declare_the_features_tested_here():
    for backend in (torch_backend, flax_backend):
        assert set(CASES) <= backend.FEATURES
    for feature, models in CASES.items():
        for m in models:
            assert feature in features(compiled(_path(m))[1]), (feature, m)


@pytest.mark.parametrize("name", MODELS)
def test_emitted_torch_model_has_timms_state_dict_layout(name):
    g = compiled(_path(name))[1]
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        model = torch_backend.build_model(g)
    got = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert got == decode_layout(fixture()["models"][name]["state_dict"])


@pytest.mark.parametrize("name", RUN)
def test_emitted_torch_model_matches_its_ir(name):
    g = compiled(_path(name), small(_path(name)))[1]
    rows = torch_backend.check(g, torch_backend.emit(g))
    assert rows and all(ok for *_, ok in rows), [r for r in rows if not r[-1]]


# ecaresnet50d_pruned: every block traces apart in flax (20 s); the variants cover its design
FLAX_SLOW = {"ecaresnet50d_pruned"}


@pytest.mark.parametrize(
    "name", [pytest.param(m, marks=pytest.mark.slow) if m in FLAX_SLOW else m for m in RUN]
)
def test_flax_agrees_with_torch_on_timms_models(name):
    got, want = eval_pair(_path(name), small(_path(name)))
    assert got.shape == want.shape
    assert rel_err(got, want) < TOL


@pytest.mark.parametrize("name", MODELS)
def test_torch_and_flax_define_the_same_classes(name):
    g = compiled(_path(name))[1]
    assert_same_definitions(torch_backend.emit(g), flax_backend.emit(g))


def _emit_check_and_compare(g, path, overrides) -> None:
    """Both backends emit the same definitions, the PyTorch model has the IR's figures, and the
    emitted Flax model's output agrees with the emitted PyTorch model's (within TOL)."""
    torch_source, flax_source = torch_backend.emit(g), flax_backend.emit(g)
    assert_same_definitions(torch_source, flax_source)
    rows = torch_backend.check(g, torch_source)
    assert rows and all(ok for *_, ok in rows), [r for r in rows if not r[-1]]
    got, want = eval_pair(path, overrides)
    assert rel_err(got, want) < TOL


@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
def test_non_default_forms_emit_and_agree(variant):
    path, overrides = variant_path(variant), variant[1]
    g = compiled(path, overrides)[1]
    _emit_check_and_compare(g, path, overrides)


def test_non_default_arguments_are_written():
    path, overrides = variant_path(VARIANTS[0]), VARIANTS[0][1]
    source = torch_backend.emit(compiled(path, overrides)[1])
    assert "self.se = SEModule(out_channels, rd_ratio=0.25, rd_divisor=4)" in source
    path, overrides = variant_path(VARIANTS[1]), VARIANTS[1][1]
    source = flax_backend.emit(compiled(path, overrides)[1])
    assert "self.se = EcaModule(out_channels, kernel_size=5, rngs=rngs)" in source


@pytest.mark.parametrize("setting", ["block.dropout=0.5", "drop_path=0.5"])
def test_dropout_and_drop_path_are_active_in_training_only(setting):
    path = ROOT / "specs" / "paper" / "cifar-resnet20.yaml"
    g = compiled(path, (setting,))[1]
    torch.manual_seed(0)
    model = torch_backend.build_model(g)
    plain = torch_backend.build_model(compiled(path)[1])
    plain.load_state_dict(model.state_dict())  # the same weights, no dropout modules
    x = torch.randn(4, *g.input_shape)
    model.eval(), plain.eval()
    with torch.no_grad():
        assert torch.equal(model(x), plain(x))
        model.train(), plain.train()
        assert not torch.allclose(model(x), plain(x))


def test_drop_path_drops_whole_samples_in_flax_training_only():
    from flax import nnx

    path = ROOT / "specs" / "paper" / "cifar-resnet20.yaml"
    g = compiled(path, ("drop_path=0.5",))[1]
    model = flax_backend.load_module(flax_backend.emit(g), g.class_name)(rngs=nnx.Rngs(0))
    block = model.layer3[-1]  # the last block: rate 0.5
    x = jax.random.normal(jax.random.key(0), (64, 8, 8, 64))
    model.eval()
    assert (block.drop_path(x) == x).all()
    model.train()
    y = np.asarray(block.drop_path(x))
    kept = np.array([np.allclose(y[i], 2 * np.asarray(x[i]), rtol=1e-6) for i in range(64)])
    dropped = (y == 0).reshape(64, -1).all(axis=1)
    assert (kept | dropped).all() and kept.any() and dropped.any()


@pytest.mark.slow  # ~15 s of CPU, mostly XLA compiling each op's shapes once
def test_the_flax_check_script_on_a_small_model():
    """scripts/timm_flax_check.py (run over all of specs/timm into docs/timm-flax.json) on timm's
    smallest model: eval and training mode in float32, eval in float64."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "timm_flax_check", ROOT / "scripts" / "timm_flax_check.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    r = script.check_model("test_resnet")
    assert r["eval_f32"] < 1e-4 and r["train_f32"] < 1e-4 and r["eval_f64"] < 1e-10
    assert r["ok"] and r["params"] == compiled(_path("test_resnet"))[1].totals["params"]


# output_stride: dilated stages. The emitted PyTorch models are timm's, bitwise, for every case of
# tests/fixtures/timm/output_stride.json (scripts/timm_outputs_check.py on MODEL@OS files;
# docs/timm-output-stride-outputs.json); here: the emitted models against their IR, flax against
# PyTorch, and how the dilation is written.
DILATED = [
    ("timm/resnet18", ("output_stride=8",)),  # basic blocks: dilation and first_dilation
    ("timm/resnet50d", ("output_stride=8",)),  # AvgPool2dSame projections
    ("timm/seresnext26d_32x4d", ("output_stride=16",)),
    # anti-aliasing where a stage starts dilating: a filter at stride 1 (timm's use_aa)
    ("timm/resnetblur50", ("output_stride=16",)),
    ("timm/resnetaa50d", ("output_stride=8",)),
    # SENet-154's dilated 3x3 projections, on a small net
    ("torchvision/resnext50_32x4d", ("downsample={kind: conv, kernel_size: 3}", "output_stride=8")),
]


@pytest.mark.parametrize("case", DILATED, ids=lambda c: f"{c[0]}-{c[1][-1]}")
def test_dilated_stages_emit_and_agree(case):
    path = ROOT / "specs" / f"{case[0]}.yaml"
    overrides = (*case[1], "input.size=32")
    g = compiled(path, overrides)[1]
    assert "output_stride" in features(g)
    _emit_check_and_compare(g, path, overrides)


def test_dilation_is_written_as_timm_and_torchvision_write_it():
    g = compiled(ROOT / "specs" / "timm" / "resnet50d.yaml", ("output_stride=8",))[1]
    source = torch_backend.emit(g)
    for line in (
        "        padding=dilation,",
        "        self.conv2 = conv3x3(width, width, stride, dilation=dilation)",
        "            Bottleneck(512, 256, 1024, downsample=avgpool_projection_same(512, 1024)),",
        "            *[Bottleneck(1024, 256, 1024, dilation=2) for _ in range(5)],",
        "            *[Bottleneck(2048, 512, 2048, dilation=4) for _ in range(2)],",
    ):
        assert line + "\n" in source, line
    g = compiled(ROOT / "specs" / "timm" / "resnet18.yaml", ("output_stride=8",))[1]
    source = flax_backend.emit(g)
    for line in (
        "        kernel_dilation=dilation,",
        "            dilation=first_dilation,",  # conv1 of BasicBlock (a wrapped call)
        "        self.conv2 = conv3x3(out_channels, out_channels, dilation=dilation, rngs=rngs)",
        "            BasicBlock(512, 512, dilation=4, first_dilation=4, rngs=rngs),",
    ):
        assert line + "\n" in source, line
