"""Observe the gate vector of every SE block on a batch, without changing the model.

Forward hooks on each ``SqueezeExcite.gate`` record its output; they are removed when the
context exits, so the model's outputs, ``state_dict`` and exportability are untouched.

Example:
    >>> import torch, edge_se
    >>> model = edge_se.build_model("mobilenetv3_small_100").eval()
    >>> with edge_se.capture_gates(model) as gates:
    ...     _ = model(torch.randn(2, 3, 64, 64))
    >>> list(gates)[:2], gates["blocks.0.se"].shape
    (['blocks.0.se', 'blocks.3.se'], torch.Size([2, 16]))
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from edge_se.blocks import SqueezeExcite


def se_modules(model: nn.Module) -> dict[str, SqueezeExcite]:
    """Every SE block of ``model`` by module path, in forward order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, SqueezeExcite)}


@contextlib.contextmanager
def capture_gates(model: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Yield a dict filled, on each forward pass, with ``{se_path: gate [N, C]}`` (detached, on CPU).

    A second forward pass inside the context concatenates along the batch dimension, so a
    calibration loop can run many batches and read all gate vectors at the end.
    """
    gates: dict[str, torch.Tensor] = {}
    handles = []

    def hook_for(name: str):  # noqa: ANN202 - a closure for register_forward_hook
        def hook(_module: nn.Module, _inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            g = output.detach().flatten(1).float().cpu()
            gates[name] = torch.cat([gates[name], g]) if name in gates else g

        return hook

    for name, se in se_modules(model).items():
        handles.append(se.gate.register_forward_hook(hook_for(name)))
    try:
        yield gates
    finally:
        for h in handles:
            h.remove()
