"""Which features of the spec language a graph uses, and whether a backend can emit them.

The ResNet family (timm's resnet.py: attention, anti-aliasing, GroupNorm, ...) grew the IR faster
than the emitters. A backend declares what it can emit in a module-level ``FEATURES`` (a set of
the names below); ``require_backend_support`` refuses, with one clear line, a graph that uses a
feature its backend does not declare, rather than let an emitter skip or misread a node it was not
written for. A backend without ``FEATURES`` emits only graphs that use none of them.
"""

from __future__ import annotations

from typing import Any

from rescompile.errors import UserError
from rescompile.ir.graph import Graph, Op

# name -> what the spec says, for messages
FEATURES: dict[str, str] = {
    "attention_se": "squeeze-and-excitation attention (attention: se)",
    "attention_eca": "efficient channel attention (attention: eca)",
    "anti_alias_blur": "blur anti-aliasing (anti_alias: blur)",
    "anti_alias_avgpool": "average-pool anti-aliasing (anti_alias: avgpool)",
    "group_norm": "GroupNorm (norm: {kind: group})",
    "stem_widths": "a deep stem with its own widths (stem.widths)",
    "stem_pool": "a stem pool other than the stem kind's default (stem.pool)",
    "reduce_first": "a reduced first conv (block.reduce_first)",
    "block_dropout": "dropout inside blocks (block.dropout)",
    "drop_path": "stochastic depth (drop_path)",
    "downsample_kernel": "a 3x3 projection conv (downsample: {kernel_size: 3})",
    "block_widths": "widths given block by block (stages' block_widths / out_channels)",
    "output_stride": "dilated stages (output_stride)",
    "dilated_anti_alias": "anti-aliasing where a stage starts dilating (anti_alias with "
    "output_stride)",
}


def features(g: Graph) -> list[str]:
    """The names (keys of ``FEATURES``) of the features ``g`` uses, in ``FEATURES`` order."""
    used: set[str] = set()
    ops = {n.op for n in g}
    for b in g.blocks:
        if b.attention != "none":
            used.add(f"attention_{b.attention}")
        if b.dropout > 0:
            used.add("block_dropout")
        if b.pruned:
            used.add("block_widths")
        conv1 = g[f"{b.name}.conv1"]
        if conv1.attrs["out_channels"] != b.width:
            used.add("reduce_first")
    if Op.BLUR in ops:
        used.add("anti_alias_blur")
    if Op.AA_AVGPOOL in ops:
        used.add("anti_alias_avgpool")
    if Op.GROUPNORM in ops:
        used.add("group_norm")
    if Op.DROP_PATH in ops:
        used.add("drop_path")
    if any(n.op is Op.CONV2D and ".downsample." in n.name and n.attrs["kernel"] > 1 for n in g):
        used.add("downsample_kernel")
    if any(n.attrs.get("dilation", 1) > 1 for n in g):
        used.add("output_stride")
    if any(n.op in (Op.BLUR, Op.AA_AVGPOOL) and n.block and n.attrs["stride"] == 1 for n in g):
        used.add("dilated_anti_alias")  # timm's filter at stride 1 (first_dilation != dilation)
    if g.stem == "deep":
        c0, c3, c6 = (g[f"conv1.{i}"].attrs["out_channels"] for i in (0, 3, 6))
        if not c0 == c3 == c6 // 2 or c6 % 2:
            used.add("stem_widths")
    if g.stem_pool != ("none" if g.stem == "cifar" else "max"):
        used.add("stem_pool")
    return [f for f in FEATURES if f in used]


def unsupported(g: Graph, backend: Any) -> list[str]:
    """The features of ``g`` that ``backend`` (a module) does not declare in ``FEATURES``."""
    module = getattr(backend, "module", backend)  # a registry Backend, or the package itself
    declared = getattr(module, "FEATURES", frozenset())
    return [f for f in features(g) if f not in declared]


def require_backend_support(g: Graph, backend: Any, name: str) -> None:
    """Raise a one-line :class:`UserError` when ``backend`` cannot emit ``g``."""
    missing = unsupported(g, backend)
    if missing:
        raise UserError(
            f"the {name} backend cannot emit {g.name} yet: it does not support "
            + "; ".join(FEATURES[f] for f in missing)
            + " (rescompile report, check and graph do)"
        )
