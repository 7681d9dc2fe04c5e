"""Pure channel and depth rounding and compound scaling (no torch)."""

from __future__ import annotations

import math


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None, round_limit: float = 0.9) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, never more than 10% below it.

    The TF reference's ``round_filters`` rule, shared by torchvision's ``_make_divisible`` and
    timm's ``make_divisible``: round half up to a multiple of ``divisor`` (at least
    ``min_value``, default ``divisor``) and add one ``divisor`` if that lost more than
    ``1 - round_limit`` of ``value``.
    """
    if divisor < 1:
        raise ValueError(f"divisor must be >= 1, got {divisor}")
    min_value = divisor if min_value is None else min_value
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < round_limit * value:
        new_value += divisor
    return new_value


def scale_channels(channels: int, width: float, divisor: int = 8) -> int:
    """Channels after a width multiplier, rounded as the reference implementations do."""
    return make_divisible(channels * width, divisor)


def scale_repeats(repeats: int, depth: float) -> int:
    """Blocks in a stage after a depth multiplier: rounded up (``ceil``), as the reference does."""
    return int(math.ceil(repeats * depth))


def compound_coefficients(phi: float, alpha: float, beta: float, gamma: float) -> tuple[float, float, float]:
    """Depth, width and resolution multipliers ``(alpha**phi, beta**phi, gamma**phi)``."""
    if alpha <= 0 or beta <= 0 or gamma <= 0:
        raise ValueError(f"compound coefficients must be > 0, got alpha={alpha}, beta={beta}, gamma={gamma}")
    return alpha**phi, beta**phi, gamma**phi


def scale_resolution(base: int, factor: float, divisor: int = 8) -> int:
    """Input side in pixels for a resolution multiplier, rounded to a multiple of ``divisor``."""
    return max(divisor, int(round(base * factor / divisor)) * divisor)
