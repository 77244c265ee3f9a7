"""Record timm's ResNet family (every model of timm/models/resnet.py) as ground truth.

    /work/timm-venv/bin/python scripts/timm_fixture.py [--only a,b] [--out PATH]

timm is not a dependency of rescompile: run this in a separate virtual environment that has
torch, torchvision and timm (``python3 -m venv /work/timm-venv && /work/timm-venv/bin/pip install
torch torchvision timm``). It writes ``tests/fixtures/timm/resnet.json`` (one model per line),
which is committed; ``tests/test_timm_family.py`` checks every ``specs/timm`` spec against it on
machines without timm. For every model that timm registers from ``timm.models.resnet`` (the list
comes from timm itself: ``timm.list_models(module="resnet")``) it records, from timm's own model
built with ``pretrained=False``:

* ``params``: trainable parameters; ``buffers``: elements of the persistent buffers other than
  BatchNorm's ``num_batches_tracked`` (= BN running mean and variance); ``num_batches_tracked``:
  how many such counters the state_dict holds; ``nonpersistent_buffers``: elements of buffers
  outside the state_dict (BlurPool2d's fixed filters);
* ``state_dict``: every key in order with its shape, compactly (``encode_layout``): consecutive
  tensors of one module with one shape share an entry, ``"layer1.0.bn1.weight+bias+running_mean+
  running_var:64"``; BatchNorm's scalar ``num_batches_tracked``, which follows every
  ``running_var``, is left out (``decode_layout`` restores it, and the script checks that the
  round trip gives timm's exact key list);
* ``macs``: half of ``torch.utils.flop_counter`` FLOPs for one image at 224x224 and at 193x211
  (H x W; an odd size exercises ceil-mode and reflect-padded pooling), counted on the ``meta``
  device (shapes only, no arithmetic); ``null`` where timm's own model fails at that size, with
  its error under ``errors`` (the avg-pool anti-aliased ResNet-D models: a floor-mode 2x2 pool in
  the main branch against a ceil-mode one in the shortcut); ``macs_by_module``: the same at
  224x224 per top-level module (conv1, bn1, maxpool, layer1..4, fc: where a mismatch sits);
* ``timm_args``: the keyword arguments timm's registration function passes to ``ResNet`` (a
  readable record for whoever writes the spec; not used by any test);
* ``output``: the eval-mode logits for a fixed input after the randomisation below: their
  sha256 (float32, little-endian, row-major), the first 8 logits of each image, the argmax, sum
  and sum of absolute values (float64), and the largest absolute value.

Randomisation (reproducible on any model with the same state_dict keys, in the same order, such
as a rescompile-emitted one; see ``randomise``): one ``torch.Generator`` seeded with ``SEED``
walks the state_dict in order; integer tensors (``num_batches_tracked``) are left alone; then, for
a tensor ``t`` of shape ``s`` (float32, drawn with one call of the given function and shape ``s``):

* ``*.running_var``: ``0.5 + rand(s)``;     ``*.running_mean``: ``0.1 * randn(s)``;
* other 1-d ``*.weight`` (norm scales):  ``0.5 + 0.5 * rand(s)``;
* 1-d ``*.bias`` (norm shifts, conv and fc biases): ``0.1 * randn(s)``;
* weights with 2 or more dims (conv, fc): ``randn(s) * sqrt(1 / prod(s[1:]))``.

``--output-stride`` records, the same way, the models of ``OUTPUT_STRIDE_CASES`` built with
timm's ``output_stride`` argument (dilated last stages) into
``tests/fixtures/timm/output_stride.json``, keyed ``<model>@<output_stride>``.

The input is ``randn(2, 3, 64, 96)`` (sides that every model halves evenly down to 2x3) from a
generator seeded with ``INPUT_SEED``. Logits are computed with one CPU thread
(``torch.set_num_threads(1)``); the sha256 is the bitwise fingerprint for the same op sequence on
the same torch build, the other figures support a tolerance check.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import inspect
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "tests" / "fixtures" / "timm" / "resnet.json"
SEED = 0
INPUT_SEED = 1
OUTPUT_INPUT = (2, 3, 64, 96)
MAC_SIZES = ((224, 224), (193, 211))
OUTPUT_STRIDE_OUT = ROOT / "tests" / "fixtures" / "timm" / "output_stride.json"
# (model, output_stride): basic and bottleneck blocks, a deep stem with average-pool shortcuts
# (timm's AvgPool2dSame), both kinds of anti-aliasing (a filter at stride 1 where a stage starts
# dilating), 3x3 projections (SENet-154) and SE
OUTPUT_STRIDE_CASES = (
    ("resnet18", 8),
    ("resnet50", 16),
    ("resnet50", 8),
    ("resnet50d", 8),
    ("resnetblur50", 16),
    ("resnetaa50d", 8),
    ("seresnext26d_32x4d", 16),
    ("senet154", 8),
)


def randomise(model, seed: int = SEED) -> None:
    """Overwrite every floating-point state_dict entry of ``model`` in place (the module docstring
    states the scheme)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            s = t.shape
            if key.endswith("running_var"):
                v = 0.5 + torch.rand(s, generator=g)
            elif key.endswith("running_mean"):
                v = 0.1 * torch.randn(s, generator=g)
            elif t.dim() == 1 and key.endswith("weight"):
                v = 0.5 + 0.5 * torch.rand(s, generator=g)
            elif t.dim() == 1 and key.endswith("bias"):
                v = 0.1 * torch.randn(s, generator=g)
            elif t.dim() >= 2:
                v = torch.randn(s, generator=g) * math.sqrt(1.0 / math.prod(s[1:]))
            else:  # pragma: no cover - no such tensor in these models
                raise ValueError(f"no randomisation rule for {key} {tuple(s)}")
            t.copy_(v)


def encode_layout(items: list[tuple[str, tuple[int, ...]]]) -> list[str]:
    """``[(key, shape), ...]`` -> the compact entries described in the module docstring."""
    out: list[tuple[str, list[str], tuple[int, ...]]] = []
    for key, shape in items:
        module, _, tensor = key.rpartition(".")
        if tensor == "num_batches_tracked":
            continue
        if out and out[-1][0] == module and out[-1][2] == shape:
            out[-1][1].append(tensor)
        else:
            out.append((module, [tensor], shape))
    return [f"{m}.{'+'.join(ts)}:{'x'.join(map(str, s))}" for m, ts, s in out]


def decode_layout(entries: list[str]) -> list[tuple[str, tuple[int, ...]]]:
    """The inverse of ``encode_layout`` (``tests/test_timm_family.py`` has the same function)."""
    out: list[tuple[str, tuple[int, ...]]] = []
    for entry in entries:
        names, _, dims = entry.rpartition(":")
        module, _, tensors = names.rpartition(".")
        shape = tuple(int(d) for d in dims.split("x")) if dims else ()
        for t in tensors.split("+"):
            out.append((f"{module}.{t}", shape))
            if t == "running_var":
                out.append((f"{module}.num_batches_tracked", ()))
    return out


def _jsonable(v):
    """timm's constructor arguments as readable JSON values."""
    if isinstance(v, bool | int | float | str) or v is None:
        return v
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, functools.partial):
        args = ", ".join(
            [*(repr(a) for a in v.args), *(f"{k}={x!r}" for k, x in v.keywords.items())]
        )
        return f"partial({_jsonable(v.func)}{', ' + args if args else ''})"
    if inspect.isclass(v) or inspect.isfunction(v):
        return v.__name__
    return repr(v)


def _macs(model, size: tuple[int, int]) -> tuple[int, dict[str, int]]:
    """Half of flop_counter's FLOPs for one image, on a model whose tensors are on ``meta``."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.empty(1, 3, *size, device="meta")
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(x)
    total = fc.get_total_flops()
    assert total % 2 == 0
    per = {}
    root = type(model).__name__
    for name, ops in fc.get_flop_counts().items():
        parts = name.split(".")
        if parts[0] == root and len(parts) == 2:
            per[parts[1]] = sum(ops.values()) // 2
    return total // 2, per


def record(name: str, captured: dict, **options) -> dict:
    import timm
    import torch

    torch.manual_seed(0)
    captured.clear()
    model = timm.create_model(name, pretrained=False, **options).eval()
    sd = model.state_dict()
    persistent = {k for k, _ in model.named_buffers() if k in sd}
    entry: dict = {
        "params": sum(p.numel() for p in model.parameters()),
        "buffers": sum(
            t.numel() for k, t in sd.items() if k.endswith(("running_mean", "running_var"))
        ),
        "num_batches_tracked": sum(k.endswith("num_batches_tracked") for k in sd),
        "nonpersistent_buffers": sum(
            b.numel() for k, b in model.named_buffers() if k not in persistent
        ),
    }
    params = {k for k, _ in model.named_parameters()}
    other = [
        k
        for k in sd
        if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
        and k not in params
    ]
    assert not other, f"{name}: unexpected persistent buffers {other[:3]}"
    layout = [(k, tuple(t.shape)) for k, t in sd.items()]
    entry["state_dict"] = encode_layout(layout)
    assert decode_layout(entry["state_dict"]) == layout, f"{name}: the layout does not round-trip"
    hub = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")  # loading options, all None
    entry["timm_args"] = _jsonable({k: v for k, v in captured.items() if k not in hub})

    randomise(model)
    x = torch.randn(*OUTPUT_INPUT, generator=torch.Generator().manual_seed(INPUT_SEED))
    with torch.no_grad():
        y = model(x).float().contiguous()
    y64 = y.double()
    entry["output"] = {
        "sha256": hashlib.sha256(y.numpy().astype("<f4").tobytes()).hexdigest(),
        "head": [[float(v) for v in row[:8]] for row in y],
        "argmax": [int(i) for i in y.argmax(dim=1)],
        "sum": float(y64.sum()),
        "abs_sum": float(y64.abs().sum()),
        "abs_max": float(y.abs().max()),
    }
    model = model.to("meta")
    macs = {}
    for h, w in MAC_SIZES:
        try:
            total, per = _macs(model, (h, w))
        except RuntimeError as e:  # timm itself cannot run the model at this size
            total, per = None, {}
            entry.setdefault("errors", {})[f"{h}x{w}"] = str(e).splitlines()[0]
        macs[f"{h}x{w}"] = total
        if (h, w) == MAC_SIZES[0]:
            entry["macs_by_module"] = per
    entry["macs"] = macs
    return entry


def _dumps(data: dict) -> str:
    """JSON with one model per line."""
    models = data["models"]
    head = {k: v for k, v in data.items() if k != "models"}
    lines = ["{"]
    for k, v in head.items():
        lines.append(f"{json.dumps(k)}: {json.dumps(v, separators=(',', ':'))},")
    lines.append('"models": {')
    items = [f"{json.dumps(n)}: {json.dumps(e, separators=(',', ':'))}" for n, e in models.items()]
    lines.append(",\n".join(items))
    lines.append("}}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--only", default="", help="comma-separated model names (default: all)")
    ap.add_argument(
        "--output-stride",
        action="store_true",
        help=f"record OUTPUT_STRIDE_CASES into {OUTPUT_STRIDE_OUT.relative_to(ROOT)} instead",
    )
    args = ap.parse_args(argv)

    try:
        import timm
        import timm.models.resnet as tr
        import torch
    except ImportError as e:
        sys.exit(f"error: timm is not importable here ({e}); run this script in a venv with timm")

    torch.set_num_threads(1)
    captured: dict = {}
    create = tr._create_resnet

    def spy(variant, pretrained=False, **kwargs):
        captured.update(kwargs)
        return create(variant, pretrained, **kwargs)

    tr._create_resnet = spy
    if args.output_stride:
        return _record_output_stride(captured)
    names = timm.list_models(module="resnet")
    only = {n for n in args.only.split(",") if n}
    unknown = only - set(names)
    if unknown:
        sys.exit(f"error: not registered by timm.models.resnet: {sorted(unknown)}")
    models = {}
    if only and args.out.exists():  # refresh some entries of an existing fixture
        models = json.loads(args.out.read_text())["models"]
    for name in names:
        if only and name not in only:
            continue
        e = record(name, captured)
        models[name] = e
        print(
            f"{name:28s} params {e['params']:>12,}  buffers {e['buffers']:>9,}  "
            f"MACs {e['macs']['224x224']:>15,}  entries {len(e['state_dict'])}",
            flush=True,
        )
    data = {
        "generator": "scripts/timm_fixture.py",
        "torch": torch.__version__,
        "timm": timm.__version__,
        "seed": SEED,
        "input_seed": INPUT_SEED,
        "output_input": list(OUTPUT_INPUT),
        "mac_sizes": [f"{h}x{w}" for h, w in MAC_SIZES],
        "registered": names,
        "models": {n: models[n] for n in names if n in models},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = _dumps(data)
    assert json.loads(text) == data
    args.out.write_text(text)
    print(f"wrote {args.out} ({len(data['models'])} models, {len(text):,} bytes)")
    return 0


def _record_output_stride(captured: dict) -> int:
    import timm
    import torch

    models = {}
    for name, os_ in OUTPUT_STRIDE_CASES:
        e = models[f"{name}@{os_}"] = record(name, captured, output_stride=os_)
        print(f"{name}@{os_}: params {e['params']:,}  MACs {e['macs']}", flush=True)
    data = {
        "generator": "scripts/timm_fixture.py --output-stride",
        "torch": torch.__version__,
        "timm": timm.__version__,
        "seed": SEED,
        "input_seed": INPUT_SEED,
        "output_input": list(OUTPUT_INPUT),
        "mac_sizes": [f"{h}x{w}" for h, w in MAC_SIZES],
        "models": models,
    }
    text = _dumps(data)
    assert json.loads(text) == data
    OUTPUT_STRIDE_OUT.write_text(text)
    print(f"wrote {OUTPUT_STRIDE_OUT} ({len(models)} models)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
