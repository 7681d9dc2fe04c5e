"""Where an export's model and calibration images come from (the I/O edge of ``export``).

Random weights get their BatchNorm statistics re-estimated on the calibration images: a freshly
initialised MobileNetV3 produces logits near 1e-10 (PLATFORM.md), which no int8 grid can
represent and no parity figure can judge. Re-estimation (cumulative averages over a few
forward passes in train mode, nothing else updated) gives activations of order 1; it is
recorded in the manifest's ``weights`` block. Real weights (``--weights``) are never touched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from edge_se.errors import EdgeSeError
from export.pipeline import Calibration

CALIB_BATCH = 8
"""Images per calibration batch."""


def load_calibration(source: str, resolution: int, *, samples: int = 64, seed: int = 0) -> Calibration:
    """Calibration images from ``random``, ``digits`` or an image folder, at ``resolution``.

    Args:
        source: ``random`` (seeded N(0, 1) images), ``digits`` (scikit-learn's, through
            ``edge_se.data``) or a folder of images.
        resolution: image side in pixels.
        samples: images to calibrate with.
        seed: seeds the random images / the data split.

    Raises:
        EdgeSeError: an unknown source or a folder that holds no images.
    """
    if samples < 1:
        raise EdgeSeError(f"bad --calib-size {samples}: need at least 1 image")
    if source == "random":
        g = torch.Generator().manual_seed(seed + 1)
        images = torch.randn(samples, 3, resolution, resolution, generator=g)
        return Calibration("random", list(images.split(CALIB_BATCH)), real=False, info={"samples": samples})
    if source != "digits" and not Path(source).is_dir():
        raise EdgeSeError(f"unknown calibration source {source!r}; valid: random, digits, or an image folder")
    try:
        from edge_se.data import load_images
    except ImportError as exc:
        raise EdgeSeError(f"--calib {source} needs edge_se.data, which is not available here: {exc}") from None
    calib = load_images(source, resolution, split="train", seed=seed)
    images = calib.images[:samples].float()
    if len(images) == 0:
        raise EdgeSeError(f"calibration source {source!r} holds no images")
    held_out: torch.Tensor | None
    try:  # held-out images for the parity check: never the ones the ranges were calibrated on
        held_out = load_images(source, resolution, split="test", seed=seed).images[:8].float()
    except EdgeSeError:
        held_out = calib.images[samples : samples + 8].float() if len(calib.images) > samples else None
    return Calibration(source, list(images.split(CALIB_BATCH)), real=True, held_out=held_out,
                       info={"samples": int(len(images))})


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
    batches = calib.batches if calib is not None else [
        torch.randn(CALIB_BATCH, 3, resolution, resolution, generator=torch.Generator().manual_seed(seed))
    ]
    n = reestimate_batchnorm(model, batches)
    return model.eval(), {
        "source": "random",
        "seed": seed,
        "batchnorm_reestimated_on": calib.source if calib is not None else "random",
        "batchnorm_layers": n,
    }


__all__ = ["CALIB_BATCH", "load_calibration", "prepare_model", "reestimate_batchnorm"]
