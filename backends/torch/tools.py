"""Running emitted PyTorch source: load it, check it against the IR, export it to ONNX.

This is the only module of the backend that imports torch; the package imports it on first use.
"""

from __future__ import annotations

import itertools
import linecache
import math
import sys
import types
from pathlib import Path

import torch
from torch import nn

from rescompile.emission.names import ident
from rescompile.emission.state import state_dict_layout as expected_state_dict
from rescompile.ir.graph import Graph, Op

from .render import emit

Row = tuple[str, str, str, bool]
_loaded = itertools.count()


def load_module(source: str, class_name: str) -> type[nn.Module]:
    """Execute emitted ``source`` in a fresh module namespace and return its ``class_name``.

    The module is registered (under a unique name, with its source in :mod:`linecache`) so that
    tracebacks show the emitted lines and ``inspect.getsource`` and pickling work.
    """
    ident(class_name, "class name")
    n = next(_loaded)
    name = f"rescompile_emitted_{n}"
    filename = f"<rescompile emitted {class_name} #{n}>"
    module = types.ModuleType(name, f"emitted model {class_name}")
    module.__file__ = filename
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    exec(compile(source, filename, "exec"), module.__dict__)  # noqa: S102 - our own output
    cls = module.__dict__.get(class_name)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ValueError(f"the emitted source defines no nn.Module named {class_name!r}")
    sys.modules[name] = module
    return cls


def build_model(graph: Graph, source: str | None = None) -> nn.Module:
    """A fresh instance of the model emitted for ``graph``."""
    return load_module(emit(graph) if source is None else source, graph.class_name)()


# ---------------------------------------------------------------------------------------------
# check


def _fmt(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape)) or "scalar"


def check(
    graph: Graph, source: str, *, batch: int = 2, seed: int = 0, max_rows: int = 20
) -> list[Row]:
    """Build ``source``, run forward and backward on random input and compare with the IR.

    Rows are ``(what, expected from the IR, measured, ok)``: output shape; the output shape of
    every module whose qualified name is an IR node name (and of every block); that every IR node
    with parameters has a module; state_dict keys and shapes; trainable parameters; BatchNorm
    buffers; FLOPs counted by ``torch.utils.flop_counter`` (= 2 x IR MACs x batch, forward only);
    finite gradients for every parameter after backward. At most ``max_rows`` rows name
    individual mismatches.
    """
    from torch.utils.flop_counter import FlopCounterMode

    rows: list[Row] = []
    torch.manual_seed(seed)
    model = build_model(graph, source).train()

    # ECA's 1-d conv runs on the pooled channels as a signal: (batch, 1, C), the IR's C x 1 x 1
    expected = {
        n.name: (1, n.meta["shape"][0]) if n.op is Op.CHANNEL_CONV else tuple(n.meta["shape"])
        for n in graph
    }
    for b in graph.blocks:
        expected.setdefault(b.name, expected[b.nodes[-1]])
    seen: dict[str, tuple[int, ...]] = {}
    handles = []
    modules = dict(model.named_modules())
    for name, mod in modules.items():
        if name in expected:

            def hook(_m, _i, out, name=name):
                seen.setdefault(name, tuple(out.shape[1:]))

            handles.append(mod.register_forward_hook(hook))

    x = torch.randn(batch, *graph.input_shape)
    try:
        with FlopCounterMode(display=False) as counter:
            y = model(x)
    except Exception as e:  # a model that cannot even run is a failed check, not a crash
        return [
            ("forward pass", f"input {_fmt(tuple(x.shape))}", f"{type(e).__name__}: {e}", False)
        ]
    finally:
        for h in handles:
            h.remove()
    flops = counter.get_total_flops()

    want = (batch, graph.num_classes)
    rows.append(("output shape", _fmt(want), _fmt(tuple(y.shape)), tuple(y.shape) == want))
    finite = bool(torch.isfinite(y).all())
    rows.append(("output finite", "yes", "yes" if finite else "no", finite))

    bad = [k for k, s in seen.items() if s != expected[k]]
    rows.append(
        (
            "intermediate shapes",
            f"{len(seen)} modules named after IR nodes",
            f"{len(seen) - len(bad)} match",
            not bad and bool(seen),
        )
    )
    rows += [(f"shape of {k}", _fmt(expected[k]), _fmt(seen[k]), False) for k in bad[:max_rows]]

    weighted = [
        n.name
        for n in graph
        if n.op in (Op.CONV2D, Op.CHANNEL_CONV, Op.BATCHNORM, Op.GROUPNORM, Op.LINEAR)
    ]
    missing = [k for k in weighted if k not in seen]
    rows.append(
        (
            "modules for IR nodes with parameters",
            f"{len(weighted)}",
            f"{len(weighted) - len(missing)} found and run",
            not missing,
        )
    )
    rows += [(f"module {k}", "present", "missing", False) for k in missing[:max_rows]]

    sd_want = expected_state_dict(graph)
    sd_got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    wrong = sorted(set(sd_want) ^ set(sd_got)) + sorted(
        k for k in set(sd_want) & set(sd_got) if sd_want[k] != sd_got[k]
    )
    rows.append(
        (
            "state_dict keys and shapes",
            f"{len(sd_want)} IR parameter names",
            f"{len(sd_got)}, {len(wrong)} differ",
            not wrong,
        )
    )
    rows += [
        (
            f"state_dict {k}",
            _fmt(sd_want[k]) if k in sd_want else "absent",
            _fmt(sd_got[k]) if k in sd_got else "absent",
            False,
        )
        for k in wrong[:max_rows]
    ]

    t = graph.totals
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    rows.append(
        ("parameters (trainable)", f"{t['params']:,}", f"{params:,}", params == t["params"])
    )
    persistent = model.state_dict().keys()  # not BlurPool's fixed filters
    buffers = sum(
        b.numel()
        for name, b in model.named_buffers()
        if name in persistent and not name.endswith("num_batches_tracked")
    )
    rows.append(
        (
            "buffers (BatchNorm running mean and variance)",
            f"{t['buffers']:,}",
            f"{buffers:,}",
            buffers == t["buffers"],
        )
    )
    want_flops = 2 * t["macs"] * batch
    rows.append(
        (
            f"FLOPs, forward, batch {batch} (2 x MACs x batch)",
            f"{want_flops:,}",
            f"{flops:,}",
            flops == want_flops,
        )
    )

    loss = y.float().square().mean()
    loss.backward()
    named = [(k, p) for k, p in model.named_parameters() if p.requires_grad]
    no_grad = [k for k, p in named if p.grad is None or not bool(torch.isfinite(p.grad).all())]
    rows.append(
        (
            "backward: finite gradients",
            f"{len(named)} parameters",
            f"{len(named) - len(no_grad)}",
            not no_grad,
        )
    )
    rows += [
        (f"gradient of {k}", "finite", "missing or not finite", False) for k in no_grad[:max_rows]
    ]
    return rows


# ---------------------------------------------------------------------------------------------
# export

_PROTOBUF_LIMIT = 2**31 - 1


def export(
    graph: Graph,
    source: str,
    out_path: str | Path,
    fmt: str = "onnx",
    *,
    model: nn.Module | None = None,
    opset: int = 18,
    seed: int = 0,
) -> Path:
    """Export the emitted model to ONNX (inference mode, dynamic batch) and validate it.

    ``model`` is the instance to export (for example one with trained weights); by default a
    freshly initialised one (seeded). Uses the torch.export-based exporter (``dynamo=True``);
    weights go into the single .onnx file unless they exceed protobuf's 2 GB limit. The file is
    checked with ``onnx.checker.check_model(full_check=True)``.
    """
    if fmt != "onnx":
        raise ValueError(f"unsupported export format {fmt!r}; available: onnx")
    import onnx

    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    if model is None:
        torch.manual_seed(seed)
        model = build_model(graph, source)
    was_training = model.training
    model.eval()
    x = torch.randn(2, *graph.input_shape)  # batch 2: a batch of 1 would be specialised
    size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    try:
        torch.onnx.export(
            model,
            (x,),
            str(out),
            dynamo=True,
            opset_version=opset,
            input_names=["input"],
            output_names=["logits"],
            dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},),
            external_data=size > _PROTOBUF_LIMIT * 0.9,
            report=False,
            verbose=False,
        )
    finally:
        model.train(was_training)
    onnx.checker.check_model(str(out), full_check=True)
    return out


def onnx_max_abs_diff(path: str | Path, model: nn.Module, x: torch.Tensor) -> float:
    """Largest absolute difference between onnxruntime's and PyTorch's outputs for ``x``."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    was_training = model.training
    model.eval()
    with torch.no_grad():
        want = model(x).numpy()
    model.train(was_training)
    diff = float(abs(got - want).max())
    return diff if math.isfinite(diff) else math.inf
