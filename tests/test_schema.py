"""The JSON Schema and the reference docs: current, valid, and in agreement with the models."""

from __future__ import annotations

import copy
import json

import pytest
from clirun import run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from spec_cases import LIBRARY_SPECS, ROOT, spec_id

from rescompile.spec import yamlsafe
from rescompile.spec.load import load_spec
from rescompile.spec.models import Spec
from rescompile.spec.schema import (
    EXAMPLE_EXTENDS,
    EXAMPLE_SPEC,
    EXAMPLES,
    json_schema,
    reference_markdown,
    schema_text,
)

jsonschema = pytest.importorskip("jsonschema")

SCHEMA_FILE = ROOT / "specs" / "schema.json"
DOCS_FILE = ROOT / "docs" / "spec-language.md"
SCHEMA_LINE = "# yaml-language-server: $schema="
REGEN = (
    "rescompile schema -o specs/schema.json && rescompile schema --docs -o docs/spec-language.md"
)


@pytest.fixture(scope="module")
def validator():
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _messages(validator, data) -> list[str]:
    return [e.message for e in validator.iter_errors(data)]


# -- the committed files are current ---------------------------------------------------------------


def test_committed_schema_is_current():
    assert SCHEMA_FILE.read_text() == schema_text(), f"specs/schema.json is stale; run {REGEN}"


def test_committed_reference_is_current():
    assert DOCS_FILE.read_text() == reference_markdown(), (
        f"docs/spec-language.md is stale; run {REGEN}"
    )


def test_readme_links_the_reference():
    assert "(docs/spec-language.md)" in (ROOT / "README.md").read_text()


def test_schema_command_prints_and_writes(tmp_path):
    r = run_cli("schema")
    assert r.code == 0 and r.stdout == schema_text()
    r = run_cli("schema", "--docs")
    assert r.code == 0 and r.stdout == reference_markdown()
    out = tmp_path / "schema.json"
    r = run_cli("schema", "-o", str(out))
    assert r.code == 0 and r.stderr == f"wrote {out}\n"
    assert json.loads(out.read_text()) == json_schema()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["schema.json"]  # no temp file left


# -- every spec in the library ------------------------------------------------------------------


@pytest.mark.parametrize("path", LIBRARY_SPECS, ids=spec_id)
def test_spec_starts_with_schema_line(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith(SCHEMA_LINE), f"{path}: first line must be '{SCHEMA_LINE}...'"
    target = (path.parent / first[len(SCHEMA_LINE) :].strip()).resolve()
    assert target == SCHEMA_FILE


@pytest.mark.parametrize("path", LIBRARY_SPECS, ids=spec_id)
def test_spec_validates_against_schema(path, validator):
    assert _messages(validator, yamlsafe.load_file(path).data) == []


@pytest.mark.parametrize("path", LIBRARY_SPECS, ids=spec_id)
def test_resolved_spec_validates_against_strict_schema(path, validator):
    """After ``extends`` is resolved, every spec also passes the no-``extends`` branch."""
    data = load_spec(path).data
    assert "extends" not in data
    assert _messages(validator, data) == []


# -- the schema says what the models say ----------------------------------------------------------


def test_examples_in_docs_validate(validator):
    for text in (EXAMPLE_SPEC,):
        data = yamlsafe.load_text(text).data
        Spec.model_validate(data)
        assert _messages(validator, data) == []
    data = yamlsafe.load_text(EXAMPLE_EXTENDS).data
    assert _messages(validator, data) == []
    assert "extends" in data and "stages" not in data


def _base() -> dict:
    return yamlsafe.load_text(EXAMPLE_SPEC).data


_PARENT = {
    "Spec": (),
    "InputSpec": ("input",),
    "StemSpec": ("stem",),
    "BlockSpec": ("block",),
    "StageSpec": ("stages", 0),
    "HeadSpec": ("head",),
    "NormSpec": ("norm",),
    "InitSpec": ("init",),
    "PaperRef": ("paper",),
    "AttentionSpec": ("block", "attention"),
    "DownsampleSpec": ("downsample",),
}
# The mapping an example of a field is placed into, where the field needs a particular kind.
_SIBLINGS = {
    "AttentionSpec": {"kind": "se"},
    "DownsampleSpec": {"kind": "conv"},
    ("AttentionSpec", "kernel_size"): {"kind": "eca"},
}


@pytest.mark.parametrize("key", list(EXAMPLES), ids=lambda k: ".".join(k))
def test_every_field_example_validates_in_place(key, validator):
    model, field = key
    data = _base()
    node = data
    for part in _PARENT[model]:
        if isinstance(node, dict) and isinstance(node.get(part), str):
            node[part] = {"kind": node[part]}  # stem: imagenet -> {kind: imagenet}
        elif isinstance(node, dict) and part not in node:
            node[part] = {}  # head, norm, init: all defaults
        node = node[part]
    node.update(copy.deepcopy(_SIBLINGS.get(key, _SIBLINGS.get(model, {}))))
    node[field] = copy.deepcopy(EXAMPLES[key])
    Spec.model_validate(data)
    assert _messages(validator, data) == []


def test_every_field_has_an_example_and_a_description():
    schema = json_schema()
    for model, field in EXAMPLES:
        props = schema["properties"] if model == "Spec" else schema["$defs"][model]["properties"]
        assert props[field].get("description"), (model, field)
    from rescompile.spec.schema import _models

    for name, model in _models().items():
        for field in model.model_fields:
            assert (name, field) in EXAMPLES, f"no example for {name}.{field}"


@pytest.mark.parametrize(
    "mutate,expected",
    [
        (lambda d: d.pop("name"), "'name' is a required property"),
        (lambda d: d.update(blok="basic"), "Additional properties are not allowed"),
        (lambda d: d.update(block="basik"), "is not valid under any of the given schemas"),
        (lambda d: d.update(name="1net"), "does not match"),
        (lambda d: d.update(num_classes="10"), "is not of type 'integer'"),
        (lambda d: d.update(preact="yes"), "is not of type 'boolean'"),
        (lambda d: d["stages"].append({"depth": 1}), "'width' is a required property"),
        (lambda d: d["stages"][0].update(depth=0), "less than the minimum of 1"),
        (lambda d: d["stages"][0].update(stride=65), "greater than the maximum of 64"),
        (lambda d: d.update(input={"size": [1, 2, 3]}), "is not valid under any"),
        (lambda d: d.update(paper={"table": "t\nimport os", "row": "r"}), "not valid under any"),
        (lambda d: d.update(norm={"eps": 0}), "less than or equal to the minimum of 0"),
        (lambda d: d.update(stem={"width": 32}), "'kind' is a required property"),
    ],
)
def test_schema_rejects_what_the_models_reject(mutate, expected, validator):
    data = _base()
    mutate(data)
    with pytest.raises(Exception):  # noqa: B017 - pydantic's ValidationError
        Spec.model_validate(data)
    msgs = _messages(validator, data)
    assert any(expected in m for m in msgs), msgs


def test_extends_relaxes_required_fields_only(validator):
    assert _messages(validator, {"extends": "base.yaml", "stem": {"width": 32}}) == []
    assert _messages(validator, {"extends": "base.yaml", "block": {"groups": 32}}) == []
    assert _messages(validator, {"extends": "base.yaml", "blok": "basic"}) != []
    assert _messages(validator, {"extends": "base.json"}) != []
    assert _messages(validator, {"extends": "b.yaml", "stages": [{"depth": 1}]}) != []


# -- property: whatever the models accept, the schema accepts --------------------------------------

_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 70_000),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.sampled_from(
        [
            "basic",
            "bottleneck",
            "imagenet",
            "cifar",
            "deep",
            "A",
            "B",
            "C",
            "none",
            "conv",
            "avgpool",
            "1x1",
            "3x3",
            "net",
            "x-1",
        ]
    ),
    st.lists(st.integers(0, 300), max_size=3),
)


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(path=st.sampled_from(LIBRARY_SPECS), data=st.data())
def test_model_valid_implies_schema_valid(path, data, validator):
    doc = copy.deepcopy(load_spec(path).data)
    for _ in range(data.draw(st.integers(1, 3))):
        node = doc
        while isinstance(node, dict | list) and data.draw(st.booleans()):
            keys = list(node) if isinstance(node, dict) else list(range(len(node)))
            if not keys:
                break
            k = data.draw(st.sampled_from(keys))
            if not isinstance(node[k], dict | list):
                break
            node = node[k]
        if isinstance(node, dict) and node:
            k = data.draw(st.sampled_from(sorted(node)))
            node[k] = data.draw(_values)
    try:
        Spec.model_validate(doc)
    except Exception:
        return
    assert _messages(validator, doc) == []


def test_schema_has_an_id_and_installs_for_specs_kept_anywhere(tmp_path, monkeypatch):
    assert json_schema()["$id"] == "urn:rescompile:spec-schema"
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    r = run_cli("schema", "--install")
    installed = tmp_path / "data" / "rescompile" / "schema.json"
    assert r.code == 0 and r.stderr == f"wrote {installed}\n"
    assert installed.read_text() == schema_text()
    assert r.stdout == f"{SCHEMA_LINE}{installed.as_uri()}\n"  # absolute: works from any folder
    out = tmp_path / "elsewhere" / "s.json"
    r = run_cli("schema", "--install", "-o", str(out))
    assert r.code == 0 and r.stdout == f"{SCHEMA_LINE}{out.as_uri()}\n"
    r = run_cli("schema", "--install", "--docs")
    assert r.code == 1 and r.stderr.startswith("error: --install writes the JSON Schema")


def test_every_enum_value_has_its_own_description():
    def enums(node):
        if isinstance(node, dict):
            if "enum" in node:
                yield node
            for v in node.values():
                yield from enums(v)
        elif isinstance(node, list):
            for v in node:
                yield from enums(v)

    found = list(enums(json_schema()))
    assert len(found) > 10
    for node in found:
        descriptions = node["enumDescriptions"]
        assert len(descriptions) == len(node["enum"]) == len(set(descriptions)), node
        assert all(d.strip() for d in descriptions)


def test_each_error_is_reported_once_and_each_field_declared_once(validator):
    """No property is declared twice (editors would offer it twice; validators would report
    its errors twice): the no-extends rules only add required keys, by name pattern."""
    schema = json_schema()
    assert "properties" not in schema["then"] and "properties" not in schema["else"]
    for bad in (
        {"stem": 5},
        {"stem": {"width": 32}},
        {"input": {}},
        {"input": {"size": "x"}},
        {"block": {"kind": "basik"}},
        {"paper": {"table": "resnet2016.table1"}},
    ):
        data = {**_base(), **bad}
        msgs = _messages(validator, data)
        assert len(msgs) == 1, (bad, msgs)
