"""Emitted PyTorch models against timm's: strict state_dict load and the same outputs.

    .venv/bin/python -m rescompile build specs/timm/NAME.yaml -o DIR/NAME.py   (for each spec)
    /work/timm-venv/bin/python scripts/timm_outputs_check.py DIR [NAME ...] [--record FILE]

Runs in the timm venv (the emitted source needs only torch). For every ``DIR/NAME.py`` (an
emitted module; its class is the one subclass of ``torch.nn.Module`` defined last), it builds
timm's ``NAME``, loads timm's state_dict into the emitted model with ``strict=True``, applies
``scripts/timm_fixture.py``'s randomisation to both, and compares the logits on the fixture's
input: bitwise (torch.equal), and the largest absolute difference. It also compares the emitted
model's logits with the fixture's recorded sha256 (the same figures, recorded earlier).
Exits 1 if any model fails to load strictly or differs by more than 1e-5 relative.
A file named ``MODEL@OS.py`` is compared with timm's ``MODEL`` built with ``output_stride=OS``
(and with ``tests/fixtures/timm/output_stride.json``): emit it with ``--set output_stride=OS``.
``--record FILE`` merges the results into a JSON file (model -> strict, bitwise, max_abs_diff,
ok; ``docs/timm-outputs.json``, which ``scripts/timm_family_table.py`` turns into the table's
outputs column), with the timm and torch versions.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-5


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main(argv: list[str]) -> int:
    import timm
    import torch

    record = None
    if "--record" in argv:
        i = argv.index("--record")
        record = Path(argv[i + 1])
        argv = argv[:i] + argv[i + 2 :]
    results: dict[str, dict] = {}
    torch.set_num_threads(1)
    tf = _load(ROOT / "scripts" / "timm_fixture.py", "timm_fixture")
    fx = json.loads((ROOT / "tests" / "fixtures" / "timm" / "resnet.json").read_text())
    os_fx = json.loads((ROOT / "tests" / "fixtures" / "timm" / "output_stride.json").read_text())
    folder = Path(argv[0])
    names = argv[1:] or sorted(p.stem for p in folder.glob("*.py"))
    bad = 0
    for name in names:
        mod = _load(folder / f"{name}.py", f"emitted_{name}")
        classes = [
            v
            for v in vars(mod).values()
            if isinstance(v, type)
            and issubclass(v, torch.nn.Module)
            and v.__module__ == mod.__name__
        ]
        ours = classes[-1]().eval()
        torch.manual_seed(0)
        model, _, output_stride = name.partition("@")
        options = {"output_stride": int(output_stride)} if output_stride else {}
        theirs = timm.create_model(model, pretrained=False, **options).eval()
        try:
            ours.load_state_dict(theirs.state_dict(), strict=True)
            strict = True
        except RuntimeError as e:
            print(f"FAIL {name:24s} strict load: {str(e).splitlines()[0]}")
            bad += 1
            results[name] = dict(strict=False, bitwise=False, max_abs_diff=None, ok=False)
            continue
        tf.randomise(ours)
        tf.randomise(theirs)
        x = torch.randn(*tf.OUTPUT_INPUT, generator=torch.Generator().manual_seed(tf.INPUT_SEED))
        with torch.no_grad():
            a, b = ours(x).float().contiguous(), theirs(x).float().contiguous()
        diff = float((a - b).abs().max())
        rel = diff / max(1.0, float(b.abs().max()))
        sha = hashlib.sha256(a.numpy().astype("<f4").tobytes()).hexdigest()
        recorded = (os_fx if output_stride else fx)["models"][name]["output"]
        same_as_fixture = sha == recorded["sha256"]
        ok = strict and rel <= TOLERANCE
        bad += not ok
        results[name] = dict(strict=strict, bitwise=torch.equal(a, b), max_abs_diff=diff, ok=ok)
        print(
            f"{'ok  ' if ok else 'FAIL'} {name:24s} strict load {strict}  bitwise "
            f"{torch.equal(a, b)}  max |diff| {diff:.3g}  fixture sha256 {same_as_fixture}"
        )
    if record is not None:
        old = json.loads(record.read_text()) if record.exists() else {"models": {}}
        old.update(timm=timm.__version__, torch=torch.__version__, input=list(tf.OUTPUT_INPUT))
        old["models"] = dict(sorted({**old["models"], **results}.items()))
        record.write_text(json.dumps(old, indent=1) + "\n")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
