"""The paper audit: compare an analysed IR with the published row its spec names."""

from __future__ import annotations

from dataclasses import dataclass

from rescompile.errors import Diagnostic, SpecError
from rescompile.ir.graph import Graph, Op
from rescompile.passes.paper_tables import TABLES, Printed
from rescompile.spec.load import Resolved

PASS, FAIL, NOTE = "PASS", "FAIL", "NOTE"


@dataclass(frozen=True)
class Finding:
    status: str  # PASS | FAIL | NOTE
    figure: str
    computed: str
    printed: str
    note: str = ""


def paper_stage_outputs(g: Graph) -> dict[str, tuple[int, ...]]:
    """Output shape of each paper stage: conv1 (the stem's last conv), conv2_x, ..., pool."""
    out: dict[str, tuple[int, ...]] = {}
    stem_convs = [n for n in g if n.stage == "stem" and n.op is Op.CONV2D]
    out["conv1"] = stem_convs[-1].meta["shape"]
    for i, stage in enumerate(s for s in g.stages() if s.startswith("layer")):
        last = [b for b in g.blocks if b.stage == stage][-1]
        out[f"conv{i + 2}_x"] = g[last.nodes[-1]].meta["shape"]
    out["pool"] = g["avgpool"].meta["shape"]
    return out


def _fmt_printed(p: Printed) -> str:
    if p.unit == 1:
        return f"{int(p.value):,}"
    suffix = {1e9: "e9", 1e6: "M"}[p.unit]
    return f"{p.value:.{p.digits}f}{suffix}"


def _compare(figure: str, exact: int, p: Printed) -> Finding:
    rounded = round(exact / p.unit, p.digits)
    shown = f"{exact:,} = {exact / p.unit:.{p.digits + 3}f}" + (
        "" if p.unit == 1 else {1e9: "e9", 1e6: "M"}[p.unit]
    )
    printed = _fmt_printed(p)
    if abs(rounded - p.value) < 10 ** -(p.digits + 3):
        return Finding(PASS, figure, shown, printed)
    if p.note and abs(exact / p.unit - p.value) / p.value < 0.05:
        return Finding(NOTE, figure, shown, printed, p.note)
    return Finding(
        FAIL,
        figure,
        shown,
        printed,
        f"rounds to {rounded:.{p.digits}f}, not {p.value:.{p.digits}f}",
    )


def audit(resolved: Resolved, g: Graph) -> list[Finding]:
    """Every figure of the spec's paper row, compared with the IR's exact value."""
    ref = resolved.spec.paper
    if ref is None:
        raise SpecError(
            Diagnostic(
                resolved.pos(),
                "the spec names no paper row to check against "
                "(add `paper: {table: ..., row: ...}`)",
                "paper",
            )
        )
    table = TABLES.get(ref.table)
    if table is None:
        raise SpecError(
            Diagnostic(
                resolved.pos("paper", "table"),
                f"unknown table {ref.table!r}; known: {', '.join(TABLES)}",
                "paper.table",
            )
        )
    row = table.get(ref.row)
    if row is None:
        raise SpecError(
            Diagnostic(
                resolved.pos("paper", "row"),
                f"no row {ref.row!r} in {ref.table}; rows: {', '.join(table)}",
                "paper.row",
            )
        )
    found: list[Finding] = []
    stages = paper_stage_outputs(g)
    for stage, size in row.outputs.items():
        shape = stages.get(stage)
        got = "missing" if shape is None else f"{shape[1]}x{shape[2]}"
        ok = shape is not None and shape[1:] == (size, size)
        found.append(Finding(PASS if ok else FAIL, f"{stage} output size", got, f"{size}x{size}"))
    for stage, width in row.widths.items():
        shape = stages.get(stage)
        got = "missing" if shape is None else str(shape[0])
        ok = shape is not None and shape[0] == width
        found.append(Finding(PASS if ok else FAIL, f"{stage} output channels", got, str(width)))
    if row.macs is not None:
        found.append(_compare("multiply-adds (conv + fc)", g.totals["macs"], row.macs))
    if row.params is not None:
        found.append(_compare("parameters (trainable)", g.totals["params"], row.params))
    return found
