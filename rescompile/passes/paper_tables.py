"""Published figures that ``rescompile check`` audits against, as data.

Each row maps a figure to its printed value. A printed value is compared with the exact computed
one after rounding to the printed precision; a figure whose printed value is known not to follow
from rounding carries a ``note`` explaining why, and is reported as NOTE rather than hidden.

Sources: He et al., "Deep Residual Learning for Image Recognition", CVPR 2016 (Table 1, Sec. 4.2,
Table 6); He et al., "Identity Mappings in Deep Residual Networks", ECCV 2016 (Table 3);
torchvision's published weight metadata (num_params, GFLOPS).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Printed:
    """A printed number: ``value`` as printed, with ``digits`` decimals in ``unit``."""

    value: float
    digits: int
    unit: float  # 1e9 for "3.6e9", 1e6 for "0.27M", 1 for an exact integer
    note: str = ""


@dataclass(frozen=True)
class Row:
    source: str
    outputs: dict[str, int] = field(default_factory=dict)  # paper stage name -> spatial size
    widths: dict[str, int] = field(default_factory=dict)  # paper stage name -> output channels
    macs: Printed | None = None
    params: Printed | None = None


_R50_NOTE = (
    "the printed 3.8e9 does not follow from rounding: Table 1's 50-layer architecture has the "
    "exact count above with the stride on the first 1x1 (the paper's released models), which "
    "rounds to 3.9e9, and rounds to 4.1e9 with the stride on the 3x3 (torchvision, v1.5); the "
    "printed figure looks truncated rather than rounded"
)

_T1 = "He et al. 2016, Table 1"
_SIZES_224 = {"conv1": 112, "conv2_x": 56, "conv3_x": 28, "conv4_x": 14, "conv5_x": 7, "pool": 1}
_SIZES_32 = {"conv1": 32, "conv2_x": 32, "conv3_x": 16, "conv4_x": 8, "pool": 1}
_WIDTHS_32 = {"conv1": 16, "conv2_x": 16, "conv3_x": 32, "conv4_x": 64}

TABLES: dict[str, dict[str, Row]] = {
    "resnet2016.table1": {
        "18-layer": Row(_T1, _SIZES_224, macs=Printed(1.8, 1, 1e9)),
        "34-layer": Row(_T1, _SIZES_224, macs=Printed(3.6, 1, 1e9)),
        "50-layer": Row(_T1, _SIZES_224, macs=Printed(3.8, 1, 1e9, _R50_NOTE)),
        "101-layer": Row(_T1, _SIZES_224, macs=Printed(7.6, 1, 1e9)),
        "152-layer": Row(_T1, _SIZES_224, macs=Printed(11.3, 1, 1e9)),
    },
    "resnet2016.table6": {
        f"ResNet-{depth}": Row(
            "He et al. 2016, Sec. 4.2 and Table 6", _SIZES_32, _WIDTHS_32, params=Printed(p, d, 1e6)
        )
        for depth, p, d in [
            (20, 0.27, 2),
            (32, 0.46, 2),
            (44, 0.66, 2),
            (56, 0.85, 2),
            (110, 1.7, 1),
            (1202, 19.4, 1),
        ]
    },
    "preact2016.cifar": {
        f"ResNet-{depth}": Row(
            "He et al. 2016b (Identity Mappings), Table 3", _SIZES_32, params=Printed(1.7, 1, 1e6)
        )
        for depth in (110, 164)
    },
    "torchvision": {
        name: Row(
            "torchvision weight metadata",
            _SIZES_224,
            macs=Printed(gflops, 3, 1e9),
            params=Printed(params, 0, 1),
        )
        for name, params, gflops in [
            ("resnet18", 11_689_512, 1.814),
            ("resnet34", 21_797_672, 3.664),
            ("resnet50", 25_557_032, 4.089),
            ("resnet101", 44_549_160, 7.801),
            ("resnet152", 60_192_808, 11.514),
            ("resnext50_32x4d", 25_028_904, 4.230),
            ("resnext101_32x8d", 88_791_336, 16.414),
            ("wide_resnet50_2", 68_883_240, 11.398),
            ("wide_resnet101_2", 126_886_696, 22.753),
        ]
    },
}
