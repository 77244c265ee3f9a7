"""The flax emitter: deterministic, formatted, ruff-clean, import-light source without dead code."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest
from flax_cases import (
    ROOT,
    SPECS,
    VARIANTS,
    compiled,
    emitted,
    spec_id,
    variant_id,
    variant_path,
)
from rescompile.backends.flax import EmitError, emit

ALL = [(p, ()) for p in SPECS] + [(variant_path(v), v[1]) for v in VARIANTS]
ALL_IDS = [spec_id(p) for p in SPECS] + [variant_id(v) for v in VARIANTS]
RUFF = [sys.executable, "-m", "ruff"]


def _sources(tmp_path) -> list:
    files = []
    for i, (path, overrides) in enumerate(ALL):
        f = tmp_path / f"model_{i:02d}.py"
        f.write_text(emitted(path, overrides))
        files.append(f)
    return files


def test_emitted_files_are_ruff_formatted_and_clean(tmp_path):
    """All specs and variants at once: `ruff format --check` and `ruff check` (project config)."""
    _sources(tmp_path)
    config = ["--config", str(ROOT / "pyproject.toml")]
    fmt = subprocess.run(
        [*RUFF, "format", "--check", *config, str(tmp_path)], capture_output=True, text=True
    )
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr
    lint = subprocess.run(
        [*RUFF, "check", "--no-cache", *config, str(tmp_path)], capture_output=True, text=True
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr


@pytest.mark.parametrize(("path", "overrides"), ALL, ids=ALL_IDS)
def test_emitted_source_shape(path, overrides):
    """Imports only jax and flax.nnx; every top-level name is used; no `pass`, no TODO."""
    source = emitted(path, overrides)
    g = compiled(path, overrides)[1]
    tree = ast.parse(source)
    imports = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imports |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imports |= {f"{node.module}.{a.name}" for a in node.names}
    assert imports <= {"jax", "jax.numpy", "flax.nnx"}
    defined = [n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.ClassDef)]
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    assert [d for d in defined if d not in used and d != g.class_name] == []
    assert defined[-1] == g.class_name
    assert not any(isinstance(n, ast.Pass) for n in ast.walk(tree))
    assert "TODO" not in source


def test_emit_is_deterministic_and_does_not_import_jax():
    code = (
        "import sys\n"
        "from rescompile import compile_spec\n"
        "from rescompile.backends.flax import emit\n"
        f"_, g = compile_spec({str(ROOT / 'specs/variants/resnet50-d.yaml')!r})\n"
        "a, b = emit(g), emit(g)\n"
        "assert a == b\n"
        "print(sorted(m for m in ('jax', 'flax', 'torch') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    path = ROOT / "specs/paper/cifar-resnet56.yaml"
    assert emit(compiled(path)[1]) == emitted(path)


def test_header_names_the_spec_its_hash_and_the_ir_totals():
    path = ROOT / "specs/torchvision/resnet50.yaml"
    g = compiled(path)[1]
    head = emitted(path).split('"""')[1]
    assert "ResNet50" in head or g.class_name in head
    assert g.name in head and g.spec_hash in head
    for key in ("params", "buffers", "macs", "flops"):
        assert f"{g.totals[key]:,}" in head, key


def test_only_the_code_paths_a_model_uses_are_emitted():
    def src(spec, *overrides):
        return emitted(ROOT / "specs" / spec, overrides)

    a = src("paper/cifar-resnet20.yaml")  # option A: zero-padding, no projections
    assert "class ZeroPadShortcut(nnx.Module)" in a and "self.shortcut = shortcut" in a
    assert "downsample" not in a and "AvgPool" not in a and "projection" not in a
    assert "groups" not in a and "Dropout" not in a and "zero_init" not in a
    assert "max_pool" not in a
    b = src("torchvision/resnet50.yaml")  # option B: a projection where the shape changes
    assert "ZeroPad" not in b and "downsample: nnx.Module | None = None" in b
    assert (
        "if self.downsample is not None:" in b and "downsample=projection(64, 256, rngs=rngs)" in b
    )
    assert "max_pool" in b and "Stride" not in b
    c = src("variants/cifar-resnet56-C.yaml")  # option C: projections everywhere, no condition
    assert "*,\n        downsample: nnx.Module,\n" in c and "is not None" not in c
    assert "identity = self.downsample(x)" in c
    plain = src("paper/cifar-plain20.yaml")
    assert "class PlainBasicBlock" in plain and "out + " not in plain
    deep = src("variants/resnet50-d.yaml")
    assert "class AvgPool" in deep and "nnx.relu,\n" in deep  # the deep stem's sequence
    assert "def avgpool_projection(" in deep
    pre = src("paper/preact-resnet164.yaml")
    assert "class PreActBottleneck" in pre and "identity = self.downsample(out)" in pre
    assert "self.norm = BatchNorm" in pre and "self.bn1 = BatchNorm(16" not in pre
    x = src("torchvision/resnext50_32x4d.yaml")
    assert "feature_group_count=groups" in x and "groups=32" in x
    mixed = src("paper/cifar-resnet20.yaml", "stages.1.shortcut=B")
    assert "downsample: nnx.Module | None = None" in mixed
    assert "shortcut: nnx.Module | None = None" in mixed
    assert "downsample=projection(16, 32, 2, rngs=rngs)" in mixed
    assert "shortcut=ZeroPadShortcut(32, 64, 2)" in mixed
    drop = src("paper/cifar-resnet20.yaml", "head.dropout=0.25", "init.zero_init_residual=true")
    assert "nnx.Dropout(0.25, rngs=rngs)" in drop and "zero_init=True" in drop
    v1 = src("torchvision/resnet50.yaml", "stages.2.stride_on=1x1")
    assert "class BottleneckStride3x3(nnx.Module)" in v1
    assert "class BottleneckStride1x1(nnx.Module)" in v1


def test_model_class_names_never_shadow_the_helpers():
    path = ROOT / "specs/paper/cifar-resnet20.yaml"
    for name, helper in (
        ("BatchNorm", "BatchNorm"),
        ("sequential", "Sequential"),
        ("basic-block", "BasicBlock"),
    ):
        _, g = compiled(path, (f"name={name}", "shortcut=B"))
        assert g.class_name == helper
        source = emit(g)
        assert f"class {helper}_(" in source and f"class {helper}(nnx.Module)" in source
        from rescompile.backends.flax import check

        assert all(ok for *_, ok in check(g, source))


def test_emit_refuses_an_unanalysed_graph():
    from rescompile.ir.lower import lower
    from rescompile.spec.load import load_spec

    g = lower(load_spec(ROOT / "specs/paper/cifar-resnet20.yaml"))
    with pytest.raises(EmitError, match="analysed"):
        emit(g)
