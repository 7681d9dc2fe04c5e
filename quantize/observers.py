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
