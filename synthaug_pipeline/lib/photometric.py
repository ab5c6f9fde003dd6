"""Photometric copies of real images: the classical-augmentation control of the experiment grid.

The ``photometric`` arm trains on the seed's own real images plus as many extra images as a synthetic arm
would add, each extra one a copy of a kept real image with a random contrast, brightness and gamma. It asks
whether generated images beat the cheapest way to add intensity variety: the same-data control generator's
shift gain on Fashion-MNIST was mostly brightness and contrast (BENCHMARKS.md), which such copies also give.
No noise, blur, JPEG or pixelation: those corruptions of the evaluation suite stay unseen in training.
"""

from __future__ import annotations

import numpy as np

CONTRAST = (0.5, 1.5)  # factor around the image's mean intensity
BRIGHTNESS = (-0.3, 0.3)  # shift, as a share of the full 0..255 range
GAMMA = (2 / 3, 3 / 2)  # exponent on intensities in [0, 1], log-uniform


def photometric_copies(images: np.ndarray, seed: int) -> np.ndarray:
    """One randomly jittered copy of each image (``uint8`` ``[N, H, W, C]``), reproducible for ``seed``.

    Per image (every channel alike, so colours keep their hue): contrast around the image's mean, a brightness
    shift, then gamma, clipped to 0..255.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"photometric_copies takes uint8 images shaped [N, H, W, C], got {images.dtype} {images.shape}")
    n = len(images)
    rng = np.random.default_rng([seed, 5])
    contrast = rng.uniform(*CONTRAST, size=n)
    brightness = rng.uniform(*BRIGHTNESS, size=n)
    gamma = np.exp(rng.uniform(np.log(GAMMA[0]), np.log(GAMMA[1]), size=n))
    x = images.astype(np.float32) / 255.0
    shape = (n, 1, 1, 1)
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    x = (x - mean) * contrast.reshape(shape).astype(np.float32) + mean + brightness.reshape(shape).astype(np.float32)
    x = np.clip(x, 0.0, 1.0) ** gamma.reshape(shape).astype(np.float32)
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
