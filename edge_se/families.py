"""Family constructors: pure functions from scaling choices to a final :class:`ArchSpec`."""

from __future__ import annotations

from typing import Literal

from edge_se.scaling import compound_coefficients, scale_channels, scale_repeats, scale_resolution
from edge_se.specs import (
    COMPOUND_ALPHA,
    COMPOUND_BETA,
    COMPOUND_GAMMA,
    EFFICIENTNET_B0_STAGES,
    EFFICIENTNET_HEAD,
    EFFICIENTNET_SE,
    EFFICIENTNET_STEM,
    MOBILENETV3_HEAD,
    MOBILENETV3_LARGE_STAGES,
    MOBILENETV3_SE,
    MOBILENETV3_SMALL_STAGES,
    MOBILENETV3_STEM,
    RESNET50_STAGES,
    SERESNET_SE,
    ArchSpec,
    Scale,
    StageSpec,
)

# Dropout for a real-valued phi: a linear fit of the published rows (B0 0.2 ... B7 0.5).
_DROPOUT_BASE, _DROPOUT_PER_PHI, _DROPOUT_MAX = 0.2, 0.05, 0.5


def efficientnet(name: str, scale: Scale, *, phi: float | None = None) -> ArchSpec:
    """EfficientNet scaled from the B0 table: channels x width (multiples of 8), repeats x depth (ceil).

    The stem (32) and head (1280) widths scale like every other layer, as in the TF reference.
    BatchNorm eps 1e-3 as the TF reference and torchvision (timm's ports use 1e-5; the weight
    loaders set whichever the weights were trained with).
    """
    stages = tuple(
        StageSpec(
            s.block,
            scale_repeats(s.repeats, scale.depth),
            s.kernel,
            s.stride,
            scale_channels(s.out_channels, scale.width),
            expand=s.expand,
            se=s.se,
            act=s.act,
        )
        for s in EFFICIENTNET_B0_STAGES
    )
    return ArchSpec(
        name=name,
        family="efficientnet",
        stem_channels=scale_channels(EFFICIENTNET_STEM, scale.width),
        stem_act="silu",
        stages=stages,
        head_channels=scale_channels(EFFICIENTNET_HEAD, scale.width),
        head_hidden=0,
        se=EFFICIENTNET_SE,
        resolution=scale.resolution,
        dropout=scale.dropout,
        width=scale.width,
        depth=scale.depth,
        bn_eps=1e-3,
        phi=phi,
    )


def phi_dropout(phi: float) -> float:
    """Classifier dropout for a real-valued compound coefficient (the linear fit of B0 0.2 ... B7 0.5), 3 decimals."""
    return round(min(_DROPOUT_MAX, max(0.0, _DROPOUT_BASE + _DROPOUT_PER_PHI * phi)), 3)


def efficientnet_phi(
    phi: float,
    *,
    alpha: float = COMPOUND_ALPHA,
    beta: float = COMPOUND_BETA,
    gamma: float = COMPOUND_GAMMA,
    name: str | None = None,
) -> ArchSpec:
    """EfficientNet from a real-valued compound coefficient: depth alpha^phi, width beta^phi, side 224 gamma^phi.

    Args:
        phi: compound coefficient (0 gives B0's shape at 224; may be negative or fractional).
        alpha: depth base (paper: 1.2).
        beta: width base (paper: 1.1).
        gamma: resolution base (paper: 1.15); the side is rounded to a multiple of 8 pixels.
        name: registry name; defaults to ``efficientnet_phi{phi}`` plus the coefficients when
            they are not the paper's.
    """
    depth, width, res = compound_coefficients(phi, alpha, beta, gamma)
    if name is None:
        name = f"efficientnet_phi{phi:g}"
        if (alpha, beta, gamma) != (COMPOUND_ALPHA, COMPOUND_BETA, COMPOUND_GAMMA):
            name += f"_a{alpha:g}_b{beta:g}_g{gamma:g}"
    return efficientnet(name, Scale(width, depth, scale_resolution(224, res), phi_dropout(phi)), phi=phi)


def mobilenetv3(name: str, size: Literal["large", "small"], width: float = 1.0) -> ArchSpec:
    """MobileNetV3 Large or Small with a width multiplier, in torchvision's layout.

    Every channel count (stem, expanded, output, pooled head) is ``make_divisible(c * width, 8)``;
    the last 1x1 conv is 6x the last block's output. BatchNorm eps 1e-3, momentum 0.01 as
    torchvision (timm: eps 1e-5, set by the weight loader).
    """
    table = MOBILENETV3_LARGE_STAGES if size == "large" else MOBILENETV3_SMALL_STAGES
    stages = tuple(
        StageSpec(
            s.block,
            s.repeats,
            s.kernel,
            s.stride,
            scale_channels(s.out_channels, width),
            mid_channels=scale_channels(s.mid_channels or s.out_channels, width),
            se=s.se,
            act=s.act,
        )
        for s in table
    )
    _, hidden = MOBILENETV3_HEAD[size]
    return ArchSpec(
        name=name,
        family="mobilenetv3",
        stem_channels=scale_channels(MOBILENETV3_STEM, width),
        stem_act="hswish",
        stages=stages,
        head_channels=6 * stages[-1].out_channels,
        head_hidden=scale_channels(hidden, width),
        se=MOBILENETV3_SE,
        resolution=224,
        dropout=0.2,
        width=width,
        bn_eps=1e-3,
        bn_momentum=0.01,
    )


def resnet50(name: str, *, se: bool) -> ArchSpec:
    """ResNet-50 (stride on the 3x3 conv, torchvision/timm layout), with SE (r = 16) when ``se``."""
    return ArchSpec(
        name=name,
        family="resnet",
        stem_channels=64,
        stem_act="relu",
        stem_kernel=7,
        stages=RESNET50_STAGES,
        head_channels=0,
        head_hidden=0,
        se=SERESNET_SE if se else None,
        resolution=224,
        dropout=0.0,
    )
