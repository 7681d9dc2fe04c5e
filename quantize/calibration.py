"""Choose the calibration subset: at random, or to cover the float model's gate-vector space.

``gate-coverage`` runs the float model over a pool of images, concatenates the gate vectors of
every SE block into one descriptor per image, and picks images by k-center greedy selection
(Sener & Savarese, 2018): each next image is the one farthest (Euclidean) from all images
chosen so far, so rare gate patterns (the ones whose ranges a random subset misses) get in.
Both selections are deterministic for a seed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from edge_se.errors import EdgeSeError


def pool_images(calib: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate calibration batches ``[n_i, 3, R, R]`` into one pool ``[N, 3, R, R]``.

    Raises:
        EdgeSeError: no batches, an empty pool, or batches of different image shapes.
    """
    batches = [calib] if isinstance(calib, torch.Tensor) else list(calib)
    if not batches:
        raise EdgeSeError("calibration data is empty: need at least one image batch [N, 3, R, R]")
    shapes = {tuple(b.shape[1:]) for b in batches}
    if len(shapes) != 1 or any(b.ndim != 4 for b in batches):
        raise EdgeSeError(f"calibration batches must all be [N, 3, R, R] of one shape; got {sorted(shapes)}")
    pool = torch.cat([b.float() for b in batches])
    if pool.shape[0] == 0:
        raise EdgeSeError("calibration data is empty: calib size must be >= 1")
    return pool


def check_size(size: int | None, available: int) -> int:
    """The subset size to use: ``size`` (or everything when None), checked against the pool.

    Raises:
        EdgeSeError: a size below 1, naming the field ``calib_size``.
    """
    if size is None:
        return available
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise EdgeSeError(f"bad calib_size {size!r}: need an integer >= 1 (images used to calibrate)")
    return min(size, available)


def random_indices(n: int, size: int, seed: int) -> list[int]:
    """``size`` distinct indices of ``range(n)`` drawn with ``seed`` (sorted)."""
    gen = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(n, generator=gen)[:size].tolist())


def k_center_indices(features: torch.Tensor, size: int, seed: int) -> list[int]:
    """k-center greedy selection of ``size`` rows of ``features`` ``[N, D]`` (sorted indices).

    The first centre is drawn with ``seed``; each next one is the row with the largest distance
    to its nearest chosen centre (ties: the lowest index).
    """
    n = features.shape[0]
    size = min(size, n)
    f = features.double()
    first = int(torch.randint(n, (1,), generator=torch.Generator().manual_seed(seed)))
    chosen = [first]
    dist = (f - f[first]).pow(2).sum(1)
    for _ in range(size - 1):
        nxt = int(torch.argmax(dist))
        if float(dist[nxt]) <= 0.0:  # duplicates only: fill up in index order
            rest = [i for i in range(n) if i not in set(chosen)]
            chosen += rest[: size - len(chosen)]
            break
        chosen.append(nxt)
        dist = torch.minimum(dist, (f - f[nxt]).pow(2).sum(1))
    return sorted(chosen)
