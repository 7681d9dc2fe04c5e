"""Where an export's model and calibration images come from (the I/O edge of ``export``).

Random weights get their BatchNorm statistics re-estimated on the calibration images: a freshly
initialised MobileNetV3 produces logits near 1e-10 (PLATFORM.md), which no int8 grid can
represent and no parity figure can judge. Re-estimation (cumulative averages over a few
forward passes in train mode, nothing else updated) gives activations of order 1; it is
recorded in the manifest's ``weights`` block. Real weights (``--weights``) are never touched.

The calibration pool itself is :func:`quantize.calibration.load_calibration` (one loader for
``quantize``, ``export`` and ``run``), re-exported here.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from quantize.calibration import CALIB_BATCH, Calibration, load_calibration


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, batches: list[torch.Tensor]) -> int:
    """Replace every BatchNorm's running statistics by their cumulative average over ``batches``.

    Only ``running_mean``/``running_var`` change; the model is returned to eval mode.

    Returns:
        The number of BatchNorm layers updated.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch weighs the same
    model.train()
    for b in batches:
        model(b)
    for m, mom in zip(bns, saved, strict=True):
        m.momentum = mom
    model.eval()
    return len(bns)


BN_IMAGES = 64
"""Images (the pool's first) that BatchNorm statistics of random weights are re-estimated on."""


def prepare_model(
    name: str, *, weights: str | None, calib: Calibration | None, resolution: int, seed: int = 0
) -> tuple[nn.Module, dict[str, Any]]:
    """The float model to export, in eval mode, and a record of where its weights came from.

    Raises:
        EdgeSeError: an unknown model or an unusable weights file (from the registry/loader).
    """
    from edge_se.registry import build_model

    if weights is not None:
        from edge_se.weights import load_weights

        model = load_weights(name, weights)
        return model.eval(), {"source": "file", "path": str(weights)}
    torch.manual_seed(seed)
    model = build_model(name)
    batches = calib.first(BN_IMAGES) if calib is not None else [
        torch.randn(CALIB_BATCH, 3, resolution, resolution, generator=torch.Generator().manual_seed(seed))
    ]
    n = reestimate_batchnorm(model, batches)
    return model.eval(), {
        "source": "random",
        "seed": seed,
        "batchnorm_reestimated_on": calib.source if calib is not None else "random",
        "batchnorm_layers": n,
    }


__all__ = ["CALIB_BATCH", "Calibration", "load_calibration", "prepare_model", "reestimate_batchnorm"]
