import math

import pytest

from edge_se.scaling import (
    compound_coefficients,
    make_divisible,
    scale_channels,
    scale_repeats,
    scale_resolution,
)


@pytest.mark.parametrize(
    ("value", "divisor", "expected"),
    [
        (18, 8, 24),  # rounds to 16, which is > 10% below 18: bumped to 24 (MobileNetV3 SE 72/4)
        (20, 8, 24),  # half rounds up
        (35.2, 8, 32),  # 32 is within 10% of 35.2
        (3, 8, 8),  # never below the divisor
        (1408.0, 8, 1408),
        (32 * 1.1, 8, 32),  # B2 stem: 35.2 -> 32 (as torchvision/timm)
        (16 * 1.1, 8, 16),
        (320 * 1.8, 8, 576),
    ],
)
def test_make_divisible_matches_reference_rule(value, divisor, expected):
    assert make_divisible(value, divisor) == expected


def test_make_divisible_agrees_with_torchvision_and_timm():
    from timm.layers import make_divisible as timm_md
    from torchvision.models._utils import _make_divisible as tv_md

    for v in [x * 0.37 for x in range(1, 3000)]:
        assert make_divisible(v, 8) == tv_md(v, 8) == timm_md(v, 8), v


def test_depth_rounds_up():
    assert scale_repeats(3, 1.1) == 4  # 3.3 -> 4
    assert scale_repeats(1, 3.1) == 4
    assert scale_repeats(2, 1.0) == 2
    assert scale_repeats(4, 2.6) == math.ceil(4 * 2.6)


def test_scale_channels_and_resolution():
    assert scale_channels(40, 1.4) == 56
    assert scale_resolution(224, 1.15**1.5) == 280  # 276.3 -> multiple of 8
    d, w, r = compound_coefficients(2.0, 1.2, 1.1, 1.15)
    assert (d, w, r) == pytest.approx((1.44, 1.21, 1.3225))
    with pytest.raises(ValueError, match="alpha"):
        compound_coefficients(1.0, 0.0, 1.1, 1.15)
