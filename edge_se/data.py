"""Image data for calibration, evaluation and training, all local (nothing is downloaded).

Sources (``load_images(source, resolution)``):

- ``digits``: scikit-learn's handwritten digits (1,797 8x8 grey images of 0-9, shipped inside the
  package): values 0..16 -> [0, 1], bilinear resize to ``resolution``, grey copied to 3 channels,
  ImageNet mean/std normalisation. A fixed, stratified held-out split of 360 images is ``test``.
- a directory: one sub-folder per class holding images (any format Pillow reads), with the
  standard ImageNet evaluation preprocessing: resize the shorter side to ``resolution / 0.875``,
  center-crop ``resolution``, ImageNet normalisation. ``split`` is a stratified 80/20 cut.
- ``textures``: a harder task (20 classes, float top-1 far from saturated): which photograph
  shipped with scikit-image / scikit-learn a small jittered patch was cut from; train and test
  patches come from disjoint bands of each photograph. How it is built: :mod:`edge_se.textures`.
- ``random``: standard-normal tensors without labels, for smoke tests only (never for accuracy).

Example:
    >>> from edge_se.data import load_images
    >>> data = load_images("digits", 64, split="test")
    >>> data.images.shape, data.labels.shape, data.classes[:3]
    (torch.Size([360, 3, 64, 64]), torch.Size([360]), ['0', '1', '2'])
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from edge_se.errors import EdgeSeError

Split = Literal["train", "test", "all"]
SPLITS: tuple[str, ...] = ("train", "test", "all")
# Accepted spellings of the held-out split.
_ALIASES = {"val": "test", "heldout": "test"}
# ImageNet statistics (torchvision / timm defaults), per RGB channel.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Held-out digits images: 20% of 1,797, rounded to a multiple of the 10 classes.
DIGITS_TEST_SIZE = 360
# The seed of the digits split is fixed, so "test" is the same 360 images for every caller.
DIGITS_SPLIT_SEED = 0
# Folder data: share of each class held out for "test".
FOLDER_TEST_FRACTION = 0.2
# torchvision's evaluation crop ratio: resize to R / 0.875, then center-crop R.
CROP_RATIO = 0.875
# The textures patches are the same for every caller (like the digits split): a fixed seed.
TEXTURES_SEED = 0
#: Named sources of real, labelled images (with a training split to fit on).
LABELLED_SOURCES = ("digits", "textures")
#: Named sources (anything else is a folder path); ``random`` is noise, without labels.
NAMED_SOURCES = (*LABELLED_SOURCES, "random")
# "random" source size (images).
RANDOM_SIZE = 64
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


@dataclass
class ImageSet:
    """Preprocessed images and their labels.

    Attributes:
        images: float32 ``[N, 3, R, R]``, ImageNet-normalised.
        labels: int64 ``[N]`` class indices into ``classes``, or None (``random``).
        classes: class names (``"0"``.. ``"9"`` for digits, sub-folder names for a directory).
        source: where the images came from (``digits``, the directory path, ``random``).
    """

    images: torch.Tensor
    labels: torch.Tensor | None
    classes: list[str]
    source: str

    def __len__(self) -> int:
        return int(self.images.shape[0])


def normalize(images01: torch.Tensor) -> torch.Tensor:
    """ImageNet mean/std normalisation of ``[N, 3, H, W]`` images in [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images01 - mean) / std


def stratified_split(labels: torch.Tensor, test_per_class: dict[int, int], seed: int) -> tuple[list[int], list[int]]:
    """(train, test) index lists holding ``test_per_class[c]`` images of each class ``c`` in test."""
    gen = torch.Generator().manual_seed(seed)
    train: list[int] = []
    test: list[int] = []
    for c in sorted(test_per_class):
        members = torch.nonzero(labels == c).flatten()
        order: list[int] = members[torch.randperm(len(members), generator=gen)].tolist()
        k = test_per_class[c]
        test += order[:k]
        train += order[k:]
    return sorted(train), sorted(test)


def _select(images: torch.Tensor, labels: torch.Tensor, split: str, test_per_class: dict[int, int], seed: int):  # noqa: ANN202
    if split == "all":
        return images, labels
    train, test = stratified_split(labels, test_per_class, seed)
    idx = torch.tensor(train if split == "train" else test, dtype=torch.long)
    return images[idx], labels[idx]


def _digits(resolution: int, split: str) -> ImageSet:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    grey = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # [N, 1, 8, 8] in [0, 1]
    labels = torch.tensor(bunch.target, dtype=torch.int64)
    classes = [str(c) for c in range(10)]
    per_class = {c: DIGITS_TEST_SIZE // len(classes) for c in range(len(classes))}
    grey, labels = _select(grey, labels, split, per_class, DIGITS_SPLIT_SEED)
    up = F.interpolate(grey, size=(resolution, resolution), mode="bilinear", align_corners=False).clamp(0, 1)
    return ImageSet(normalize(up.expand(-1, 3, -1, -1).contiguous()), labels, classes, "digits")


def _load_image(path: Path, resolution: int) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise EdgeSeError(f"cannot read image {path}: {exc.__class__.__name__}: {exc}") from None
    w, h = rgb.size
    short = round(resolution / CROP_RATIO)
    scale = short / min(w, h)
    rgb = rgb.resize((max(short, round(w * scale)), max(short, round(h * scale))), Image.Resampling.BILINEAR)
    w, h = rgb.size
    left, top = (w - resolution) // 2, (h - resolution) // 2
    rgb = rgb.crop((left, top, left + resolution, top + resolution))
    data = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8).view(resolution, resolution, 3)
    return data.permute(2, 0, 1).float() / 255.0


def _folder(root: Path, resolution: int, split: str, seed: int) -> ImageSet:
    if not root.exists():
        raise EdgeSeError(f"data folder {root} does not exist (expected class sub-folders of images)")
    if not root.is_dir():
        raise EdgeSeError(
            f"data source {root} is not a folder; valid: digits, random, or a folder of class sub-folders"
        )
    try:
        class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except PermissionError:
        raise EdgeSeError(f"data folder {root} is not readable") from None
    files: list[tuple[Path, int]] = []
    for c, d in enumerate(class_dirs):
        try:
            entries = sorted(d.iterdir())
        except PermissionError:
            raise EdgeSeError(f"class folder {d} is not readable") from None
        files += [(f, c) for f in entries if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
    if not class_dirs or not files:
        raise EdgeSeError(
            f"data folder {root} holds no images: expected class sub-folders with {', '.join(IMAGE_SUFFIXES)} files"
        )
    images = torch.stack([_load_image(f, resolution) for f, _ in files])
    labels = torch.tensor([c for _, c in files], dtype=torch.int64)
    counts = torch.bincount(labels, minlength=len(class_dirs)).tolist()
    per_class = {c: int(n * FOLDER_TEST_FRACTION) for c, n in enumerate(counts)}
    images, labels = _select(images, labels, split, per_class, seed)
    if images.shape[0] == 0:
        raise EdgeSeError(f"data folder {root}: split {split!r} is empty (too few images per class)")
    return ImageSet(normalize(images), labels, [d.name for d in class_dirs], str(root))


def load_images(source: str, resolution: int, *, split: Split = "all", seed: int = 0) -> ImageSet:
    """Load and preprocess images from ``source`` at ``resolution`` pixels a side.

    Args:
        source: ``digits``, ``textures``, ``random`` or the path of a folder of class sub-folders.
        resolution: output side in pixels.
        split: ``train``, ``test`` (held out; ``val`` is accepted as a synonym) or ``all``.
        seed: seeds the folder split and the ``random`` tensors (the digits split is fixed).

    Raises:
        EdgeSeError: a bad split or resolution, a missing, empty or unreadable folder, an
            unreadable image; the message names the path or field.
    """
    split = _ALIASES.get(split, split)  # type: ignore[assignment]
    if split not in SPLITS:
        raise EdgeSeError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 8:
        raise EdgeSeError(f"bad resolution {resolution!r}: need an integer >= 8 pixels")
    if source == "digits":
        return _digits(resolution, split)
    if source == "textures":
        from edge_se import textures

        images01, labels = textures.generate(resolution, split, seed=TEXTURES_SEED)
        return ImageSet(normalize(images01), labels, textures.class_names(), "textures")
    if source == "random":
        gen = torch.Generator().manual_seed(seed)
        return ImageSet(torch.randn(RANDOM_SIZE, 3, resolution, resolution, generator=gen), None, [], "random")
    return _folder(Path(source), resolution, split, seed)
