"""The built wheel is whole: installed into a fresh venv outside the repository, it carries the spec
library (every spec, ``schema.json``), ``py.typed``, the console script and both backends, and its
commands work from another directory.

The wheel is built with the project venv's setuptools (no build isolation: no download) and
installed with ``--no-deps`` into a new venv; its dependencies (pydantic, typer, ...) are borrowed
from the project venv through a ``.pth`` path entry. A path entry does not run the ``.pth`` files
of the directory it adds, so the editable install of this checkout is invisible there: every
``rescompile`` module the tests import comes from the wheel (checked).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest
from spec_cases import ROOT

from rescompile.spec.load import load_spec

LIBRARY = sorted(p.relative_to(ROOT / "specs").as_posix() for p in (ROOT / "specs").rglob("*.yaml"))


def _run(*args: str | Path, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    r = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert r.returncode == 0, f"{args}: exit {r.returncode}\n{r.stdout[-3000:]}{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", dist, ROOT, cwd=dist)  # fmt: skip
    (whl,) = dist.glob("rescompile-*.whl")
    return whl


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A fresh venv holding the wheel; returns its ``bin`` directory."""
    env = tmp_path_factory.mktemp("venv")
    venv.create(env, with_pip=False)
    python = env / "bin" / "python"
    site = Path(
        subprocess.check_output(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
        ).strip()
    )
    (site / "project_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run(sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps",
         "--no-index", wheel, cwd=env)  # fmt: skip
    return env / "bin"


def test_wheel_carries_the_library_schema_and_types(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = sorted(n.removeprefix("rescompile/specs/") for n in names
                     if n.startswith("rescompile/specs/") and n.endswith(".yaml"))  # fmt: skip
    assert shipped == LIBRARY
    assert {"rescompile/specs/schema.json", "rescompile/py.typed"} <= names
    assert "rescompile/backends/torch/__init__.py" in names
    assert "rescompile/backends/flax/__init__.py" in names
    assert not any(n.startswith(("tests/", "specs/", "backends/")) for n in names)
    recipes = sorted(p.name for p in (ROOT / "rescompile" / "recipes").glob("*.yaml"))
    prefix = "rescompile/recipes/"
    shipped_recipes = sorted(
        n.removeprefix(prefix) for n in names if n.startswith(prefix) and n.endswith(".yaml")
    )
    assert shipped_recipes == recipes
    assert "torchvision-resnet50.yaml" in recipes


def test_installed_wheel_audits_reports_and_builds_from_elsewhere(installed, tmp_path):
    where = _run(installed / "python", "-c", "import rescompile; print(rescompile.__file__)",
                 cwd=tmp_path).stdout  # fmt: skip
    assert Path(where.strip()).is_relative_to(installed.parent), where
    assert not Path(where.strip()).is_relative_to(ROOT)

    listed = _run(installed / "rescompile", "specs", cwd=tmp_path).stdout.splitlines()
    assert [line.split()[0] for line in listed] == [n.removesuffix(".yaml") for n in LIBRARY]

    audited = _run(installed / "rescompile", "check", "--all", cwd=tmp_path).stdout
    with_rows = [n for n in LIBRARY if load_spec(ROOT / "specs" / n).spec.paper is not None]
    assert audited.count(" vs ") == len(with_rows) > 20
    assert "FAIL" not in audited and audited.count("PASS") > 100

    doc = json.loads(
        _run(
            installed / "rescompile", "report", "paper/resnet50", "--format", "json", cwd=tmp_path
        ).stdout  # fmt: skip
    )
    assert doc["totals"]["params"] == 25_557_032  # torchvision's num_params (REFERENCE.md)

    # a user's spec extending a library spec by name, built for torch
    (tmp_path / "mine.yaml").write_text("extends: torchvision/resnet50\nname: mine\n")
    _run(installed / "rescompile", "build", "mine.yaml", "--backend", "torch", "-o", "m.py",
         cwd=tmp_path)  # fmt: skip
    source = (tmp_path / "m.py").read_text()
    assert "class Mine(nn.Module):" in source
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.py", "mine.yaml"]

    code = "from rescompile.harness.recipes import load_recipe as r; print(r('fast').lr)"
    recipe = _run(installed / "python", "-c", code, cwd=tmp_path)
    assert recipe.stdout.strip() == "0.1"


def test_check_all_with_an_empty_library_is_an_error(installed, tmp_path):
    """An audit that finds nothing to audit must fail, not pass silently."""
    code = (
        "import sys, rescompile.library as lib; from pathlib import Path; "
        f"lib.root.cache_clear(); lib.root = lambda: Path({str(tmp_path)!r}); "
        "from rescompile.cli import main; sys.argv = ['rescompile', 'check', '--all']; main()"
    )
    r = subprocess.run([installed / "python", "-c", code], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)  # fmt: skip
    assert r.returncode == 1
    assert r.stderr.startswith("error: no specs in the library") and "Traceback" not in r.stderr
