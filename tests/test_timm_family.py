"""timm's ResNet family: every ``specs/timm`` spec against timm's own figures.

The expected values come from ``tests/fixtures/timm/resnet.json``, recorded from timm's models by
``scripts/timm_fixture.py`` (timm 1.0.31, torch 2.14.1) — never from rescompile. For every spec:
parameters, buffers (BN running statistics), MACs (half of ``torch.utils.flop_counter``'s FLOPs)
at 224x224 and at 193x211, and the IR's parameter and buffer layout (IR node names + tensor names
and shapes, in order) against timm's state_dict keys and shapes, which is what lets an emitted
PyTorch module load timm's weights with ``strict=True``.
"""

from __future__ import annotations

import functools
import json
import math

import pytest
from spec_cases import ROOT, TIMM_SPECS, spec_id

from rescompile import compile_spec
from rescompile.errors import SpecError
from rescompile.passes.layout import state_layout

FIXTURE = ROOT / "tests" / "fixtures" / "timm" / "resnet.json"
# Models of timm.models.resnet that no spec expresses (none since the pruned ones have one).
NOT_EXPRESSIBLE: set[str] = set()


@functools.cache
def fixture() -> dict:
    return json.loads(FIXTURE.read_text())


def decode_layout(entries: list[str]) -> list[tuple[str, tuple[int, ...]]]:
    """The fixture's compact state_dict (see scripts/timm_fixture.py): ``module.t1+t2:shape``
    entries; every ``running_var`` is followed by the scalar ``num_batches_tracked``."""
    out: list[tuple[str, tuple[int, ...]]] = []
    for entry in entries:
        names, _, dims = entry.rpartition(":")
        module, _, tensors = names.rpartition(".")
        shape = tuple(int(d) for d in dims.split("x")) if dims else ()
        for t in tensors.split("+"):
            out.append((f"{module}.{t}", shape))
            if t == "running_var":
                out.append((f"{module}.num_batches_tracked", ()))
    return out


def test_the_library_covers_every_expressible_model():
    registered = fixture()["registered"]
    assert len(registered) == 81  # timm 1.0.31's timm.list_models(module="resnet")
    specs = {p.stem for p in TIMM_SPECS}
    assert specs == set(registered) - NOT_EXPRESSIBLE
    assert set(fixture()["models"]) == set(registered)


def test_fixture_layout_decoding_matches_its_counts():
    # The decoded layout carries exactly timm's parameter and buffer counts: the compact form
    # lost nothing that the counts can see.
    for name, e in fixture()["models"].items():
        layout = decode_layout(e["state_dict"])
        stats = ("running_mean", "running_var")
        running = sum(math.prod(s) for k, s in layout if k.endswith(stats))
        others = sum(
            math.prod(s)
            for k, s in layout
            if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
        )
        assert running == e["buffers"], name
        assert others == e["params"], name
        assert sum(k.endswith("num_batches_tracked") for k, _ in layout) == e["num_batches_tracked"]


@functools.cache
def _compiled(path, size: str):
    return compile_spec(path, [f"input.size={size}"])[1]


@pytest.mark.parametrize("path", TIMM_SPECS, ids=spec_id)
def test_params_buffers_and_macs_at_224(path):
    want = fixture()["models"][path.stem]
    g = _compiled(path, "224")
    t = g.totals
    assert (t["params"], t["buffers"], t["macs"]) == (
        want["params"],
        want["buffers"],
        want["macs"]["224x224"],
    )
    assert t["flops"] == 2 * t["macs"]


@pytest.mark.parametrize("path", TIMM_SPECS, ids=spec_id)
def test_macs_at_an_odd_size(path):
    """193x211 exercises ceil-mode avg-pool shortcuts, reflect-padded blur and floor-mode
    anti-aliasing pools. Where timm's own model cannot run at that size (a floor-mode 2x2 pool in
    the main branch against a ceil-mode one in the shortcut), rescompile must refuse it too."""
    want = fixture()["models"][path.stem]["macs"]["193x211"]
    if want is None:
        with pytest.raises(SpecError, match="adds tensors of different shapes"):
            _compiled(path, "[193, 211]")
    else:
        assert _compiled(path, "[193, 211]").totals["macs"] == want


@pytest.mark.parametrize("path", TIMM_SPECS, ids=spec_id)
def test_state_dict_layout_is_timms(path):
    want = decode_layout(fixture()["models"][path.stem]["state_dict"])
    got = state_layout(_compiled(path, "224"))
    assert got == want


def test_macs_per_stage_add_up_like_timms():
    # flop_counter's per-module split (conv1/bn1/maxpool, layer1..4, fc) against the IR's
    # per-stage rows, for a model with every kind of extra conv: SE (resnetrs50: conv stem pool),
    # ECA, blur.
    from rescompile.passes.report import rows

    for name in ("resnetrs50", "ecaresnet50t", "resnetblur50d", "senet154"):
        want = fixture()["models"][name]["macs_by_module"]
        g = _compiled(ROOT / "specs" / "timm" / f"{name}.yaml", "224")
        got = {r.name: r.counts["macs"] for r in rows(g, "stage")}
        stem = sum(v for k, v in want.items() if not k.startswith("layer") and k != "fc")
        assert got["stem"] == stem, name
        for stage in ("layer1", "layer2", "layer3", "layer4"):
            assert got[stage] == want[stage], (name, stage)
        assert got["head"] == want["fc"], name


def test_outputs_were_recorded_for_every_model():
    # The figures a later output check compares with (the emitted model, randomised by the
    # script's documented scheme): present, finite and non-degenerate for every model.
    f = fixture()
    assert f["output_input"] == [2, 3, 64, 96]
    for name, e in f["models"].items():
        out = e["output"]
        assert len(out["sha256"]) == 64 and len(out["head"]) == 2, name
        assert 0 < out["abs_max"] < 1e3 and math.isfinite(out["sum"]), name


# ---------------------------------------------------------------------------------------------
# output_stride: dilated last stages, against timm's models built with output_stride=8 / 16
# (tests/fixtures/timm/output_stride.json, from `scripts/timm_fixture.py --output-stride`)

OUTPUT_STRIDE_FIXTURE = ROOT / "tests" / "fixtures" / "timm" / "output_stride.json"


@functools.cache
def output_stride_fixture() -> dict:
    return json.loads(OUTPUT_STRIDE_FIXTURE.read_text())["models"]


@pytest.mark.parametrize("key", sorted(output_stride_fixture()))
def test_output_stride_matches_timm(key):
    name, output_stride = key.split("@")
    e = output_stride_fixture()[key]
    path = ROOT / "specs" / "timm" / f"{name}.yaml"
    for size, want in e["macs"].items():
        h, w = size.split("x")
        overrides = [f"output_stride={output_stride}", f"input.size=[{h}, {w}]"]
        if want is None:  # timm's own model fails at this size; so must the spec
            with pytest.raises(SpecError, match="adds tensors of different shapes"):
                compile_spec(path, overrides)
            continue
        g = compile_spec(path, overrides)[1]
        assert g.totals["macs"] == want, size
        assert (g.totals["params"], g.totals["buffers"]) == (e["params"], e["buffers"])
        assert state_layout(g) == decode_layout(e["state_dict"])
    assert e["macs"]["224x224"] > compile_spec(path)[1].totals["macs"]  # larger maps


def test_output_stride_is_timms_rule():
    """Dilations and strides stage by stage, as timm's make_blocks computes them (8: the last
    two stages dilate by 2 and 4; each stage's first block keeps the previous dilation in its
    first 3x3 conv), and the stem's stride bounds the value."""
    path = ROOT / "specs" / "torchvision" / "resnet50.yaml"
    g = compile_spec(path, ["output_stride=8"])[1]
    dil = {n.name: n.attrs.get("dilation", 1) for n in g if n.name.endswith("conv2")}
    assert [dil[f"layer3.{j}.conv2"] for j in range(6)] == [1, 2, 2, 2, 2, 2]
    assert [dil[f"layer4.{j}.conv2"] for j in range(3)] == [2, 4, 4]
    assert g["layer4.0.conv2"].attrs["padding"] == 2 and g["layer4.0.conv2"].attrs["stride"] == 1
    assert g["fc"].meta["shape"] == (1000,) and g["layer4.2.add"].meta["shape"] == (2048, 28, 28)
    assert compile_spec(path, ["output_stride=32"])[1].totals == compile_spec(path)[1].totals
    cifar = ROOT / "specs" / "paper" / "cifar-resnet20.yaml"  # stride 1 stem: 8 is reachable
    assert compile_spec(cifar, ["output_stride=8"])[1].totals == compile_spec(cifar)[1].totals


def test_flax_agreement_was_recorded_for_every_model():
    """docs/timm-flax.json (scripts/timm_flax_check.py --record): the emitted flax model against
    the emitted PyTorch one for every spec, within the tolerances, recorded for the specs as they
    are (each entry's parameter count is the spec's)."""
    record = json.loads((ROOT / "docs" / "timm-flax.json").read_text())
    assert record["tolerance"] == {"f32": 1e-4, "f64": 1e-10}
    models = record["models"]
    assert set(models) == {p.stem for p in TIMM_SPECS}
    for path in TIMM_SPECS:
        r = models[path.stem]
        assert r["ok"] and r["eval_f32"] < 1e-4 and r["eval_f64"] < 1e-10, path.stem
        assert r["train_f32"] is None or r["train_f32"] < 1e-4, path.stem
        assert r["params"] == _compiled(path, "224").totals["params"], path.stem
