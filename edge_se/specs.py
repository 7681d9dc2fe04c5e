"""Declarative model specs: every family and variant is data here, the single source of truth.

Nothing in this module touches torch. :mod:`edge_se.plan` turns a spec into concrete blocks,
:mod:`edge_se.network` turns those into an ``nn.Module`` and :mod:`edge_se.accounting` counts them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

Family = Literal["efficientnet", "mobilenetv3", "resnet"]
Act = Literal["relu", "silu", "hswish"]
Gate = Literal["sigmoid", "hsigmoid", "softmax"]
Placement = Literal["standard", "pre", "post", "identity"]
BlockKind = Literal["ds", "mbconv", "bottleneck"]

GATES: tuple[str, ...] = ("sigmoid", "hsigmoid", "softmax")
PLACEMENTS: tuple[str, ...] = ("standard", "pre", "post", "identity")


@dataclass(frozen=True)
class SESpec:
    """How the Squeeze-and-Excitation blocks of a network are made.

    Attributes:
        ratio: reduced width = ``ratio`` x base channels (EfficientNet 0.25 of the block input,
            MobileNetV3 0.25 of the expanded channels, SE-ResNet 1/16 of the block output).
        base: which channel count ``ratio`` applies to: ``"block_in"`` (the block's input
            channels, EfficientNet) or ``"se_in"`` (the channels the SE block itself sees).
        divisor: round the reduced width to a multiple of this (``make_divisible``, MobileNetV3: 8);
            1 means ``max(1, floor(ratio * base))`` as torchvision's EfficientNet does.
        act: activation between the two FCs (ReLU in the SE paper and MobileNetV3, SiLU in
            EfficientNet).
        gate: ``sigmoid``, ``hsigmoid`` (``relu6(x + 3) / 6``) or ``softmax`` over channels, the
            competition gate of the gate ablation: its channel weights sum to 1 instead of each
            lying independently in [0, 1].
        placement: where the SE block sits, after the SE paper's integration study (its Fig. 5):
            ``standard`` on the residual branch before the addition (MBConv: after the depthwise
            conv; bottleneck: after the last BN); ``pre`` on the residual branch's input,
            ``branch(SE(x))``; ``post`` after the addition, ``SE(x + branch(x))``; ``identity`` on
            the shortcut, ``SE(shortcut(x)) + branch(x)``. A block with no shortcut (stride or
            width change in MBConv) takes ``identity`` as ``standard``; ``post`` then acts on
            the block output. The reduction ratio (channels seen / reduced width) is the same
            in every placement, so the ablation varies only the position.
    """

    ratio: float
    base: Literal["block_in", "se_in"]
    act: Act
    gate: Gate
    divisor: int = 1
    placement: Placement = "standard"


@dataclass(frozen=True)
class StageSpec:
    """One row of a family table: ``repeats`` identical blocks, the first with ``stride``.

    Attributes:
        block: ``ds`` (depthwise-separable, no expansion), ``mbconv`` (inverted residual) or
            ``bottleneck`` (ResNet 1x1-3x3-1x1, stride on the 3x3 as torchvision and timm do).
        repeats: blocks in the stage before depth scaling.
        kernel: depthwise (or middle) kernel size.
        stride: stride of the first block.
        out_channels: output channels before width scaling.
        expand: expansion ratio (mid = in x expand) when ``mid_channels`` is not given.
        mid_channels: explicit expanded width (MobileNetV3 tables list it; ResNet: planes).
        se: whether blocks of this stage carry SE in the family's design.
        act: the block's activation.
    """

    block: BlockKind
    repeats: int
    kernel: int
    stride: int
    out_channels: int
    expand: float = 1.0
    mid_channels: int | None = None
    se: bool = True
    act: Act = "relu"

    def short(self) -> str:
        """timm-style one-token summary for logs, e.g. ``mbconv_r2_k3_s2_e6_c24_se``."""
        mid = f"m{self.mid_channels}" if self.mid_channels else f"e{self.expand:g}"
        return f"{self.block}_r{self.repeats}_k{self.kernel}_s{self.stride}_{mid}_c{self.out_channels}" + (
            "_se" if self.se else ""
        )


@dataclass(frozen=True)
class ArchSpec:
    """A whole network: stem, stages, head, SE recipe and the scaling that produced it.

    Channel and repeat fields are final (already scaled); ``width`` and ``depth`` record the
    multipliers used so that accounting and manifests can show them.
    """

    name: str
    family: Family
    stem_channels: int
    stem_act: Act
    stages: tuple[StageSpec, ...]
    head_channels: int  # last 1x1 conv before pooling (0 = none, ResNet)
    head_hidden: int  # MobileNetV3's pooled 1x1 "conv head" / linear before the classifier (0 = none)
    se: SESpec | None  # None: the no-SE twin
    resolution: int  # default input side, pixels
    dropout: float  # before the classifier
    width: float = 1.0
    depth: float = 1.0
    bn_eps: float = 1e-5
    bn_momentum: float = 0.1
    num_classes: int = 1000
    stem_kernel: int = 3
    phi: float | None = None  # compound-scaling coefficient, when built from one
    notes: tuple[str, ...] = field(default=(), compare=False)

    def with_(self, **changes: object) -> ArchSpec:
        """Return a copy with fields replaced (specs are frozen; never mutated)."""
        return replace(self, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Scale:
    """One EfficientNet variant's compound-scaling row (TF reference ``efficientnet_params``)."""

    width: float
    depth: float
    resolution: int
    dropout: float


# EfficientNet-B0 base network: Table 1 of the EfficientNet paper (Tan & Le, 2019), in the layout
# of torchvision's and timm's implementations (stage 1 is a depthwise-separable block).
EFFICIENTNET_B0_STAGES: tuple[StageSpec, ...] = (
    StageSpec("ds", 1, 3, 1, 16, expand=1, act="silu"),
    StageSpec("mbconv", 2, 3, 2, 24, expand=6, act="silu"),
    StageSpec("mbconv", 2, 5, 2, 40, expand=6, act="silu"),
    StageSpec("mbconv", 3, 3, 2, 80, expand=6, act="silu"),
    StageSpec("mbconv", 3, 5, 1, 112, expand=6, act="silu"),
    StageSpec("mbconv", 4, 5, 2, 192, expand=6, act="silu"),
    StageSpec("mbconv", 1, 3, 1, 320, expand=6, act="silu"),
)
EFFICIENTNET_STEM = 32
EFFICIENTNET_HEAD = 1280
EFFICIENTNET_SE = SESpec(ratio=0.25, base="block_in", act="silu", gate="sigmoid")

# (width, depth, resolution, dropout) exactly as the TF reference `efficientnet_params` publishes.
EFFICIENTNET_SCALES: dict[str, Scale] = {
    "b0": Scale(1.0, 1.0, 224, 0.2),
    "b1": Scale(1.0, 1.1, 240, 0.2),
    "b2": Scale(1.1, 1.2, 260, 0.3),
    "b3": Scale(1.2, 1.4, 300, 0.3),
    "b4": Scale(1.4, 1.8, 380, 0.4),
    "b5": Scale(1.6, 2.2, 456, 0.4),
    "b6": Scale(1.8, 2.6, 528, 0.5),
    "b7": Scale(2.0, 3.1, 600, 0.5),
}

# Compound-scaling coefficients found by the grid search in the EfficientNet paper (section 3.3):
# depth alpha^phi, width beta^phi, resolution gamma^phi, with alpha * beta^2 * gamma^2 ~ 2.
COMPOUND_ALPHA = 1.2
COMPOUND_BETA = 1.1
COMPOUND_GAMMA = 1.15

# MobileNetV3 (Howard et al., 2019, Tables 1 and 2) in torchvision's `_mobilenet_v3_conf` layout:
# kernel, expanded (mid) channels, out channels, SE, activation, stride; one block per row.
_L = StageSpec
MOBILENETV3_LARGE_STAGES: tuple[StageSpec, ...] = (
    _L("ds", 1, 3, 1, 16, mid_channels=16, se=False, act="relu"),
    _L("mbconv", 1, 3, 2, 24, mid_channels=64, se=False, act="relu"),
    _L("mbconv", 1, 3, 1, 24, mid_channels=72, se=False, act="relu"),
    _L("mbconv", 1, 5, 2, 40, mid_channels=72, se=True, act="relu"),
    _L("mbconv", 1, 5, 1, 40, mid_channels=120, se=True, act="relu"),
    _L("mbconv", 1, 5, 1, 40, mid_channels=120, se=True, act="relu"),
    _L("mbconv", 1, 3, 2, 80, mid_channels=240, se=False, act="hswish"),
    _L("mbconv", 1, 3, 1, 80, mid_channels=200, se=False, act="hswish"),
    _L("mbconv", 1, 3, 1, 80, mid_channels=184, se=False, act="hswish"),
    _L("mbconv", 1, 3, 1, 80, mid_channels=184, se=False, act="hswish"),
    _L("mbconv", 1, 3, 1, 112, mid_channels=480, se=True, act="hswish"),
    _L("mbconv", 1, 3, 1, 112, mid_channels=672, se=True, act="hswish"),
    _L("mbconv", 1, 5, 2, 160, mid_channels=672, se=True, act="hswish"),
    _L("mbconv", 1, 5, 1, 160, mid_channels=960, se=True, act="hswish"),
    _L("mbconv", 1, 5, 1, 160, mid_channels=960, se=True, act="hswish"),
)
MOBILENETV3_SMALL_STAGES: tuple[StageSpec, ...] = (
    _L("ds", 1, 3, 2, 16, mid_channels=16, se=True, act="relu"),
    _L("mbconv", 1, 3, 2, 24, mid_channels=72, se=False, act="relu"),
    _L("mbconv", 1, 3, 1, 24, mid_channels=88, se=False, act="relu"),
    _L("mbconv", 1, 5, 2, 40, mid_channels=96, se=True, act="hswish"),
    _L("mbconv", 1, 5, 1, 40, mid_channels=240, se=True, act="hswish"),
    _L("mbconv", 1, 5, 1, 40, mid_channels=240, se=True, act="hswish"),
    _L("mbconv", 1, 5, 1, 48, mid_channels=120, se=True, act="hswish"),
    _L("mbconv", 1, 5, 1, 48, mid_channels=144, se=True, act="hswish"),
    _L("mbconv", 1, 5, 2, 96, mid_channels=288, se=True, act="hswish"),
    _L("mbconv", 1, 5, 1, 96, mid_channels=576, se=True, act="hswish"),
    _L("mbconv", 1, 5, 1, 96, mid_channels=576, se=True, act="hswish"),
)
MOBILENETV3_STEM = 16
# Last 1x1 conv is 6x the last block's output (960 / 576); the pooled hidden layer is 1280 / 1024.
MOBILENETV3_HEAD = {"large": (960, 1280), "small": (576, 1024)}
MOBILENETV3_SE = SESpec(ratio=0.25, base="se_in", act="relu", gate="hsigmoid", divisor=8)

# ResNet-50 (He et al., 2016) in torchvision's layout (stride on the 3x3, "ResNet v1.5"):
# planes (mid) 64/128/256/512, outputs 4x planes, 3-4-6-3 blocks.
RESNET50_STAGES: tuple[StageSpec, ...] = (
    StageSpec("bottleneck", 3, 3, 1, 256, mid_channels=64, act="relu"),
    StageSpec("bottleneck", 4, 3, 2, 512, mid_channels=128, act="relu"),
    StageSpec("bottleneck", 6, 3, 2, 1024, mid_channels=256, act="relu"),
    StageSpec("bottleneck", 3, 3, 2, 2048, mid_channels=512, act="relu"),
)
# SE-ResNet (Hu et al., 2018): reduction r = 16 on the block output, ReLU, sigmoid; timm's
# SEModule rounds the reduced width to a multiple of 8.
SERESNET_SE = SESpec(ratio=1 / 16, base="se_in", act="relu", gate="sigmoid", divisor=8)
