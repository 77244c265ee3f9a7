"""The Python API (``import rescompile``) and the spec library's names."""

from __future__ import annotations

import doctest
import json

import pytest
from clirun import run_cli
from spec_cases import ROOT

import rescompile
from rescompile import api, library


@pytest.mark.parametrize("module", [rescompile, api, library], ids=lambda m: m.__name__)
def test_doctests(module, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # library names resolve from anywhere
    failed, attempted = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert attempted > 0 and failed == 0


def test_readme_examples(monkeypatch, tmp_path):
    pytest.importorskip("torch")
    monkeypatch.chdir(tmp_path)
    failed, attempted = doctest.testfile(str(ROOT / "README.md"), module_relative=False)
    assert attempted >= 8 and failed == 0


def test_library_lists_every_spec_in_the_checkout():
    want = sorted(p.relative_to(ROOT / "specs").with_suffix("").as_posix()
                  for p in (ROOT / "specs").rglob("*.yaml"))  # fmt: skip
    assert library.names() == want
    assert library.root().resolve() == (ROOT / "specs").resolve()


@pytest.mark.parametrize(
    "name",
    ["../pyproject", "/etc/passwd", "paper/../../pyproject", "paper/resnet50\n", "", "a" * 300],
)
def test_find_refuses_what_is_not_a_library_name(name):
    assert library.find(name) is None


def test_names_resolve_from_any_directory_and_a_file_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    by_name = json.loads(run_cli("report", "paper/resnet50", "--format", "json").stdout)
    by_path = json.loads(
        run_cli("report", str(ROOT / "specs/paper/resnet50.yaml"), "--format", "json").stdout
    )
    assert by_name == by_path
    # a file of that name in the working directory is the spec, not the library's
    (tmp_path / "paper").mkdir()
    (tmp_path / "paper" / "resnet50").write_text("extends: torchvision/resnet18\nname: local\n")
    r = run_cli("validate", "paper/resnet50")
    assert r.code == 0 and "ok (local, 8 blocks" in r.stdout


def test_extends_reaches_the_library_by_name(tmp_path):
    spec = tmp_path / "mine.yaml"
    spec.write_text("extends: paper/resnet50\nname: mine\nshortcut: C\n")
    resolved, g = rescompile.compile_spec(spec)
    _, base = rescompile.compile_spec("paper/resnet50")
    assert resolved.spec.name == "mine" and g.totals["params"] > base.totals["params"]
    # a relative file of the same name beside the spec wins over the library
    (tmp_path / "paper").mkdir()
    (tmp_path / "paper" / "resnet50.yaml").write_text(
        (ROOT / "specs/torchvision/resnet18.yaml").read_text()
    )
    spec.write_text("extends: paper/resnet50.yaml\nname: mine\n")
    assert len(rescompile.compile_spec(spec)[1].blocks) == 8


def test_unknown_name_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = run_cli("report", "paper/resnet51")
    assert r.code == 1 and r.stderr == (
        "paper/resnet51: no such file; nor a library spec (`rescompile specs` lists them)\n"
        "1 error\n"
    )


def test_specs_command_lists_names_and_descriptions():
    r = run_cli("specs")
    assert r.code == 0
    lines = r.stdout.splitlines()
    assert [line.split()[0] for line in lines] == library.names()
    assert any(line.startswith("torchvision/resnet50 ") and "v1.5" in line for line in lines)


def test_report_formats_agree():
    _, g = rescompile.compile_spec("torchvision/resnet50")
    doc = json.loads(rescompile.report(g, "json"))
    assert doc["totals"]["params"] == 25_557_032  # torchvision's num_params (REFERENCE.md)
    assert doc["totals"]["macs"] == 4_089_184_256  # torchvision's 4.089 GFLOPS, exactly
    assert "25,557,032" in rescompile.report(g, "table")
    with pytest.raises(ValueError):
        rescompile.report(g, "yaml")


def test_audit_and_emit():
    spec, g = rescompile.compile_spec("paper/cifar-resnet56")
    findings = rescompile.audit(spec, g)
    assert findings and {f.status for f in findings} <= {"PASS", "NOTE"}
    assert f"class {g.class_name}(nnx.Module):" in rescompile.emit(g, "flax")
    with pytest.raises(rescompile.UserError, match="unknown backend 'jaxx'"):
        rescompile.emit(g, "jaxx")


@pytest.mark.parametrize("backend", ["torch", "flax"])
def test_build_model_gives_the_ir_s_parameter_count(backend):
    pytest.importorskip(backend)
    _, g = rescompile.compile_spec("paper/cifar-resnet20")
    model = rescompile.build_model(g, backend)
    if backend == "torch":
        count = sum(p.numel() for p in model.parameters())
    else:
        import jax
        from flax import nnx

        count = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert count == g.totals["params"] and round(count / 1e6, 2) == 0.27  # the paper: 0.27M
