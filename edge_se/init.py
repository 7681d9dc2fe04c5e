"""Weight initialisations that decide numbers in the benchmarks and tests (recorded with them)."""

from __future__ import annotations

import torch
from torch import nn


def randomize_batchnorm(model: nn.Module, *, seed: int = 0) -> nn.Module:
    """Random BatchNorm statistics and affine terms, so a random-weight network has non-trivial logits.

    A freshly initialised MobileNetV3 gives logits near 0 (every BatchNorm is the identity and the
    activations shrink layer by layer). Per BatchNorm2d, from one generator seeded ``seed``, in this
    order: running mean U(-0.1, 0.1), running variance U(0.5, 1.5), weight U(0.5, 1.5), bias
    U(-0.2, 0.2). Layers without running statistics are left as they are.

    Returns:
        ``model`` in eval mode (changed in place).
    """
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None and m.running_var is not None:
            c = m.num_features
            m.running_mean.copy_(torch.rand(c, generator=gen) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(c, generator=gen) * 0.4 - 0.2)
    return model.eval()
