"""Resolve an :class:`ArchSpec` into concrete blocks: the one walk shared by build and accounting.

Pure (no torch). Every channel count, stride, shortcut and SE width that the built network and
the analytic counter use comes from :func:`resolve`, so the two cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from edge_se.scaling import make_divisible
from edge_se.specs import Act, ArchSpec, BlockKind, Placement, SESpec

Shortcut = Literal["identity", "projection", "none"]


@dataclass(frozen=True)
class SEPlan:
    """A resolved SE block: it sees ``channels`` and squeezes them to ``reduced``."""

    channels: int
    reduced: int
    placement: Placement
    act: Act
    gate: str

    @property
    def reduction(self) -> float:
        """The reduction ratio r = channels / reduced."""
        return self.channels / self.reduced


@dataclass(frozen=True)
class BlockPlan:
    """One concrete block of the network."""

    index: int  # global block index (``blocks.{index}`` in the built model)
    stage: int
    kind: BlockKind
    in_channels: int
    mid_channels: int
    out_channels: int
    kernel: int
    stride: int
    act: Act
    shortcut: Shortcut
    se: SEPlan | None


def _reduced(seen: int, base: int, se: SESpec) -> int:
    raw = base * se.ratio
    return make_divisible(raw, se.divisor) if se.divisor > 1 else max(1, int(raw))


def _se_plan(kind: BlockKind, in_ch: int, mid: int, out: int, shortcut: Shortcut, se: SESpec) -> SEPlan:
    standard_seen = out if kind == "bottleneck" else mid
    base = in_ch if se.base == "block_in" else standard_seen
    standard_reduced = _reduced(standard_seen, base, se)
    placement: Placement = se.placement
    if placement == "identity" and shortcut == "none":
        placement = "standard"  # no shortcut to put it on; documented in SESpec
    seen = {
        "standard": standard_seen,
        "pre": in_ch,
        "post": out,
        "identity": in_ch if shortcut == "identity" else out,
    }[placement]
    if seen == standard_seen:
        reduced = standard_reduced
    else:  # keep the reduction ratio r of the standard placement
        r = standard_seen / standard_reduced
        reduced = make_divisible(seen / r, se.divisor) if se.divisor > 1 else max(1, int(seen / r))
    return SEPlan(channels=seen, reduced=reduced, placement=placement, act=se.act, gate=se.gate)


def resolve(spec: ArchSpec) -> tuple[BlockPlan, ...]:
    """Expand the stage table into blocks with final channels, strides, shortcuts and SE widths."""
    blocks: list[BlockPlan] = []
    in_ch = spec.stem_channels
    for stage_idx, stage in enumerate(spec.stages):
        if stage.repeats < 1:
            raise ValueError(f"{spec.name}: stage {stage_idx} has {stage.repeats} repeats; need >= 1")
        for rep in range(stage.repeats):
            stride = stage.stride if rep == 0 else 1
            out = stage.out_channels
            if stage.block == "ds":
                mid = in_ch
            elif stage.mid_channels is not None:
                mid = stage.mid_channels
            else:
                mid = make_divisible(in_ch * stage.expand, 8)
            if stage.block == "bottleneck":
                shortcut: Shortcut = "identity" if stride == 1 and in_ch == out else "projection"
            else:
                shortcut = "identity" if stride == 1 and in_ch == out else "none"
            se = None
            if spec.se is not None and stage.se:
                se = _se_plan(stage.block, in_ch, mid, out, shortcut, spec.se)
            blocks.append(
                BlockPlan(
                    index=len(blocks),
                    stage=stage_idx,
                    kind=stage.block,
                    in_channels=in_ch,
                    mid_channels=mid,
                    out_channels=out,
                    kernel=stage.kernel,
                    stride=stride,
                    act=stage.act,
                    shortcut=shortcut,
                    se=se,
                )
            )
            in_ch = out
    return tuple(blocks)
