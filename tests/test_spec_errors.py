"""Bad input: exact messages at exact positions, all reported at once, never a traceback."""

from __future__ import annotations

import pytest
from spec_cases import ROOT

from rescompile.errors import SpecError
from rescompile.spec.load import load_spec, load_spec_text

GOOD = """\
name: net
input: {channels: 3, size: 32}
num_classes: 10
stem: cifar
block: basic
shortcut: A
stages:
  - {depth: 3, width: 16, stride: 1}
  - {depth: 3, width: 32, stride: 2}
"""


def errors(text: str, overrides=()) -> list[str]:
    with pytest.raises(SpecError) as e:
        load_spec_text(text, "s.yaml", overrides)
    return [str(d) for d in e.value.diagnostics]


def test_good_spec_loads():
    r = load_spec_text(GOOD, "s.yaml")
    assert r.spec.stages[1].width == 32 and r.spec.block.kind == "basic"


def test_every_error_at_once_with_positions_and_suggestions():
    text = GOOD.replace("block: basic", "blok: basic").replace("shortcut: A", "shortcut: no")
    text = text.replace("{depth: 3, width: 16, stride: 1}", "{depth: 0, width: 16, strde: 1}")
    text += "preact: yes\n"
    assert errors(text) == [
        "s.yaml:1:1: block: missing required field 'block'",
        "s.yaml:5:1: blok: unknown field 'blok'; did you mean 'block'?",
        "s.yaml:6:11: shortcut: Input should be 'A', 'B', 'C' or 'none', got the string 'no' "
        "(YAML 1.1 booleans are not coerced)",
        "s.yaml:8:13: stages.0.depth: Input should be greater than or equal to 1, got 0",
        "s.yaml:8:27: stages.0.strde: unknown field 'strde'; did you mean 'stride'?",
        "s.yaml:10:9: preact: Input should be a valid boolean, got the string 'yes' "
        "(YAML 1.1 booleans are not coerced; write true or false)",
    ]


def test_octal_looking_number_is_not_coerced():
    assert errors(GOOD.replace("width: 32", "width: 032")) == [
        "s.yaml:9:23: stages.1.width: ambiguous number '032': a leading zero is octal in "
        "YAML 1.1; write 32 or quote it"
    ]


def test_strings_are_not_numbers():
    assert errors(GOOD.replace("num_classes: 10", 'num_classes: "10"')) == [
        "s.yaml:3:14: num_classes: Input should be a valid integer, got '10'"
    ]


def test_duplicate_key():
    assert errors(GOOD + "num_classes: 100\n") == [
        "s.yaml:10:1: duplicate key 'num_classes' (first defined at line 3)"
    ]


def test_python_tags_rejected():
    assert errors("name: !!python/object/apply:os.system ['true']\n") == [
        "s.yaml:1:7: explicit YAML tags are not allowed "
        "(tag:yaml.org,2002:python/object/apply:os.system)"
    ]


def test_billion_laughs_fails_fast():
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        refs = ", ".join([f"*a{i - 1}"] * 10)
        lines.append(f"a{i}: &a{i} [{refs}]")
    (msg,) = errors("\n".join(lines) + "\n")
    assert "expands to more than 100000 values" in msg and msg.startswith("s.yaml:")


def test_deep_nesting_bounded():
    (msg,) = errors("a: " + "[" * 100 + "]" * 100 + "\n")
    where, _, text = msg.partition(": ")
    col = int(where.split(":")[2])
    assert text == "nesting deeper than 32 levels" and 4 + 30 <= col <= 4 + 33  # at a "["


def test_syntax_error_position():
    assert errors("name: x\n  bad: [\n") == [
        "s.yaml:2:6: invalid YAML: mapping values are not allowed in this context"
    ]


def test_name_must_be_identifier_like():
    (msg,) = errors(GOOD.replace("name: net", "name: 'x\"); import os #'"))
    assert msg.startswith("s.yaml:1:7: name: name must start with a letter")


@pytest.mark.parametrize(
    "text,expected",
    [
        (
            GOOD.replace("block: basic", "block: {kind: basic, groups: 2}"),
            "s.yaml:5:8: block: basic blocks support only groups=1 and width_per_group=64",
        ),
        (
            GOOD.replace("width: 32", "width: 8"),
            "s.yaml:9:23: stages.1.width: option A cannot shrink the width (16 -> 8 channels); "
            "use B or C",
        ),
        (
            GOOD.replace("size: 32", "size: 1"),
            "s.yaml:9:5: IR node 'layer2.0.conv1' (conv2d) applies stride 2 to a 1x1 feature map",
        ),
        (
            GOOD.replace(
                "shortcut: A", "shortcut: A\ninit: {zero_init_residual: true}\npreact: true"
            ),
            "s.yaml:7:7: init: zero_init_residual needs post-activation residual blocks",
        ),
    ],
)
def test_semantic_errors(text, expected):
    from rescompile.compiler import analyse

    with pytest.raises(SpecError) as e:
        analyse(load_spec_text(text, "s.yaml"))
    assert str(e.value.diagnostics[0]).startswith(expected)


def test_grouped_width_must_divide():
    from rescompile.compiler import analyse

    text = GOOD.replace("block: basic", "block: {kind: bottleneck, width_per_group: 3}")
    text = text.replace("shortcut: A", "shortcut: B")
    with pytest.raises(SpecError) as e:
        analyse(load_spec_text(text, "s.yaml"))
    assert str(e.value.diagnostics[0]) == (
        "s.yaml:5:8: block: width 16 x width_per_group 3 / 64 is not an integer"
    )


def test_set_overrides_are_validated_like_the_file():
    assert errors(GOOD, ["stages.1.widht=8", "num_classes=x"]) == [
        "--set num_classes=x:1:13: num_classes: Input should be a valid integer, got 'x'",
        "--set stages.1.widht=8:1:16: stages.1.widht: unknown field 'widht'; did you mean 'width'?",
    ]
    r = load_spec_text(GOOD, "s.yaml", ["shortcut=C", "stages.1.depth=5", "block.kind=bottleneck"])
    assert (r.spec.shortcut, r.spec.stages[1].depth, r.spec.block.kind) == ("C", 5, "bottleneck")
    assert errors(GOOD, ["stages.7.depth=1"]) == [
        "--set stages.7.depth=1:1:16: no list element 'stages.7'"
    ]
    assert errors(GOOD, ["nonsense"]) == ["--set nonsense:1:1: expected KEY=VALUE, got 'nonsense'"]


def test_extends_merges_and_reports_base_positions(write_spec):
    write_spec(GOOD.replace("width: 32", "width: -1"), "base.yaml")
    child = write_spec("extends: base.yaml\nname: child\n", "child.yaml")
    with pytest.raises(SpecError) as e:
        load_spec(child)
    (d,) = e.value.diagnostics
    assert d.pos.file.endswith("base.yaml") and (d.pos.line, d.pos.col) == (9, 23)


def test_extends_override(write_spec):
    write_spec(GOOD, "base.yaml")
    child = write_spec(
        "extends: base.yaml\nname: child\nblock: {kind: bottleneck}\nshortcut: B\n", "child.yaml"
    )
    r = load_spec(child)
    assert (r.spec.name, r.spec.block.kind, r.spec.stages[0].depth) == ("child", "bottleneck", 3)


def test_extends_cycle_missing_and_outside(write_spec, tmp_path):
    a = write_spec("extends: b.yaml\nname: a\n", "a.yaml")
    write_spec("extends: a.yaml\nname: b\n", "b.yaml")
    with pytest.raises(SpecError, match=r"cyclic extends: a.yaml -> b.yaml -> a.yaml"):
        load_spec(a)
    m = write_spec("extends: missing.yaml\nname: m\n", "m.yaml")
    with pytest.raises(
        SpecError, match=r"m.yaml:1:10: extends: base spec 'missing.yaml' not found"
    ):
        load_spec(m)
    o = write_spec("extends: /etc/passwd.yaml\nname: o\n", "o.yaml")
    with pytest.raises(SpecError, match=r"resolves outside the allowed spec directories"):
        load_spec(o, roots=[tmp_path])


def test_library_extends_resolves():
    r = load_spec(ROOT / "specs" / "torchvision" / "resnext50_32x4d.yaml")
    assert (r.spec.block.groups, r.spec.block.width_per_group, r.spec.stride_on) == (32, 4, "3x3")


def test_huge_file_refused(write_spec):
    p = write_spec("# " + "x" * (2 << 20) + "\n")
    with pytest.raises(SpecError, match="larger than 1048576 bytes"):
        load_spec(p)


def test_missing_file():
    with pytest.raises(SpecError, match="no such file"):
        load_spec("definitely/not/here.yaml")
