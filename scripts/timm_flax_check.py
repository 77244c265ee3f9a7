"""The emitted flax models against the emitted PyTorch models, for every spec in ``specs/timm``.

    .venv/bin/python scripts/timm_flax_check.py [NAME ...] [--record docs/timm-flax.json]

Runs in the project's venv (torch, jax and flax; no timm: the PyTorch side is the emitted model,
which ``scripts/timm_outputs_check.py`` proves equal to timm's, bitwise). For each model, at a
2x3x64x96 input (the final maps are 2x3, so the global pool averages):

* the emitted PyTorch model is built with its own initialisation, every norm's affine parameters
  are randomised (gamma from U(0.5, 1.5), beta from N(1, 0.2), as in
  tests/backends/test_cross_backend.py) and BatchNorm statistics set from a calibration batch;
* the emitted flax model gets exactly those weights through ``torch_state_dict_to_nnx``;
* **eval, float32**: the relative error of flax's logits against PyTorch's (max |difference| /
  max |logit|);
* **train, float32**: one training-mode forward pass in each (batch statistics); the logits and
  every BatchNorm's updated running mean and variance (the largest relative error of any tensor);
* **eval, float64**: both frameworks in float64 on the same (float32-valued) weights.

The bound. Both float32 runs compute one function with different kernels and summation orders, so
each differs from the exact result by its own rounding error; flax against PyTorch is bounded by
the sum of the two. The script measures PyTorch's own (``torch_f32_vs_f64``: PyTorch float32
against PyTorch float64): flax's difference from PyTorch should be of that order, and both far
below the 1e-4 tolerance. In float64 the same amplification times the unit roundoff 1.1e-16 bounds
the difference by ~1e-12; the tolerance there is 1e-10, so a wrong operation anywhere (which
moves logits by far more than 1e-4) fails both checks, and a near-miss (an epsilon, a padding
convention at one border) fails the float64 one.

Exits 1 if any model exceeds a tolerance. ``--record FILE`` writes the per-model errors as JSON
(``docs/timm-flax.json``; ``scripts/timm_family_table.py`` turns it into the table's flax
column) with the jax, flax and torch versions and the machine's processor.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZE = (64, 96)
BATCH = 2
F32_TOL = 1e-4
F64_TOL = 1e-10


def rel_err(got, want) -> float:
    import numpy as np

    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))


def randomise_norms(model, gen, calibrate) -> None:
    """Random affine parameters for every norm; BatchNorm statistics from one calibration pass."""
    import torch

    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d | torch.nn.GroupNorm)]
    bns = [m for m in norms if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for m in norms:
            m.weight.uniform_(0.5, 1.5, generator=gen)
            m.bias.normal_(1.0, 0.2, generator=gen)
        saved = [bn.momentum for bn in bns]
        for bn in bns:
            bn.momentum = 1.0
        model.train()
        model(calibrate)
        for bn, momentum in zip(bns, saved, strict=True):
            bn.momentum = momentum


def running_stats(state: dict) -> dict:
    return {k: v for k, v in state.items() if k.endswith(("running_mean", "running_var"))}


def check_model(name: str) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch
    from flax import nnx
    from rescompile.backends import flax as fb
    from rescompile.backends import torch as tb
    from rescompile.backends.flax.tools import abstract_model

    from rescompile import compile_spec
    from rescompile.ir.graph import Op

    path = ROOT / "specs" / "timm" / f"{name}.yaml"
    _, g = compile_spec(path, [f"input.size=[{SIZE[0]}, {SIZE[1]}]"])
    stochastic = bool(g.nodes_of(Op.DROPOUT, Op.DROP_PATH))
    flax_cls = fb.load_module(fb.emit(g), g.class_name)

    def numpy_state(model) -> dict:
        return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}

    start = time.perf_counter()
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    tm = tb.build_model(g)
    randomise_norms(tm, gen, torch.randn(BATCH, *g.input_shape, generator=gen))
    state = numpy_state(tm)
    x = torch.randn(BATCH, *g.input_shape, generator=gen)
    x_nhwc = x.numpy().transpose(0, 2, 3, 1)
    out: dict = {"params": g.totals["params"]}

    # float32: eval, then one training-mode forward pass (which updates the statistics)
    with torch.no_grad():
        tm.eval()
        want_eval = tm(x).numpy()
        tm.train()
        want_train = tm(x).numpy()
    want_stats = running_stats(numpy_state(tm))
    fm = fb.torch_state_dict_to_nnx(abstract_model(flax_cls), state)
    graphdef, loaded = nnx.split(fm)
    loaded = jax.tree.map(np.asarray, loaded)  # a copy that training-mode updates do not touch
    fm.eval()
    out["eval_f32"] = rel_err(fm(jnp.asarray(x_nhwc)), want_eval)
    if stochastic:  # dropout or drop path: the two frameworks draw different masks
        out["train_f32"] = None
    else:
        fm.train()
        got_train = np.asarray(fm(jnp.asarray(x_nhwc)))
        got_stats = running_stats(fb.nnx_to_torch_state_dict(fm))
        errors = [rel_err(got_train, want_train)]
        errors += [rel_err(got_stats[k], v) for k, v in want_stats.items()]
        out["train_f32"] = max(errors)
    del fm

    # float64: eval, on the same weights
    tm.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})  # before training
    tm.double().eval()
    with torch.no_grad():
        want64 = tm(x.double()).numpy()
    del tm
    out["torch_f32_vs_f64"] = rel_err(want_eval, want64)
    with jax.enable_x64(True):
        as64 = jax.tree.map(
            lambda a: a.astype(jnp.float64) if a.dtype == jnp.float32 else a, loaded
        )
        fm = nnx.merge(graphdef, as64)
        fm.eval()
        got64 = fm(jnp.asarray(x_nhwc, jnp.float64))
        assert got64.dtype == jnp.float64
        out["eval_f64"] = rel_err(got64, want64)
    del fm
    out["ok"] = (
        out["eval_f32"] < F32_TOL
        and (out["train_f32"] is None or out["train_f32"] < F32_TOL)
        and out["eval_f64"] < F64_TOL
    )
    out["seconds"] = round(time.perf_counter() - start, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="models (default: every spec in specs/timm)")
    ap.add_argument("--record", type=Path, help="merge the results into this JSON file")
    args = ap.parse_args(argv)

    import flax
    import jax
    import torch

    torch.set_num_threads(1)
    names = args.names or sorted(p.stem for p in (ROOT / "specs" / "timm").glob("*.yaml"))
    results = {}
    old = {}
    if args.record and args.record.exists():
        old = json.loads(args.record.read_text())["models"]
    for name in names:
        r = results[name] = check_model(name)
        train = "skipped" if r["train_f32"] is None else f"{r['train_f32']:.1e}"
        print(
            f"{name:24} eval f32 {r['eval_f32']:.1e}  train f32 {train}  eval f64 "
            f"{r['eval_f64']:.1e}  (torch f32 vs f64 {r['torch_f32_vs_f64']:.1e})  "
            f"{'ok' if r['ok'] else 'FAIL'}  {r['seconds']} s",
            flush=True,
        )
        if args.record:  # after every model: a long run that stops keeps what it found
            doc = {
                "jax": jax.__version__,
                "flax": flax.__version__,
                "torch": torch.__version__,
                "machine": platform.processor() or platform.machine(),
                "input": [BATCH, 3, *SIZE],
                "tolerance": {"f32": F32_TOL, "f64": F64_TOL},
                "models": dict(sorted((old | results).items())),
            }
            args.record.write_text(json.dumps(doc, indent=1) + "\n")
    bad = [n for n, r in results.items() if not r["ok"]]
    print(
        f"{len(results) - len(bad)} of {len(results)} agree" + (f"; failing: {bad}" if bad else "")
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
