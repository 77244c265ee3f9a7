"""torchvision compatibility of the emitted specs/torchvision/* models.

Three oracles, strongest last:

1. a hand-written torchvision-architecture ResNet (``torchvision_reference.py``), whose parameter
   counts are first checked against torchvision's published ``num_params``: same state_dict keys,
   order and shapes; ``load_state_dict(strict=True)`` both ways; identical outputs;
2. the recorded fixture ``tests/fixtures/torchvision/state_dict_shapes.json``, written by
   ``scripts/torchvision_fixture.py`` with the real torchvision (it names the versions and device):
   torchvision's keys, order, shapes and num_params, and the outputs and training-step aten ops
   it compared with the emitted models there;
3. torchvision itself, when importable here (skipped otherwise).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
from rescompile.backends.torch import build_model
from torch_backend_cases import ROOT, TORCHVISION_SPECS, compiled, emitted, small, spec_id
from torchvision_reference import CONFIGS, PUBLISHED_PARAMS, reference_resnet

torch = pytest.importorskip("torch")

_script = importlib.util.spec_from_file_location(
    "torchvision_fixture", ROOT / "scripts" / "torchvision_fixture.py"
)
fixture_script = importlib.util.module_from_spec(_script)
_script.loader.exec_module(fixture_script)
randomise_batchnorm = fixture_script.randomise_batchnorm
training_step_ops = fixture_script.training_step_ops  # the aten ops of one forward + backward

FIXTURE = ROOT / "tests" / "fixtures" / "torchvision" / "state_dict_shapes.json"
TOLERANCE = 1e-5  # relative to the largest |logit|: float32 rounding of identical computations


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _name(path) -> str:
    _, g = compiled(path)
    return g.name  # specs/torchvision/<name>.yaml is named after torchvision's builder


def _meta_emitted(path):
    _, g = compiled(path)
    with torch.device("meta"):
        return build_model(g, emitted(path))


def _shapes(model) -> list[tuple[str, list[int]]]:
    return [(k, list(v.shape)) for k, v in model.state_dict().items()]


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_reference_matches_torchvision_published_num_params(name):
    with torch.device("meta"):
        model = reference_resnet(name)
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED_PARAMS[name]


@pytest.mark.parametrize("path", TORCHVISION_SPECS, ids=spec_id)
def test_state_dict_keys_order_and_shapes_equal_the_reference(path):
    with torch.device("meta"):
        ref = reference_resnet(_name(path))
    assert _shapes(_meta_emitted(path)) == _shapes(ref)


def _close(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1.0))


@pytest.mark.parametrize("path", TORCHVISION_SPECS, ids=spec_id)
def test_same_weights_give_the_same_outputs_as_the_reference(path):
    ov = small(path)
    _, g = compiled(path, ov)
    torch.manual_seed(0)
    ref = reference_resnet(_name(path))
    randomise_batchnorm(ref)
    model = build_model(g, emitted(path, ov))
    model.load_state_dict(ref.state_dict(), strict=True)
    ref.load_state_dict(model.state_dict(), strict=True)
    x = torch.randn(2, *g.input_shape)
    with torch.no_grad():
        assert _close(model.eval()(x), ref.eval()(x)) <= TOLERANCE
        assert _close(model.train()(x), ref.train()(x)) <= TOLERANCE  # batch statistics


@pytest.mark.parametrize("path", TORCHVISION_SPECS, ids=spec_id)
def test_state_dict_equals_the_recorded_torchvision_fixture(path):
    data = json.loads(FIXTURE.read_text())
    entry = data["models"][path.stem]
    assert _shapes(_meta_emitted(path)) == [(k, s) for k, s in entry["state_dict"]]
    assert sum(p.numel() for p in _meta_emitted(path).parameters()) == entry["num_params"]
    # what the script saw with torchvision itself: the same weights give the same outputs, and a
    # training step runs the same aten ops in the same order
    assert entry["strict_load"] and entry["output_max_rel_diff"] <= data["tolerance"]
    assert entry["train_step_aten_ops_equal"] and entry["train_step_aten_ops"] > 100


@pytest.mark.parametrize("path", TORCHVISION_SPECS, ids=spec_id)
def test_against_torchvision_itself(path):
    tvm = pytest.importorskip("torchvision.models")
    ov = small(path)
    _, g = compiled(path, ov)
    torch.manual_seed(0)
    tv = getattr(tvm, _name(path))(weights=None)
    randomise_batchnorm(tv)
    model = build_model(g, emitted(path, ov))
    assert _shapes(model) == _shapes(tv)
    model.load_state_dict(tv.state_dict(), strict=True)
    x = torch.randn(2, *g.input_shape)
    with torch.no_grad():
        assert _close(model.eval()(x), tv.eval()(x)) <= TOLERANCE


def test_fixture_script_with_a_stand_in_torchvision(tmp_path):
    """scripts/torchvision_fixture.py end to end, torchvision replaced by the reference."""
    pkg = tmp_path / "fake" / "torchvision"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("__version__ = 'stand-in'\n")
    (pkg / "models.py").write_text(
        "from torchvision_reference import reference_resnet\n\n"
        + "".join(
            f"\ndef {n}(weights=None):\n    return reference_resnet({n!r})\n" for n in CONFIGS
        )
    )
    out = tmp_path / "fixture.json"
    here = ROOT / "tests" / "backends" / "torch"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(pkg.parent), str(here)]),
        "OMP_NUM_THREADS": "1",
    }
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "torchvision_fixture.py"),
            "--device",
            "cpu",
            "--size",
            "32",
            "--only",
            "resnet18,resnext50_32x4d",
            "--out",
            str(out),
        ],
        env=env,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    data = json.loads(out.read_text())
    assert sorted(data["models"]) == ["resnet18", "resnext50_32x4d"]
    for name, entry in data["models"].items():
        assert entry["keys_and_shapes_match"] and entry["strict_load"], name
        assert entry["output_max_rel_diff"] <= data["tolerance"]
        assert entry["train_step_aten_ops_equal"], name
        assert entry["num_params"] == PUBLISHED_PARAMS[name]


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnext50_32x4d"])
def test_emitted_model_dispatches_the_same_ops_as_the_reference(name):
    """Load-independent twin of benchmarks/torch_vs_handwritten.py: identical aten op sequence
    (forward and backward), so any speed difference can only come from Python overhead."""
    path = ROOT / "specs" / "torchvision" / f"{name}.yaml"
    ov = small(path)
    _, g = compiled(path, ov)
    ref = reference_resnet(name).train()
    model = build_model(g, emitted(path, ov)).train()
    x = torch.randn(2, *g.input_shape)
    ours, theirs = training_step_ops(model, x), training_step_ops(ref, x)
    assert len(ours) > 100 and ours == theirs
