"""Exact analytic parameter and MAC counts per layer, with the SE part shown apart (no torch).

Conventions (the ones published figures use):
- MACs (multiply-accumulates) are counted for convolutions and fully-connected layers only:
  ``C_out * H_out * W_out * (C_in / groups) * k * k`` for a conv, ``in * out`` for a linear
  layer. ``torch.utils.flop_counter`` reports FLOPs = 2 x these MACs.
- Element-wise work that is not a MAC (global average pooling's additions, gate evaluation, the
  SE channel-wise scale, residual additions) is counted separately as ``ops``, one per output
  element, so the SE block's whole cost (squeeze, both FCs, gate, scale) is visible.
- Parameters are trainable tensors (conv/linear weights and biases, BatchNorm affine); BatchNorm
  running statistics are buffers, not parameters; BatchNorm folds into the conv at inference
  and is counted as 0 MACs.

Row names match the built model's module names (``blocks.3.se.fc1``), so tests can check every
row against the real module.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from edge_se.plan import BlockPlan, SEPlan, resolve
from edge_se.specs import ArchSpec


@dataclass(frozen=True)
class LayerCount:
    """One layer's cost.

    Attributes:
        name: module path in the built model (``se.squeeze``/``se.scale``/``add`` rows have no module).
        kind: ``conv``, ``dwconv``, ``linear``, ``bn``, ``pool``, ``gate``, ``scale`` or ``add``.
        out_shape: ``(C, H, W)`` of the output for one image.
        params: trainable parameters.
        macs: multiply-accumulates for one image.
        ops: other element-wise operations for one image (additions, multiplies, gate evaluations).
        se: whether the layer belongs to an SE block.
    """

    name: str
    kind: str
    out_shape: tuple[int, int, int]
    params: int
    macs: int
    ops: int = 0
    se: bool = False


@dataclass(frozen=True)
class Accounting:
    """Per-layer rows and totals for one model at one resolution (one image, batch 1)."""

    name: str
    resolution: int
    rows: tuple[LayerCount, ...] = field(repr=False)

    @property
    def params(self) -> int:
        """Total trainable parameters."""
        return sum(r.params for r in self.rows)

    @property
    def macs(self) -> int:
        """Total multiply-accumulates per image."""
        return sum(r.macs for r in self.rows)

    @property
    def ops(self) -> int:
        """Total element-wise non-MAC operations per image."""
        return sum(r.ops for r in self.rows)

    @property
    def se_params(self) -> int:
        """Parameters in SE blocks (both FCs with biases)."""
        return sum(r.params for r in self.rows if r.se)

    @property
    def se_macs(self) -> int:
        """MACs in SE blocks: ``2 * C * C_r`` per block."""
        return sum(r.macs for r in self.rows if r.se)

    @property
    def se_ops(self) -> int:
        """Element-wise operations in SE blocks (squeeze additions, gate, scale multiplies)."""
        return sum(r.ops for r in self.rows if r.se)

    @property
    def se_blocks(self) -> int:
        """Number of SE blocks."""
        return sum(1 for r in self.rows if r.se and r.kind == "gate")

    def summary(self) -> dict[str, object]:
        """Totals as a JSON-ready dict (the ``edge-se info --json`` object)."""
        return {
            "name": self.name,
            "resolution": self.resolution,
            "params": self.params,
            "macs": self.macs,
            "ops": self.ops,
            "se_blocks": self.se_blocks,
            "se_params": self.se_params,
            "se_macs": self.se_macs,
            "se_ops": self.se_ops,
            "se_params_share": self.se_params / self.params,
            "se_macs_share": self.se_macs / self.macs if self.macs else 0.0,
        }

    def table(self) -> list[dict[str, object]]:
        """Per-layer rows as dicts."""
        return [asdict(r) for r in self.rows]


def conv_out(size: int, kernel: int, stride: int) -> int:
    """Output side of a conv with symmetric padding ``kernel // 2``."""
    return (size + 2 * (kernel // 2) - kernel) // stride + 1


class _Counter:
    """Accumulates rows while walking the resolved blocks (internal to :func:`count`)."""

    def __init__(self) -> None:
        self.rows: list[LayerCount] = []

    def conv(
        self,
        name: str,
        c_in: int,
        c_out: int,
        k: int,
        stride: int,
        hw: int,
        *,
        groups: int = 1,
        bias: bool = False,
        bn: str | None = None,
        se: bool = False,
    ) -> int:
        out = conv_out(hw, k, stride)
        params = c_out * (c_in // groups) * k * k + (c_out if bias else 0)
        macs = c_out * out * out * (c_in // groups) * k * k
        kind = "dwconv" if groups > 1 and groups == c_in else "conv"
        self.rows.append(LayerCount(name, kind, (c_out, out, out), params, macs, se=se))
        if bn is not None:
            self.rows.append(LayerCount(bn, "bn", (c_out, out, out), 2 * c_out, 0))
        return out

    def se(self, prefix: str, se: SEPlan, hw: int) -> None:
        c, r = se.channels, se.reduced
        self.rows += [
            LayerCount(f"{prefix}.squeeze", "pool", (c, 1, 1), 0, 0, ops=c * hw * hw, se=True),
            LayerCount(f"{prefix}.fc1", "conv", (r, 1, 1), c * r + r, c * r, se=True),
            LayerCount(f"{prefix}.fc2", "conv", (c, 1, 1), r * c + c, r * c, se=True),
            LayerCount(f"{prefix}.gate", "gate", (c, 1, 1), 0, 0, ops=c, se=True),
            LayerCount(f"{prefix}.scale", "scale", (c, hw, hw), 0, 0, ops=c * hw * hw, se=True),
        ]

    def add(self, name: str, c: int, hw: int) -> None:
        self.rows.append(LayerCount(name, "add", (c, hw, hw), 0, 0, ops=c * hw * hw))


def _mbconv(cnt: _Counter, b: BlockPlan, hw: int) -> int:
    p = f"blocks.{b.index}"
    se = b.se
    if se is not None and se.placement == "pre":
        cnt.se(f"{p}.se", se, hw)
    if b.mid_channels != b.in_channels:
        cnt.conv(f"{p}.expand.conv", b.in_channels, b.mid_channels, 1, 1, hw, bn=f"{p}.expand.bn")
    out = cnt.conv(
        f"{p}.dw.conv", b.mid_channels, b.mid_channels, b.kernel, b.stride, hw, groups=b.mid_channels, bn=f"{p}.dw.bn"
    )
    if se is not None and se.placement == "standard":
        cnt.se(f"{p}.se", se, out)
    cnt.conv(f"{p}.project.conv", b.mid_channels, b.out_channels, 1, 1, out, bn=f"{p}.project.bn")
    if b.shortcut == "identity":
        if se is not None and se.placement == "identity":
            cnt.se(f"{p}.se", se, hw)
        cnt.add(f"{p}.add", b.out_channels, out)
    if se is not None and se.placement == "post":
        cnt.se(f"{p}.se", se, out)
    return out


def _bottleneck(cnt: _Counter, b: BlockPlan, hw: int) -> int:
    p = f"blocks.{b.index}"
    se = b.se
    if se is not None and se.placement == "pre":
        cnt.se(f"{p}.se", se, hw)
    cnt.conv(f"{p}.conv1", b.in_channels, b.mid_channels, 1, 1, hw, bn=f"{p}.bn1")
    out = cnt.conv(f"{p}.conv2", b.mid_channels, b.mid_channels, b.kernel, b.stride, hw, bn=f"{p}.bn2")
    cnt.conv(f"{p}.conv3", b.mid_channels, b.out_channels, 1, 1, out, bn=f"{p}.bn3")
    if se is not None and se.placement == "standard":
        cnt.se(f"{p}.se", se, out)
    if b.shortcut == "projection":
        cnt.conv(f"{p}.downsample.0", b.in_channels, b.out_channels, 1, b.stride, hw, bn=f"{p}.downsample.1")
    if se is not None and se.placement == "identity":
        cnt.se(f"{p}.se", se, out)
    cnt.add(f"{p}.add", b.out_channels, out)
    if se is not None and se.placement == "post":
        cnt.se(f"{p}.se", se, out)
    return out


def count(spec: ArchSpec, resolution: int | None = None) -> Accounting:
    """Count parameters and MACs of every layer of ``spec`` for one ``resolution`` x ``resolution`` image.

    Args:
        spec: the network.
        resolution: input side in pixels; defaults to ``spec.resolution``.
    """
    res = spec.resolution if resolution is None else resolution
    cnt = _Counter()
    hw = cnt.conv("stem.conv", 3, spec.stem_channels, spec.stem_kernel, 2, res, bn="stem.bn")
    if spec.family == "resnet":
        hw = (hw + 2 - 3) // 2 + 1  # 3x3/2 max-pool, padding 1: comparisons, not MACs
        cnt.rows.append(LayerCount("stem_pool", "pool", (spec.stem_channels, hw, hw), 0, 0))
    blocks = resolve(spec)
    for b in blocks:
        hw = (_bottleneck if b.kind == "bottleneck" else _mbconv)(cnt, b, hw)
    features = blocks[-1].out_channels
    if spec.head_channels:
        cnt.conv("head.conv", features, spec.head_channels, 1, 1, hw, bn="head.bn")
        features = spec.head_channels
    cnt.rows.append(LayerCount("pool", "pool", (features, 1, 1), 0, 0, ops=features * hw * hw))
    if spec.head_hidden:
        h = spec.head_hidden
        cnt.rows.append(LayerCount("head_fc", "linear", (h, 1, 1), features * h + h, features * h))
        features = h
    k = spec.num_classes
    cnt.rows.append(LayerCount("classifier", "linear", (k, 1, 1), features * k + k, features * k))
    return Accounting(name=spec.name, resolution=res, rows=tuple(cnt.rows))
