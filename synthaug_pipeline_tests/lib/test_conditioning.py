"""Conditioning images: augmented real images of one class, with provenance."""

import numpy as np
import pytest

from synthaug_pipeline.lib.conditioning import (
    AUGMENTATIONS,
    ConditioningError,
    ConditioningImage,
    conditioning_image,
    conditioning_images,
    parse_provenance,
    pixel_ids,
)


def solid_images(n: int, channels: int = 3, size: int = 12) -> np.ndarray:
    """Image i is filled with the value 20 * i + 10, so every output pixel tells its source."""
    return np.stack([np.full((size, size, channels), 20 * i + 10, dtype=np.uint8) for i in range(n)])


def striped_images(n: int, channels: int = 3, size: int = 16) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(n, size, size, channels), dtype=np.uint8)


def source_index(item: ConditioningImage, k: int = 0) -> int:
    return int(item.source_ids[k].split(":")[1])


def test_no_augmentation_returns_the_real_image_and_its_id():
    images = striped_images(5)
    item = conditioning_image(images, "cat", index=0, seed=0, augmentations=[])
    assert item.augmentations == () and item.provenance == item.source_ids[0]
    assert np.array_equal(item.image, images[source_index(item)])


def test_indices_cycle_through_every_real_image_before_repeating():
    images = striped_images(5)
    items = conditioning_images(images, "cat", count=10, seed=1, augmentations=[])
    first, second = [source_index(i) for i in items[:5]], [source_index(i) for i in items[5:]]
    assert sorted(first) == list(range(5)) and second == first


@pytest.mark.parametrize("channels", [1, 3])
def test_all_augmentations_keep_shape_dtype_and_are_deterministic(channels):
    images = striped_images(6, channels)
    items = conditioning_images(images, "n02012849", count=24, seed=7, augmentations=AUGMENTATIONS)
    again = conditioning_images(images, "n02012849", count=24, seed=7, augmentations=AUGMENTATIONS)
    other_seed = conditioning_images(images, "n02012849", count=24, seed=8, augmentations=AUGMENTATIONS)
    other_class = conditioning_images(images, "n03126707", count=24, seed=7, augmentations=AUGMENTATIONS)
    for item, repeat in zip(items, again):
        assert item.image.shape == images.shape[1:] and item.image.dtype == np.uint8
        assert np.array_equal(item.image, repeat.image) and item.provenance == repeat.provenance
    assert [i.provenance for i in items] != [i.provenance for i in other_seed]
    assert [i.provenance for i in items] != [i.provenance for i in other_class]
    used = {a for item in items for a in item.augmentations}
    assert used == {"crop", "flip", "jitter", "mixup", "cutmix"}  # 24 draws hit every kind
    order = ["mixup", "cutmix", "crop", "flip", "jitter"]  # mixing first, then the geometric and colour changes
    assert all(list(item.augmentations) == sorted(item.augmentations, key=order.index) for item in items)
    assert all(len(item.source_ids) == 1 + bool({"mixup", "cutmix"} & set(item.augmentations)) for item in items)


def test_flip_mirrors_the_image():
    images = striped_images(1)
    items = conditioning_images(images, "cat", count=12, seed=0, augmentations=["flip"])
    flipped = [i for i in items if i.augmentations == ("flip",)]
    kept = [i for i in items if i.augmentations == ()]
    assert flipped and kept
    assert all(np.array_equal(i.image, images[0][:, ::-1]) for i in flipped)
    assert all(np.array_equal(i.image, images[0]) for i in kept)


def test_crop_zooms_in_and_resizes_back():
    gradient = np.tile(np.arange(0, 256, 16, dtype=np.uint8)[None, :, None], (16, 1, 1))[None]  # 1 x 16 x 16 x 1, columns 0..240
    items = conditioning_images(gradient, "ramp", count=8, seed=0, augmentations=["random_resized_crop"], crop_scale=(0.3, 0.5))
    for item in items:
        assert item.augmentations == ("crop",) and item.image.shape == (16, 16, 1)
        columns = item.image[..., 0].astype(int)
        assert np.all(np.diff(columns, axis=1) >= 0)  # still a left-to-right ramp
        assert columns[:, -1].max() - columns[:, 0].min() < 240  # but a narrower part of it


def test_color_jitter_changes_values_and_is_grayscale_safe():
    gray = striped_images(3, channels=1)
    for item in conditioning_images(gray, "g", count=6, seed=0, augmentations=["color_jitter"]):
        assert item.image.shape == (16, 16, 1) and item.augmentations == ("jitter",)
        assert not np.array_equal(item.image, gray[source_index(item)])
    colour = np.zeros((1, 4, 4, 3), dtype=np.uint8)
    colour[..., 0] = 200  # pure red: saturation jitter changes green/blue or red share
    out = conditioning_image(colour, "r", 0, 0, ["color_jitter"], jitter=0.5).image
    assert out.shape == (4, 4, 3) and not np.array_equal(out, colour[0])


def test_mixup_and_cutmix_use_two_images_of_the_class():
    images = solid_images(4)
    items = conditioning_images(images, "cat", count=30, seed=0, augmentations=["mixup", "cutmix"], mix_probability=1.0)
    kinds = {i.augmentations for i in items}
    assert kinds == {("mixup",), ("cutmix",)}
    for item in items:
        a, b = source_index(item, 0), source_index(item, 1)
        assert a != b and len(item.source_ids) == 2
        va, vb = 20 * a + 10, 20 * b + 10
        values = np.unique(item.image)
        if item.augmentations == ("cutmix",):
            assert set(values.tolist()) == {va, vb}
            assert np.mean(item.image == va) >= 0.5  # the base image keeps most of the area
        else:
            assert len(values) == 1 and abs(int(values[0]) - va) <= abs(int(values[0]) - vb)  # base dominates the blend
        assert parse_provenance(item.provenance) == (item.source_ids, item.augmentations)


def test_mixing_needs_two_images_and_is_skipped_for_one():
    items = conditioning_images(solid_images(1), "solo", count=5, seed=0, augmentations=["mixup", "cutmix"], mix_probability=1.0)
    assert all(i.augmentations == () and i.source_ids == ("train:0",) for i in items)


def test_provenance_strings_and_stable_ids():
    images = solid_images(3)
    ids = ["img-a", "img-b", "img-c"]
    item = conditioning_image(images, "cat", 0, 0, ["cutmix", "flip"], image_ids=ids, mix_probability=1.0)
    assert item.provenance.startswith("+".join(item.source_ids) + "|cutmix")
    assert set(item.source_ids) <= set(ids)
    assert ConditioningImage(images[0], ("train:12",), ("crop", "flip")).provenance == "train:12|crop,flip"
    assert ConditioningImage(images[0], ("train:12", "train:40"), ("cutmix",)).provenance == "train:12+train:40|cutmix"
    assert conditioning_image(images, "cat", 0, 0, [], split="val").source_ids[0].startswith("val:")


def test_pixel_ids_name_the_real_image_whatever_the_subset():
    images = striped_images(6)
    ids = pixel_ids(images)
    assert len(set(ids)) == 6 and all(i.startswith("train:sha256-") and len(i) == len("train:sha256-") + 12 for i in ids)
    assert pixel_ids(images[3:]) == ids[3:]  # a smaller or reordered class list keeps each image's id
    assert pixel_ids(images[::-1], "test") == [i.replace("train:", "test:") for i in ids[::-1]]
    assert pixel_ids(images[:, :8, :8]) != ids  # the id follows the pixels
    # through conditioning_image (no augmentation: the output is the real image), the id is that image's hash,
    # whichever subset of the class it was drawn from; positions would differ between the two lists
    for subset in (images, images[2:]):
        for index in range(3):
            item = conditioning_image(subset, "cat", index, 0, [], image_ids=pixel_ids(subset))
            assert item.source_ids == (ids[[np.array_equal(item.image, im) for im in images].index(True)],)
    with pytest.raises(ConditioningError, match=r"real images must be an array \[N, H, W, C\]"):
        pixel_ids(images[0])


@pytest.mark.parametrize(
    ("images", "kwargs", "message"),
    [
        (np.zeros((0, 8, 8, 3), np.uint8), {}, "no real training images"),
        (np.zeros((2, 8, 8, 3), np.float32), {}, "uint8"),
        (np.zeros((2, 8, 8), np.uint8), {}, "uint8"),
        (np.zeros((2, 8, 8, 4), np.uint8), {}, "uint8"),
        (np.zeros((2, 8, 8, 3), np.uint8), {"augmentations": ["rotate"]}, "unknown conditioning augmentations"),
        (np.zeros((2, 8, 8, 3), np.uint8), {"index": -1}, "index"),
        (np.zeros((2, 8, 8, 3), np.uint8), {"image_ids": ["a"]}, "1 image ids for 2"),
        (np.zeros((2, 8, 8, 3), np.uint8), {"image_ids": ["a|b", "c"]}, "free of"),
    ],
)
def test_bad_inputs_fail_with_clear_errors(images, kwargs, message):
    args = {"index": 0, "augmentations": ["flip"], **kwargs}
    with pytest.raises(ConditioningError, match=message):
        conditioning_image(images, "cat", seed=0, **args)
