import base64
import io
import re

import numpy as np
import pytest
from PIL import Image

from synthaug_pipeline.lib.images import PREVIEW_MAX_BYTES, grid_markdown, preview_tiles

_IMAGE = re.compile(r"!\[[^\]]*\]\(data:image/(png|webp);base64,([A-Za-z0-9+/=]+)\)")


def embedded(markdown: str) -> list[Image.Image]:
    return [Image.open(io.BytesIO(base64.b64decode(data))) for _, data in _IMAGE.findall(markdown)]


def noise(n: int, size: int, channels: int = 3) -> np.ndarray:
    return np.random.default_rng(size).integers(0, 256, (n, size, size, channels), dtype=np.uint8)


@pytest.mark.parametrize(("size", "channels"), [(64, 3), (256, 3), (512, 3), (512, 1), (1024, 3)])
def test_preview_size_does_not_depend_on_image_size(size, channels):
    markdown = grid_markdown(noise(40, size, channels), "synthetic 3")  # noise: the least compressible input
    (image,) = embedded(markdown)  # one image for the whole grid
    assert len(markdown) <= PREVIEW_MAX_BYTES * 4 // 3 + 200
    # 8 x 4 tiles of at most 64 px with 1 px padding
    assert image.width <= 8 * 65 + 1 and image.height <= 4 * 65 + 1
    assert markdown.startswith("**synthetic 3** (first 32 of 40)")


def test_tiny_images_are_enlarged_sharp_and_shown_as_png():
    digits = np.random.default_rng(0).integers(0, 17, (10, 8, 8, 1), dtype=np.uint8) * 15
    markdown = grid_markdown(digits, "real 3")
    (image,) = embedded(markdown)
    assert "data:image/png" in markdown and markdown.startswith("**real 3**\n\n")
    assert image.size == (8 * 49 + 1, 2 * 49 + 1)  # 8 columns x 2 rows of 48 px tiles (factor 6)
    grid = np.asarray(image)
    np.testing.assert_array_equal(grid[1:49, 1:49], digits[0, ..., 0].repeat(6, 0).repeat(6, 1))


def test_tiles_keep_the_aspect_ratio():
    tiles = preview_tiles(np.zeros((3, 300, 600, 3), np.uint8), tile_px=64)
    assert tiles.shape == (3, 32, 64, 3)


def test_budget_smaller_than_webp_can_reach_shrinks_the_tiles():
    markdown = grid_markdown(noise(32, 256), "x", max_bytes=6 * 1024)
    (image,) = embedded(markdown)
    assert len(base64.b64decode(_IMAGE.search(markdown).group(2))) <= 6 * 1024
    assert image.width < 8 * 65  # smaller tiles than the default 64 px


def test_empty_input_is_refused():
    with pytest.raises(ValueError, match="at least one image"):
        grid_markdown(np.zeros((0, 8, 8, 1), np.uint8), "x")
