"""Hostile input, generated: mutations of every spec in specs/ through the whole command line.

Each case takes a spec from the library (its ``extends`` resolved), damages it (deletes, renames,
retypes or duplicates fields, puts extreme numbers, deep nesting, unicode, huge strings, aliases,
tags or raw garbage in it, adds ``--set`` overrides), writes it to a fresh directory and runs
``validate``, then ``report``, ``check``, ``graph`` and ``build`` (torch, when the backend is
importable) in-process through the real entry point. Every outcome must be exit 0, or exit 1 with
every stderr line a positioned diagnostic or an ``error:`` line; never an uncaught exception,
never a hang (``CPU_LIMIT_S``/``WALL_LIMIT_S`` per command), and never a file anywhere but the
requested output.
Emitted sources are parsed with ``ast`` and may contain only the expected imports and constructs.

The default run makes about 1,100 cases (``derandomize=True``: the same ones every run, no
example database); ``-m slow`` runs 20,000 more (``RESCOMPILE_SLOW_CASES=N`` to change).
"""

from __future__ import annotations

import ast
import copy
import functools
import importlib
import itertools
import os
import re
import shutil
from pathlib import Path

import pytest
import yaml
from clirun import Result, run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from spec_cases import LIBRARY_SPECS, SPECS, spec_id

from rescompile.compiler import compile_spec
from rescompile.ir.features import unsupported
from rescompile.spec.load import load_spec

# Hang checks, not speed claims (those live in benchmarks/). The slowest command on a spec of the
# library's size is `report --format table --depth layer` of cifar-resnet1202 (3,600 rows): 3.1 s of
# CPU on a 2-core Xeon, idle. The bounds sit an order of magnitude above it; the wall clock, which
# also counts every other process on a busy machine, only has to rule out a command that blocks.
CPU_LIMIT_S = 30.0
WALL_LIMIT_S = 300.0
# Cases per default run, per property (the slow variant adds SLOW_CASES mutated specs).
BUDGET = {"mutated": 750, "plausible": 200, "raw": 100, "names": 80}
SLOW_CASES = int(os.environ.get("RESCOMPILE_SLOW_CASES", "20000"))


def _cases(n: int):
    return settings(
        max_examples=n,
        derandomize=True,
        database=None,
        deadline=None,
        print_blob=False,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.function_scoped_fixture,
            HealthCheck.filter_too_much,
            HealthCheck.large_base_example,
        ],
    )


@functools.cache
def _bases() -> list[tuple[str, dict]]:
    return [(spec_id(p), load_spec(p).data) for p in LIBRARY_SPECS]


@functools.cache
def torch_backend():
    """The torch backend module, or None when it is not (yet) importable."""
    try:
        mod = importlib.import_module("rescompile.backends.torch")
    except ImportError:
        return None
    return mod if callable(getattr(mod, "emit", None)) else None


# -- the emitted-source check -----------------------------------------------------------------

# math: the ECA module computes its kernel from the channel count with timm's math.log
ALLOWED_IMPORTS = {"__future__", "math", "torch", "torch.nn", "torch.nn.functional"}
FORBIDDEN_NAMES = {
    "exec",
    "eval",
    "compile",
    "open",
    "__import__",
    "getattr",
    "setattr",
    "delattr",
    "globals",
    "locals",
    "vars",
    "input",
    "breakpoint",
    "exit",
    "quit",
    "help",
    "memoryview",
    "os",
    "sys",
    "subprocess",
    "importlib",
    "builtins",
    "pickle",
    "marshal",
    "shutil",
    "socket",
    "ctypes",
    "__builtins__",
    "__loader__",
    "__spec__",
    "__file__",
}
FORBIDDEN_ATTRS = {
    "system",
    "popen",
    "spawnv",
    "exec_module",
    "load_module",
    "load",
    "loads",
    "read_text",
    "write_text",
    "unlink",
    "rmtree",
}
ALLOWED_DUNDER_ATTRS = {"__init__"}
# Non-docstring string constants: only short, inert words (init modes, nonlinearity names ...).
SAFE_STRING = re.compile(r"[A-Za-z0-9_.\- ]{0,64}")
_TOP_LEVEL = (
    ast.Import,
    ast.ImportFrom,
    ast.ClassDef,
    ast.FunctionDef,
    ast.Expr,
    ast.Assign,
    ast.AnnAssign,
)


def _docstrings(tree: ast.Module) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                out.add(id(body[0].value))
    return out


def check_emitted_source(source: str, class_name: str) -> None:
    """Assert that ``source`` (a torch backend's output) contains only expected constructs."""
    tree = ast.parse(source)
    docs = _docstrings(tree)
    imported: set[str] = set()
    defined: list[str] = []
    for stmt in tree.body:
        where = f"line {stmt.lineno}"
        assert isinstance(stmt, _TOP_LEVEL), f"{where}: unexpected top-level {type(stmt).__name__}"
        if isinstance(stmt, ast.Expr):
            assert id(stmt.value) in docs, (
                f"{where}: a top-level expression that is not a docstring"
            )
        if isinstance(stmt, ast.Assign | ast.AnnAssign):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            assert all(isinstance(t, ast.Name) for t in targets), f"{where}: complex assignment"
            defined += [t.id for t in targets]  # type: ignore[union-attr]
            value = stmt.value
            assert value is None or all(
                isinstance(n, ast.Constant | ast.Tuple | ast.List | ast.Load | ast.Name)
                for n in ast.walk(value)
            ), f"{where}: a top-level assignment that computes"
        if isinstance(stmt, ast.ClassDef | ast.FunctionDef):
            defined.append(stmt.name)
    for node in ast.walk(tree):
        where = f"line {getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            for alias in node.names:
                assert alias.name in ALLOWED_IMPORTS, f"{where}: import {alias.name}"
                imported.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0 and node.module in ALLOWED_IMPORTS, (
                f"{where}: from {node.module} import ..."
            )
            for alias in node.names:
                assert alias.name != "*", f"{where}: star import"
                imported.add(alias.asname or alias.name)
        elif isinstance(node, ast.Name):
            assert node.id not in FORBIDDEN_NAMES, f"{where}: uses {node.id}"
            assert not (node.id.startswith("__") and node.id != "__name__"), (
                f"{where}: dunder name {node.id}"
            )
        elif isinstance(node, ast.Attribute):
            assert node.attr not in FORBIDDEN_ATTRS, f"{where}: .{node.attr}"
            assert not node.attr.startswith("__") or node.attr in ALLOWED_DUNDER_ATTRS, (
                f"{where}: dunder attribute .{node.attr}"
            )
        elif isinstance(node, ast.Constant):
            if isinstance(node.value, bytes):
                raise AssertionError(f"{where}: a bytes literal")
            if isinstance(node.value, str) and id(node) not in docs:
                assert SAFE_STRING.fullmatch(node.value), f"{where}: string literal {node.value!r}"
        elif isinstance(
            node,
            ast.JoinedStr
            | ast.Global
            | ast.Nonlocal
            | ast.AsyncFunctionDef
            | ast.Await
            | ast.Yield
            | ast.YieldFrom,
        ):
            raise AssertionError(f"{where}: unexpected {type(node).__name__}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            assert node.func.id not in FORBIDDEN_NAMES, f"{where}: calls {node.func.id}"
    assert len(defined) == len(set(defined)), f"a top-level name is defined twice: {defined}"
    assert not imported & set(defined), f"a definition shadows an import: {imported & set(defined)}"
    classes = {s.name: s for s in tree.body if isinstance(s, ast.ClassDef)}
    assert class_name in classes, f"no class {class_name}"
    compile(tree, "<emitted>", "exec")  # and it compiles


@pytest.mark.parametrize("path", SPECS, ids=spec_id)
def test_emitted_source_has_only_expected_constructs(path):
    backend = torch_backend()
    if backend is None:
        pytest.skip("rescompile.backends.torch is not importable yet")
    _, g = compile_spec(path)
    check_emitted_source(backend.emit(g), g.class_name)


@pytest.mark.parametrize(
    "name",
    [
        "f",
        "nn",
        "torch",
        "bottleneck",
        "basic-block",
        "zero_pad_shortcut",
        "int",
        "self",
        "x",
        "super",
        "Module",
        "forward",
        "range",
    ],
)
def test_emitted_source_with_colliding_names(name):
    """A spec name that turns into a class name the emitted module already uses."""
    backend = torch_backend()
    if backend is None:
        pytest.skip("rescompile.backends.torch is not importable yet")
    _, g = compile_spec(SPECS[0], [f"name={name}"])
    check_emitted_source(backend.emit(g), g.class_name)


def test_the_checker_rejects_what_it_should():
    ok = 'import torch\nfrom torch import nn\n\n\nclass Net(nn.Module):\n    """Doc."""\n'
    check_emitted_source(ok, "Net")
    for bad in [
        "import os\n",
        "from subprocess import run\n",
        "x = eval('1')\n",
        "print(1)\n",
        "class Net:\n    def f(self):\n        return getattr(self, 'x')\n",
        "class Net:\n    def f(self):\n        return self.__class__\n",
        "class Net:\n    s = 'a\\nimport os'\n",
        "class Net:\n    s = f'{1}'\n",
        "import torch.nn.functional as F\nclass F:\n    pass\n",
        "from torch import nn as __builtins__\n",
    ]:
        with pytest.raises(AssertionError):
            check_emitted_source(bad, "Net")


# -- strategies ---------------------------------------------------------------------------------

FIELDS = sorted(
    {
        "name",
        "input",
        "channels",
        "size",
        "num_classes",
        "stem",
        "kind",
        "width",
        "block",
        "expansion",
        "groups",
        "width_per_group",
        "preact",
        "shortcut",
        "downsample",
        "stride_on",
        "stages",
        "depth",
        "stride",
        "head",
        "dropout",
        "norm",
        "eps",
        "momentum",
        "init",
        "zero_init_residual",
        "paper",
        "table",
        "row",
        "extends",
    }
)
VOCAB = [
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
    "resnet2016.table1",
    "torchvision",
    "50-layer",
    "resnet50",
    "ResNet-20",
    "yes",
    "no",
    "on",
    "off",
    "~",
    "null",
    "true",
    "010",
    "0x10",
    "1e3",
    ".inf",
]
INJECTIONS = [
    "x\"); import os; os.system('id') #",
    "Net\nimport os",
    "__import__('os').system('id')",
    "'''",
    '"""',
    "\\",
    "${HOME}",
    "$(id)",
    "`id`",
    "; rm -rf /",
    "../../etc/passwd",
    "/etc/passwd.yaml",
    "../../../../../../etc/shadow.yaml",
    "{{7*7}}",
    "<script>x</script>",
    "\x00",
    "\x1b[31mred",
    "\u202eevil\u202c",
    "e\u0301",
    "ＲｅｓＮｅｔ",
    "нет",
    "🚀",
    "\ufeffname",
    "a" * 65,
    "None",
    "True",
    "__class__",
    "self",
    "torch",
    "F",
    "nn",
    "class",
    "lambda",
]
EXTREME_INTS = [
    0,
    -1,
    1,
    2,
    3,
    63,
    64,
    65,
    1999,
    2000,
    2001,
    65535,
    65536,
    65537,
    10**7,
    10**7 + 1,
    2**31,
    2**63,
    -(2**63),
    10**30,
    10**99,
    10**100,
    10**400,
]
EXTREME_FLOATS = [
    0.0,
    -0.0,
    1e-300,
    5e-324,
    0.5,
    0.999999,
    1.0,
    1.5,
    1e300,
    1e308,
    float("inf"),
    float("-inf"),
    float("nan"),
]

keys = st.one_of(
    st.sampled_from(FIELDS),
    st.text(max_size=12),
    st.sampled_from(["<<", "", "a.b", "0", "__class__", "extends", "exec", "~"]),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from(EXTREME_INTS),
    st.integers(-(2**70), 2**70),
    st.integers(-3, 300),
    st.sampled_from(EXTREME_FLOATS),
    st.floats(),
    st.sampled_from(VOCAB),
    st.sampled_from(INJECTIONS),
    st.text(max_size=30),
    st.text(
        alphabet=st.characters(codec="utf-8", categories=["Cc", "Cf", "Zs", "Zl", "Zp", "So"]),
        max_size=10,
    ),
)


def _containers(inner):
    return st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4))


values = st.recursive(scalars, _containers, max_leaves=12)


def _nested(depth: int, leaf, kind: str):
    for _ in range(depth):
        leaf = [leaf] if kind == "list" else {"k": leaf}
    return leaf


def _laughs(levels: int, width: int):
    node: object = "lol"
    for _ in range(levels):
        node = [node] * width  # the same object: yaml.dump writes anchors and aliases
    return node


def _slots(doc) -> list[tuple[object, object]]:
    """(container, key-or-index) pairs of the tree, each shared container visited once."""
    out: list[tuple[object, object]] = []
    seen: set[int] = set()
    stack = [doc]
    while stack and len(out) < 500:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for k, v in list(items)[:100]:
            out.append((node, k))
            if isinstance(v, dict | list):
                stack.append(v)
    return out


@st.composite
def mutated_doc(draw) -> tuple[str, dict | list]:
    name, base = draw(st.sampled_from(_bases()))
    doc = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 4))):
        slots = _slots(doc)
        if not slots:
            break
        node, k = slots[draw(st.integers(0, len(slots) - 1))]
        op = draw(
            st.sampled_from(
                [
                    "delete",
                    "rename",
                    "retype",
                    "retype",
                    "plausible",
                    "plausible",
                    "plausible",
                    "extreme",
                    "nest",
                    "unicode",
                    "huge",
                    "alias",
                    "laughs",
                    "recursive",
                    "add",
                ]
            )
        )
        if op == "delete":
            if isinstance(node, dict):
                del node[k]
            else:
                node.pop(k)  # type: ignore[call-overload]
        elif op == "rename" and isinstance(node, dict):
            key = str(k)
            new = draw(
                st.one_of(
                    keys,
                    st.sampled_from(
                        [key[:-1], key + "s", key.upper(), key.replace("_", "-"), key[1:] + key[:1]]
                    ),
                )
            )
            if new not in node:
                node[new] = node.pop(k)
        elif op == "add" and isinstance(node, dict):
            node[draw(keys)] = draw(values)
        elif op == "plausible":  # a value of the right kind, often valid: exercises lowering
            node[k] = draw(  # type: ignore[index]
                st.one_of(
                    st.sampled_from([1, 2, 3, 4, 7, 8, 16, 32, 48, 64, 96, 128, 256, 512]),
                    st.integers(1, 300),
                    st.sampled_from(VOCAB[:17]),
                    st.booleans(),
                    st.sampled_from([0.0, 0.1, 0.5, 1e-5, 0.9]),
                )
            )
        elif op == "extreme":
            node[k] = draw(st.sampled_from(EXTREME_INTS + EXTREME_FLOATS))  # type: ignore[index]
        elif op == "nest":
            depth = draw(st.integers(1, 60))
            node[k] = _nested(depth, node[k], draw(st.sampled_from(["list", "dict"])))  # type: ignore[index]
        elif op == "unicode":
            node[k] = draw(st.one_of(st.text(min_size=1, max_size=40), st.sampled_from(INJECTIONS)))  # type: ignore[index]
        elif op == "huge":
            n = draw(st.sampled_from([100, 10_000, 300_000, 1_100_000]))
            node[k] = draw(st.sampled_from(["A", "é", "9", "["])) * n  # type: ignore[index]
        elif op == "alias":
            other, k2 = slots[draw(st.integers(0, len(slots) - 1))]
            if other is not node or k2 != k:
                node[k] = other[k2]  # type: ignore[index]  # shared: dumped as an alias
        elif op == "laughs":
            node[k] = _laughs(draw(st.integers(1, 7)), draw(st.integers(2, 10)))  # type: ignore[index]
        elif op == "recursive":
            loop: list = []
            loop.append(loop)
            node[k] = loop  # type: ignore[index]
        else:  # retype
            node[k] = draw(values)  # type: ignore[index]
    return name, doc


def _dump(draw, doc) -> str:
    flow = draw(st.sampled_from([None, False, True]))
    try:
        return yaml.dump(
            doc,
            Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper),
            sort_keys=False,
            default_flow_style=flow,
            allow_unicode=draw(st.booleans()),
            width=draw(st.sampled_from([80, 10**6])),
        )
    except (yaml.YAMLError, RecursionError, ValueError):  # e.g. a structure too deep to dump
        return "name: net\n"


TEXT_OPS = ["none", "none", "duplicate", "tag", "insert", "truncate", "tab", "bom", "anchor"]


@st.composite
def spec_text(draw) -> tuple[str, object, str]:
    name, doc = draw(mutated_doc())
    text = _dump(draw, doc)
    lines = text.splitlines(keepends=True) or ["\n"]
    op = draw(st.sampled_from(TEXT_OPS))
    i = draw(st.integers(0, len(lines) - 1))
    if op == "duplicate":
        lines.insert(i, lines[i])
    elif op == "tag":
        tag = draw(
            st.sampled_from(
                [
                    "!!python/object/apply:os.system ['id'] ",
                    "!!binary ",
                    "!!python/name:os.system ",
                    "!custom ",
                    "!!str ",
                    "!!int ",
                ]
            )
        )
        lines[i] = re.sub(r":( |$)", f": {tag}", lines[i], count=1)
    elif op == "insert":
        junk = draw(st.text(max_size=8))
        pos = draw(st.integers(0, len(lines[i])))
        lines[i] = lines[i][:pos] + junk + lines[i][pos:]
    elif op == "truncate":
        lines = lines[: i + 1]
        lines[-1] = lines[-1][: draw(st.integers(0, len(lines[-1])))]
    elif op == "tab":
        lines[i] = lines[i].replace("  ", "\t", 1)
    elif op == "bom":
        lines[0] = "\ufeff" + lines[0]
    elif op == "anchor":
        lines[i] = re.sub(r": (\S)", r": &a \1", lines[i], count=1)
        lines.insert(draw(st.integers(0, len(lines))), "extra: *a\n")
    return name, doc, "".join(lines)


set_values = st.one_of(
    st.sampled_from(
        [
            "1",
            "0",
            "-1",
            "2001",
            "65537",
            "true",
            "no",
            "null",
            "[1, 2]",
            "{}",
            "[",
            "'",
            "{kind: bottleneck}",
            "basic",
            "C",
            "!!python/name:os.system",
            "&a [*a]",
            "x\ny",
            "1e999",
            "9" * 200,
        ]
    ),
    st.text(max_size=20),
)


@st.composite
def overrides(draw, doc_paths: list[str]) -> list[str]:
    out: list[str] = []
    for _ in range(draw(st.integers(0, 2))):
        key = draw(
            st.one_of(
                st.sampled_from(doc_paths or ["name"]),
                st.text(max_size=12).map(lambda k: "x" + k if k[:1] == "-" else k),
                st.sampled_from(
                    [
                        "stages.99.depth",
                        "stages.-1.depth",
                        "a.b.c.d",
                        "stages.0.block.kind",
                        "block.groups",
                        "",
                        "=",
                        "name.x",
                        "stages.²",
                        "stages." + "9" * 30,
                    ]
                ),
            )
        )
        value = draw(set_values)
        out += ["--set", f"{key}={value}" if draw(st.integers(0, 9)) else key]
    return out


def _dotted_paths(doc, prefix: str = "", out: list[str] | None = None) -> list[str]:
    """Up to 200 dotted paths into the tree (what ``--set`` keys look like)."""
    out = [] if out is None else out
    items = (
        doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else []
    )
    for k, v in list(items)[:20]:
        if len(out) >= 200 or prefix.count(".") > 6:
            break
        out.append(f"{prefix}{k}")
        if isinstance(v, dict | list):
            _dotted_paths(v, f"{prefix}{k}.", out)
    return out


# -- running a case -------------------------------------------------------------------------------

_counter = itertools.count()


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _run(*args: str) -> Result:
    r = run_cli(*args)
    r.assert_clean()
    assert r.cpu_seconds < CPU_LIMIT_S, f"{args[0]} took {r.cpu_seconds:.2f} s of CPU: a hang?"
    assert r.seconds < WALL_LIMIT_S, f"{args[0]} took {r.seconds:.2f} s: blocked?"
    return r


def run_case(workdir: Path, text: str, sets: list[str], choice: int) -> None:
    case = workdir / f"case{next(_counter)}"
    case.mkdir()
    spec = case / "spec.yaml"
    spec.write_bytes(text.encode("utf-8", "surrogatepass"))
    try:
        v = _run("validate", str(spec), *sets)
        fmt = ["table", "json", "csv", "markdown", "html"][choice % 5]
        depth = ["stage", "block", "layer"][choice % 3]
        commands = [
            ["report", str(spec), *sets, "--format", fmt, "--depth", depth],
            ["check", str(spec), *sets],
            ["graph", str(spec), *sets, "--format", "dot", "--depth", depth],
        ]
        out = case / "model.py"
        if torch_backend() is not None:
            commands.append(["build", str(spec), *sets, "--backend", "torch", "-o", str(out)])
        if v.code == 1:  # any command fails the same way (checked on a third of the cases)
            if choice % 3 == 0:
                r = _run(*commands[choice // 3 % len(commands)])
                assert r.code == 1 and r.stderr == v.stderr
            assert _files(case) == {"spec.yaml"}
            return
        refused = False
        for argv in commands:
            r = _run(*argv)
            if argv[0] in ("report", "graph"):
                assert r.code == 0, r.stderr
            if argv[0] == "build" and unsupported(
                compile_spec(spec, sets[1::2])[1], torch_backend()
            ):
                # a feature the torch backend does not emit yet: one clear line, no file
                assert r.code == 1 and r.stdout == "", r.stderr
                errors = [x for x in r.stderr_lines() if not x.startswith("warning: ")]
                assert len(errors) == 1, r.stderr
                assert errors[0].startswith("error: the torch backend cannot emit "), r.stderr
                refused = True
            elif argv[0] == "build":
                assert r.code == 0, r.stderr
                *warnings, wrote = r.stderr_lines()  # warnings: settings that change nothing
                assert wrote == f"wrote {out}" and all(w.startswith("warning: ") for w in warnings)
                _, g = compile_spec(spec, sets[1::2])
                check_emitted_source(out.read_text(), g.class_name)
        expected = (
            {"spec.yaml", "model.py"}
            if torch_backend() is not None and not refused
            else {"spec.yaml"}
        )
        assert _files(case) == expected
    finally:
        shutil.rmtree(case)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A scratch directory; the working directory is an empty sibling that must stay empty."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    work = tmp_path / "cases"
    work.mkdir()
    yield work
    assert _files(cwd) == set(), "a command wrote into the working directory"
    assert _files(work) == set()


@st.composite
def full_case(draw):
    name, doc, text = draw(spec_text())
    sets = draw(overrides(_dotted_paths(doc) if isinstance(doc, dict) else []))
    return text, sets, draw(st.integers(0, 59))


def _mutation_case(workdir, case):
    text, sets, choice = case
    run_case(workdir, text, sets, choice)


@_cases(BUDGET["mutated"])
@given(case=full_case())
def test_mutated_specs(workdir, case):
    _mutation_case(workdir, case)


PLAUSIBLE = {
    "depth": st.integers(1, 6),
    "width": st.sampled_from([1, 2, 3, 8, 16, 24, 32, 64, 96, 128]),
    "stride": st.integers(1, 4),
    "channels": st.integers(1, 4),
    "size": st.one_of(st.integers(1, 300), st.lists(st.integers(1, 300), min_size=2, max_size=2)),
    "num_classes": st.integers(1, 1000),
    "kind": st.sampled_from(["basic", "bottleneck", "imagenet", "cifar", "deep"]),
    "block": st.sampled_from(["basic", "bottleneck", {"kind": "bottleneck", "groups": 2}]),
    "stem": st.sampled_from(["imagenet", "cifar", "deep", {"kind": "deep", "width": 6}]),
    "groups": st.sampled_from([1, 2, 3, 4, 32]),
    "width_per_group": st.sampled_from([1, 4, 16, 64, 96, 128]),
    "expansion": st.integers(1, 6),
    "shortcut": st.sampled_from(["A", "B", "C", "none"]),
    "downsample": st.sampled_from(["conv", "avgpool"]),
    "stride_on": st.sampled_from(["1x1", "3x3"]),
    "preact": st.booleans(),
    "zero_init_residual": st.booleans(),
    "dropout": st.sampled_from([0.0, 0.2, 0.99]),
    "eps": st.sampled_from([1e-5, 1.0]),
    "momentum": st.sampled_from([0.1, 1.0]),
}


@st.composite
def plausible_doc(draw) -> dict:
    """Small, well-typed changes: mostly valid specs, or errors only lowering can find."""
    _, base = draw(st.sampled_from(_bases()))
    doc = copy.deepcopy(base)
    stages = doc["stages"]
    for st_ in stages:  # keep the nets small: this property is about semantics, not size
        st_["depth"] = min(st_["depth"], 2)
    for _ in range(draw(st.integers(1, 4))):
        slots = [(n, k) for n, k in _slots(doc) if isinstance(k, str) and k in PLAUSIBLE]
        field = draw(st.sampled_from([*sorted(PLAUSIBLE), "+stage", "-stage", "stage.block"]))
        if field == "+stage":
            stages.append({"depth": 1, "width": draw(PLAUSIBLE["width"]), "stride": 2})
        elif field == "-stage" and len(stages) > 1:
            stages.pop(draw(st.integers(0, len(stages) - 1)))
        elif field == "stage.block":
            stage = stages[draw(st.integers(0, len(stages) - 1))]
            stage[draw(st.sampled_from(["block", "shortcut", "downsample", "stride_on"]))] = draw(
                st.sampled_from(
                    ["basic", "bottleneck", "A", "B", "C", "none", "conv", "avgpool", "1x1", "3x3"]
                )
            )
        elif field in PLAUSIBLE:
            matching = [(n, k) for n, k in slots if k == field]
            if matching:
                node, k = matching[draw(st.integers(0, len(matching) - 1))]
                node[k] = draw(PLAUSIBLE[field])  # type: ignore[index]
            elif field in ("preact", "shortcut", "downsample", "stride_on"):
                doc[field] = draw(PLAUSIBLE[field])
    return doc


@_cases(BUDGET["plausible"])
@given(doc=plausible_doc(), choice=st.integers(0, 59))
def test_plausible_specs(workdir, doc, choice):
    """Specs that validate, or fail in lowering or shape inference, through every command."""
    run_case(workdir, yaml.safe_dump(doc, sort_keys=False), [], choice)


@_cases(BUDGET["raw"])
@given(data=st.data(), raw=st.binary(max_size=300))
def test_raw_bytes_and_prefixes(workdir, data, raw):
    """Arbitrary bytes, alone or spliced into a real spec."""
    name, base = data.draw(st.sampled_from(_bases()))
    text = yaml.safe_dump(base, sort_keys=False)
    cut = data.draw(st.integers(0, len(text)))
    blob = raw if data.draw(st.booleans()) else text[:cut].encode() + raw + text[cut:].encode()
    case = workdir / f"raw{next(_counter)}"
    case.mkdir()
    (case / "spec.yaml").write_bytes(blob)
    try:
        _run("validate", str(case / "spec.yaml"))
        assert _files(case) == {"spec.yaml"}
    finally:
        shutil.rmtree(case)


@_cases(BUDGET["names"])
@given(
    name=st.one_of(
        st.text(max_size=70),
        st.sampled_from(INJECTIONS),
        st.from_regex(r"[A-Za-z][A-Za-z0-9_.-]{0,63}", fullmatch=True),
    )
)
def test_any_name_is_safe_to_emit(workdir, name):
    """Every accepted name gives a class name that is a safe identifier in emitted code."""
    base = dict(next(doc for name, doc in _bases() if name == "paper/cifar-resnet20"))
    base["name"] = name
    run_case(workdir, yaml.safe_dump(base, sort_keys=False, allow_unicode=True), [], 7)


# -- more of the same under -m slow -------------------------------------------------------------


@pytest.mark.slow
@_cases(SLOW_CASES)
@given(case=full_case())
def test_mutated_specs_slow(workdir, case):
    _mutation_case(workdir, case)


@pytest.mark.slow
@_cases(SLOW_CASES // 4)
@given(doc=plausible_doc(), choice=st.integers(0, 59))
def test_plausible_specs_slow(workdir, doc, choice):
    run_case(workdir, yaml.safe_dump(doc, sort_keys=False), [], choice)


def test_default_budget_is_at_least_1000_cases():
    assert sum(BUDGET.values()) >= 1000
