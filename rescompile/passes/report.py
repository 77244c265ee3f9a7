"""Report rendering: per-layer / per-block / per-stage figures as table, JSON, CSV or Markdown."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from typing import Literal

from rescompile.ir.graph import Graph, Op
from rescompile.passes.costs import COUNTERS

Depth = Literal["stage", "block", "layer"]

CONVENTION = (
    "params: trainable (conv/fc weights+biases, BN gamma+beta), as torchvision's num_params; "
    "buffers: BN running mean+var. MACs: multiply-adds of conv and fc only (the paper's "
    "'FLOPs'); FLOPs = 2 x MACs (torch.utils.flop_counter's convention). BN/ReLU/add: elements "
    "written; pool: elements read; not folded into MACs. act: output elements per image "
    "(act_bytes at float32). Batch size 1."
)
# Added to the convention where a network has attention, anti-aliasing or GroupNorm.
FAMILY_CONVENTION = (
    " SE/ECA convs and anti-aliasing blur convs are convs (their multiply-adds are MACs); "
    "gate (sigmoid) and scale (channel scaling) elements are listed apart; GroupNorm counts as "
    "BN (elements, gamma+beta; no buffers)."
)


def convention(g: Graph) -> str:
    """The counting convention, with the family's additions where ``g`` uses them."""
    family = {Op.GROUPNORM, Op.BLUR, Op.CHANNEL_CONV, Op.SCALE, Op.AA_AVGPOOL}
    if any(n.op in family for n in g):
        return CONVENTION + FAMILY_CONVENTION
    return CONVENTION


@dataclass
class Row:
    name: str
    kind: str
    shape: tuple[int, ...]
    counts: dict[str, int] = field(default_factory=dict)
    paper: str = ""

    @property
    def shape_str(self) -> str:
        return "x".join(map(str, self.shape))


def paper_stage_name(stage: str) -> str:
    if stage == "stem":
        return "conv1"
    if stage.startswith("layer"):
        return f"conv{int(stage[5:]) + 1}_x"
    return "pool, fc"


def rows(g: Graph, depth: Depth = "stage") -> list[Row]:
    """Figures grouped at ``depth``; every group's counts add up to the totals."""
    out: dict[str, Row] = {}
    for n in g:
        if n.op is Op.INPUT:
            continue
        if depth == "layer":
            key, kind = n.name, str(n.op)
        elif depth == "block":
            key = n.block or n.stage
            kind = _block_kind(g, key) if n.block else n.stage
        else:
            key, kind = n.stage, n.stage
        row = out.get(key)
        if row is None:
            row = out[key] = Row(
                key, kind, n.meta["shape"], dict.fromkeys(COUNTERS, 0), paper_stage_name(n.stage)
            )
        row.shape = n.meta["shape"]
        for c in COUNTERS:
            row.counts[c] += n.meta[c]
    return list(out.values())


def _block_kind(g: Graph, name: str) -> str:
    b = next(b for b in g.blocks if b.name == name)
    kind = ("preact-" if b.preact else "") + b.kind
    extra = ("" if b.attention == "none" else f"/{b.attention}") + (
        "" if b.anti_alias == "none" else f"/aa-{b.anti_alias}"
    )
    return f"{kind}/{b.shortcut}" + (f"/s{b.stride}" if b.stride > 1 else "") + extra


def _human(v: int) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(v) >= div:
            return f"{v / div:.3f}{unit}"
    return str(v)


def to_json(g: Graph, depth: Depth) -> str:
    doc = {
        "spec": g.name,
        "spec_hash": g.spec_hash,
        "input": list(g.input_shape),
        "convention": convention(g),
        "depth": depth,
        "rows": [
            {
                "name": r.name,
                "kind": r.kind,
                "paper_stage": r.paper,
                "output": list(r.shape),
                **r.counts,
            }
            for r in rows(g, depth)
        ],
        "totals": g.totals,
    }
    return json.dumps(doc, indent=2)


def to_csv(g: Graph, depth: Depth) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["name", "kind", "paper_stage", "output", *COUNTERS])
    for r in rows(g, depth):
        w.writerow([r.name, r.kind, r.paper, r.shape_str, *(r.counts[c] for c in COUNTERS)])
    w.writerow(
        [
            "total",
            "",
            "",
            "x".join(map(str, g[g.output].meta["shape"])),
            *(g.totals[c] for c in COUNTERS),
        ]
    )
    return buf.getvalue()


_COLS = ("params", "macs", "flops", "act")


def to_markdown(g: Graph, depth: Depth) -> str:
    head = ["name", "kind", "output", "params", "MACs", "FLOPs", "act"]
    lines = [
        f"# {g.name} ({g.input_shape[1]}x{g.input_shape[2]} input)",
        "",
        f"> {convention(g)}",
        "",
        "| " + " | ".join(head) + " |",
        "|---|---|---:|" + "---:|" * len(_COLS),  # numbers right-aligned, as in the table
    ]
    for r in rows(g, depth):
        cells = [r.name, r.kind, r.shape_str, *(f"{r.counts[c]:,}" for c in _COLS)]
        lines.append("| " + " | ".join(cells) + " |")
    t = g.totals
    lines.append("| **total** | | | " + " | ".join(f"**{t[c]:,}**" for c in _COLS) + " |")
    lines += [
        "",
        f"BN elements {t['bn']:,} · ReLU {t['relu']:,} · add {t['add']:,} · "
        f"pool {t['pool']:,} · "
        + (f"gate {t['gate']:,} · scale {t['scale']:,} · " if t["gate"] else "")
        + f"buffers {t['buffers']:,} · "
        f"activations {t['act_bytes'] / 2**20:.1f} MiB/image (float32)",
    ]
    return "\n".join(lines) + "\n"


def print_table(
    console,
    title: str,
    keys: list[tuple[str, str]],
    values: list[list[tuple[str, str]]],
    body: list[list[str]],
    caption: str = CONVENTION,
) -> None:
    """Print a table of label columns ``keys`` and right-aligned number columns ``values``
    (``(header, footer)`` pairs, in groups that belong together; each body row holds the
    labels, then the numbers), then ``caption``.

    A number is never cut: when the table is wider than the console, the number columns are
    split over several tables (whole groups where they fit), each repeating the first label
    column; on a console too narrow for even one number column, cells wrap rather than end
    in an ellipsis.
    """
    from rich.cells import cell_len
    from rich.table import Table

    columns = [*keys, *(c for group in values for c in group)]
    widths = [
        max([cell_len(h), cell_len(f), *(cell_len(row[i]) for row in body)])
        for i, (h, f) in enumerate(columns)
    ]

    def span(cols: list[int]) -> int:  # the default box: one rule per edge, padding 1 each side
        return sum(widths[i] + 3 for i in cols) + 1

    label_idx = list(range(len(keys)))
    if len(columns) > len(keys) and span([*label_idx, len(keys)]) > console.width:
        label_idx = [0]  # too narrow for every label: the name only
    tables: list[list[int]] = [[]]

    def place(cols: list[int]) -> bool:
        """Add ``cols`` to the last table, or start a new one; False: too wide together."""
        lead = label_idx if len(tables) == 1 else [0]
        if span([*lead, *tables[-1], *cols]) <= console.width:
            tables[-1].extend(cols)
            return True
        if tables[-1] and span([0, *cols]) <= console.width:
            tables.append(list(cols))
            return True
        if len(cols) > 1:
            return False
        if tables[-1]:
            tables.append([])
        tables[-1].extend(cols)
        return True

    start = len(keys)
    for group in values:
        cols = list(range(start, start + len(group)))
        start += len(group)
        if not place(cols):  # a group wider than the console: its columns one by one
            for i in cols:
                place([i])
    for n, cols in enumerate(tables):
        t = Table(title=title if n == 0 else None, show_footer=True)
        shown = (label_idx if n == 0 else [0]) + cols
        fits = span(shown) <= console.width  # else every cell may wrap (fold), none is cut
        for i in shown:
            header, footer = columns[i]
            t.add_column(
                header,
                footer=footer,
                justify="right" if i >= len(keys) or header == "output" else "left",
                overflow="fold",
                min_width=widths[i] if fits else None,
            )
        for row in body:
            t.add_row(*(row[i] for i in shown))
        console.print(t)
    if caption:
        console.print(caption, highlight=False)


def render_table(g: Graph, depth: Depth, console) -> None:
    """The report as a rich table (or several, on a narrow console) to ``console``."""
    tot = g.totals
    label = "paper" if depth == "stage" else "kind"
    out_shape = "x".join(map(str, g[g.output].meta["shape"]))
    keys = [("name", "total"), (label, ""), ("output", out_shape)]
    labels = (("params", "params"), ("macs", "MACs"), ("flops", "FLOPs"), ("act", "act"))
    values = [[(name, f"{tot[c]:,}")] for c, name in labels]
    body = [
        [r.name, r.paper if depth == "stage" else r.kind, r.shape_str]
        + [f"{r.counts[c]:,}" for c in _COLS]
        for r in rows(g, depth)
    ]
    c, h, w = g.input_shape
    print_table(console, f"{g.name}: {c}x{h}x{w} input", keys, values, body, convention(g))
    console.print(
        f"MACs {_human(tot['macs'])} · FLOPs {_human(tot['flops'])} · "
        f"params {_human(tot['params'])} (+{tot['buffers']:,} BN buffers) · "
        f"BN elems {tot['bn']:,} · ReLU {tot['relu']:,} · "
        f"add {tot['add']:,} · pool {tot['pool']:,} · "
        + (f"gate {tot['gate']:,} · scale {tot['scale']:,} · " if tot["gate"] else "")
        + "activations "
        f"{tot['act_bytes'] / 2**20:.1f} MiB/image (float32)",
        highlight=False,
    )


def render_diff(a: Graph, b: Graph, depth: Depth, title: str, console) -> None:
    """Two graphs' params and MACs side by side, with the differences, to ``console``."""
    values: list[list[tuple[str, str]]] = []
    for key, label in (("params", "params"), ("macs", "MACs")):
        ta, tb = a.totals[key], b.totals[key]
        values.append(
            [(f"{label} A", f"{ta:,}"), (f"{label} B", f"{tb:,}"), (f"Δ {label}", f"{tb - ta:+,}")]
        )
    body = []
    for name, ca, cb in diff_rows(a, b, depth):
        if depth == "layer" and ca == cb:
            continue
        body.append(
            [name]
            + [
                x
                for k in ("params", "macs")
                for x in (f"{ca[k]:,}", f"{cb[k]:,}", f"{cb[k] - ca[k]:+,}")
            ]
        )
    print_table(console, title, [("name", "total")], values, body)


def diff_rows(a: Graph, b: Graph, depth: Depth) -> list[tuple[str, dict[str, int], dict[str, int]]]:
    """Rows of ``a`` and ``b`` matched by name (union, in order of appearance)."""
    ra = {r.name: r.counts for r in rows(a, depth)}
    rb = {r.name: r.counts for r in rows(b, depth)}
    names = list(dict.fromkeys([*ra, *rb]))
    zero = dict.fromkeys(COUNTERS, 0)
    return [(n, ra.get(n, zero), rb.get(n, zero)) for n in names]


# ---------------------------------------------------------------------------------------------
# HTML: one self-contained page (inline CSS and SVG, no scripts, nothing fetched)

_CSS = """
body { font: 14px/1.45 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em;
       color: #222; max-width: 72em; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; }
h2 { font-size: 1.15em; margin-top: 1.6em; }
.convention { color: #555; font-size: 0.9em; max-width: 60em; }
.charts { display: flex; flex-wrap: wrap; gap: 2em; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { padding: 0.2em 0.7em; border-bottom: 1px solid #ddd; text-align: right; }
th:first-child, td:first-child, th.text, td.text { text-align: left; }
tfoot td { font-weight: bold; border-top: 2px solid #999; }
svg text { font: 12px Helvetica, Arial, sans-serif; }
"""


def _bar_chart(title: str, items: list[tuple[str, int]], color: str) -> str:
    """A horizontal bar chart as inline SVG: one bar per (label, value), with value and share."""
    esc = _html_escape
    total = sum(v for _, v in items) or 1
    top = max((v for _, v in items), default=0) or 1
    label_w, bar_w, value_w, row_h = 150, 300, 150, 24
    height = 30 + row_h * len(items)
    width = label_w + bar_w + value_w
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{esc(title)}">',
        f'<text x="0" y="16" font-weight="bold">{esc(title)}</text>',
    ]
    for i, (label, v) in enumerate(items):
        y = 28 + i * row_h
        w = round(bar_w * v / top, 1)
        share = 100 * v / total
        out += [
            f'<text x="{label_w - 8}" y="{y + 15}" text-anchor="end">{esc(label)}</text>',
            f'<rect x="{label_w}" y="{y + 3}" width="{w}" height="{row_h - 8}" fill="{color}">'
            f"<title>{esc(label)}: {v:,}</title></rect>",
            f'<text x="{label_w + w + 6}" y="{y + 15}">{_human(v)} ({share:.1f}%)</text>',
        ]
    out.append("</svg>")
    return "\n".join(out)


def _html_escape(text: str) -> str:
    from html import escape

    return escape(str(text), quote=True)


def to_html(g: Graph, depth: Depth) -> str:
    """A self-contained HTML page: per-stage bars of params and MACs, then the ``depth`` table."""
    esc = _html_escape
    t = g.totals
    c, h, w = g.input_shape
    title = f"{g.name}: {c}x{h}x{w} input"
    stages = rows(g, "stage")
    labels = [f"{r.name} ({r.paper})" for r in stages]
    params = [(lb, r.counts["params"]) for lb, r in zip(labels, stages, strict=True)]
    macs = [(lb, r.counts["macs"]) for lb, r in zip(labels, stages, strict=True)]
    mib = t["act_bytes"] / 2**20
    out = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>{esc(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        f"<h1>{esc(title)}</h1>",
        f"<p>{t['params']:,} parameters ({_human(t['params'])}) · {t['macs']:,} MACs "
        f"({_human(t['macs'])}) · {t['flops']:,} FLOPs · activations {mib:.1f} MiB/image "
        f"(float32) · spec hash {esc(g.spec_hash)}</p>",
        f'<p class="convention">{esc(convention(g))}</p>',
        "<h2>Where the cost sits</h2>",
        '<div class="charts">',
        _bar_chart("parameters per stage", params, "#4c78a8"),
        _bar_chart("MACs per stage", macs, "#f58518"),
        "</div>",
        f"<h2>Per {esc(depth)}</h2>",
        "<table>",
    ]
    head = ["name", "kind" if depth != "stage" else "paper", "output"]
    out.append(
        "<thead><tr>"
        + "".join(f'<th class="text">{esc(x)}</th>' for x in head)
        + "".join(f"<th>{x}</th>" for x in ("params", "MACs", "FLOPs", "act"))
        + "</tr></thead>"
    )
    out.append("<tbody>")
    for r in rows(g, depth):
        cells = [r.name, r.kind if depth != "stage" else r.paper, r.shape_str]
        out.append(
            "<tr>"
            + "".join(f'<td class="text">{esc(x)}</td>' for x in cells)
            + "".join(f"<td>{r.counts[k]:,}</td>" for k in _COLS)
            + "</tr>"
        )
    out.append("</tbody>")
    out_shape = "x".join(map(str, g[g.output].meta["shape"]))
    out.append(
        f'<tfoot><tr><td class="text">total</td><td></td><td class="text">{out_shape}</td>'
        + "".join(f"<td>{t[k]:,}</td>" for k in _COLS)
        + "</tr></tfoot>"
    )
    out += [
        "</table>",
        f"<p>BN elements {t['bn']:,} · ReLU {t['relu']:,} · add {t['add']:,} · "
        f"pool {t['pool']:,} · buffers {t['buffers']:,}</p>",
        "</body>",
        "</html>",
    ]
    return "\n".join(out) + "\n"
