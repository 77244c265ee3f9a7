"""Both backends over generated combinations of the spec language's features.

The library's specs and the hand-picked variants cover each feature; this covers their mixtures
(per-stage block kinds, shortcut options, downsampling and stride placement; pre-activation,
groups, expansion, the three stems, dropout, zero-init), which is where a backend's emitter
has to decide what each block class takes. Bugs this found: the flax emitter used a helper class
it had not emitted (pooled projections that never stride); flax's `build --check` traced a batch
of one, whose 1x1 maps have no batch statistics (ZeroDivisionError); a long spec name made the
torch emitter raise and the flax emitter write lines over the project's line length.

For each valid spec: the PyTorch model is built, run forward and backward, and checked against
the IR (`rescompile.backends.torch.check`: every module's output shape, parameters, buffers,
FlopCounterMode FLOPs, finite gradients), and the flax model is built shape-only and checked
(`rescompile.backends.flax.check`: parameters, buffers, output shape, module paths) and its
forward traced; both sources must pass `ruff check` and `ruff format --check`.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from spec_cases import ROOT

from rescompile.compiler import compile_spec
from rescompile.errors import SpecError

torch = pytest.importorskip("torch")
pytest.importorskip("flax")

from rescompile.backends import flax as flax_backend  # noqa: E402
from rescompile.backends import torch as torch_backend  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_one_thread")
RUFF = [sys.executable, "-m", "ruff"]

OPTIONAL = st.none()
BLOCKS = st.sampled_from([
    "basic",
    "bottleneck",
    {"kind": "basic", "expansion": 2},
    {"kind": "bottleneck", "expansion": 2},
    {"kind": "bottleneck", "groups": 2, "width_per_group": 32},
    {"kind": "bottleneck", "expansion": 3, "groups": 4, "width_per_group": 16},
])
SHORTCUTS = st.sampled_from(["A", "B", "C", "none"])
DOWNSAMPLE = st.sampled_from(["conv", "avgpool"])
STRIDE_ON = st.sampled_from(["1x1", "3x3"])
NAMES = ["mix", "resnet-50.v1_5", "long-" + "name_with.dots-" * 3 + "x" * 14]  # 64: the limit


@st.composite
def specs(draw) -> dict:
    stages = []
    for _ in range(draw(st.integers(1, 3))):
        stage = {
            "depth": draw(st.integers(1, 2)),
            "width": draw(st.sampled_from([4, 8, 12, 520])),  # 520: long constructor calls
            "stride": draw(st.sampled_from([1, 2])),
        }
        for key, values in (("block", BLOCKS), ("shortcut", SHORTCUTS),
                            ("downsample", DOWNSAMPLE), ("stride_on", STRIDE_ON)):
            if value := draw(values | OPTIONAL):
                stage[key] = value
        stages.append(stage)
    stem = draw(st.sampled_from(["cifar", "imagenet", "deep", {"kind": "cifar", "width": 6}]))
    return {
        "name": draw(st.sampled_from(NAMES)),
        "input": {"channels": draw(st.sampled_from([1, 3])),
                  "size": draw(st.sampled_from([9, 16, [12, 17]]))},
        "num_classes": 5,
        "stem": stem,
        "block": draw(BLOCKS),
        "preact": (preact := draw(st.booleans())),
        "shortcut": draw(SHORTCUTS),
        "downsample": draw(DOWNSAMPLE),
        "stride_on": draw(STRIDE_ON),
        "stages": stages,
        "head": {"dropout": draw(st.sampled_from([0.0, 0.25]))},
        # zero-init needs a last BN in the residual branch: post-activation blocks only
        "init": {"zero_init_residual": not preact and draw(st.booleans())},
    }


SEEN: list[dict] = []  # every generated spec of this run
VALID: list[dict] = []  # those that compiled


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(spec=specs())
def test_both_backends_agree_with_the_ir(tmp_path, spec):
    SEEN.append(spec)
    path = tmp_path / "mix.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    try:
        _, g = compile_spec(path)
    except SpecError:
        return  # an impossible combination (say, a map that shrinks below 1x1): the core says so
    VALID.append(spec)

    sources = {"torch": torch_backend.emit(g), "flax": flax_backend.emit(g)}
    rows = torch_backend.check(g, sources["torch"])
    assert all(ok for *_, ok in rows), [r for r in rows if not r[-1]]
    rows = flax_backend.check(g, sources["flax"])
    assert all(ok for *_, ok in rows), [r for r in rows if not r[-1]]
    for name, source in sources.items():
        (tmp_path / f"{name}_model.py").write_text(source)
    config = ["--config", str(ROOT / "pyproject.toml"), "--no-cache"]
    for cmd in (["check"], ["format", "--check"]):
        r = subprocess.run([*RUFF, *cmd, *config, str(tmp_path)], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr


def test_most_generated_specs_were_valid():
    """The test above is not vacuous: most of the specs it generated compiled."""
    if not SEEN:
        pytest.skip("runs after test_both_backends_agree_with_the_ir (file order)")
    assert len(VALID) >= 0.6 * len(SEEN), f"{len(VALID)} of {len(SEEN)}"
