"""Image conventions shared by every stage.

Images travel between stages as ``uint8`` NumPy arrays shaped ``[N, H, W, C]``
(C = 1 for grayscale, 3 for RGB). Models see float tensors ``[N, C, H, W]`` in
``[-1, 1]``. Encoded bytes (PNG/WebP/JPEG) are used only at the edges: shards,
folder datasets and UI previews.
"""

from __future__ import annotations

import base64
import io
import warnings

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError


def to_model_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 ``[N, H, W, C]`` -> float32 ``[N, C, H, W]`` in ``[-1, 1]``."""
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"expected uint8 images shaped [N, H, W, C], got {images.dtype} {images.shape}")
    tensor = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    return tensor.div_(127.5).sub_(1.0)


def from_model_tensor(tensor: torch.Tensor) -> np.ndarray:
    """float ``[N, C, H, W]`` in ``[-1, 1]`` -> uint8 ``[N, H, W, C]`` (values clipped)."""
    scaled = ((tensor.detach().float().cpu().clamp(-1, 1) + 1.0) * 127.5).round()
    return scaled.to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def encode_image(image: np.ndarray, fmt: str = "png") -> bytes:
    """Encode one uint8 ``[H, W, C]`` image as PNG, WebP (lossless) or JPEG bytes."""
    pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    buffer = io.BytesIO()
    fmt = fmt.lower()
    if fmt == "png":
        pil.save(buffer, format="PNG", optimize=False, compress_level=6)
    elif fmt == "webp":
        pil.save(buffer, format="WEBP", lossless=True)
    elif fmt in ("jpeg", "jpg"):
        pil.save(buffer, format="JPEG", quality=95)
    else:
        raise ValueError(f"unknown image format {fmt!r}: use png, webp or jpeg")
    return buffer.getvalue()


class ImageDecodeError(ValueError):
    """One image that cannot be decoded; ``reason`` is a short tag that callers count (e.g. ``too_large``)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


ALPHA_BACKGROUND = 255  # transparent pixels are shown over white, as an image viewer on a white page shows them
_TRANSPARENT_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}


def decode_image(data: bytes, channels: int) -> np.ndarray:
    """Decode image bytes to uint8 ``[H, W, C]`` with ``channels`` 1 or 3, as an image viewer shows them.

    EXIF orientation is applied; transparency is composited over white; 16-bit grayscale is scaled by
    value (``round(v / 257)``), not clipped; CMYK and palettes become RGB. Raises
    :class:`ImageDecodeError` with reason ``empty_file``, ``not_an_image``, ``too_large`` (more pixels
    than ``PIL.Image.MAX_IMAGE_PIXELS``, checked from the header before any pixel is decoded),
    ``unsupported_mode`` or ``corrupt`` (truncated or damaged data; never half-decoded).
    """
    if not data:
        raise ImageDecodeError("empty_file", "the file has 0 bytes")
    try:
        with warnings.catch_warnings():
            # PIL only warns between 1x and 2x its pixel limit; the header check below refuses both
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as pil:
                width, height = pil.size
                limit = Image.MAX_IMAGE_PIXELS
                if limit and width * height > limit:
                    raise ImageDecodeError("too_large", f"{width}x{height} is over PIL's limit of {limit} pixels")
                ImageOps.exif_transpose(pil, in_place=True)  # loads the pixels
                array = _pixels(pil, channels)
    except ImageDecodeError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageDecodeError("not_an_image", str(exc)) from None
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError("too_large", str(exc)) from None
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - PIL's plugins raise OSError, SyntaxError, struct.error, ... for bad data
        raise ImageDecodeError("corrupt", f"{type(exc).__name__}: {exc}") from None
    return array[..., None] if array.ndim == 2 else array


def _pixels(pil: Image.Image, channels: int) -> np.ndarray:
    target = "L" if channels == 1 else "RGB"
    mode = pil.mode
    if mode == target:  # the common case: no conversion
        return np.asarray(pil, dtype=np.uint8)
    if mode == "I" or mode.startswith("I;16"):
        # 16-bit grayscale (PNG, TIFF); PIL's convert() would clip every value above 255 to white
        values = np.asarray(pil).astype(np.int64)
        gray = ((np.clip(values, 0, 65535) + 128) // 257).astype(np.uint8)
        return gray if channels == 1 else np.repeat(gray[..., None], 3, axis=-1)
    if mode == "F":
        raise ImageDecodeError("unsupported_mode", "32-bit float pixels have no agreed 0..255 scale")
    if mode in _TRANSPARENT_MODES or "transparency" in pil.info:
        rgba = pil.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (ALPHA_BACKGROUND,) * 3 + (255,))
        return np.asarray(Image.alpha_composite(background, rgba).convert(target), dtype=np.uint8)
    try:
        converted = pil.convert(target)
    except ValueError as exc:
        raise ImageDecodeError("unsupported_mode", f"mode {mode}: {exc}") from None
    return np.asarray(converted, dtype=np.uint8)


def image_grid(images: np.ndarray, columns: int = 10, scale: int = 1, pad: int = 1) -> np.ndarray:
    """Tile ``[N, H, W, C]`` images into one ``[H', W', C]`` grid (white padding)."""
    if len(images) == 0:
        raise ValueError("image_grid needs at least one image")
    n, h, w, c = images.shape
    columns = max(1, min(columns, n))
    rows = -(-n // columns)
    grid = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i, image in enumerate(images):
        r, col = divmod(i, columns)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[y : y + h, x : x + w] = image
    if scale > 1:
        grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    return grid


# Previews in Dagster metadata: one small image per preview, whatever the dataset's resolution, so
# the event log holds kilobytes per class, not megabytes (1000 classes x 4-5 previews per run).
PREVIEW_TILE_PX = 64  # longest side of a tile
PREVIEW_COLUMNS = 8
PREVIEW_ROWS = 4
PREVIEW_MAX_BYTES = 48 * 1024  # encoded grid; the base64 text is 4/3 of it
_TINY_TARGET_PX = 48  # tiny images (8x8 digits) are enlarged by a whole factor toward this, to be visible
_WEBP_QUALITIES = (80, 60, 40, 20)


def preview_tiles(images: np.ndarray, tile_px: int = PREVIEW_TILE_PX) -> np.ndarray:
    """``[N, H, W, C]`` -> ``[N, h, w, C]`` with ``max(h, w) <= tile_px``: large images shrunk (box filter,
    aspect kept), tiny ones enlarged by a whole factor (sharp pixels)."""
    if tile_px < 1:
        raise ValueError(f"tile_px must be >= 1, got {tile_px}")
    n, h, w, c = images.shape
    longest = max(h, w, 1)
    if longest <= tile_px:
        factor = max(1, min(_TINY_TARGET_PX, tile_px) // longest)
        return images if factor == 1 else images.repeat(factor, axis=1).repeat(factor, axis=2)
    size = (max(1, round(w * tile_px / longest)), max(1, round(h * tile_px / longest)))  # PIL: (width, height)
    tiles = [np.asarray(Image.fromarray(im[..., 0] if c == 1 else im).resize(size, Image.Resampling.BOX)) for im in images]
    return np.stack(tiles).reshape(n, size[1], size[0], c)


def _encode_preview(grid: np.ndarray, max_bytes: int) -> tuple[str, bytes] | None:
    """PNG when it fits ``max_bytes`` (sharp digits, flat colours), else the best lossy WebP that fits."""
    png = encode_image(grid, "png")
    if len(png) <= max_bytes:
        return "png", png
    pil = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    for quality in _WEBP_QUALITIES:
        buffer = io.BytesIO()
        pil.save(buffer, format="WEBP", quality=quality, method=4)
        if buffer.tell() <= max_bytes:
            return "webp", buffer.getvalue()
    return None


def grid_markdown(
    images: np.ndarray,
    title: str,
    columns: int = PREVIEW_COLUMNS,
    max_images: int = PREVIEW_COLUMNS * PREVIEW_ROWS,
    tile_px: int = PREVIEW_TILE_PX,
    max_bytes: int = PREVIEW_MAX_BYTES,
) -> str:
    """A Markdown snippet with ONE inline image: a grid of the first ``max_images`` images as tiles of at most
    ``tile_px`` pixels, encoded in at most ``max_bytes`` (PNG, else lossy WebP, else smaller tiles).

    Its size depends on the tile count and ``tile_px``, never on the images' resolution.
    """
    if len(images) == 0:
        raise ValueError("grid_markdown needs at least one image")
    shown = images[: max(1, max_images)]
    caption = f"**{title}**" + (f" (first {len(shown)} of {len(images)})" if len(shown) < len(images) else "")
    while True:
        grid = image_grid(preview_tiles(shown, tile_px), columns=columns)
        encoded = _encode_preview(grid, max_bytes)
        if encoded is not None:
            break
        if tile_px <= 4:  # max_bytes too small for even 4 px tiles: say so instead of growing past it
            return caption + f"\n\n(preview omitted: {len(shown)} tiles do not fit in {max_bytes} bytes)"
        tile_px //= 2  # noise-like images that no WebP quality squeezes under the budget
    fmt, data = encoded
    return f"{caption}\n\n![{title}](data:image/{fmt};base64,{base64.b64encode(data).decode()})"
