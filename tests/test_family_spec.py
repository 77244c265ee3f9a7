"""The ResNet-family fields of the spec language: positioned errors, IR structure, conventions.

Expected values are written out from timm's definitions (``timm/models/resnet.py``,
``timm/layers``) or computed by hand here, never taken from rescompile's output.
"""

from __future__ import annotations

import pytest
from clirun import run_cli
from spec_cases import ROOT

from rescompile.compiler import analyse
from rescompile.errors import SpecError
from rescompile.ir.features import features
from rescompile.ir.graph import Op
from rescompile.ir.lower import eca_kernel, make_divisible
from rescompile.spec.load import load_spec, load_spec_text

BASE = """\
name: net
input: {channels: 3, size: 64}
num_classes: 10
stem: imagenet
block: bottleneck
stride_on: 3x3
stages:
  - {depth: 2, width: 16, stride: 1}
  - {depth: 2, width: 32, stride: 2}
"""


def graph(text: str, overrides=()):
    return analyse(load_spec_text(text, "s.yaml", overrides))


def errors(text: str, overrides=()) -> list[str]:
    with pytest.raises(SpecError) as e:
        graph(text, overrides)
    return [str(d) for d in e.value.diagnostics]


# -- positioned errors --------------------------------------------------------------------------


def test_widths_on_a_non_deep_stem():
    text = BASE.replace("stem: imagenet", "stem: {kind: imagenet, widths: [8, 8, 16]}")
    assert errors(text) == [
        "s.yaml:4:32: stem.widths: widths apply only to a deep stem, not imagenet"
    ]


def test_deep_stem_width_must_match_widths():
    text = BASE.replace("stem: imagenet", "stem: {kind: deep, width: 32, widths: [8, 8, 16]}")
    assert errors(text) == [
        "s.yaml:4:27: stem.width: width 32 differs from the last of widths (16)"
    ]


def test_group_norm_groups_must_divide_every_width():
    text = BASE + "norm: {kind: group, groups: 6}\n"
    got = errors(text)
    assert (
        got[0] == "s.yaml:10:29: norm.groups: GroupNorm's 6 groups do not divide 16 channels "
        "(IR node 'bn1')"
    )
    assert len(got) == 4  # widths 16, 64, 32 and 128: 6 divides none; once per width
    assert all(e.startswith("s.yaml:10:29: norm.groups:") for e in got)


def test_groups_need_group_norm():
    assert errors(BASE + "norm: {groups: 8}\n") == [
        "s.yaml:10:16: norm.groups: groups apply only to norm kind group"
    ]


def test_eca_kernel_size_must_be_odd():
    text = BASE.replace(
        "block: bottleneck", "block: {kind: bottleneck, attention: {kind: eca, kernel_size: 4}}"
    )
    (err,) = errors(text)
    assert err.startswith("s.yaml:5:")
    assert "block.attention.kernel_size: must be odd" in err and "got 4" in err


def test_attention_fields_belong_to_their_kind():
    text = BASE.replace(
        "block: bottleneck", "block: {kind: bottleneck, attention: {kind: eca, rd_ratio: 0.25}}"
    )
    (err,) = errors(text)
    assert "block.attention: rd_ratio apply only to kind se, not eca" in err
    text = BASE.replace(
        "block: bottleneck", "block: {kind: bottleneck, attention: {kind: se, kernel_size: 3}}"
    )
    (err,) = errors(text)
    assert "block.attention: kernel_size applies only to kind eca, not se" in err


def test_downsample_kernel_needs_a_conv():
    (err,) = errors(BASE + "downsample: {kind: avgpool, kernel_size: 3}\n")
    assert err.startswith("s.yaml:10:") and "kernel_size 3 applies only to kind conv" in err
    (err,) = errors(BASE + "downsample: {kind: conv, kernel_size: 2}\n")
    assert "downsample.kernel_size: Input should be 1 or 3" in err


def test_unknown_values_are_listed():
    (err,) = errors(BASE + "anti_alias: gauss\n")
    assert (
        err == "s.yaml:10:13: anti_alias: Input should be 'none', 'blur' or 'avgpool', got 'gauss'"
    )
    (err,) = errors(BASE.replace("stem: imagenet", "stem: {kind: imagenet, pool: avg}"))
    assert "stem.pool: Input should be 'max', 'conv' or 'none'" in err


def test_reduce_first_must_leave_a_multiple_of_the_groups():
    text = BASE.replace(
        "block: bottleneck",
        "block: {kind: bottleneck, groups: 4, width_per_group: 16, reduce_first: 3}",
    )
    first, second = errors(text)  # one per stage width
    assert first.startswith("s.yaml:5:73: block.reduce_first: reduce_first 3 leaves 5 ")
    assert "leaves 10 channels from an inner width of 32" in second


def test_preact_refuses_attention_and_anti_alias():
    text = BASE + "preact: true\nanti_alias: blur\n"
    assert errors(text) == ["s.yaml:11:13: anti_alias: anti_alias needs post-activation blocks"]
    text = BASE.replace("block: bottleneck", "block: {kind: bottleneck, attention: se}")
    (err,) = errors(text + "preact: true\n")
    assert "block.attention: attention needs post-activation blocks" in err


def test_drop_path_needs_residual_blocks():
    assert errors(BASE + "shortcut: none\ndrop_path: 0.1\n") == [
        "s.yaml:11:12: drop_path: drop_path needs residual blocks (a stage has shortcut none)"
    ]


def test_override_of_a_new_field_is_positioned_on_the_command_line():
    text = BASE.replace("block: bottleneck", "block: {kind: bottleneck, attention: eca}")
    (err,) = errors(text, ["block.attention.kernel_size=2"])
    assert err.startswith("--set block.attention.kernel_size=2:1:29: block.attention.kernel_size:")


# -- timm's formulas, by hand ---------------------------------------------------------------------


def test_se_reduction_and_eca_kernel_follow_timm():
    # SEModule: make_divisible(C / 16, 8, round_limit=0): 64 -> 4 -> 8 (never below 8),
    # 256 -> 16, 1000 * 0.25 = 250 -> 248 (nearest multiple of 8; 250 + 4 = 254 // 8 = 31).
    assert [make_divisible(c / 16, 8) for c in (64, 256, 2048)] == [8, 16, 128]
    assert make_divisible(250, 8) == 248 and make_divisible(252, 8) == 256
    # EcaModule: t = int((log2 C + 1) / 2); odd t, else t + 1; at least 3.
    # 64: 3.5 -> 3; 256: 4.5 -> 4 -> 5; 512: 5; 2048: 6 -> 7.
    assert [eca_kernel(c) for c in (16, 64, 256, 512, 2048)] == [3, 3, 5, 5, 7]


def test_drop_path_rate_is_linear_in_the_block_index():
    g = graph(BASE + "drop_path: 0.3\n")
    rates = {b.name: b.drop_path for b in g.blocks}
    # 4 blocks: 0.3 * i / 3
    assert rates == pytest.approx(
        {"layer1.0": 0.0, "layer1.1": 0.1, "layer2.0": 0.2, "layer2.1": 0.3}
    )
    dp = [n.name for n in g if n.op is Op.DROP_PATH]
    assert dp == ["layer1.1.drop_path", "layer2.0.drop_path", "layer2.1.drop_path"]
    plain = graph(BASE)
    assert g.totals["params"] == plain.totals["params"] and g.totals["macs"] == plain.totals["macs"]


def test_block_dropout_sits_between_the_first_two_convs():
    g = graph(BASE.replace("block: bottleneck", "block: {kind: basic, dropout: 0.3}"))
    order = [n.name for n in g if n.block == "layer1.0"]
    assert order[:5] == [
        "layer1.0.conv1",
        "layer1.0.bn1",
        "layer1.0.relu1",
        "layer1.0.dropout",
        "layer1.0.conv2",
    ]
    pre = graph(
        BASE.replace("block: bottleneck", "block: {kind: basic, dropout: 0.3}") + "preact: true\n"
    )
    order = [n.name for n in pre if n.block == "layer1.0"]
    assert order[3:6] == ["layer1.0.dropout", "layer1.0.bn2", "layer1.0.relu2"]


def test_anti_aliased_block_runs_the_conv_at_stride_1():
    g = graph(BASE + "anti_alias: blur\n")
    assert g["layer2.0.conv2"].attrs["stride"] == 1
    blur = g["layer2.0.aa"]
    assert blur.op is Op.BLUR and blur.attrs == dict(channels=32, kernel=3, stride=2, padding=1)
    assert [n.name for n in g if n.stage == "stem" and n.op in (Op.MAXPOOL, Op.BLUR)] == [
        "maxpool.0",
        "maxpool.1",
    ]
    # blur MACs: 9 per output element, as a depthwise 3x3 conv (32 x 8 x 8 at 64x64 input)
    assert blur.meta["macs"] == 9 * 32 * 8 * 8 and blur.meta["params"] == 0


def test_gate_and_scale_elements_are_listed_apart():
    g = graph(BASE.replace("block: bottleneck", "block: {kind: bottleneck, attention: se}"))
    # gates: one element per channel of each block's output (4 blocks: 64, 64, 128, 128)
    assert g.totals["gate"] == 64 + 64 + 128 + 128
    # scale: every element of each block's main-branch output (64 x 16 x 16, 128 x 8 x 8)
    assert g.totals["scale"] == 2 * 64 * 16 * 16 + 2 * 128 * 8 * 8
    # SE MACs: fc1 C x C/16->8, fc2 back: layer1 blocks 64 x 8 x 2, layer2 128 x 8 x 2
    plain = graph(BASE)
    assert g.totals["macs"] - plain.totals["macs"] == 2 * (64 * 8 * 2) + 2 * (128 * 8 * 2)
    # parameters: weights as MACs plus biases (8 + C per block)
    assert g.totals["params"] - plain.totals["params"] == 2 * (64 * 8 * 2 + 8 + 64) + 2 * (
        128 * 8 * 2 + 8 + 128
    )


# The specs outside specs/timm that use family features (audit rows of the follow-up papers).
FAMILY_PAPER_SPECS = {
    "se-resnet50": ["attention_se"],
    "wrn-28-10": ["block_dropout"],
}


def test_library_features_outside_timm():
    for sub in ("paper", "torchvision", "variants", "followup"):
        for p in sorted((ROOT / "specs" / sub).glob("*.yaml")):
            want = FAMILY_PAPER_SPECS.get(p.stem, [])
            assert features(analyse(load_spec(p))) == want, p


# -- backends that do not emit a feature refuse it cleanly ----------------------------------------


@pytest.fixture
def torch_declares_nothing(monkeypatch):
    """Both backends now emit every feature: the refusal is tested with a torch backend that
    declares none (as a new backend, or a new feature, would be)."""
    from rescompile.backends import torch as torch_backend

    monkeypatch.setattr(torch_backend, "FEATURES", frozenset())


def test_build_refuses_a_feature_the_backend_does_not_declare(tmp_path, torch_declares_nothing):
    out = tmp_path / "model.py"
    r = run_cli("build", str(ROOT / "specs" / "timm" / "seresnet50.yaml"), "-o", str(out))
    assert r.code == 1 and not out.exists()
    assert r.stderr == (
        "error: the torch backend cannot emit seresnet50 yet: it does not support "
        "squeeze-and-excitation attention (attention: se) (rescompile report, check and graph "
        "do)\n"
    )


def test_projection_padding_at_odd_strides():
    # A 1x1 projection never pads (torchvision's conv1x1), whatever the stride; a 3x3 one takes
    # timm's get_padding: ((stride - 1) + (3 - 1)) // 2 = 2 at stride 3.
    text = BASE.replace("{depth: 2, width: 32, stride: 2}", "{depth: 2, width: 32, stride: 3}")
    assert graph(text)["layer2.0.downsample.0"].attrs["padding"] == 0
    g = graph(text + "downsample: {kind: conv, kernel_size: 3}\n")
    a = g["layer2.0.downsample.0"].attrs
    assert (a["kernel"], a["stride"], a["padding"]) == (3, 3, 2)
    # anti-aliasing applies to stride-2 blocks only, as timm's use_aa
    g = graph(text + "anti_alias: blur\n")
    assert "layer2.0.aa" not in g.g and g["layer2.0.conv2"].attrs["stride"] == 3


# -- every combination either compiles consistently or fails with a positioned error ---------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from rescompile.backends import torch as torch_backend  # noqa: E402

from rescompile.emission.plan import make_plan  # noqa: E402
from rescompile.errors import UserError  # noqa: E402
from rescompile.ir.features import unsupported  # noqa: E402
from rescompile.passes.layout import state_layout  # noqa: E402

_FAMILY = {
    "stem": st.sampled_from(
        [
            "imagenet",
            "cifar",
            "deep",
            {"kind": "deep", "widths": [6, 8, 16]},
            {"kind": "deep", "pool": "conv"},
            {"kind": "imagenet", "pool": "none"},
            {"kind": "cifar", "pool": "max"},
            {"kind": "cifar", "widths": [4, 4, 8]},
        ]
    ),
    "block": st.sampled_from(
        [
            "basic",
            "bottleneck",
            {"kind": "bottleneck", "attention": "se", "groups": 2, "width_per_group": 32},
            {"kind": "bottleneck", "attention": {"kind": "se", "rd_ratio": 0.25}},
            {"kind": "basic", "attention": {"kind": "eca", "kernel_size": 5}, "dropout": 0.2},
            {"kind": "bottleneck", "attention": "eca", "reduce_first": 2},
            {"kind": "bottleneck", "groups": 4, "reduce_first": 3},
        ]
    ),
    "anti_alias": st.sampled_from(["none", "blur", "avgpool"]),
    "downsample": st.sampled_from(["conv", "avgpool", {"kind": "conv", "kernel_size": 3}]),
    "norm": st.sampled_from([{}, {"kind": "group", "groups": 4}, {"kind": "group"}]),
    "drop_path": st.sampled_from([0.0, 0.1]),
    "preact": st.sampled_from([False, False, False, True]),
    "shortcut": st.sampled_from(["A", "B", "C", "none"]),
    "size": st.sampled_from([16, 33, 64, [40, 57]]),
    "stage_attention": st.sampled_from([None, "none", "se", "eca"]),
    "stage_aa": st.sampled_from([None, "none", "blur"]),
    # 8: a third stage, which the imagenet and deep stems' nets then dilate
    "output_stride": st.sampled_from([32, 32, 8]),
}


@settings(
    max_examples=300,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(**_FAMILY)
def test_family_combinations_compile_consistently_or_fail_cleanly(
    stem,
    block,
    anti_alias,
    downsample,
    norm,
    drop_path,
    preact,
    shortcut,
    size,
    stage_attention,
    stage_aa,
    output_stride,
):
    stage1 = {"depth": 2, "width": 16, "stride": 2}
    if stage_attention is not None:
        stage1["attention"] = stage_attention
    if stage_aa is not None:
        stage1["anti_alias"] = stage_aa
    doc = {
        "name": "net",
        "input": {"channels": 3, "size": size},
        "num_classes": 10,
        "stem": stem,
        "block": block,
        "stride_on": "3x3",
        "preact": preact,
        "shortcut": shortcut,
        "anti_alias": anti_alias,
        "downsample": downsample,
        "norm": norm,
        "drop_path": drop_path,
        "stages": [{"depth": 1, "width": 8, "stride": 1}, stage1],
    }
    if output_stride != 32:
        doc["output_stride"] = output_stride
        doc["stages"].append({"depth": 2, "width": 16, "stride": 2})
    import yaml

    try:
        g = graph(yaml.safe_dump(doc, sort_keys=False))
    except SpecError as e:
        assert e.diagnostics and all(d.pos is not None for d in e.diagnostics), str(e)
        return
    except UserError as e:  # pragma: no cover - lowering raises SpecError only
        raise AssertionError(f"unexpected user error {e}") from None
    t = g.totals
    for key in ("params", "buffers", "macs", "gate", "scale"):
        assert sum(n.meta[key] for n in g) == t[key]
    layout = state_layout(g)
    stats = ("running_mean", "running_var")
    assert sum(_numel(s) for k, s in layout if k.endswith(stats)) == t["buffers"]
    trainable = [s for k, s in layout if not k.endswith((*stats, "num_batches_tracked"))]
    assert sum(_numel(s) for s in trainable) == t["params"]
    assert len({k for k, _ in layout}) == len(layout)  # unique state_dict keys
    assert g[g.output].meta["shape"] == (10,)
    if not unsupported(g, torch_backend):  # what the backends emit, the plan verifies
        make_plan(g)


def _numel(shape: tuple[int, ...]) -> int:
    out = 1
    for d in shape:
        out *= d
    return out


def test_block_widths_are_checked_per_stage():
    text = BASE.replace(
        "{depth: 2, width: 32, stride: 2}",
        "{depth: 2, width: 32, stride: 2, out_channels: 40, block_widths: [[20, 12]]}",
    )
    (err,) = errors(text)
    assert err.startswith("s.yaml:9:") and "stages.1.block_widths: 1 entries for 2 blocks" in err
    text = BASE.replace(
        "{depth: 2, width: 32, stride: 2}",
        "{depth: 2, width: 32, stride: 2, block_widths: [[20, 12], [7]]}",
    )
    (err,) = errors(text)
    assert "a bottleneck block takes 2 widths per entry ([first, inner]); entry 1 has 1" in err
    text = BASE.replace("block: bottleneck", "block: {kind: bottleneck, groups: 4}").replace(
        "{depth: 2, width: 32, stride: 2}",
        "{depth: 2, width: 32, stride: 2, block_widths: [[20, 12], [8, 6]]}",
    )
    (err,) = errors(text)
    assert "stages.1.block_widths.1: block 1: the 3x3 conv's 4 groups do not divide 8 -> 6" in err


def test_pruned_widths_shape_the_block():
    text = BASE.replace(
        "{depth: 2, width: 32, stride: 2}",
        "{depth: 2, width: 32, stride: 2, out_channels: 40, block_widths: [[20, 12], [9, 5]]}",
    )
    g = graph(text.replace("block: bottleneck", "block: {kind: bottleneck, attention: eca}"))
    a = [g[f"layer2.1.conv{k}"].attrs for k in (1, 2, 3)]
    assert [(x["in_channels"], x["out_channels"]) for x in a] == [(40, 9), (9, 5), (5, 40)]
    assert g["layer2.0.downsample.0"].attrs["out_channels"] == 40
    assert g["fc"].attrs["in_features"] == 40
    # ECA's kernel follows the unpruned width 32 x 4 = 128: t = int((7 + 1) / 2) = 4 -> 5
    assert g["layer2.1.se.conv"].attrs["kernel"] == 5
    assert "block_widths" in features(g)


def test_train_refuses_a_feature_the_backend_does_not_declare(tmp_path, torch_declares_nothing):
    digits = str(ROOT / "specs" / "variants" / "digits-resnet20.yaml")
    out = tmp_path / "run"
    r = run_cli(
        "train",
        digits,
        "--set",
        "block={kind: basic, attention: se}",
        "--data",
        "digits",
        "--steps",
        "1",
        "--batch-size",
        "8",
        "--quiet",
        "--out",
        str(out),
    )
    assert r.code == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: the torch backend cannot emit digits-resnet20 yet")
    assert not out.exists()  # refused before the run directory is made


# -- output_stride ------------------------------------------------------------------------------


def test_output_stride_values_are_listed():
    (err,) = errors(BASE + "output_stride: 12\n")
    assert err == "s.yaml:10:16: output_stride: Input should be 8, 16 or 32, got 12"


def test_output_stride_dilates_and_anti_aliases_as_timm():
    # BASE's maps: stem /4, layer2 /8, so output_stride 8 changes nothing; a third stage then
    # keeps stride 1 and dilates by 2. Its first block's 3x3 conv keeps dilation 1 and, when
    # anti-aliased, is followed by timm's filter at stride 1; an avg-pool shortcut becomes
    # AvgPool2dSame(2, 1) (timm's downsample_avg where the stage dilates).
    g = graph(BASE + "output_stride: 8\n")
    assert "dilation" not in g["layer2.0.conv2"].attrs  # 8 is reached only after layer2
    text = BASE + "output_stride: 8\n"
    text = text.replace(
        "{depth: 2, width: 32, stride: 2}",
        "{depth: 2, width: 32, stride: 2}\n  - {depth: 2, width: 64, stride: 2}",
    )
    g = graph(text + "anti_alias: blur\ndownsample: avgpool\n")
    assert "dilation" not in g["layer3.0.conv2"].attrs and g["layer3.0.conv2"].attrs["stride"] == 1
    assert (g["layer3.1.conv2"].attrs["dilation"], g["layer3.1.conv2"].attrs["padding"]) == (2, 2)
    aa = g["layer3.0.aa"].attrs
    assert g["layer3.0.aa"].op is Op.BLUR and (aa["stride"], aa["padding"]) == (1, 1)
    pool = g["layer3.0.downsample.0"]
    assert pool.op is Op.AVGPOOL and pool.attrs == {"kernel": 2, "stride": 1, "same": True}
    assert g["layer3.1.add"].meta["shape"] == (256, 8, 8)  # 64 / 8
    assert features(g)[-2:] == ["output_stride", "dilated_anti_alias"]


def test_anti_aliasing_where_a_stage_starts_dilating_is_emitted_as_timm_builds_it(tmp_path):
    # timm's use_aa: stride == 2 or first_dilation != dilation (the filter then at stride 1)
    out = tmp_path / "model.py"
    spec = str(ROOT / "specs" / "timm" / "resnetblur50.yaml")
    r = run_cli("build", spec, "--set", "output_stride=16", "-o", str(out))
    assert r.code == 0, r.stderr
    source = out.read_text()
    assert ") if stride > 1 or first_dilation != dilation else None\n" in source
    call = "Bottleneck(1024, 512, 2048, dilation=2, downsample=projection(1024, 2048)),\n"
    assert call in source
