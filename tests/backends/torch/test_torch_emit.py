"""The PyTorch emitter: deterministic, torch-only, formatted, safe, no dead code, IR numbers.

None of these tests needs torch: they read the emitted source as text and as a Python AST.
"""

from __future__ import annotations

import ast
import copy
import hashlib
import json
import os
import subprocess
import sys
import time

import networkx as nx
import pytest
from rescompile.backends.torch import EmitError, emit
from torch_backend_cases import (
    ROOT,
    SPECS,
    VARIANTS,
    compiled,
    emitted,
    spec_id,
    variant_id,
    variant_path,
)

from rescompile import SpecError, compile_spec
from rescompile.compiler import analyse
from rescompile.ir.graph import Op
from rescompile.spec.load import load_spec_text

CIFAR20 = ROOT / "specs" / "paper" / "cifar-resnet20.yaml"
ALL_CASES = [(p, ()) for p in SPECS] + [(variant_path(v), v[1]) for v in VARIANTS]
ALL_IDS = [spec_id(p) for p in SPECS] + [variant_id(v) for v in VARIANTS]


def _src(path, overrides=()):
    return emitted(path, tuple(overrides))


# -- determinism -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", SPECS, ids=spec_id)
def test_byte_identical_for_the_same_ir(path):
    first = _src(path)
    _, fresh = compile_spec(path)  # an independent compile of the same spec
    assert emit(fresh) == first
    assert emit(compiled(path)[1]) == first


def test_byte_identical_across_processes_and_hash_seeds():
    code = (
        "import hashlib, pathlib\n"
        "from rescompile import compile_spec\n"
        "from rescompile.backends.torch import emit\n"
        "for p in sorted(pathlib.Path('specs').rglob('*.yaml')):\n"
        "    if p.parent.name not in ('timm', 'followup'):  # spec_cases.SPECS\n"
        "        print(p, hashlib.sha256(emit(compile_spec(p)[1]).encode()).hexdigest())\n"
    )
    outputs = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        outputs.append(out)
    assert outputs[0] == outputs[1]
    here = {str(p.relative_to(ROOT)): hashlib.sha256(_src(p).encode()).hexdigest() for p in SPECS}
    there = dict(line.split() for line in outputs[0].splitlines())
    assert there == here


# -- what the file contains ----------------------------------------------------------------------


@pytest.mark.parametrize(("path", "overrides"), ALL_CASES, ids=ALL_IDS)
def test_imports_only_torch_and_nothing_dynamic(path, overrides):
    tree = ast.parse(_src(path, overrides))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0
            names = [node.module]
        else:
            continue
        assert all(n == "torch" or n.startswith("torch.") for n in names), names
    called = {
        n.func.id
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
    }
    assert not called & {"eval", "exec", "compile", "__import__", "open", "getattr", "setattr"}
    # Top level: the docstring, imports, functions and classes only.
    body = tree.body
    assert isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
    assert all(
        isinstance(s, ast.Import | ast.ImportFrom | ast.FunctionDef | ast.ClassDef)
        for s in body[1:]
    )


@pytest.mark.parametrize(("path", "overrides"), ALL_CASES, ids=ALL_IDS)
def test_every_number_comes_from_the_ir(path, overrides):
    """Integer literals other than 0 and 1 (layout constants) and block counts are IR numbers."""
    _, g = compiled(path, tuple(overrides))
    known: set[int] = set(g.input_shape) | {g.num_classes}
    for n in g:
        known |= {v for v in n.attrs.values() if type(v) is int}
    for b in g.blocks:
        known |= {b.in_channels, b.width, b.out_channels, b.stride, b.groups}
    tree = ast.parse(_src(path, overrides))
    body = [s for s in tree.body if not isinstance(s, ast.Expr)]  # not the header docstring
    repeats = {
        id(a)
        for s in body
        for n in ast.walk(s)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "range"
        for a in n.args
    }
    ints = {
        n.value
        for s in body
        for n in ast.walk(s)  # run lengths of blocks are counts
        if isinstance(n, ast.Constant) and type(n.value) is int and id(n) not in repeats
    }
    assert ints - {0, 1} <= known, sorted(ints - {0, 1} - known)
    floats = {
        n.value
        for s in body
        for n in ast.walk(s)
        if isinstance(n, ast.Constant) and type(n.value) is float
    }
    ir_floats = {v for n in g for v in n.attrs.values() if type(v) is float}
    assert floats <= ir_floats


@pytest.mark.parametrize("path", SPECS, ids=spec_id)
def test_header_names_spec_hash_and_totals(path):
    _, g = compiled(path)
    src = _src(path)
    doc = ast.get_docstring(ast.parse(src))
    t = g.totals
    assert f"``{g.name}``" in doc
    assert g.spec_hash and g.spec_hash in doc
    assert f"{t['params']:,} trainable" in doc
    assert f"{t['buffers']:,} buffers" in doc
    assert f"MACs:        {t['macs']:,} per image" in doc
    assert f"{2 * t['macs']:,} per image (= 2 x MACs)" in doc
    assert "multiply-accumulates of the convolutions and the fully connected layer" in doc
    assert f"class {g.class_name}(nn.Module):" in src


# -- formatting ----------------------------------------------------------------------------------


def _ruff() -> str:
    ruff = pytest.importorskip("ruff")
    return ruff.find_ruff_bin()


@pytest.fixture(scope="module")
def emitted_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("emitted")
    for (path, overrides), name in zip(ALL_CASES, ALL_IDS, strict=True):
        slug = hashlib.sha1(name.encode()).hexdigest()[:8]
        (d / f"m_{path.stem.replace('-', '_')}_{slug}.py").write_text(_src(path, overrides))
    return d


@pytest.mark.parametrize("line_length", [88, 100])
def test_ruff_format_check_passes(emitted_dir, line_length):
    """Stable under ruff's default line length and under the project's (100)."""
    r = subprocess.run(
        [
            _ruff(),
            "format",
            "--isolated",
            "--check",
            "--diff",
            f"--line-length={line_length}",
            str(emitted_dir),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]


def test_ruff_check_passes(emitted_dir):
    r = subprocess.run(
        [
            _ruff(),
            "check",
            "--isolated",
            "--select",
            "E,F,W,I,B,UP",
            "--target-version",
            "py311",
            "--line-length",
            "88",
            str(emitted_dir),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]


# -- only the code paths the model uses ----------------------------------------------------------


def test_option_a_model_has_no_projection_code():
    src = _src(CIFAR20)
    assert "class ZeroPadShortcut(nn.Module)" in src and "F.pad(x[:, :, ::s, ::s]" in src
    for absent in (
        "downsample",
        "projection",
        "groups",
        "Dropout",
        "nn.AvgPool2d",
        "MaxPool2d",
        "zero_init",
        "eps=",
        "momentum=",
    ):
        assert absent not in src, absent


def test_option_b_model_has_no_padding_code():
    src = _src(ROOT / "specs" / "torchvision" / "resnet18.yaml")
    assert "downsample: nn.Module | None = None" in src
    assert "if self.downsample is not None:" in src
    for absent in ("ZeroPad", "functional", "F.pad", "groups", "Dropout", "self.shortcut"):
        assert absent not in src, absent


def test_option_c_blocks_always_project():
    src = _src(ROOT / "specs" / "variants" / "cifar-resnet56-C.yaml")
    assert "*,\n        downsample: nn.Module,\n" in src
    assert "identity = self.downsample(x)" in src
    assert "is not None" not in src and "identity = x" not in src


def test_plain_net_has_no_addition():
    src = _src(ROOT / "specs" / "paper" / "cifar-plain20.yaml")
    assert "class PlainBasicBlock(nn.Module)" in src
    for absent in ("+=", "identity", "downsample", "self.shortcut", "class BasicBlock"):
        assert absent not in src, absent


def test_grouped_and_wide_bottlenecks():
    src = _src(ROOT / "specs" / "torchvision" / "resnext50_32x4d.yaml")
    assert "groups: int = 1" in src and "groups=groups" in src
    assert "Bottleneck(64, 128, 256, groups=32, downsample=projection(64, 256))" in src
    wide = _src(ROOT / "specs" / "torchvision" / "wide_resnet50_2.yaml")
    assert "groups" not in wide and "Bottleneck(64, 128, 256, downsample=" in wide


def test_resnet_d_downsample_and_deep_stem():
    src = _src(ROOT / "specs" / "variants" / "resnet50-d.yaml")
    assert "def avgpool_projection(" in src
    assert "nn.AvgPool2d(\n" in src
    for arg in (
        "kernel_size=stride,",
        "stride=stride,",
        "ceil_mode=True,",
        "count_include_pad=False,",
    ):
        assert f"\n            {arg}\n" in src
    assert "pool = nn.Identity()" in src  # layer1.0 projects at stride 1
    assert "self.conv1 = nn.Sequential(\n" in src
    assert src.count("nn.ReLU(inplace=True),\n") == 2  # conv1.2 and conv1.5


def test_preact_model_normalises_in_the_head():
    src = _src(ROOT / "specs" / "paper" / "preact-resnet164.yaml")
    assert "class PreActBottleneck(nn.Module)" in src
    assert "self.norm = nn.BatchNorm2d(256)" in src and "x = self.act(x)" in src
    assert "self.bn1 = nn.BatchNorm2d(16)" not in src  # no stem BN in a pre-activation net
    assert "identity = self.downsample(out)" in src  # projects the pre-activated input


def test_bn_hyperparameters_dropout_and_zero_init_only_when_asked():
    default = _src(CIFAR20)
    assert "nn.BatchNorm2d(16)\n" in default and "Dropout" not in default
    assert "nn.init.constant_(m.bn2.weight, 0)" not in default
    src = _src(CIFAR20, ("head.dropout=0.25", "norm.eps=0.001", "norm.momentum=0.01"))
    assert "nn.BatchNorm2d(16, eps=0.001, momentum=0.01)" in src
    assert "self.dropout = nn.Dropout(p=0.25)" in src and "x = self.dropout(x)" in src
    zero = _src(CIFAR20, ("init.zero_init_residual=true",))
    assert "if isinstance(m, BasicBlock):\n" in zero
    assert "nn.init.constant_(m.bn2.weight, 0)" in zero


def test_long_stages_are_written_as_repeats():
    src = _src(ROOT / "specs" / "paper" / "cifar-resnet1202.yaml")
    assert "*[BasicBlock(16, 16) for _ in range(200)]," in src
    assert "*[BasicBlock(32, 32) for _ in range(199)]," in src
    assert len(src.splitlines()) < 200


# -- safety --------------------------------------------------------------------------------------

BASE = """input: {size: 32}
num_classes: 10
stem: cifar
block: basic
stages: [{depth: 1, width: 16}]
"""

HOSTILE = [
    'x"""\nimport os\n"""',
    "os.system('rm -rf /')",
    "a; import os",
    "__import__",
    "_private",
    "résnet",
    "1abc",
    "a b",
    "x" * 100,
    "a\nb",
    "",
    "none",
    "True",
]


@pytest.mark.parametrize("name", HOSTILE, ids=range(len(HOSTILE)))
def test_core_rejects_hostile_spec_names(name):
    with pytest.raises(SpecError):
        load_spec_text(f"name: {json.dumps(name)}\n{BASE}")


def test_names_that_clash_with_emitted_helpers_are_renamed():
    for name in ("F", "BasicBlock", "ZeroPadShortcut", "Projection"):
        r = load_spec_text(
            f"name: {name}\nshortcut: A\n{BASE}".replace(
                "[{depth: 1, width: 16}]",
                "[{depth: 1, width: 16}, {depth: 1, width: 32, stride: 2}]",
            )
        )
        src = emit(analyse(r))
        tree = ast.parse(src)
        top = [s.name for s in tree.body if isinstance(s, ast.ClassDef | ast.FunctionDef)]
        top += [
            a.asname or a.name
            for s in tree.body
            if isinstance(s, ast.Import | ast.ImportFrom)
            for a in s.names
        ]
        assert len(top) == len(set(top)), top
        assert name in top


def _graph():
    return copy.deepcopy(compiled(CIFAR20)[1])


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("class_name", "Bad Name"),
        ("class_name", "os.system"),
        ("class_name", "None"),
        ("class_name", "__class__"),
        ("class_name", "Résnet"),
        ("name", 'x"""\nimport os'),
        ("stem", "cifar'''"),
        ("spec_hash", "abc; import os"),
    ],
)
def test_emitter_rejects_unsafe_graph_fields(field, value):
    g = _graph()
    setattr(g, field, value)
    with pytest.raises(EmitError):
        emit(g)


def _rename(g, old: str, new: str):
    nx.relabel_nodes(g.g, {old: new}, copy=False)
    g[new].name = new
    for b in g.blocks:
        b.nodes = [new if n == old else n for n in b.nodes]
    if g.output == old:
        g.output = new
    return g


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("fc", "fc;import os"),
        ("fc", "forward"),
        ("bn1", "training"),
        ("layer1.0.conv1", "layer1.0.__class__"),
        ("layer1.0.conv1", "layer1.0.conv1\nimport os"),
        ("layer2.0.shortcut", "layer2.0.pad"),
    ],
)
def test_emitter_rejects_unsafe_or_unknown_node_names(old, new):
    with pytest.raises(EmitError):
        emit(_rename(_graph(), old, new))


def test_emitter_rejects_unsafe_stage_names_and_numbers():
    g = _graph()
    g.blocks[0].stage = "layer1; import os"
    with pytest.raises(EmitError):
        emit(g)
    g = _graph()
    g["conv1"].attrs["out_channels"] = "16) or __import__('os'"
    with pytest.raises(EmitError):
        emit(g)
    g = _graph()
    g["layer1.0.bn1"].attrs["eps"] = float("nan")
    with pytest.raises(EmitError):
        emit(g)


def test_emitter_refuses_an_ir_it_cannot_reproduce():
    g = _graph()
    g.blocks[0].stride = 2  # the Block record disagrees with its convolutions
    with pytest.raises(EmitError, match="stride"):
        emit(g)
    g = _graph()
    g["layer1.0.conv1"].attrs["bias"] = "False"
    with pytest.raises(EmitError, match="bias"):
        emit(g)
    g = _graph()
    g["layer1.0.conv1"].attrs["in_channels"] = 8  # disagrees with the Block record
    with pytest.raises(EmitError, match="in_channels"):
        emit(g)


def test_emitter_needs_an_analysed_ir():
    r, _ = compiled(CIFAR20)
    from rescompile.ir.lower import lower

    with pytest.raises(EmitError, match="analysed"):
        emit(lower(r))


# -- the emitter never imports torch, and is fast -----------------------------------------------


def test_emit_does_not_import_torch_and_is_fast():
    code = (
        "import sys, time\n"
        "t = time.perf_counter()\n"
        "import rescompile.backends.torch as b\n"
        "from rescompile import compile_spec\n"
        "_, g = compile_spec('specs/paper/cifar-resnet1202.yaml')\n"
        "t1 = time.perf_counter()\n"
        "src = b.emit(g)\n"
        "t2 = time.perf_counter()\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print(len(g), t2 - t1, t2 - t)\n"
    )
    t = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.split()
    wall = time.perf_counter() - t
    nodes, emit_s = int(out[0]), float(out[1])
    assert nodes > 4000
    # Loose bounds (a shared machine can be slow): about 40 ms and 0.5 s on an idle 2-core CPU;
    # the < 1 s whole-process target is measured by benchmarks/build_speed.py.
    assert emit_s < 1.0, f"emit of {nodes} IR nodes took {emit_s:.3f} s"
    assert wall < 10, wall


def test_emitted_ir_nodes_match_graph_ops():
    """Every conv / BN / linear node is built under its own name (state_dict keys = IR names)."""
    _, g = compiled(CIFAR20)
    src = _src(CIFAR20)
    assert g["layer2.0.shortcut"].op is Op.PAD_CHANNELS and "self.shortcut = shortcut" in src
    assert "self.conv1 = conv3x3(3, 16)" in src
