"""An activation observer that clips the tails: the range is the 0.01% / 99.99% percentiles.

Min-max ranges are set by the most extreme value seen in calibration; one outlier pixel of one
image widens the grid of every other value of that tensor. The percentile observer keeps the
bulk of the distribution on the grid and lets the rare tails saturate.
"""

from __future__ import annotations

import torch
from torchao.quantization.pt2e import MinMaxObserver

# The tail fraction clipped on each side; 1e-4 keeps 99.98% of the values inside the range.
TAIL = 1e-4
# torch.quantile takes at most 2**24 elements; a strided subsample keeps the cost bounded.
MAX_SAMPLES = 1 << 20


class PercentileObserver(MinMaxObserver):
    """Records the running extremes of each batch's 0.01% and 99.99% percentiles."""

    def forward(self, x_orig: torch.Tensor) -> torch.Tensor:
        """Observe one batch; returns it unchanged."""
        if x_orig.numel() == 0:
            return x_orig
        x = x_orig.detach().to(self.min_val.dtype).flatten()
        if x.numel() > MAX_SAMPLES:
            x = x[:: (x.numel() + MAX_SAMPLES - 1) // MAX_SAMPLES]
        lo, hi = torch.quantile(x, torch.tensor([TAIL, 1.0 - TAIL], dtype=x.dtype))
        self.min_val.copy_(torch.min(lo, self.min_val))
        self.max_val.copy_(torch.max(hi, self.max_val))
        return x_orig


# ``act-outlier``: an image is an outlier for a tensor when its largest magnitude there exceeds this many
# times the median image's. Measured (EfficientNet-B0 trained from the TF/timm classifier init on digits,
# a late projection conv, per-image max |x| over the 1,437 training images): median 1.4, 95th percentile
# 2.6, 99th 35.3, max 171.5: a separate population of about 1-2% of images, 20-100x the rest. Eight times
# the median sits above the bulk's tail (held-out 99th percentile: 5.2x the median) and below that population.
OUTLIER_FACTOR = 8.0


class ImageOutlierObserver(MinMaxObserver):
    """Range over the images, outlier images left out (``act-outlier``).

    Trained networks can have rare inputs that drive a tensor to many times its usual range in
    every channel at once (see :data:`OUTLIER_FACTOR`). A range that covers such an image (and the
    L2-optimal histogram range does, since that image's squared error dominates) leaves every other
    image a handful of grid steps. This observer records each image's minimum and maximum (dim 0 is
    the batch) and sets the range to the extremes of the images whose largest magnitude is at most
    :data:`OUTLIER_FACTOR` times the median image's: the rare image saturates, the rest keep their
    resolution. The median needs a pool of more than a few images (the policy calibrates on the whole
    pool unless ``--calib-size`` says otherwise).
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        # Per observed tensor shape (without the batch): each image's min and max. A shared observer
        # (one grid for several tensors: an add's inputs, a mean and its input under int8 rewrites)
        # sees tensors of different sizes whose "images" are different populations: each tensor's
        # range is found on its own and the grid covers their union.
        self.extremes: dict[tuple[int, ...], tuple[list[torch.Tensor], list[torch.Tensor]]] = {}

    def forward(self, x_orig: torch.Tensor) -> torch.Tensor:
        """Observe one batch; returns it unchanged."""
        if x_orig.numel() == 0:
            return x_orig
        x = x_orig.detach().to(self.min_val.dtype)
        flat = x.reshape(x.shape[0], -1) if x.ndim > 1 else x.reshape(1, -1)
        lows, highs = self.extremes.setdefault(tuple(x.shape[1:]), ([], []))
        lows.append(flat.amin(dim=1))
        highs.append(flat.amax(dim=1))
        return x_orig

    @torch.jit.export
    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        """Scale and zero point of the range over the non-outlier images (all images when none was recorded)."""
        if self.extremes:
            ranges = [_kept_range(torch.cat(lows), torch.cat(highs)) for lows, highs in self.extremes.values()]
            self.min_val.copy_(min(lo for lo, _ in ranges))
            self.max_val.copy_(max(hi for _, hi in ranges))
        return super().calculate_qparams()


def _kept_range(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(min, max)`` over the images whose peak |x| is at most :data:`OUTLIER_FACTOR` x the median image's."""
    peak = torch.maximum(lo.abs(), hi.abs())
    keep = peak <= OUTLIER_FACTOR * peak.median()
    return lo[keep].min(), hi[keep].max()
