"""IR printers: JSON (everything) and Graphviz DOT."""

from __future__ import annotations

import json

from rescompile.ir.graph import Graph, Op


def to_json(g: Graph) -> str:
    nodes = []
    for n in g:
        nodes.append(
            {
                "name": n.name,
                "op": str(n.op),
                "inputs": g.inputs(n.name),
                "attrs": n.attrs,
                "stage": n.stage,
                "block": n.block,
                "src": str(n.src) if n.src else None,
                **{k: (list(v) if isinstance(v, tuple) else v) for k, v in n.meta.items()},
            }
        )
    blocks = [
        {
            k: getattr(b, k)
            for k in (
                "name",
                "stage",
                "kind",
                "preact",
                "shortcut",
                "downsample",
                "in_channels",
                "width",
                "out_channels",
                "stride",
                "stride_on",
                "groups",
                "attention",
                "anti_alias",
                "drop_path",
                "dropout",
                "pruned",
            )
        }
        for b in g.blocks
    ]
    doc = {
        "name": g.name,
        "class_name": g.class_name,
        "spec_hash": g.spec_hash,
        "input_shape": list(g.input_shape),
        "num_classes": g.num_classes,
        "totals": g.totals,
        "blocks": blocks,
        "nodes": nodes,
    }
    return json.dumps(doc, indent=1)


def _label(n) -> str:
    a = n.attrs
    if n.op is Op.CONV2D:
        g = f"/g{a['groups']}" if a["groups"] > 1 else ""
        g += f"/d{a['dilation']}" if a.get("dilation", 1) > 1 else ""
        return f"{n.name}\\nconv {a['kernel']}x{a['kernel']}/{a['stride']}{g}, {a['out_channels']}"
    if n.op is Op.LINEAR:
        return f"{n.name}\\nfc {a['in_features']}->{a['out_features']}"
    return f"{n.name}\\n{n.op}"


def to_dot(g: Graph) -> str:
    out = [f'digraph "{g.name}" {{', "  rankdir=TB;", '  node [shape=box, fontname="Helvetica"];']
    ids = {n.name: f"n{i}" for i, n in enumerate(g)}
    clusters: dict[str, list[str]] = {}
    for n in g:
        clusters.setdefault(n.block or "", []).append(n.name)
    for block, names in clusters.items():
        indent = "  "
        if block:
            out.append(f'  subgraph "cluster_{block}" {{ label="{block}";')
            indent = "    "
        for name in names:
            out.append(f'{indent}{ids[name]} [label="{_label(g[name])}"];')
        if block:
            out.append("  }")
    for u, v in g.g.edges:
        shape = "x".join(map(str, g[u].meta.get("shape", ())))
        out.append(f'  {ids[u]} -> {ids[v]} [label="{shape}"];')
    out.append("}")
    return "\n".join(out) + "\n"
