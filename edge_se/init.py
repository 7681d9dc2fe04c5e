"""Weight initialisations that decide numbers in the benchmarks and tests (recorded with them)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where a network is touched: the CLI lists the names without it
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
    import torch
    from torch import nn

    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None and m.running_var is not None:
            c = m.num_features
            m.running_mean.copy_(torch.rand(c, generator=gen) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(c, generator=gen) * 0.4 - 0.2)
    return model.eval()


RECIPE_LINEAR_STD = 0.01
"""Std of the recipe's Linear weights: torchvision's MobileNetV3 rule, which edge-se's builder applies
to every family (edge_se/network.py)."""


def _recipe(m: nn.Linear) -> None:
    from torch import nn

    nn.init.normal_(m.weight, 0.0, RECIPE_LINEAR_STD)
    nn.init.zeros_(m.bias)


def _torch_default(m: nn.Linear) -> None:
    # nn.Linear's own: kaiming_uniform(a=sqrt(5)) weights, bias U(+-1/sqrt(fan_in)).
    m.reset_parameters()


def _efficientnet_uniform(m: nn.Linear) -> None:
    # The TF EfficientNet dense init (and edge-se's builder before it took the recipe's):
    # U(+-1/sqrt(out_features)), zero bias; +-0.32 for a 10-class head.
    from torch import nn

    bound = 1.0 / float(m.out_features) ** 0.5
    nn.init.uniform_(m.weight, -bound, bound)
    nn.init.zeros_(m.bias)


#: Linear-layer initialisations a training run can start from (``edge-se train --init``), by name.
LINEAR_INITS = {"recipe": _recipe, "torch-default": _torch_default, "efficientnet-uniform": _efficientnet_uniform}
DEFAULT_INIT = "recipe"


def init_linear(model: nn.Module, init: str = DEFAULT_INIT) -> int:
    """Re-initialise every ``nn.Linear`` of ``model`` with the named scheme (:data:`LINEAR_INITS`).

    The int8 fidelity of a trained network depends on it (results/quant_bench.md: normal(0, 0.01)
    gave 32.6 dB logits SQNR on EfficientNet-B0 where the uniform init gave 6.9 dB), so it is a
    recorded training option. Draws come from torch's global generator (seed it first).

    Returns:
        The number of Linear layers re-initialised.

    Raises:
        ValueError: an unknown name (the message lists the valid ones).
    """
    if init not in LINEAR_INITS:
        raise ValueError(f"unknown --init {init!r}; valid: {', '.join(LINEAR_INITS)}")
    from torch import nn

    n = 0
    for m in model.modules():
        if isinstance(m, nn.Linear):
            LINEAR_INITS[init](m)
            n += 1
    return n
