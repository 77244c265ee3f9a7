"""Architecture diagrams: the analysed IR as Graphviz DOT, rendered to SVG or PNG by ``dot``.

``to_dot(g, depth)`` draws one box per stage, block or layer (``depth``), each labelled with its
parameters and multiply-adds (summed over the IR nodes it stands for, exactly as ``rescompile
report`` sums them), and one edge per data flow between boxes, labelled with the tensor shape
(C x H x W) that flows along it. ``render`` runs Graphviz's ``dot`` when it is installed;
:class:`GraphvizMissing` lets the caller fall back to the DOT text.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Literal

from rescompile.errors import UserError
from rescompile.ir.graph import Graph, Node, Op
from rescompile.passes.report import Depth, paper_stage_name, rows

Format = Literal["dot", "svg", "png"]
DOT_TIMEOUT_S = 120

_FILL = {"stem": "#e8eef7", "head": "#eef7e8"}
_STAGE_FILLS = ["#fdf1e3", "#f3e8fb", "#e6f5f4", "#fbe9ec", "#eef0f9", "#f6f6e4"]


class GraphvizMissing(UserError):
    """Graphviz's ``dot`` is not on PATH."""


def _q(text: str) -> str:
    """A DOT double-quoted string body: backslashes and quotes escaped, no raw newlines."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")


def _label(*lines: str) -> str:
    return "\\n".join(_q(line) for line in lines)


def _fmt_shape(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def _si(v: int) -> str:
    for unit, div in (("G", 10**9), ("M", 10**6), ("K", 10**3)):
        if v >= div:
            return f"{v / div:.1f}{unit}"
    return str(v)


def group_of(n: Node, depth: Depth) -> str:
    """The box a node is drawn in at ``depth`` (the same grouping as the report's rows)."""
    if n.op is Op.INPUT:
        return "input"
    if depth == "layer":
        return n.name
    if depth == "block":
        return n.block or n.stage
    return n.stage


def _op_text(n: Node) -> str:
    a = n.attrs
    match n.op:
        case Op.CONV2D:
            g = f", groups {a['groups']}" if a["groups"] > 1 else ""
            g += f", dilation {a['dilation']}" if a.get("dilation", 1) > 1 else ""
            return f"conv {a['kernel']}x{a['kernel']}/{a['stride']}, {a['out_channels']}{g}"
        case Op.LINEAR:
            return f"fc {a['in_features']} -> {a['out_features']}"
        case Op.MAXPOOL | Op.AVGPOOL | Op.AA_AVGPOOL | Op.BLUR:
            same = ", same padding" if a.get("same") else ""
            return f"{n.op} {a['kernel']}x{a['kernel']}/{a['stride']}{same}"
        case Op.PAD_CHANNELS:
            return f"zero-pad to {a['out_channels']}, /{a['stride']}"
        case Op.DROPOUT | Op.DROP_PATH:
            return f"{n.op} p={a['p']:g}"
        case Op.GROUPNORM:
            return f"groupnorm, {a['groups']} groups"
        case Op.CHANNEL_CONV:
            return f"channel conv {a['kernel']}"
    return str(n.op)


def _block_text(g: Graph, name: str) -> str:
    b = next(b for b in g.blocks if b.name == name)
    kind = ("preact " if b.preact else "") + b.kind
    extra = "".join(
        f", {x}"
        for x in (
            b.attention if b.attention != "none" else "",
            f"{b.anti_alias} anti-alias" if b.anti_alias != "none" else "",
        )
        if x
    )
    return f"{kind}, {b.in_channels}->{b.out_channels}, /{b.stride}, shortcut {b.shortcut}{extra}"


def to_dot(g: Graph, depth: Depth = "block") -> str:
    """The diagram as DOT text (deterministic: the same graph gives the same bytes)."""
    counts = {r.name: r for r in rows(g, depth)}
    members: dict[str, list[Node]] = {}
    for n in g:
        members.setdefault(group_of(n, depth), []).append(n)
    ids = {key: f"n{i}" for i, key in enumerate(members)}
    stage_index = {s: i for i, s in enumerate(x for x in g.stages() if x.startswith("layer"))}
    t = g.totals
    title = (
        f"{g.name}: {_fmt_shape(g.input_shape)} input, {t['params']:,} params, "
        f"{t['macs']:,} MACs (multiply-adds of conv and fc)"
    )
    out = [
        f'digraph "{_q(g.name)}" {{',
        f'  label="{_q(title)}"; labelloc=t; fontname="Helvetica"; fontsize=16;',
        "  rankdir=TB; nodesep=0.3; ranksep=0.35;",
        '  node [shape=box, style="rounded,filled", fillcolor="#ffffff", fontname="Helvetica", '
        "fontsize=11];",
        '  edge [fontname="Helvetica", fontsize=9, color="#555555"];',
    ]

    def node_line(key: str, indent: str) -> str:
        first = members[key][0]
        if key == "input":
            shape = _fmt_shape(first.meta["shape"])
            return f'{indent}{ids[key]} [label="{_label("input", shape)}", shape=ellipse];'
        row = counts[key]
        if depth == "layer":
            what = _op_text(first)
        elif depth == "block" and first.block:
            what = _block_text(g, key)
        elif key == "stem":
            what = f"{g.stem} stem ({paper_stage_name(key)})"
        elif key == "head":
            what = "global average pool, fc"
        else:
            nblocks = len([b for b in g.blocks if b.stage == key])
            what = f"{paper_stage_name(key)}: {nblocks} block{'s' if nblocks != 1 else ''}"
        c = row.counts
        lines = [key] if what == key else [key, what]
        for k, label in (("params", "params"), ("macs", "MACs")):
            if c[k]:
                si = f" ({_si(c[k])})" if c[k] >= 1000 else ""
                lines.append(f"{label} {c[k]:,}{si}")
        fill = _FILL.get(first.stage) or _STAGE_FILLS[stage_index[first.stage] % len(_STAGE_FILLS)]
        return f'{indent}{ids[key]} [label="{_label(*lines)}", fillcolor="{fill}"];'

    # Clusters: layers inside their block, blocks inside their stage.
    if depth == "stage":
        out += [node_line(key, "  ") for key in members]
    else:
        by_stage: dict[str, dict[str, list[str]]] = {}
        for key, ns in members.items():
            n = ns[0]
            by_stage.setdefault(n.stage if key != "input" else "", {}).setdefault(
                (n.block or "") if depth == "layer" else "", []
            ).append(key)
        for stage, blocks in by_stage.items():
            cluster = stage and (depth == "layer" or stage.startswith("layer"))
            if cluster:
                out.append(f'  subgraph "cluster_{_q(stage)}" {{')
                out.append(
                    f'    label="{_q(stage)} ({_q(paper_stage_name(stage))})"; style=dashed;'
                )
            for block, keys in blocks.items():
                if block:
                    out.append(f'    subgraph "cluster_{_q(block)}" {{')
                    out.append(f'      label="{_q(block)}"; style="rounded"; color="#999999";')
                indent = "      " if block else ("    " if cluster else "  ")
                out += [node_line(key, indent) for key in keys]
                if block:
                    out.append("    }")
            if cluster:
                out.append("  }")

    # Edges between boxes, each labelled with the shape flowing along it.
    seen: dict[tuple[str, str], str] = {}
    for u, v in g.g.edges:
        gu, gv = group_of(g[u], depth), group_of(g[v], depth)
        if gu == gv:
            continue
        seen.setdefault((gu, gv), _fmt_shape(g[u].meta["shape"]))
    for (gu, gv), shape in seen.items():
        out.append(f'  {ids[gu]} -> {ids[gv]} [label="{_q(shape)}"];')
    out.append("}")
    return "\n".join(out) + "\n"


def dot_path() -> str | None:
    """Where Graphviz's ``dot`` is, or None."""
    return shutil.which("dot")


def render(dot_text: str, fmt: Format) -> bytes:
    """Run ``dot -T<fmt>`` on ``dot_text``; raises :class:`GraphvizMissing` without Graphviz."""
    if fmt == "dot":
        return dot_text.encode()
    exe = dot_path()
    if exe is None:
        raise GraphvizMissing(
            f"Graphviz's `dot` is not installed (not found on PATH), so no {fmt} can be drawn; "
            "install Graphviz (e.g. `apt-get install graphviz` or `brew install graphviz`) or "
            "render the DOT text elsewhere"
        )
    try:
        p = subprocess.run(
            [exe, f"-T{fmt}"],
            input=dot_text.encode(),
            capture_output=True,
            timeout=DOT_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise UserError(
            f"Graphviz's dot took longer than {DOT_TIMEOUT_S} s; try --depth block or --depth stage"
        ) from None
    except OSError as e:
        raise UserError(f"cannot run {exe}: {e.strerror}") from None
    if p.returncode != 0:
        err = p.stderr.decode(errors="replace").strip().splitlines()
        raise UserError(f"Graphviz's dot failed: {err[-1] if err else f'exit {p.returncode}'}")
    return p.stdout
