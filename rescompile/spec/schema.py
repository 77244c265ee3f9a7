"""JSON Schema and reference documentation of the spec language, both derived from the models.

``json_schema()`` is what editors use (``# yaml-language-server: $schema=../schema.json`` at the top
of every spec in ``specs/``); ``reference_markdown()`` is ``docs/spec-language.md``. Both come from
the pydantic models in :mod:`rescompile.spec.models`, plus what the models cannot say by
themselves: the ``block``/``stem`` string shorthand, the loader's ``extends`` key (with which every
field becomes optional, since the base spec supplies it), one example per field and the checks
made after validation. ``rescompile schema`` prints either; tests fail when the committed copies
are stale.
"""

from __future__ import annotations

import copy
import json
import typing
from typing import Any

from pydantic import BaseModel

from rescompile.spec import models, yamlsafe
from rescompile.spec.models import Spec

DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_ID = "urn:rescompile:spec-schema"  # names the schema wherever a copy of it lives

# Fields whose value may be a bare string meaning {kind: <string>}: (model, field) -> kind enum.
SHORTHAND = {
    ("Spec", "block"): "BlockSpec",
    ("Spec", "stem"): "StemSpec",
    ("StageSpec", "block"): "BlockSpec",
    ("Spec", "downsample"): "DownsampleSpec",
    ("StageSpec", "downsample"): "DownsampleSpec",
    ("BlockSpec", "attention"): "AttentionSpec",
    ("StageSpec", "attention"): "AttentionSpec",
}
# Mapping-valued fields that ``extends`` deep-merges with the base spec's (lists are replaced).
MERGED = ("input", "stem", "block", "downsample", "head", "norm", "init", "paper")

EXTENDS_DESCRIPTION = (
    "path of a base spec (.yaml), relative to this file, or the name of a library spec "
    "(paper/resnet50; `rescompile specs` lists them), looked up when no such file exists; this "
    "spec's fields are deep-merged over the base's (mappings merge, lists such as stages are "
    "replaced). It must stay inside the spec's parent directory, the current directory or the "
    "built-in library; chains are limited to 16 files and may not form a cycle."
)

# One example value per field, shown in the reference and as the schema's "examples".
# tests/test_schema.py checks that every one of them validates in place.
EXAMPLES: dict[tuple[str, str], Any] = {
    ("Spec", "name"): "resnet50",
    ("Spec", "input"): {"channels": 3, "size": 224},
    ("Spec", "num_classes"): 1000,
    ("Spec", "stem"): "imagenet",
    ("Spec", "block"): {"kind": "bottleneck", "groups": 32, "width_per_group": 4},
    ("Spec", "preact"): False,
    ("Spec", "shortcut"): "B",
    ("Spec", "downsample"): "avgpool",
    ("Spec", "stride_on"): "3x3",
    ("Spec", "anti_alias"): "blur",
    ("Spec", "drop_path"): 0.05,
    ("Spec", "output_stride"): 16,
    ("Spec", "stages"): [{"depth": 3, "width": 64}, {"depth": 4, "width": 128, "stride": 2}],
    ("Spec", "head"): {"dropout": 0.2},
    ("Spec", "norm"): {"eps": 1.0e-3, "momentum": 0.01},
    ("Spec", "init"): {"zero_init_residual": True},
    ("Spec", "paper"): {"table": "resnet2016.table1", "row": "50-layer"},
    ("InputSpec", "channels"): 1,
    ("InputSpec", "size"): [160, 192],
    ("StemSpec", "kind"): "deep",
    ("StemSpec", "width"): 32,
    ("StemSpec", "widths"): [24, 32, 64],
    ("StemSpec", "pool"): "conv",
    ("BlockSpec", "kind"): "bottleneck",
    ("BlockSpec", "expansion"): 4,
    ("BlockSpec", "groups"): 32,
    ("BlockSpec", "width_per_group"): 128,
    ("BlockSpec", "attention"): "se",
    ("BlockSpec", "reduce_first"): 2,
    ("BlockSpec", "dropout"): 0.3,
    ("StageSpec", "depth"): 6,
    ("StageSpec", "width"): 256,
    ("StageSpec", "stride"): 2,
    ("StageSpec", "block"): "basic",
    ("StageSpec", "shortcut"): "C",
    ("StageSpec", "downsample"): "avgpool",
    ("StageSpec", "stride_on"): "1x1",
    ("StageSpec", "attention"): "none",
    ("StageSpec", "anti_alias"): "none",
    ("StageSpec", "out_channels"): 19,
    ("StageSpec", "block_widths"): [[47, 18], [52, 22], [64, 35]],
    ("AttentionSpec", "kind"): "se",
    ("AttentionSpec", "rd_ratio"): 0.25,
    ("AttentionSpec", "rd_divisor"): 8,
    ("AttentionSpec", "kernel_size"): 5,
    ("DownsampleSpec", "kind"): "conv",
    ("DownsampleSpec", "kernel_size"): 3,
    ("HeadSpec", "dropout"): 0.5,
    ("NormSpec", "kind"): "group",
    ("NormSpec", "groups"): 32,
    ("NormSpec", "eps"): 1.0e-3,
    ("NormSpec", "momentum"): 0.01,
    ("InitSpec", "zero_init_residual"): True,
    ("PaperRef", "table"): "torchvision",
    ("PaperRef", "row"): "resnext50_32x4d",
}

EXAMPLE_SPEC = """\
# yaml-language-server: $schema=../schema.json
name: resnet50
input: {channels: 3, size: 224}
num_classes: 1000
stem: imagenet
block: bottleneck
shortcut: B
stride_on: 1x1
stages:
  - {depth: 3, width: 64, stride: 1}
  - {depth: 4, width: 128, stride: 2}
  - {depth: 6, width: 256, stride: 2}
  - {depth: 3, width: 512, stride: 2}
paper: {table: resnet2016.table1, row: 50-layer}
"""

EXAMPLE_EXTENDS = """\
# yaml-language-server: $schema=../schema.json
extends: ../torchvision/resnet50.yaml
name: resnet50-d
stem: deep
downsample: avgpool
paper: null
"""

# Rules checked after the schema (by the model's own validators and by lowering and shape
# inference), each reported at the position of the value concerned.
CHECKS = [
    "`name` must not turn into a Python keyword as a class name (`none` -> `None`).",
    f"At most {models.MAX_BLOCKS} blocks in total (the sum of the stages' depths).",
    "Basic blocks take only `groups: 1` and `width_per_group: 64`.",
    "A bottleneck's `width x width_per_group` must be a multiple of 64 "
    "(the inner width is `int(width * width_per_group / 64) * groups`).",
    "Shortcut option A (zero-padded identity) cannot shrink the number of channels; use B or C.",
    "A `deep` stem needs an even width.",
    "`init.zero_init_residual` needs post-activation residual blocks "
    "(not `preact: true`, not `shortcut: none`).",
    "The input must be large enough for every stride: a stride may not exceed the feature map it "
    "applies to, and no feature map may shrink to zero.",
    "`rescompile check` needs `paper`, naming a table and row it knows.",
    "`stem.widths` only with a `deep` stem; `stem.width`, if given too, must equal its last entry.",
    "`norm.groups` only with `norm.kind: group`, and the groups must divide every normalised "
    "width (stem, blocks, projections).",
    "`block.reduce_first` must leave at least one channel, a multiple of the 3x3 conv's groups.",
    "`anti_alias`, `attention` and a `conv` stem pool need post-activation blocks (`preact: "
    "false`); `drop_path` needs residual blocks (no stage with `shortcut: none`).",
    "A stage's `block_widths` has one entry per block, `[first, inner]` for a bottleneck "
    "(both multiples of its groups) or `[first]` for a basic block.",
    "`attention`: `rd_ratio` and `rd_divisor` only with `se`, `kernel_size` (odd) only with "
    "`eca`; `downsample.kernel_size: 3` only with `kind: conv`.",
]

_ORDER = [
    "Spec",
    "InputSpec",
    "StemSpec",
    "BlockSpec",
    "AttentionSpec",
    "StageSpec",
    "DownsampleSpec",
    "HeadSpec",
    "NormSpec",
    "InitSpec",
    "PaperRef",
]


def _models() -> dict[str, type[BaseModel]]:
    out: dict[str, type[BaseModel]] = {}

    def walk(m: type[BaseModel]) -> None:
        out[m.__name__] = m
        for f in m.model_fields.values():
            for arg in _flatten(f.annotation):
                if isinstance(arg, type) and issubclass(arg, BaseModel) and arg.__name__ not in out:
                    walk(arg)

    walk(Spec)
    return {name: out[name] for name in [*_ORDER, *sorted(set(out) - set(_ORDER))] if name in out}


def _flatten(tp: Any) -> list[Any]:
    args = typing.get_args(tp)
    if not args:
        return [tp]
    return [x for a in args for x in _flatten(a)]


def _strip_titles(node: Any) -> None:
    """Drop pydantic's per-property titles ("Width Per Group"): noise in an editor's hover."""
    if isinstance(node, dict):
        props = node.get("properties")
        if isinstance(props, dict):
            for p in props.values():
                if isinstance(p, dict):
                    p.pop("title", None)
        for v in node.values():
            _strip_titles(v)
    elif isinstance(node, list):
        for v in node:
            _strip_titles(v)


def _kind_enum(defs: dict, model: str) -> dict:
    kind = defs[model]["properties"]["kind"]
    return {
        "type": "string",
        "enum": list(kind["enum"]),
        "description": f"shorthand for {{kind: ...}}: {kind['description']}",
    }


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a spec file."""
    return _build()[0]


def _build() -> tuple[dict[str, Any], dict[str, Any]]:
    """The schema, and the strict (no ``extends``) form of each deep-merged top-level field."""
    raw = Spec.model_json_schema(mode="validation")
    _strip_titles(raw)
    defs: dict[str, Any] = raw.pop("$defs")
    defs["Spec"] = raw

    # block/stem: a string shorthand or the mapping.
    for (model, field), target in SHORTHAND.items():
        prop = defs[model]["properties"][field]
        nullable = any(o.get("type") == "null" for o in prop.get("anyOf", []))
        new = {k: v for k, v in prop.items() if k not in ("anyOf", "$ref")}
        new["anyOf"] = [
            _kind_enum(defs, target),
            {"$ref": f"#/$defs/{target}"},
            *([{"type": "null"}] if nullable else []),
        ]
        defs[model]["properties"][field] = new

    defs["Spec"]["properties"]["name"]["pattern"] = f"^{models.NAME_RE.pattern}$"

    # Examples.
    for (model, field), value in EXAMPLES.items():
        defs[model]["properties"][field]["examples"] = [value]

    spec = defs.pop("Spec")
    # With `extends`, every field may come from the base spec: nothing is required, and a
    # deep-merged mapping may give any subset of its fields (the "...Partial" definitions).
    partial_of: dict[str, str] = {}
    for field in MERGED:
        for ref in _refs(spec["properties"][field]):
            name = ref.rsplit("/", 1)[1]
            if defs[name].get("required"):
                partial_of[name] = f"{name}Partial"
    for name, pname in partial_of.items():
        p = copy.deepcopy(defs[name])
        p.pop("required")
        p["title"] = pname
        p["description"] = defs[name]["description"] + " (in a spec with `extends`: any subset)"
        defs[pname] = p
    strict_props = {}
    for field in MERGED:
        prop = spec["properties"][field]
        if any(r.rsplit("/", 1)[1] in partial_of for r in _refs(prop)):
            strict_props[field] = copy.deepcopy(prop)
            _retarget(prop, partial_of)
    required = spec.pop("required")
    properties = {
        "extends": {
            "type": "string",
            "pattern": r"\.ya?ml$|^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$",
            "description": EXTENDS_DESCRIPTION,
            "examples": ["../paper/resnet50.yaml", "torchvision/resnet50"],
        },
        **spec.pop("properties"),
    }
    out = {
        "$schema": DIALECT,
        "$id": SCHEMA_ID,
        "title": "rescompile spec",
        "description": spec.pop("description") + " A rescompile spec file; see "
        "docs/spec-language.md.",
        "type": "object",
        "additionalProperties": False,
        "properties": properties,
        "if": {"required": ["extends"]},
        "then": {},
        # Without extends the full models apply. Only what they add to the partial forms is
        # checked here (required keys, when the value is a mapping), so an error is reported
        # once; and by name patterns, so editors do not offer a field twice.
        "else": {
            "required": required,
            "patternProperties": {
                f"^{field}$": _required_only(prop, defs) for field, prop in strict_props.items()
            },
        },
        "$defs": dict(sorted(defs.items())),
    }
    _describe_enum_values(out)
    return out, strict_props


def _required_only(prop: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """The keys a strict field's mapping must have, checked only when the value is a mapping."""
    (name,) = {
        r.rsplit("/", 1)[1] for r in _refs(prop) if defs[r.rsplit("/", 1)[1]].get("required")
    }
    return {"if": {"type": "object"}, "then": {"required": defs[name]["required"]}}


# One description per value of each closed vocabulary, shown by editors as the value is picked
# (`enumDescriptions`, the keyword VS Code's JSON and YAML language servers read). A vocabulary is
# known by its values: the same word ("none", "conv", "avgpool") means different things in
# different fields.
VOCABULARIES: dict[tuple, dict] = {
    ("imagenet", "cifar", "deep"): {
        "imagenet": "7x7/2 conv + BN + ReLU + 3x3/2 max pool (the paper's ImageNet stem)",
        "cifar": "3x3 conv + BN + ReLU (the paper's CIFAR stem)",
        "deep": "three 3x3 convs, the first stride 2, + max pool (ResNet-C)",
    },
    ("basic", "bottleneck"): {"basic": "two 3x3 convs", "bottleneck": "1x1, 3x3, 1x1 convs"},
    ("A", "B", "C", "none"): {
        "A": "zero-padded identity shortcuts",
        "B": "projection shortcuts where the shape changes, identity elsewhere",
        "C": "projection shortcuts everywhere",
        "none": "no shortcuts: a plain net",
    },
    ("conv", "avgpool"): {
        "conv": "the projection is a strided conv",
        "avgpool": "the projection is an average pool, then a conv (ResNet-D)",
    },
    ("1x1", "3x3"): {
        "1x1": "a bottleneck strides its first 1x1 conv (the paper, v1)",
        "3x3": "a bottleneck strides its 3x3 conv (torchvision, v1.5)",
    },
    ("none", "blur", "avgpool"): {
        "none": "no anti-aliasing: strided convs and pools",
        "blur": "stride-2 convs run at stride 1, then a [1,2,1] blur pool at stride 2",
        "avgpool": "stride-2 convs run at stride 1, then a 2x2 average pool",
    },
    ("none", "se", "eca"): {
        "none": "no channel attention",
        "se": "squeeze-and-excitation (timm's SEModule) after the last norm",
        "eca": "efficient channel attention (timm's EcaModule) after the last norm",
    },
    (1, 3): {1: "a 1x1 projection conv", 3: "a 3x3 projection conv"},
    ("batch", "group"): {"batch": "BatchNorm", "group": "GroupNorm (no running statistics)"},
    (8, 16, 32): {
        8: "the last two stages (of four) dilate instead of striding (by 2 and 4)",
        16: "the last stage (of four) dilates by 2 instead of striding",
        32: "no dilation in a four-stage ImageNet net",
    },
    ("max", "conv", "none"): {
        "max": "3x3/2 max pool",
        "conv": "3x3/2 conv + norm + activation (ResNet-RS)",
        "none": "no stem pool",
    },
}


def _describe_enum_values(node: Any) -> None:
    if isinstance(node, dict):
        values = node.get("enum")
        if values and tuple(values) in VOCABULARIES:
            node["enumDescriptions"] = [VOCABULARIES[tuple(values)][v] for v in values]
        for v in node.values():
            _describe_enum_values(v)
    elif isinstance(node, list):
        for v in node:
            _describe_enum_values(v)


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        here = [node["$ref"]] if "$ref" in node else []
        return here + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def _retarget(node: Any, names: dict[str, str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if ref and ref.rsplit("/", 1)[1] in names:
            node["$ref"] = f"#/$defs/{names[ref.rsplit('/', 1)[1]]}"
        for v in node.values():
            _retarget(v, names)
    elif isinstance(node, list):
        for v in node:
            _retarget(v, names)


def schema_text() -> str:
    """``json_schema()`` as the text of ``specs/schema.json``."""
    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"


# ---------------------------------------------------------------------------------------------
# Reference documentation


def _anchor(model: str) -> str:
    return model.lower()


def _num(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return f"{v:_}" if v >= 10_000 else str(v)


def _type(s: dict) -> str:
    if "$ref" in s:
        name = s["$ref"].rsplit("/", 1)[1]
        return f"[{name}](#{_anchor(name)})"
    if "anyOf" in s:
        parts = [_type(x) for x in s["anyOf"]]
        return " or ".join(dict.fromkeys(parts))
    t = s.get("type")
    if t == "array":
        if "prefixItems" in s:
            return "[" + ", ".join(_type(x) for x in s["prefixItems"]) + "]"
        return f"list of {_type(s['items'])}"
    return {
        "integer": "int",
        "number": "float",
        "boolean": "bool",
        "string": "string",
        "null": "null",
    }.get(t, str(t))


def _allowed(s: dict) -> str:
    if "$ref" in s:
        return ""
    if "anyOf" in s:
        return "; ".join(a for a in (_allowed(x) for x in s["anyOf"]) if a)
    if "enum" in s:
        return ", ".join(f"`{v}`" for v in s["enum"])
    if "pattern" in s:
        return f"matches `{s['pattern']}`"
    lo = ("≥", s["minimum"]) if "minimum" in s else (">", s.get("exclusiveMinimum"))
    hi = ("≤", s["maximum"]) if "maximum" in s else ("<", s.get("exclusiveMaximum"))
    parts = [f"{op} {_num(v)}" for op, v in (lo, hi) if v is not None]
    if s.get("type") == "array":
        if "prefixItems" in s:
            return "each " + _allowed(s["prefixItems"][0])
        inner = _allowed(s["items"])
        count = f"{s.get('minItems', 0)} to {s['maxItems']} items" if "maxItems" in s else ""
        return "; ".join(x for x in (count, inner) if x)
    return ", ".join(parts)


def _yaml_value(v: Any) -> str:
    """A flow-style YAML rendering of a small example value."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_yaml_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "[" + ", ".join(_yaml_value(x) for x in v) + "]"
    if isinstance(v, float):
        return repr(v) if "e" not in repr(v) else f"{v:.1e}"
    return str(v)


# What a field left out (None) means, where that is not "none".
_NONE_DEFAULTS = {
    ("BlockSpec", "expansion"): "1 (basic) or 4 (bottleneck)",
    ("StemSpec", "width"): "the first stage's width",
    ("StemSpec", "widths"): "[w/2, w/2, w] for width w",
    ("StemSpec", "pool"): "`max` (`none` for cifar)",
    ("AttentionSpec", "rd_ratio"): "1/16",
    ("AttentionSpec", "rd_divisor"): "8",
    ("AttentionSpec", "kernel_size"): "from the channel count",
    ("NormSpec", "groups"): "32",
    ("StageSpec", "attention"): "the block's",
    ("StageSpec", "out_channels"): "width x expansion",
    ("StageSpec", "block_widths"): "from width and the block",
}


def _default(model: type[BaseModel], field: str) -> str:
    f = model.model_fields[field]
    if f.is_required():
        return "**required**"
    value = f.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "`" + _yaml_value(value.model_dump()) + "`"
    if value is None:
        if (model.__name__, field) in _NONE_DEFAULTS:
            return _NONE_DEFAULTS[model.__name__, field]
        if model is models.StageSpec:
            return "the model's"
        return "none"
    return f"`{_yaml_value(value)}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def reference_markdown() -> str:
    """The spec-language reference, ``docs/spec-language.md``."""
    schema, strict_props = _build()
    defs = schema["$defs"]
    lines = [
        "# The spec language",
        "",
        "<!-- Generated by `rescompile schema --docs -o docs/spec-language.md` from the pydantic",
        "     models in rescompile/spec/models.py; do not edit by hand. -->",
        "",
        "A spec is one YAML document: a mapping whose fields are listed below. Unknown fields are "
        'errors (with a suggestion for a misspelt one), values are never coerced (`"3"` is not '
        "3, `yes` is not `true`, `010` is an error), and every problem is reported at once as "
        "`file:line:col: field.path: message`.",
        "",
        "Editors that speak the YAML language server protocol (VS Code's YAML extension, for "
        "instance) complete and check specs against `specs/schema.json` when the first line is",
        "",
        "```yaml",
        "# yaml-language-server: $schema=../schema.json",
        "```",
        "",
        "(the path is relative to the spec). `rescompile schema -o FILE` writes the schema; for a "
        "spec kept outside `specs/`, `rescompile schema --install` writes it to your data "
        "directory and prints a first line with its absolute path, which works from any folder.",
        "",
        "## Example",
        "",
        "```yaml",
        EXAMPLE_SPEC.rstrip("\n"),
        "```",
        "",
        "Starting from another spec:",
        "",
        "```yaml",
        EXAMPLE_EXTENDS.rstrip("\n"),
        "```",
        "",
        "Any field can also be set on the command line, validated exactly like the file: "
        "`--set stages.2.depth=23`, `--set block.groups=32`, `--set shortcut=C`.",
        "",
    ]
    for name, model in _models().items():
        d = defs.get(name) if name != "Spec" else {"properties": schema["properties"]}
        title = "Top level" if name == "Spec" else name
        lines += [f'<a id="{_anchor(name)}"></a>', "", f"## {title}", ""]
        lines += [_cell((model.__doc__ or "").strip()), ""]
        if name in {t for t in SHORTHAND.values()}:
            kinds = ", ".join(f"`{k}`" for k in defs[name]["properties"]["kind"]["enum"])
            lines += [
                f"Wherever a {name} is expected, a bare kind ({kinds}) is short for "
                "`{kind: ...}`.",
                "",
            ]
        lines += [
            "| field | type | default | allowed values | description | example |",
            "|---|---|---|---|---|---|",
        ]
        if name == "Spec":
            e = schema["properties"]["extends"]
            lines.append(
                f"| `extends` | string | none | {_cell(_allowed(e))} | "
                f"{_cell(e['description'])} | `{e['examples'][0]}` |"
            )
        props = d["properties"]
        if name == "Spec":  # the strict (no extends) forms name the full models
            props = {**props, **strict_props}
        for field in model.model_fields:
            s = props[field]
            ex = EXAMPLES.get((name, field))
            lines.append(
                f"| `{field}` | {_cell(_type(s))} | {_cell(_default(model, field))} | "
                f"{_cell(_allowed(s))} | {_cell(s.get('description', ''))} | "
                f"{'`' + _cell(_yaml_value(ex)) + '`' if ex is not None else ''} |"
            )
        lines.append("")
    lines += [
        "## Checks after validation",
        "",
        "These rules involve several fields or the whole network, so the schema cannot "
        "express them; `rescompile validate` checks them and points at the value concerned:",
        "",
    ]
    lines += [f"- {c}" for c in CHECKS]
    lines += [
        "",
        "## Safe YAML",
        "",
        "Specs are read with a safe loader: explicit tags (`!!python/object`, ...) and merge keys "
        "(`<<`) are rejected, duplicate keys are errors, `yes`/`no`/`on`/`off` stay strings, a "
        "number with a leading zero is an error, and a file is limited to "
        f"{_num(yamlsafe.MAX_BYTES)} bytes, {yamlsafe.MAX_DEPTH} levels of nesting and "
        f"{_num(yamlsafe.MAX_NODES)} values after alias expansion.",
        "",
    ]
    return "\n".join(lines)
