"""The model-by-model table of timm's ResNet family: rescompile's IR against timm's own figures.

    .venv/bin/python scripts/timm_family_table.py [-o docs/timm-family.md]

Reads the committed fixture (``tests/fixtures/timm/resnet.json``, recorded from timm by
``scripts/timm_fixture.py``) and compiles every ``specs/timm`` spec at 224x224 and 193x211. A
model is exact when its parameters, buffers, MACs at both sizes (or, where timm's own model
fails at 193x211, a refusal by rescompile too) and its state_dict layout (keys, order, shapes)
all equal timm's. The outputs column is the emitted PyTorch model against timm's own, read from
``docs/timm-outputs.json`` (written by ``scripts/timm_outputs_check.py --record``): timm's
state_dict loaded with ``strict=True`` and the logits bitwise equal (or their largest
difference). The flax column is the emitted flax model against the emitted PyTorch one, read
from ``docs/timm-flax.json`` (written by ``scripts/timm_flax_check.py --record``): the largest
relative error of the float32 logits, eval and training mode. The last column names the
spec-language features that a backend does not emit yet (``rescompile.ir.features``; what both
backends declare in ``FEATURES``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from rescompile.backends import flax as flax_backend  # noqa: E402
from rescompile.backends import torch as torch_backend  # noqa: E402
from test_timm_family import NOT_EXPRESSIBLE, decode_layout  # noqa: E402

from rescompile import compile_spec  # noqa: E402
from rescompile.errors import SpecError  # noqa: E402
from rescompile.ir.features import features  # noqa: E402
from rescompile.passes.layout import state_layout  # noqa: E402


def _mark(ok: bool) -> str:
    return "yes" if ok else "**no**"


OUTPUTS = ROOT / "docs" / "timm-outputs.json"
FLAX = ROOT / "docs" / "timm-flax.json"


def _flax(r: dict | None) -> tuple[str, bool]:
    if r is None:
        return "not checked", False
    worst = max(v for v in (r["eval_f32"], r["train_f32"]) if v is not None)
    return (f"{worst:.1e}" if r["ok"] else f"**{worst:.1e}**"), r["ok"]


def _outputs(r: dict | None) -> tuple[str, bool]:
    if r is None:
        return "not checked", False
    if not r["strict"]:
        return "**strict load fails**", False
    if r["bitwise"]:
        return "bitwise", r["ok"]
    return f"max diff {r['max_abs_diff']:.2g}" if r["ok"] else "**differs**", r["ok"]


def table() -> tuple[str, int, int, int]:
    fx = json.loads((ROOT / "tests" / "fixtures" / "timm" / "resnet.json").read_text())
    outputs = json.loads(OUTPUTS.read_text())["models"] if OUTPUTS.exists() else {}
    flax = json.loads(FLAX.read_text())["models"] if FLAX.exists() else {}
    declared = torch_backend.FEATURES & flax_backend.FEATURES
    lines = [
        "| model | params | buffers | MACs 224x224 | MACs 193x211 | state_dict keys | "
        "params | buffers | MACs | keys | exact | outputs | flax | emitter features needed |",
        "|---|---:|---:|---:|---:|---:|---|---|---|---|---|---|---|---|",
    ]
    exact = all_four = flax_ok = 0
    for name in fx["registered"]:
        e = fx["models"][name]
        odd = e["macs"]["193x211"]
        odd_text = f"{odd:,}" if odd is not None else "timm fails"
        keys = len(decode_layout(e["state_dict"]))
        head = f"| {name} | {e['params']:,} | {e['buffers']:,} | {e['macs']['224x224']:,} | "
        head += f"{odd_text} | {keys} | "
        if name in NOT_EXPRESSIBLE:
            lines.append(head + "| | | | **no** | | | per-block widths (not expressible yet) |")
            continue
        path = ROOT / "specs" / "timm" / f"{name}.yaml"
        _, g = compile_spec(path, ["input.size=224"])
        try:
            got_odd = compile_spec(path, ["input.size=[193, 211]"])[1].totals["macs"]
        except SpecError:
            got_odd = None
        t = g.totals
        ok = [
            t["params"] == e["params"],
            t["buffers"] == e["buffers"],
            t["macs"] == e["macs"]["224x224"] and got_odd == odd,
            state_layout(g) == decode_layout(e["state_dict"]),
        ]
        exact += all(ok)
        missing = [f for f in features(g) if f not in declared]
        out, out_ok = _outputs(outputs.get(name)) if not missing else ("not emitted yet", False)
        all_four += all(ok) and out_ok
        fl, fl_ok = _flax(flax.get(name)) if not missing else ("not emitted yet", False)
        flax_ok += fl_ok
        feats = ", ".join(missing) or "none (emits today)"
        lines.append(
            head + " | ".join(map(_mark, ok)) + f" | {_mark(all(ok))} | {out} | {fl} | {feats} |"
        )
    return "\n".join(lines) + "\n", exact, all_four, flax_ok, len(fx["registered"])


def _flax_summary() -> str:
    if not FLAX.exists():
        return ""
    m = json.loads(FLAX.read_text())["models"].values()
    worst = {k: max(r[k] for r in m if r[k] is not None) for k in ("eval_f32", "train_f32")}
    return (
        f"Largest over the models: {worst['eval_f32']:.1e} in eval mode, "
        f"{worst['train_f32']:.1e} in training mode (float32), "
        f"{max(r['eval_f64'] for r in m):.1e} in float64; PyTorch's own float32 logits differ "
        f"from its float64 ones by up to {max(r['torch_f32_vs_f64'] for r in m):.1e}, and flax's "
        "difference from PyTorch is at most "
        f"{max(r['eval_f32'] / r['torch_f32_vs_f64'] for r in m):.1f} times that: both are "
        "float32 rounding. "
    )


OUTPUT_STRIDE = ROOT / "tests" / "fixtures" / "timm" / "output_stride.json"
OUTPUT_STRIDE_OUTPUTS = ROOT / "docs" / "timm-output-stride-outputs.json"


def _output_stride_section() -> str:
    """timm's models built with output_stride (dilated last stages) against the specs with
    ``--set output_stride=N``."""
    fx = json.loads(OUTPUT_STRIDE.read_text())["models"]
    outputs = (
        json.loads(OUTPUT_STRIDE_OUTPUTS.read_text())["models"]
        if OUTPUT_STRIDE_OUTPUTS.exists()
        else {}
    )
    lines = [
        "",
        "## output_stride (dilated last stages)",
        "",
        "timm's models built with `output_stride=8` or `16` (recorded by `scripts/timm_fixture.py "
        "--output-stride` into `tests/fixtures/timm/output_stride.json`) against the specs with "
        "`--set output_stride=N` (`tests/test_timm_family.py`); outputs: the emitted PyTorch "
        "model against timm's (`scripts/timm_outputs_check.py` on `MODEL@N.py` files, "
        "`docs/timm-output-stride-outputs.json`).",
        "",
        "| model | output_stride | params | MACs 224x224 | MACs 193x211 | exact | outputs |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    declared = torch_backend.FEATURES & flax_backend.FEATURES
    for key, e in fx.items():
        name, _, os_ = key.partition("@")
        path = ROOT / "specs" / "timm" / f"{name}.yaml"
        g = compile_spec(path, [f"output_stride={os_}"])[1]
        try:
            odd = compile_spec(path, [f"output_stride={os_}", "input.size=[193, 211]"])[1]
            got_odd = odd.totals["macs"]
        except SpecError:
            got_odd = None
        ok = (
            g.totals["params"] == e["params"]
            and g.totals["buffers"] == e["buffers"]
            and g.totals["macs"] == e["macs"]["224x224"]
            and got_odd == e["macs"]["193x211"]
            and state_layout(g) == decode_layout(e["state_dict"])
        )
        missing = [f for f in features(g) if f not in declared]
        out = "not emitted yet: " + ", ".join(missing) if missing else _outputs(outputs.get(key))[0]
        odd_text = f"{e['macs']['193x211']:,}" if e["macs"]["193x211"] is not None else "timm fails"
        lines.append(
            f"| {name} | {os_} | {e['params']:,} | {e['macs']['224x224']:,} | {odd_text} | "
            f"{_mark(ok)} | {out} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output", type=Path)
    args = ap.parse_args(argv)
    body, exact, all_four, flax_ok, total = table()
    fx = json.loads((ROOT / "tests" / "fixtures" / "timm" / "resnet.json").read_text())
    text = (
        "# timm's ResNet family in rescompile\n\n"
        "<!-- Generated by `scripts/timm_family_table.py -o docs/timm-family.md`. -->\n\n"
        f"Ground truth: timm {fx['timm']} (torch {fx['torch']}), recorded by "
        "`scripts/timm_fixture.py` into `tests/fixtures/timm/resnet.json`; checked by "
        "`tests/test_timm_family.py`. MACs are half of `torch.utils.flop_counter`'s FLOPs for one "
        "image (conv, including SE/ECA and blur convs, and fc). Buffers are BN running means and "
        "variances (timm's `num_batches_tracked` counters are in the key count, not the buffer "
        "count; BlurPool's fixed filters are non-persistent and in neither).\n\n"
        f"**{exact} of {total}** models are exact in parameters, buffers, MACs at both sizes and "
        f"state_dict layout; **{all_four} of {total}** also in outputs: the emitted PyTorch model "
        "loads timm's state_dict with `strict=True` and gives timm's logits (column outputs, from "
        "`scripts/timm_outputs_check.py --record docs/timm-outputs.json`: timm's randomised "
        "weights and BN statistics, a 2x3x64x96 input, CPU, float32). "
        f"**{flax_ok} of {total}**: the emitted flax model, given the emitted PyTorch model's "
        "weights through the converter, agrees with it (column flax: the largest relative error "
        "of the float32 logits in eval and training mode, tolerance 1e-4; also BatchNorm's "
        "updated statistics, and float64 logits to 1e-10), from `scripts/timm_flax_check.py "
        "--record docs/timm-flax.json` (randomised norms, a 2x3x64x96 input, CPU; per-model "
        "errors, PyTorch's own float32-vs-float64 error for scale, in that file). "
        + _flax_summary()
        + "The last column: features the backends do not emit yet.\n\n"
        + body
        + _output_stride_section()
    )
    if args.output:
        args.output.write_text(text)
        print(f"wrote {args.output}: {exact} of {total} exact, {all_four} with outputs")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
