"""Choose the calibration subset: at random, or to cover the float model's gate-vector space.

``gate-coverage`` runs the float model over a pool of images, concatenates the gate vectors of
every SE block into one descriptor per image, and picks images by k-center greedy selection
(Sener & Savarese, 2018): each next image is the one farthest (Euclidean) from all images
chosen so far, so rare gate patterns (the ones whose ranges a random subset misses) get in.
Both selections are deterministic for a seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from edge_se.errors import EdgeSeError

CALIB_BATCH = 8
"""Images per calibration batch."""


@dataclass
class Calibration:
    """The calibration pool a policy selects from, how many it selects, and held-out images.

    One loader (:func:`load_calibration`) makes it for ``edge-se quantize``, ``edge-se export`` and
    ``edge-se run`` alike, so ``--calib-size N`` means the same everywhere: N images chosen by the
    policy from the pool (``quantize_model(..., calib_size=size)``).

    Attributes:
        source: ``random``, ``digits``, ``textures`` or a folder path (recorded in the manifest).
        batches: the pool, in batches ``[n, 3, R, R]``, normalised as the model expects.
        real: whether the images are real (real ones also join the parity inputs).
        held_out: real images never calibrated on ``[k, 3, R, R]`` (the source's test split), for
            the parity check and the artifact's fidelity.
        size: images the policy selects from the pool (None: all of it).
        held_out_labels: class indices of ``held_out`` (None without labels).
        info: recorded in the manifest's ``calibration`` block.
        classes: the source's class names (empty for ``random``).
    """

    source: str
    batches: list[torch.Tensor]
    real: bool
    held_out: torch.Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)
    size: int | None = None
    held_out_labels: torch.Tensor | None = None
    classes: list[str] = field(default_factory=list)

    @property
    def pool(self) -> torch.Tensor:
        """The whole pool as one tensor ``[N, 3, R, R]``."""
        return pool_images(self.batches)

    def first(self, n: int) -> list[torch.Tensor]:
        """The pool's first ``n`` images, in batches (BatchNorm re-estimation of random weights).

        Takes them batch by batch, so a pool of thousands is not concatenated to read a few.
        """
        head: list[torch.Tensor] = []
        have = 0
        for batch in self.batches:
            if have >= n:
                break
            head.append(batch[: n - have])
            have += len(head[-1])
        return list(torch.cat(head).split(CALIB_BATCH)) if head else []


def load_calibration(source: str, resolution: int, *, samples: int = 64, seed: int = 0) -> Calibration:
    """The calibration pool of ``source`` at ``resolution``: its whole training split, ``samples`` to select.

    Args:
        source: ``random`` (seeded N(0, 1) images: a pool of exactly ``samples``), ``digits``,
            ``textures`` (through :mod:`edge_se.data`) or a folder of class sub-folders of images.
        resolution: image side in pixels.
        samples: images the policy selects from the pool (``--calib-size``).
        seed: seeds the random images / the folder split.

    Raises:
        EdgeSeError: a size below 1, an unknown source or a folder that holds no images.
    """
    from edge_se.data import NAMED_SOURCES, load_images

    if samples < 1:
        raise EdgeSeError(f"bad --calib-size {samples}: need at least 1 image")
    if source == "random":
        g = torch.Generator().manual_seed(seed + 1)
        images = torch.randn(samples, 3, resolution, resolution, generator=g)
        return Calibration("random", list(images.split(CALIB_BATCH)), real=False, size=samples,
                           info={"samples": samples})
    if source not in NAMED_SOURCES and not Path(source).is_dir():
        valid = ", ".join(NAMED_SOURCES)
        raise EdgeSeError(f"unknown calibration source {source!r}; valid: {valid}, or an image folder")
    calib = load_images(source, resolution, split="train", seed=seed)
    if len(calib) == 0:
        raise EdgeSeError(f"calibration source {source!r} holds no images")
    held = load_images(source, resolution, split="test", seed=seed)
    return Calibration(source, list(calib.images.float().split(CALIB_BATCH)), real=True,
                       held_out=held.images.float(), size=min(samples, len(calib)), held_out_labels=held.labels,
                       info={"samples": min(samples, len(calib)), "pool": len(calib)}, classes=list(calib.classes))


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
