"""Stand-alone modules for latency probes: one :class:`~edge_se.latency_key.Kernel`, as the network builds it.

A probe is the same layers the network holds for that kernel (the same classes, the same
arguments, :func:`edge_se.network.build`'s initialisation), taking the kernel's input feature map
``[1, C, H, H]``, so a table entry measured on the probe is the cost of that piece of the network.
"""

from __future__ import annotations

import torch
from torch import nn

from edge_se.blocks import Bottleneck, ConvBnAct, MBConv, make_act
from edge_se.latency_key import Kernel
from edge_se.network import init_weights


class _Head(nn.Module):
    """The network's tail: last 1x1 conv, global average pool, optional hidden FC, classifier (as EdgeSENet)."""

    def __init__(self, k: Kernel, *, bn_eps: float) -> None:
        super().__init__()
        features = k.in_channels
        self.head = ConvBnAct(features, k.out_channels, 1, act=k.act, bn_eps=bn_eps) if k.out_channels else None
        features = k.out_channels or features
        self.head_fc = nn.Linear(features, k.head_hidden) if k.head_hidden else None
        self.head_act = make_act("hswish") if k.head_hidden else None
        self.classifier = nn.Linear(k.head_hidden or features, k.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[1, num_classes]`` of the last feature map."""
        if self.head is not None:
            x = self.head(x)
        x = x.mean((2, 3))
        if self.head_fc is not None and self.head_act is not None:
            x = self.head_act(self.head_fc(x))
        return self.classifier(x)


def probe_module(k: Kernel, *, bn_eps: float = 1e-3) -> nn.Module:
    """The module computing kernel ``k`` (eval mode, initialised as :func:`edge_se.network.build` does)."""
    module: nn.Module
    if k.kind == "stem":
        conv = ConvBnAct(k.in_channels, k.out_channels, k.stem_kernel, 2, act=k.act, bn_eps=bn_eps)
        module = nn.Sequential(conv, nn.MaxPool2d(3, 2, 1)) if k.stem_pool else conv
    elif k.kind == "head":
        module = _Head(k, bn_eps=bn_eps)
    else:
        assert k.plan is not None  # kernels() gives every block kernel its plan
        cls = Bottleneck if k.kind == "bottleneck" else MBConv
        module = cls(k.plan, bn_eps=bn_eps, bn_momentum=0.1)
    init_weights(module)
    return module.eval()


def probe_input(k: Kernel, *, batch: int = 1, seed: int = 0) -> torch.Tensor:
    """A seeded random input ``[batch, C, H, H]`` for kernel ``k`` (calibration and parity of a probe)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, k.input_channels, k.size, k.size, generator=g)


__all__ = ["probe_input", "probe_module"]
