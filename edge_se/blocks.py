"""The building blocks: SE, conv-BN-activation, MBConv (inverted residual) and the ResNet bottleneck.

Each block is built from a resolved :class:`~edge_se.plan.BlockPlan`; submodule names are fixed
(``se.fc1``, ``se.fc2``, ``se.gate``, ...) because the weight loaders, the gate observer and the
quantisation policies find SE blocks by them.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from edge_se.plan import BlockPlan, SEPlan


def make_act(name: str) -> nn.Module:
    """The activation module for a spec name (``relu``, ``silu``, ``hswish``)."""
    if name == "relu":
        return nn.ReLU()
    if name == "silu":
        return nn.SiLU()
    if name == "hswish":
        return nn.Hardswish()
    raise ValueError(f"unknown activation {name!r}; valid: relu, silu, hswish")


def make_gate(name: str) -> nn.Module:
    """The SE gate: ``sigmoid``, ``hsigmoid`` (relu6(x + 3) / 6) or ``softmax`` over channels."""
    if name == "sigmoid":
        return nn.Sigmoid()
    if name == "hsigmoid":
        return nn.Hardsigmoid()
    if name == "softmax":
        return nn.Softmax(dim=1)  # competition gate: the C channel weights of an image sum to 1
    raise ValueError(f"unknown gate {name!r}; valid: sigmoid, hsigmoid, softmax")


class SqueezeExcite(nn.Module):
    """Squeeze-and-Excitation (Hu et al., 2018) on ``channels`` with a ``reduced``-wide bottleneck.

    squeeze: global average pool to ``[N, C, 1, 1]``; excitation: ``fc1`` (C -> C_r, a 1x1 conv
    with bias), ``act``, ``fc2`` (C_r -> C), ``gate``; scale: ``x * gate``, channel-wise.
    It adds ``2 * C * C_r`` MACs and ``2 * C * C_r + C_r + C`` parameters per image.
    """

    def __init__(self, channels: int, reduced: int, act: str = "relu", gate: str = "sigmoid") -> None:
        super().__init__()
        self.channels = channels
        self.reduced = reduced
        self.fc1 = nn.Conv2d(channels, reduced, 1, bias=True)
        self.act = make_act(act)
        self.fc2 = nn.Conv2d(reduced, channels, 1, bias=True)
        self.gate = make_gate(gate)

    @classmethod
    def from_plan(cls, plan: SEPlan) -> SqueezeExcite:
        """Build from a resolved :class:`SEPlan`."""
        return cls(plan.channels, plan.reduced, plan.act, plan.gate)

    def excitation(self, x: torch.Tensor) -> torch.Tensor:
        """The gate vector ``[N, C, 1, 1]`` for feature map ``x``."""
        s = x.mean((2, 3), keepdim=True)
        return self.gate(self.fc2(self.act(self.fc1(s))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scale each channel of ``x`` by its gate value."""
        return x * self.excitation(x)


class ConvBnAct(nn.Sequential):
    """Conv2d (no bias, symmetric padding ``k // 2``) -> BatchNorm2d -> optional activation."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        stride: int = 1,
        *,
        groups: int = 1,
        act: str | None = None,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ) -> None:
        layers: dict[str, nn.Module] = {
            "conv": nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, groups=groups, bias=False),
            "bn": nn.BatchNorm2d(out_channels, eps=bn_eps, momentum=bn_momentum),
        }
        if act is not None:
            layers["act"] = make_act(act)
        super().__init__(OrderedDict(layers))


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample while training (identity in eval)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Zero the branch for a random ``p`` of the batch and rescale the rest by ``1 / (1 - p)``."""
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class MBConv(nn.Module):
    """Inverted residual (and its depthwise-separable special case) with SE at its planned place.

    expand (1x1, only when mid != in) -> depthwise kxk -> [SE] -> project (1x1, no activation);
    identity shortcut when stride 1 and in == out.
    """

    def __init__(self, plan: BlockPlan, *, bn_eps: float, bn_momentum: float, drop_path: float = 0.0) -> None:
        super().__init__()
        self.plan = plan
        self.expand = (
            ConvBnAct(plan.in_channels, plan.mid_channels, 1, act=plan.act, bn_eps=bn_eps, bn_momentum=bn_momentum)
            if plan.mid_channels != plan.in_channels
            else None
        )
        self.dw = ConvBnAct(
            plan.mid_channels,
            plan.mid_channels,
            plan.kernel,
            plan.stride,
            groups=plan.mid_channels,
            act=plan.act,
            bn_eps=bn_eps,
            bn_momentum=bn_momentum,
        )
        self.se = SqueezeExcite.from_plan(plan.se) if plan.se is not None else None
        self.project = ConvBnAct(plan.mid_channels, plan.out_channels, 1, bn_eps=bn_eps, bn_momentum=bn_momentum)
        self.drop_path = DropPath(drop_path) if plan.shortcut == "identity" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block."""
        placement = self.plan.se.placement if self.plan.se is not None else "standard"
        se = self.se
        h = se(x) if se is not None and placement == "pre" else x
        if self.expand is not None:
            h = self.expand(h)
        h = self.dw(h)
        if se is not None and placement == "standard":
            h = se(h)
        h = self.project(h)
        if self.drop_path is not None:
            shortcut = se(x) if se is not None and placement == "identity" else x
            h = shortcut + self.drop_path(h)
        if se is not None and placement == "post":
            h = se(h)
        return h


class Bottleneck(nn.Module):
    """ResNet bottleneck 1x1 -> 3x3 (stride here, "v1.5") -> 1x1 with SE after the last BN (standard)."""

    def __init__(self, plan: BlockPlan, *, bn_eps: float, bn_momentum: float, drop_path: float = 0.0) -> None:
        super().__init__()
        mid, out = plan.mid_channels, plan.out_channels
        self.plan = plan
        self.conv1 = nn.Conv2d(plan.in_channels, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid, eps=bn_eps, momentum=bn_momentum)
        self.conv2 = nn.Conv2d(mid, mid, plan.kernel, plan.stride, plan.kernel // 2, bias=False)
        self.bn2 = nn.BatchNorm2d(mid, eps=bn_eps, momentum=bn_momentum)
        self.conv3 = nn.Conv2d(mid, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out, eps=bn_eps, momentum=bn_momentum)
        self.act = make_act(plan.act)
        self.se = SqueezeExcite.from_plan(plan.se) if plan.se is not None else None
        self.downsample = (
            nn.Sequential(
                nn.Conv2d(plan.in_channels, out, 1, plan.stride, bias=False),
                nn.BatchNorm2d(out, eps=bn_eps, momentum=bn_momentum),
            )
            if plan.shortcut == "projection"
            else None
        )
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block."""
        placement = self.plan.se.placement if self.plan.se is not None else "standard"
        se = self.se
        h = se(x) if se is not None and placement == "pre" else x
        h = self.act(self.bn1(self.conv1(h)))
        h = self.act(self.bn2(self.conv2(h)))
        h = self.bn3(self.conv3(h))
        if se is not None and placement == "standard":
            h = se(h)
        shortcut = self.downsample(x) if self.downsample is not None else x
        if se is not None and placement == "identity":
            shortcut = se(shortcut)
        h = self.act(shortcut + self.drop_path(h))
        if se is not None and placement == "post":
            h = se(h)
        return h
