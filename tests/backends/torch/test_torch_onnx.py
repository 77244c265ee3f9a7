"""ONNX export of emitted models: onnx.checker passes and onnxruntime agrees with PyTorch.

Tolerance: max |onnxruntime - torch| <= 1e-4 x max(1, max |torch logit|), float32 on CPU.
onnxruntime folds BatchNorm into the convolutions and reorders sums, so the outputs are equal
up to float32 rounding, not bitwise; untrained pre-activation nets have logits around 1e5, hence
a relative bound.
"""

from __future__ import annotations

import pytest
from rescompile.backends.torch import build_model, export
from torch_backend_cases import ROOT, compiled, emitted

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from rescompile.backends.torch.tools import onnx_max_abs_diff  # noqa: E402

RTOL = 1e-4
CASES = {
    # option A: strided slicing and channel zero-padding (Slice + Pad)
    "cifar-resnet20": ("paper/cifar-resnet20", ()),
    # pre-activation bottlenecks; the projection reads the pre-activated input
    "preact-resnet164-short": (
        "paper/preact-resnet164",
        ("stages.0.depth=2", "stages.1.depth=2", "stages.2.depth=2"),
    ),
    # deep stem and ceil-mode average-pool downsampling on odd feature maps
    "resnet50-d-short": (
        "variants/resnet50-d",
        (
            "input.size=72",
            "stages.0.depth=1",
            "stages.1.depth=1",
            "stages.2.depth=1",
            "stages.3.depth=1",
        ),
    ),
}


pytestmark = [
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning"),
    pytest.mark.usefixtures("torch_one_thread"),
]


@pytest.mark.parametrize("case", list(CASES))
def test_onnx_export_checks_and_matches_torch(case, tmp_path):
    spec, overrides = CASES[case]
    path = ROOT / "specs" / f"{spec}.yaml"
    _, g = compiled(path, overrides)
    source = emitted(path, overrides)
    torch.manual_seed(0)
    model = build_model(g, source)
    # one training step's worth of BN statistics, so eval mode is not the identity transform
    with torch.no_grad():
        model.train()(torch.randn(8, *g.input_shape))
    out = export(g, source, tmp_path / f"{case}.onnx", model=model)
    assert out.exists() and not (tmp_path / f"{case}.onnx.data").exists()
    onnx.checker.check_model(str(out), full_check=True)
    proto = onnx.load(str(out))
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    assert model.training  # export leaves the model's mode as it found it
    for batch in (1, 3):  # the batch dimension is dynamic
        x = torch.randn(batch, *g.input_shape)
        with torch.no_grad():
            scale = max(1.0, float(model.eval()(x).abs().max()))
        model.train()
        assert onnx_max_abs_diff(out, model, x) <= RTOL * scale


def test_export_refuses_unknown_formats(tmp_path):
    path = ROOT / "specs" / "paper" / "cifar-resnet20.yaml"
    _, g = compiled(path)
    with pytest.raises(ValueError, match="unsupported export format"):
        export(g, emitted(path), tmp_path / "m.tflite", fmt="tflite")
