"""Record torchvision's state_dict layout for specs/torchvision/* and check outputs against it.

    python scripts/torchvision_fixture.py [--device cuda] [--size 224] [--out PATH]

torchvision has no CPU-only build on the package index the project is set up from, so this runs
where torchvision is installed (for example a GPU machine) and writes a small JSON fixture,
``tests/fixtures/torchvision/state_dict_shapes.json`` by default, which is committed. For every
spec in ``specs/torchvision`` it records

* torchvision's state_dict keys, in order, with their shapes, and its ``num_params``;
* whether the rescompile-emitted model accepts torchvision's weights with
  ``load_state_dict(strict=True)``, and
* the largest difference between the two models' outputs on the same random batch with the same
  (randomised) weights, in eval mode: absolute, and relative to the largest |logit|;
* whether one training step (forward and backward, at 64x64) dispatches the same aten operations,
  in the same order, in both models: then any speed difference is Python overhead only.

TF32 is switched off so that a GPU compares float32 with float32. The script exits with status 1
if a model's keys or shapes differ, the strict load fails or an output differs by more than the
tolerance. ``tests/backends/torch/test_torch_torchvision.py`` checks the emitted models against the
fixture on machines without torchvision.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "tests" / "fixtures" / "torchvision" / "state_dict_shapes.json"
TOLERANCE = 1e-5


def randomise_batchnorm(model, seed: int = 1) -> None:
    """Non-trivial BatchNorm affine parameters and running statistics (fresh ones are 1 and 0)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.weight.data = 0.5 + torch.rand(c, generator=g)
            m.bias.data = 0.1 * torch.randn(c, generator=g)
            m.running_mean = 0.1 * torch.randn(c, generator=g)
            m.running_var = 0.5 + torch.rand(c, generator=g)


def training_step_ops(model, x) -> list[str]:
    """The aten ops one training step (forward + backward) dispatches, in order."""
    from torch.utils._python_dispatch import TorchDispatchMode

    ops: list[str] = []

    class Trace(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            ops.append(str(func))
            return func(*args, **(kwargs or {}))

    with Trace():
        model(x).sum().backward()
    return ops


def record(spec: Path, device: str, size: int) -> dict:
    import torch
    import torchvision.models as tvm
    from rescompile.backends.torch import build_model

    from rescompile import compile_spec

    _, g = compile_spec(spec, [f"input.size={size}"])
    name = g.name
    torch.manual_seed(0)
    tv = getattr(tvm, name)(weights=None)
    randomise_batchnorm(tv)
    entry: dict = {
        "spec": str(spec.relative_to(ROOT)),
        "num_params": sum(p.numel() for p in tv.parameters()),
        "state_dict": [[k, list(v.shape)] for k, v in tv.state_dict().items()],
    }
    model = build_model(g)
    got = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    entry["keys_and_shapes_match"] = got == entry["state_dict"]
    try:
        model.load_state_dict(tv.state_dict(), strict=True)
        entry["strict_load"] = True
    except RuntimeError as e:
        entry["strict_load"] = False
        entry["error"] = str(e).splitlines()[0]
        return entry
    tv, model = tv.to(device).eval(), model.to(device).eval()
    x = torch.randn(2, *g.input_shape, generator=torch.Generator().manual_seed(2)).to(device)
    with torch.no_grad():
        want, have = tv(x).float(), model(x).float()
    diff = float((have - want).abs().max())
    entry["output_max_abs_diff"] = diff
    entry["output_max_rel_diff"] = diff / max(1.0, float(want.abs().max()))
    entry["outputs_bitwise_equal"] = bool(torch.equal(have, want))
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    ours, theirs = training_step_ops(model.cpu().train(), x), training_step_ops(tv.cpu().train(), x)
    entry["train_step_aten_ops"] = len(theirs)
    entry["train_step_aten_ops_equal"] = ours == theirs
    return entry


def _dumps(data: dict) -> str:
    """JSON with one state_dict entry per line (readable diffs, a small file)."""
    text = json.dumps(data, indent=1)
    text = re.sub(
        r"\[\s+(-?\d+(?:,\s+-?\d+)*)\s+\]",
        lambda m: "[" + re.sub(r",\s+", ", ", m.group(1)) + "]",
        text,
    )
    return re.sub(r"\[\s+(\"[^\"]*\"),\s+(\[[^\][]*\])\s+\]", r"[\1, \2]", text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    ap.add_argument("--size", type=int, default=224, help="input size for the output check")
    ap.add_argument("--only", default="", help="comma-separated model names (default: all)")
    args = ap.parse_args(argv)

    import torch

    try:
        import torchvision
    except ImportError as e:
        sys.exit(
            f"error: torchvision is not importable here ({e}); run this script where it is "
            "installed (see benchmarks/RESULTS.md for a CPU venv that has it)"
        )

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    models = {}
    ok = True
    only = {n for n in args.only.split(",") if n}
    for spec in sorted((ROOT / "specs" / "torchvision").glob("*.yaml")):
        if only and spec.stem not in only:
            continue
        entry = record(spec, device, args.size)
        name = spec.stem
        models[name] = entry
        good = (
            entry["keys_and_shapes_match"]
            and entry["strict_load"]
            and entry.get("output_max_rel_diff", 1.0) <= TOLERANCE
            and entry.get("train_step_aten_ops_equal", False)
        )
        ok &= good
        print(
            f"{'ok  ' if good else 'FAIL'} {name:20s} params {entry['num_params']:>12,}  "
            f"keys {len(entry['state_dict'])}  strict load {entry['strict_load']}  "
            f"max |diff| {entry.get('output_max_abs_diff', float('nan')):.3g} "
            f"(rel {entry.get('output_max_rel_diff', float('nan')):.3g})  "
            f"same aten ops {entry.get('train_step_aten_ops_equal')}"
        )
    data = {
        "generator": "scripts/torchvision_fixture.py",
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "device": torch.cuda.get_device_name() if device == "cuda" else device,
        "input": [2, 3, args.size, args.size],
        "tolerance": TOLERANCE,
        "models": models,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    assert json.loads(_dumps(data)) == data
    args.out.write_text(_dumps(data) + "\n")
    print(f"wrote {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
