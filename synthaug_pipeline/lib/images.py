"""Image conventions shared by every stage.

Images travel between stages as ``uint8`` NumPy arrays shaped ``[N, H, W, C]``
(C = 1 for grayscale, 3 for RGB). Models see float tensors ``[N, C, H, W]`` in
``[-1, 1]``. Encoded bytes (PNG/WebP/JPEG) are used only at the edges: shards,
folder datasets and UI previews.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import torch
from PIL import Image


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


def decode_image(data: bytes, channels: int) -> np.ndarray:
    """Decode image bytes to uint8 ``[H, W, C]`` with ``channels`` 1 or 3."""
    with Image.open(io.BytesIO(data)) as pil:
        pil = pil.convert("L" if channels == 1 else "RGB")
        array = np.asarray(pil, dtype=np.uint8)
    return array[..., None] if channels == 1 else array


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


def grid_markdown(images: np.ndarray, title: str, columns: int = 10, max_images: int = 40) -> str:
    """A Markdown snippet with an inline PNG grid, rendered by the Dagster UI."""
    images = images[:max_images]
    target = 48  # upscale tiny images (8x8 digits) so they are visible in the UI
    scale = max(1, target // max(images.shape[1], 1))
    png = encode_image(image_grid(images, columns=columns, scale=scale), "png")
    return f"**{title}**\n\n![{title}](data:image/png;base64,{base64.b64encode(png).decode()})"
