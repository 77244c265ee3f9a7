"""Cost passes: parameters, multiply-adds, element-wise work and activation sizes.

Conventions (stated in every report header):

* ``params``: trainable parameters (conv and fc weights and biases, BN gamma and beta), as
  torchvision's ``num_params``; ``buffers``: BN running mean and variance, counted separately.
* ``macs``: multiply-accumulates of conv and fc layers only, the paper's "FLOPs";
  ``flops`` = 2 x ``macs``, what ``torch.utils.flop_counter`` reports.
* ``bn``, ``relu``, ``add``: elements each op touches (= its output elements; ``bn`` counts
  BatchNorm and GroupNorm); ``pool``: elements each pooling op reads (its input elements);
  ``gate``, ``scale``: elements of attention's sigmoid gates and of the channel scaling they
  drive (SE/ECA). Listed apart, never folded into MACs.
* The depthwise convs of anti-aliasing blur (3x3 per channel) and of attention (SE's 1x1 convs,
  ECA's 1-d conv across channels) are convolutions: their multiply-adds are MACs, as
  ``torch.utils.flop_counter`` counts them. Biases add parameters, not MACs.
* ``act``: output elements of every op except input/flatten/dropout/drop-path (views or
  identities at inference); ``act_bytes`` = ``act`` x 4 (float32), per image.
"""

from __future__ import annotations

import math

from rescompile.ir.graph import Graph, Op

COUNTERS = (
    "params",
    "buffers",
    "macs",
    "flops",
    "bn",
    "relu",
    "add",
    "pool",
    "gate",
    "scale",
    "act",
    "act_bytes",
)
_NO_ACT = {Op.INPUT, Op.FLATTEN, Op.DROPOUT, Op.DROP_PATH}
_POOLS = {Op.MAXPOOL, Op.AVGPOOL, Op.AA_AVGPOOL, Op.GLOBAL_AVGPOOL}


_ZEROS = dict.fromkeys(COUNTERS, 0)


def count_costs(g: Graph) -> Graph:
    """Annotate every node with the counters above and sum them into ``g.totals``."""
    totals = dict(_ZEROS)
    for n in g:
        a, out = n.attrs, n.meta["shape"]
        numel = math.prod(out)
        c: dict[str, int] = {}  # the node's non-zero counters
        if n.op is Op.CONV2D:
            per_out = a["in_channels"] // a["groups"] * a["kernel"] ** 2
            c["params"] = a["out_channels"] * per_out + (a["out_channels"] if a["bias"] else 0)
            c["macs"] = numel * per_out
        elif n.op is Op.LINEAR:
            c["params"] = a["in_features"] * a["out_features"] + (
                a["out_features"] if a["bias"] else 0
            )
            c["macs"] = a["in_features"] * a["out_features"]
        elif n.op is Op.BATCHNORM:
            c["params"] = c["buffers"] = 2 * a["channels"]
            c["bn"] = numel
        elif n.op is Op.GROUPNORM:
            c["params"] = 2 * a["channels"]
            c["bn"] = numel
        elif n.op is Op.BLUR:
            c["macs"] = numel * a["kernel"] ** 2
        elif n.op is Op.CHANNEL_CONV:
            c["params"] = a["kernel"]
            c["macs"] = numel * a["kernel"]
        elif n.op is Op.SIGMOID:
            c["gate"] = numel
        elif n.op is Op.SCALE:
            c["scale"] = numel
        elif n.op is Op.RELU:
            c["relu"] = numel
        elif n.op is Op.ADD:
            c["add"] = numel
        elif n.op in _POOLS:
            c["pool"] = math.prod(g[g.inputs(n.name)[0]].meta["shape"])
        if "macs" in c:
            c["flops"] = 2 * c["macs"]
        if n.op not in _NO_ACT:
            c["act"] = numel
            c["act_bytes"] = 4 * numel
        n.meta.update(_ZEROS)  # every counter, in the order of COUNTERS
        n.meta.update(c)
        for k, v in c.items():
            totals[k] += v
    g.totals = totals
    return g
