"""A network as the pieces a latency table measures: stem, each block, head (pure, no torch).

nn-Meter's observation holds on edge CPUs: a runtime executes a network kernel by kernel, so its
latency is close to the sum of its kernels' latencies, and a kernel's latency depends only on its
configuration and input size, not on where in which network it sits. :func:`kernels` cuts a spec
at one resolution into those pieces; :attr:`Kernel.key` is the table key (equal keys are the same
computation); :func:`kernel_features` gives the per-kernel figures a predictor regresses on
(MACs by operator class and elements written), from the same walk as :mod:`edge_se.accounting`.

Example::

    >>> from edge_se.registry import get_spec
    >>> ks = kernels(get_spec("efficientnet_b0"), 224)
    >>> len(ks), ks[0].key
    (18, 'stem:i3-o32-k3-s2-silu@224')
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from edge_se.accounting import conv_out
from edge_se.plan import BlockPlan, resolve
from edge_se.specs import ArchSpec

KernelKind = Literal["stem", "mbconv", "bottleneck", "head"]

FEATURES = ("macs_dense", "macs_dw3", "macs_dw5", "macs_se", "elems", "se_blocks", "one")
"""The predictor's features, in order (:func:`kernel_features`).

``macs_dense``: MACs of full and pointwise convolutions and linear layers; ``macs_dw3`` /
``macs_dw5``: depthwise MACs with a 3x3 / larger kernel (XNNPACK's depthwise kernels differ in
efficiency per MAC); ``macs_se``: the SE pair of FCs; ``elems``: activation elements written by
every operator (memory-bound work: activations, the SE scale, residual adds, pooling);
``se_blocks``: SE blocks (a fixed cost each: squeeze, two tiny FCs, gate); ``one``: a constant
per kernel (the operators' dispatch).
"""


@dataclass(frozen=True)
class Kernel:
    """One measurable piece of a network at one input size.

    Attributes:
        kind: ``stem`` (first conv + BN + activation, ResNet's max-pool with it), ``mbconv``,
            ``bottleneck`` or ``head`` (last 1x1 conv, global pool, hidden FC, classifier).
        size: input side in pixels (square input ``[1, in_channels, size, size]``).
        plan: the block (``mbconv``/``bottleneck``); its ``index`` is not part of the key.
        in_channels, out_channels: for ``stem``/``head`` (a block's come from ``plan``).
        stem_kernel: the stem conv's kernel size.
        act: the stem/head activation.
        head_hidden, num_classes: the head's pooled hidden FC (0: none) and classes.
        stem_pool: the stem has ResNet's 3x3/2 max-pool.
    """

    kind: KernelKind
    size: int
    plan: BlockPlan | None = None
    in_channels: int = 0
    out_channels: int = 0
    stem_kernel: int = 3
    act: str = ""
    head_hidden: int = 0
    num_classes: int = 0
    stem_pool: bool = False

    @property
    def key(self) -> str:
        """The table key: every field that decides the computation, nothing else."""
        if self.plan is not None:
            p = self.plan
            se = "" if p.se is None else f"-se{p.se.reduced}{p.se.gate}{p.se.act}/{p.se.placement}"
            return (f"{self.kind}:i{p.in_channels}-m{p.mid_channels}-o{p.out_channels}-k{p.kernel}-s{p.stride}"
                    f"-{p.act}-{p.shortcut}{se}@{self.size}")
        if self.kind == "stem":
            pool = "-pool" if self.stem_pool else ""
            return f"stem:i{self.in_channels}-o{self.out_channels}-k{self.stem_kernel}-s2-{self.act}{pool}@{self.size}"
        hidden = f"-h{self.head_hidden}" if self.head_hidden else ""
        return f"head:i{self.in_channels}-o{self.out_channels}-{self.act}{hidden}-c{self.num_classes}@{self.size}"

    @property
    def input_channels(self) -> int:
        """Channels of the kernel's input feature map."""
        return self.plan.in_channels if self.plan is not None else self.in_channels

    @property
    def out_size(self) -> int:
        """Output side in pixels (1 for the head: it pools)."""
        if self.kind == "head":
            return 1
        if self.plan is not None:
            return conv_out(self.size, self.plan.kernel, self.plan.stride)
        side = conv_out(self.size, self.stem_kernel, 2)
        return (side + 2 - 3) // 2 + 1 if self.stem_pool else side


def kernels(spec: ArchSpec, resolution: int | None = None) -> tuple[Kernel, ...]:
    """The kernels of ``spec`` at ``resolution`` (default: the spec's), in execution order."""
    res = spec.resolution if resolution is None else resolution
    stem = Kernel("stem", res, in_channels=3, out_channels=spec.stem_channels, stem_kernel=spec.stem_kernel,
                  act=spec.stem_act, stem_pool=spec.family == "resnet")
    out: list[Kernel] = [stem]
    side = stem.out_size
    plans = resolve(spec)
    for plan in plans:
        k = Kernel("bottleneck" if plan.kind == "bottleneck" else "mbconv", side, plan=replace(plan, index=0))
        out.append(k)
        side = k.out_size
    out.append(Kernel("head", side, in_channels=plans[-1].out_channels, out_channels=spec.head_channels,
                      act=spec.stem_act, head_hidden=spec.head_hidden, num_classes=spec.num_classes))
    return tuple(out)


def _se_figures(channels: int, reduced: int, side: int) -> tuple[int, int]:
    """SE MACs (two FCs) and elements written (squeeze, FC outputs, gate, scale)."""
    return 2 * channels * reduced, channels + reduced + channels + channels + channels * side * side


def kernel_features(k: Kernel) -> dict[str, float]:
    """The figures of :data:`FEATURES` for one kernel, per image (MACs, elements)."""
    f = dict.fromkeys(FEATURES, 0.0)
    f["one"] = 1.0

    def conv(c_in: int, c_out: int, kernel: int, stride: int, side: int, *, depthwise: bool = False) -> int:
        o = conv_out(side, kernel, stride)
        macs = c_out * o * o * (1 if depthwise else c_in) * kernel * kernel
        if depthwise:
            f["macs_dw3" if kernel <= 3 else "macs_dw5"] += macs
        else:
            f["macs_dense"] += macs
        f["elems"] += c_out * o * o
        return o

    def se(channels: int, reduced: int, side: int) -> None:
        macs, elems = _se_figures(channels, reduced, side)
        f["macs_se"] += macs
        f["elems"] += elems
        f["se_blocks"] += 1

    if k.kind == "stem":
        side = conv(k.in_channels, k.out_channels, k.stem_kernel, 2, k.size)
        if k.stem_pool:
            f["elems"] += k.out_channels * k.out_size * k.out_size
    elif k.kind == "head":
        features = k.in_channels
        if k.out_channels:
            conv(k.in_channels, k.out_channels, 1, 1, k.size)
            features = k.out_channels
        f["elems"] += features  # the pooled vector
        for width in ([k.head_hidden] if k.head_hidden else []) + [k.num_classes]:
            f["macs_dense"] += features * width
            f["elems"] += width
            features = width
    else:
        p = k.plan
        assert p is not None  # every block kernel carries its plan (kernels() builds them so)
        side_in = k.size
        if p.kind == "bottleneck":
            conv(p.in_channels, p.mid_channels, 1, 1, side_in)
            side = conv(p.mid_channels, p.mid_channels, p.kernel, p.stride, side_in)
            conv(p.mid_channels, p.out_channels, 1, 1, side)
            if p.shortcut == "projection":
                conv(p.in_channels, p.out_channels, 1, p.stride, side_in)
            f["elems"] += p.out_channels * side * side  # the add
        else:
            if p.mid_channels != p.in_channels:
                conv(p.in_channels, p.mid_channels, 1, 1, side_in)
            side = conv(p.mid_channels, p.mid_channels, p.kernel, p.stride, side_in, depthwise=True)
            conv(p.mid_channels, p.out_channels, 1, 1, side)
            if p.shortcut == "identity":
                f["elems"] += p.out_channels * side * side
        if p.se is not None:
            se(p.se.channels, p.se.reduced, side_in if p.se.placement == "pre" else side)
    return f


__all__ = ["FEATURES", "Kernel", "KernelKind", "kernel_features", "kernels"]
