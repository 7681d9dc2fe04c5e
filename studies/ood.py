"""Out-of-distribution image sets built from data already on disk, normalised as edge-se's sources are.

Nothing is downloaded: the photographs are those :mod:`edge_se.textures` uses (inside scikit-image
and scikit-learn), every other set is generated or derived from the in-distribution ``test`` split.
Every set is float32 ``[n, 3, R, R]`` passed through :func:`edge_se.data.normalize` from [0, 1],
exactly like :func:`edge_se.data.load_images`. Sets (far to near):

- ``uniform``: i.i.d. U(0, 1) pixels (colour).
- ``gaussian``: i.i.d. N(0.5, 0.25^2) pixels, clipped to [0, 1].
- ``photos``: random square crops (side U(0.2, 0.6) of the shorter side) of the photographs,
  resized (skipped when the in-distribution source is ``textures``, which is made of them).
- ``inverted``: held-out in-distribution images, ``1 - x``.
- ``noisy``: held-out in-distribution images plus N(0, 0.3^2) pixel noise, clipped.
- ``blurred``: held-out in-distribution images, Gaussian blur of sigma ``R / 8`` pixels.

Example:
    >>> sets = ood_sets("digits", 32, n=4, seed=0)
    >>> sorted(sets), tuple(sets["photos"].shape)
    (['blurred', 'gaussian', 'inverted', 'noisy', 'photos', 'uniform'], (4, 3, 32, 32))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from edge_se.data import IMAGENET_MEAN, IMAGENET_STD, load_images, normalize

SETS = ("uniform", "gaussian", "photos", "inverted", "noisy", "blurred")
NOISE_STD = 0.3  # pixel noise of ``noisy``, in [0, 1] units
BLUR_SIGMA_SHARE = 1 / 8  # blur sigma of ``blurred``, as a share of the side
CROP_SHARE = (0.2, 0.6)  # side of a ``photos`` crop, as a share of the photograph's shorter side


def denormalize(images: torch.Tensor) -> torch.Tensor:
    """Undo :func:`edge_se.data.normalize`: ImageNet-normalised ``[N, 3, H, W]`` back to [0, 1] pixels."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return images * std + mean


def gaussian_blur(images01: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``[N, 3, H, W]`` (sigma in pixels, kernel +-3 sigma, reflect padding)."""
    radius = max(1, int(3 * sigma + 0.5))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    c = images01.shape[1]
    out = F.pad(images01, (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(out, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(out, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def photo_crops(resolution: int, n: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` random crops of the bundled photographs, resized to ``resolution``, in [0, 1]."""
    from edge_se.textures import PHOTOS, _photo

    out = []
    for _ in range(n):
        photo = _photo(*PHOTOS[int(torch.randint(len(PHOTOS), (1,), generator=gen))])
        _, h, w = photo.shape
        lo, hi = CROP_SHARE
        side = int(min(h, w) * (lo + (hi - lo) * float(torch.rand(1, generator=gen))))
        top = int(torch.randint(h - side + 1, (1,), generator=gen))
        left = int(torch.randint(w - side + 1, (1,), generator=gen))
        crop = photo[None, :, top : top + side, left : left + side]
        out.append(F.interpolate(crop, size=(resolution, resolution), mode="bilinear", antialias=True,
                                 align_corners=False))
    return torch.cat(out).clamp(0, 1)


def _sample(images: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` images of ``images``: without replacement while there are enough, else with."""
    if n <= len(images):
        return images[torch.randperm(len(images), generator=gen)[:n]]
    return images[torch.randint(len(images), (n,), generator=gen)]


def ood_sets(source: str, resolution: int, *, n: int, seed: int) -> dict[str, torch.Tensor]:
    """Every OOD set of :data:`SETS` for in-distribution ``source`` (``digits`` or ``textures``).

    Args:
        source: the in-distribution source of :func:`edge_se.data.load_images`; the derived sets
            start from its ``test`` split.
        resolution: side in pixels.
        n: images per set.
        seed: seeds every random choice (same seed, same sets).

    Returns:
        ``{set name: float32 [n, 3, R, R]}``, ImageNet-normalised.
    """
    if n < 1:
        raise ValueError(f"n={n!r}: need at least one image per set")
    gen = torch.Generator().manual_seed(seed)
    base = denormalize(_sample(load_images(source, resolution, split="test").images, n, gen)).clamp(0, 1)
    shape = (n, 3, resolution, resolution)
    sets01 = {
        "uniform": torch.rand(shape, generator=gen),
        "gaussian": (0.5 + 0.25 * torch.randn(shape, generator=gen)).clamp(0, 1),
        "photos": photo_crops(resolution, n, gen) if source != "textures" else None,
        "inverted": 1.0 - base,
        "noisy": (base + NOISE_STD * torch.randn(shape, generator=gen)).clamp(0, 1),
        "blurred": gaussian_blur(base, resolution * BLUR_SIGMA_SHARE).clamp(0, 1),
    }
    return {name: normalize(x).float().contiguous() for name, x in sets01.items() if x is not None}


__all__ = ["SETS", "denormalize", "gaussian_blur", "ood_sets", "photo_crops"]
