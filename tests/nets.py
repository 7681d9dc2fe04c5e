"""Small networks' shared preparation for the quantisation tests."""

from __future__ import annotations

import torch
from torch import nn


def with_data_statistics(model: nn.Module, resolution: int, images: int = 64) -> nn.Module:
    """``model`` in eval mode after one train-mode pass over ``images`` random images (global RNG).

    The pass gives every BatchNorm the running statistics of its inputs, as training would: a
    fresh BatchNorm (mean 0, variance 1) would leave activations at whatever scale the random
    weights give, and quantisation ranges would be calibrated on a network no one trains.
    """
    with torch.no_grad():
        model.train()
        model(torch.randn(images, 3, resolution, resolution))
    return model.eval()
