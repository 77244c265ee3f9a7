"""Published figures that ``rescompile check`` audits against, as data.

Each row maps a figure to its printed value. A printed value is compared with the exact computed
one after rounding to the printed precision; a figure whose printed value is known not to follow
from rounding carries a ``note`` explaining why, and is reported as NOTE rather than hidden.

Sources: He et al., "Deep Residual Learning for Image Recognition", CVPR 2016 (Table 1, Sec. 4.2,
Table 6); He et al., "Identity Mappings in Deep Residual Networks", ECCV 2016 (Tables 3 and 4);
torchvision's published weight metadata (num_params, GFLOPS); Xie et al., "Aggregated Residual
Transformations for Deep Neural Networks" (ResNeXt), CVPR 2017 (Table 1); Zagoruyko & Komodakis,
"Wide Residual Networks", BMVC 2016 (CIFAR parameter counts); Hu et al., "Squeeze-and-Excitation
Networks", CVPR 2018 (GFLOPs of SE-ResNet-50); He et al., "Bag of Tricks for Image Classification
with Convolutional Neural Networks", CVPR 2019 (Table 5: ResNet-50-B/C/D).
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

_R1001_NOTE = (
    "the printed 10.2M does not follow from rounding: the exact count rounds to 10.3M; without "
    "the BN scales and shifts (2 per channel of every BN layer) it is 10,178,490, which rounds "
    "to the printed 10.2M, so the paper evidently counted conv and fc weights only"
)
_RX_R50_NOTE = (
    "the printed 25.5M does not follow from rounding: 25,557,032 (torchvision's num_params, the "
    "same network) rounds to 25.6M; the printed figure looks truncated rather than rounded"
)
_SE_NOTE = (
    "the printed 3.87 does not follow from rounding the conv + fc multiply-adds (SE's 1x1 convs "
    "add 2,514,944 to the paper's ResNet-50, which rounds to 3.86 like the paper's own ResNet-50 "
    "figure); counting also SE's squeeze (global average pool: 5,519,360 elements read) and its "
    "channel scaling (5,519,360 multiplies) gives 3,871,526,912 = 3.87e9: the paper's 0.26% "
    "increase includes them"
)

_TRICKS_NOTE = (
    "the printed 25M does not follow from rounding: the exact count rounds to 26M (25.6M); the "
    "table prints every ResNet-50 tweak as 25M, truncated to whole millions"
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
        **{
            f"ResNet-{depth}": Row(
                "He et al. 2016b (Identity Mappings), Table 3",
                _SIZES_32,
                params=Printed(1.7, 1, 1e6),
            )
            for depth in (110, 164)
        },
        "ResNet-1001": Row(
            "He et al. 2016b (Identity Mappings), Table 4",
            _SIZES_32,
            params=Printed(10.2, 1, 1e6, _R1001_NOTE),
        ),
    },
    "resnext2017.table1": {
        "ResNet-50": Row(
            "Xie et al. 2017, Table 1",
            _SIZES_224,
            {"conv2_x": 256, "conv3_x": 512, "conv4_x": 1024, "conv5_x": 2048},
            macs=Printed(4.1, 1, 1e9),
            params=Printed(25.5, 1, 1e6, _RX_R50_NOTE),
        ),
        "ResNeXt-50": Row(
            "Xie et al. 2017, Table 1",
            _SIZES_224,
            {"conv2_x": 256, "conv3_x": 512, "conv4_x": 1024, "conv5_x": 2048},
            macs=Printed(4.2, 1, 1e9),
            params=Printed(25.0, 1, 1e6),
        ),
    },
    "wrn2016": {
        f"WRN-{d}-{k}": Row(
            "Zagoruyko & Komodakis 2016 (Wide ResNet), CIFAR results",
            _SIZES_32,
            {"conv1": 16, "conv2_x": 16 * k, "conv3_x": 32 * k, "conv4_x": 64 * k},
            params=Printed(p, 1, 1e6),
        )
        for d, k, p in [(40, 4, 8.9), (16, 8, 11.0), (28, 10, 36.5)]
    },
    "se2018": {
        "SE-ResNet-50": Row(
            "Hu et al. 2018 (Squeeze-and-Excitation), Table 2",
            _SIZES_224,
            macs=Printed(3.87, 2, 1e9, _SE_NOTE),
        ),
    },
    "tricks2019.table5": {
        # B: the stride on the 3x3; C: B plus the deep stem (3x3 convs of 32, 32, 64);
        # D: C plus a 2x2 average pool before the stride-1 projection
        f"ResNet-50-{tweak}": Row(
            "He et al. 2019 (Bag of Tricks), Table 5",
            _SIZES_224,
            {"conv2_x": 256, "conv3_x": 512, "conv4_x": 1024, "conv5_x": 2048},
            macs=Printed(gmacs, 1, 1e9),
            params=Printed(25, 0, 1e6, _TRICKS_NOTE),
        )
        for tweak, gmacs in [("B", 4.1), ("C", 4.3), ("D", 4.3)]
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
