"""One plan, two renderers: for every spec and variant, the PyTorch and the flax file define the
same block classes (and helpers, and model class) with the same names and parameters.

Neither framework is imported: the files are read as Python ASTs.
"""

from __future__ import annotations

import pytest
from emitted_classes import assert_same_definitions, definitions
from rescompile.backends import flax as flax_backend
from rescompile.backends import torch as torch_backend
from spec_cases import ROOT, SPECS, VARIANTS, compiled, spec_id, variant_id, variant_path

ALL = [(p, ()) for p in SPECS] + [(variant_path(v), v[1]) for v in VARIANTS]
ALL_IDS = [spec_id(p) for p in SPECS] + [variant_id(v) for v in VARIANTS]


@pytest.mark.parametrize(("path", "overrides"), ALL, ids=ALL_IDS)
def test_torch_and_flax_define_the_same_classes(path, overrides):
    g = compiled(path, tuple(overrides))[1]
    torch_source, flax_source = torch_backend.emit(g), flax_backend.emit(g)
    assert_same_definitions(torch_source, flax_source)
    model = definitions(torch_source)[g.class_name]
    assert model == ["num_classes"]  # both models take num_classes, as torchvision's do
    assert all(b.stage in torch_source and b.stage in flax_source for b in g.blocks)


def test_the_issue_example_gives_one_design():
    """Mixed stride placement and shortcut options: the same classes in both files."""
    path = ROOT / "specs" / "paper" / "resnet50.yaml"
    g = compiled(path, ("stages.3.stride_on=3x3", "stages.2.shortcut=C"))[1]
    t = definitions(torch_backend.emit(g))
    f = definitions(flax_backend.emit(g))
    blocks = [k for k in t if k.startswith("Bottleneck")]
    assert blocks == ["BottleneckStride1x1", "BottleneckStride3x3"]
    assert {k: f[k] for k in blocks} == {k: t[k] for k in blocks}


def test_a_difference_is_caught():
    """The check is not vacuous: a renamed parameter or an extra class fails it."""
    g = compiled(ROOT / "specs" / "paper" / "cifar-resnet20.yaml")[1]
    torch_source, flax_source = torch_backend.emit(g), flax_backend.emit(g)
    with pytest.raises(AssertionError):
        assert_same_definitions(torch_source, flax_source.replace("out_channels", "planes"))
    with pytest.raises(AssertionError):
        assert_same_definitions(torch_source, flax_source + "\n\nclass Extra:\n    pass\n")
