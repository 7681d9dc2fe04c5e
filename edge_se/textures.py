"""``textures``: a harder image task built from the photographs scikit-image and scikit-learn ship.

Digits saturate (float and int8 both near 100% top-1), so an int8 accuracy drop cannot show on
them. ``textures`` is a many-class task with natural-image statistics whose float top-1 is far
from saturated: name which photograph a small, jittered patch was cut from.

How it is built (deterministic from ``seed``; nothing is downloaded, every photograph is inside
an installed package):

- Classes: the :data:`PHOTOS` below, one class each (grey ones copied to three channels).
- Held out honestly: each photograph's columns are split in two bands, the left
  ``1 - TEST_BAND`` for ``train`` patches and the right :data:`TEST_BAND` for ``test``, so no test
  pixel was ever seen in training.
- A patch: a square of side U(:data:`MIN_SIDE`, :data:`MAX_SIDE`) x the photograph's shorter
  side at a uniform position inside its band, resized to ``resolution`` (bilinear, antialiased),
  rotated by a multiple of 90 degrees and mirrored at random, then brightness x U(0.8, 1.2),
  contrast x U(0.8, 1.2) about the patch mean, Gaussian noise of sigma U(0, 0.04), clipped to
  [0, 1] and ImageNet-normalised (as every edge-se source).
- Sizes: :data:`TRAIN_PER_CLASS` patches a class for ``train``, :data:`TEST_PER_CLASS` for ``test``.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

#: (package, name) of every photograph used, one class each, in class order.
PHOTOS: tuple[tuple[str, str], ...] = (
    ("skimage", "astronaut"), ("skimage", "brick"), ("skimage", "camera"), ("skimage", "chelsea"),
    ("skimage", "clock"), ("skimage", "coffee"), ("skimage", "coins"), ("skimage", "grass"),
    ("skimage", "gravel"), ("skimage", "hubble_deep_field"), ("skimage", "immunohistochemistry"),
    ("skimage", "moon"), ("skimage", "page"), ("skimage", "retina"), ("skimage", "rocket"),
    ("skimage", "text"), ("skimage", "cell"), ("skimage", "colorwheel"),
    ("sklearn", "china.jpg"), ("sklearn", "flower.jpg"),
)
TEST_BAND = 0.25  # share of each photograph's width (rightmost columns) kept for test patches
MIN_SIDE, MAX_SIDE = 0.2, 0.45  # patch side, as a share of the photograph's shorter side
TRAIN_PER_CLASS = 120
TEST_PER_CLASS = 40


def class_names() -> list[str]:
    """The class names, in label order."""
    return [name.removesuffix(".jpg") for _, name in PHOTOS]


@functools.cache
def _photo(package: str, name: str) -> torch.Tensor:
    """One photograph as float ``[3, H, W]`` in [0, 1]."""
    import numpy as np

    if package == "skimage":
        import skimage.data

        arr = np.asarray(getattr(skimage.data, name)())
    else:
        from sklearn.datasets import load_sample_image

        arr = np.asarray(load_sample_image(name))
    t = torch.from_numpy(arr.astype(np.float32) / (255.0 if arr.dtype == np.uint8 else max(float(arr.max()), 1.0)))
    if t.ndim == 2:
        t = t.unsqueeze(-1).expand(-1, -1, 3)
    return t[..., :3].permute(2, 0, 1).contiguous()


def _patch(photo: torch.Tensor, band: tuple[int, int], resolution: int, gen: torch.Generator) -> torch.Tensor:
    _, h, w = photo.shape
    lo, hi = band
    u = torch.rand(9, generator=gen).tolist()
    side = max(8, round((MIN_SIDE + (MAX_SIDE - MIN_SIDE) * u[0]) * min(h, w)))
    side = min(side, hi - lo, h)
    top = int(u[1] * (h - side + 1))
    left = lo + int(u[2] * (hi - lo - side + 1))
    crop = photo[:, top:top + side, left:left + side].unsqueeze(0)
    x = F.interpolate(crop, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True)[0]
    x = torch.rot90(x, int(u[3] * 4) % 4, dims=(1, 2))
    if u[4] < 0.5:
        x = x.flip(2)
    mean = x.mean()
    x = (x - mean) * (0.8 + 0.4 * u[5]) + mean
    x = x * (0.8 + 0.4 * u[6])
    x = x + torch.randn(x.shape, generator=gen) * (0.04 * u[7])
    return x.clamp(0, 1)


def generate(resolution: int, split: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``[N, 3, R, R]`` in [0, 1] and labels ``[N]`` of one split (``train``, ``test`` or ``all``).

    The same ``(resolution, split, seed)`` gives the same tensors on every machine (one CPU
    generator, drawn in a fixed order).
    """
    parts = ("train", "test") if split == "all" else (split,)
    images, labels = [], []
    for part in parts:
        per_class = TRAIN_PER_CLASS if part == "train" else TEST_PER_CLASS
        gen = torch.Generator().manual_seed(seed * 2 + (part == "test"))
        for c, (package, name) in enumerate(PHOTOS):
            photo = _photo(package, name)
            w = photo.shape[2]
            cut = round(w * (1 - TEST_BAND))
            band = (0, cut) if part == "train" else (cut, w)
            images += [_patch(photo, band, resolution, gen) for _ in range(per_class)]
            labels += [c] * per_class
    return torch.stack(images), torch.tensor(labels, dtype=torch.int64)
