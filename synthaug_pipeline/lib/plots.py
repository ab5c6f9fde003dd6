"""Tiny PNG charts for Dagster metadata, drawn with Pillow (no plotting dependency)."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image, ImageDraw


def _png_markdown(image: Image.Image, title: str) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return f"**{title}**\n\n![{title}](data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()})"


def line_chart_markdown(values: list[float], title: str, width: int = 480, height: int = 200, log_y: bool = False) -> str:
    """A line chart of ``values`` (e.g. a loss curve) as Markdown with an inline PNG."""
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    y = np.asarray(values, dtype=np.float64)
    y = y[np.isfinite(y)]
    if len(y) >= 2:
        if log_y:
            y = np.log10(np.maximum(y, 1e-12))
        lo, hi = float(y.min()), float(y.max())
        span = hi - lo or 1.0
        margin = 24
        xs = margin + np.arange(len(y)) * (width - 2 * margin) / (len(y) - 1)
        ys = height - margin - (y - lo) / span * (height - 2 * margin)
        draw.rectangle([margin, margin, width - margin, height - margin], outline=(200, 200, 200))
        draw.line(list(zip(xs.tolist(), ys.tolist(), strict=True)), fill=(31, 119, 180), width=2)
        fmt = (lambda v: f"1e{v:.1f}") if log_y else (lambda v: f"{v:.4g}")
        draw.text((2, 2), f"max {fmt(hi)}", fill="black")
        draw.text((2, height - 14), f"min {fmt(lo)}   ({len(y)} points)", fill="black")
    return _png_markdown(image, title)


def histogram_markdown(values: np.ndarray, title: str, bins: int = 20, width: int = 480, height: int = 160) -> str:
    """A histogram of ``values`` as Markdown with an inline PNG."""
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v):
        counts, edges = np.histogram(v, bins=bins)
        bar_w = (width - 20) / bins
        top = counts.max() or 1
        for i, count in enumerate(counts):
            h = (height - 30) * count / top
            draw.rectangle([10 + i * bar_w, height - 16 - h, 10 + (i + 1) * bar_w - 2, height - 16], fill=(31, 119, 180))
        draw.text((2, height - 14), f"{edges[0]:.3g}", fill="black")
        draw.text((width - 60, height - 14), f"{edges[-1]:.3g}", fill="black")
        draw.text((2, 2), f"n={len(v)} max bin {top}", fill="black")
    return _png_markdown(image, title)
