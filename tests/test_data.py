"""edge_se.data: digits split, folder loading and preprocessing, errors naming the path."""

from __future__ import annotations

import os

import pytest
import torch

from edge_se.data import IMAGENET_MEAN, IMAGENET_STD, load_images
from edge_se.errors import EdgeSeError

# Normalised pixels are exact affine maps of [0, 1] values computed in float32.
PIXEL_ATOL = 1e-5


def test_digits_split_is_fixed_stratified_and_disjoint():
    test = load_images("digits", 16, split="test")
    train = load_images("digits", 16, split="train")
    every = load_images("digits", 16, split="all")
    assert test.images.shape == (360, 3, 16, 16) and test.images.dtype == torch.float32
    assert test.labels.dtype == torch.int64 and test.labels.bincount().tolist() == [36] * 10
    assert len(train) + len(test) == len(every) == 1797
    assert test.classes == [str(i) for i in range(10)] and test.source == "digits"
    again = load_images("digits", 16, split="test", seed=123)  # the digits split ignores the seed
    assert torch.equal(again.images, test.images)
    # no held-out image appears in train (compare the raw 8x8 content through the resized tensors)
    train_set = {tuple(x.flatten()[::7].tolist()) for x in train.images}
    assert sum(tuple(x.flatten()[::7].tolist()) in train_set for x in test.images) < 5  # digits has a few duplicates


def test_digits_normalisation_and_grey_channels():
    d = load_images("digits", 8, split="test")
    x01 = d.images * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    assert float(x01.min()) >= -PIXEL_ATOL and float(x01.max()) <= 1 + PIXEL_ATOL
    assert torch.allclose(x01[:, 0], x01[:, 1], atol=PIXEL_ATOL)
    assert torch.allclose(x01[:, 1], x01[:, 2], atol=PIXEL_ATOL)


def _write_folder(root, counts=(5, 5), size=(40, 30)):
    from PIL import Image

    for c, n in enumerate(counts):
        d = root / f"class_{c}"
        d.mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", size, (40 * c + i, 100, 200)).save(d / f"{i}.png")


def test_folder_resize_crop_normalise_and_split(tmp_path):
    _write_folder(tmp_path)
    d = load_images(str(tmp_path), 24, split="all")
    assert d.images.shape == (10, 3, 24, 24) and d.classes == ["class_0", "class_1"]
    assert d.labels.tolist() == [0] * 5 + [1] * 5
    blue = (200 / 255 - IMAGENET_MEAN[2]) / IMAGENET_STD[2]
    assert torch.allclose(d.images[:, 2], torch.full_like(d.images[:, 2], blue), atol=PIXEL_ATOL)
    test = load_images(str(tmp_path), 24, split="test")
    assert test.labels.tolist() == [0, 1]  # 20% of 5 per class
    assert len(load_images(str(tmp_path), 24, split="train")) == 8


def test_random_source_has_no_labels():
    d = load_images("random", 32, seed=3)
    assert d.labels is None and d.images.shape[1:] == (3, 32, 32)
    assert torch.equal(d.images, load_images("random", 32, seed=3).images)


def test_bad_sources_name_the_path(tmp_path):
    with pytest.raises(EdgeSeError, match="does not exist"):
        load_images(str(tmp_path / "missing"), 32)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(EdgeSeError, match=f"{empty}.*no images"):
        load_images(str(empty), 32)
    (empty / "cls").mkdir()
    (empty / "cls" / "notes.txt").write_text("x")
    with pytest.raises(EdgeSeError, match="no images"):
        load_images(str(empty), 32)
    bad = tmp_path / "bad" / "cls"
    bad.mkdir(parents=True)
    (bad / "broken.png").write_bytes(b"not a png")
    with pytest.raises(EdgeSeError, match="cannot read image .*broken.png"):
        load_images(str(tmp_path / "bad"), 32)
    with pytest.raises(EdgeSeError, match="unknown split"):
        load_images("digits", 32, split="dev")  # type: ignore[arg-type]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads folders whatever their permissions")
def test_unreadable_folder(tmp_path):
    _write_folder(tmp_path)
    (tmp_path / "class_0").chmod(0)
    try:
        with pytest.raises(EdgeSeError, match="not readable"):
            load_images(str(tmp_path), 32)
    finally:
        (tmp_path / "class_0").chmod(0o755)


def test_textures_are_deterministic_many_class_and_held_out_by_band():
    from edge_se import textures

    train = load_images("textures", 32, split="train")
    test = load_images("textures", 32, split="test")
    n = len(textures.PHOTOS)
    assert n >= 20 and train.classes == test.classes == textures.class_names()
    assert train.images.shape == (n * textures.TRAIN_PER_CLASS, 3, 32, 32)
    assert test.images.shape == (n * textures.TEST_PER_CLASS, 3, 32, 32)
    assert torch.bincount(test.labels).tolist() == [textures.TEST_PER_CLASS] * n
    again = load_images("textures", 32, split="test")
    assert torch.equal(again.images, test.images), "the same patches for every caller"
    # Normalised like every source: per channel roughly zero mean / unit spread over many photos.
    assert abs(float(train.images.mean())) < 0.5 and 0.5 < float(train.images.std()) < 2.0


def test_texture_patches_never_cross_into_the_held_out_tiles():
    from edge_se import textures

    # A photograph that is 0 on the train tiles and 1 on the test tiles: a patch crossing a tile
    # edge would mix them. Jitter moves values by at most brightness/contrast 0.9-1.1 and noise
    # sigma <= 0.02, so a train patch stays near 0 and a test patch near 1.
    h, w = 120, 160
    photo = torch.zeros(3, h, w)
    for top, left, th, tw in textures.tiles(h, w, "test"):
        photo[:, top:top + th, left:left + tw] = 1.0
    assert len(textures.tiles(h, w, "test")) == len(textures.TEST_TILES)
    assert len(textures.tiles(h, w, "train")) == textures.GRID[0] * textures.GRID[1] - len(textures.TEST_TILES)
    gen = torch.Generator().manual_seed(0)
    for tile in textures.tiles(h, w, "train"):
        for _ in range(10):
            assert float(textures._patch(photo, tile, 16, gen).mean()) < 0.1
    for tile in textures.tiles(h, w, "test"):
        for _ in range(10):
            assert float(textures._patch(photo, tile, 16, gen).mean()) > 0.8
