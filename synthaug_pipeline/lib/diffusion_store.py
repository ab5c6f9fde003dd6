"""Saving and loading a trained DDPM generator (:mod:`.diffusion`): ``model.safetensors`` + ``config.json`` on any fsspec URL.

The version is the first 16 hex digits of the weights' sha256, recorded in ``config.json`` and checked on load.
"""

from __future__ import annotations

import hashlib
import json
import posixpath

import fsspec
from diffusers import UNet2DModel
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from .diffusion import FORMAT, TrainedGenerator


def _version(weights: bytes) -> str:
    return hashlib.sha256(weights).hexdigest()[:16]


def save_generator(generator: TrainedGenerator, url: str) -> str:
    """Write ``<url>/model.safetensors`` and ``<url>/config.json`` (any fsspec URL); return the version.

    Both files are serialised in memory first; ``config.json`` is written last and records the
    weights' hash, so a reader never mistakes a half-written directory for a complete generator.
    """
    state = {k: v.detach().cpu().contiguous() for k, v in generator.model.state_dict().items()}
    weights = save_safetensors(state, metadata={"format": FORMAT})
    version = _version(weights)
    meta = {
        "version": version,
        "config": generator.config,
        "losses": [float(v) for v in generator.losses],
        "seconds": float(generator.seconds),
        "num_parameters": int(generator.num_parameters),
    }
    meta_bytes = json.dumps(meta, indent=2).encode()
    fs, root = fsspec.core.url_to_fs(url.rstrip("/"))
    fs.makedirs(root, exist_ok=True)
    fs.pipe_file(posixpath.join(root, "model.safetensors"), weights)
    fs.pipe_file(posixpath.join(root, "config.json"), meta_bytes)
    generator.version = version
    generator.url = url
    return version


def load_generator(url: str) -> TrainedGenerator:
    """Read a generator written by :func:`save_generator`; its ``version`` is checked against the weights."""
    fs, root = fsspec.core.url_to_fs(url.rstrip("/"))
    config_path, weights_path = posixpath.join(root, "config.json"), posixpath.join(root, "model.safetensors")
    if not fs.exists(config_path) or not fs.exists(weights_path):
        raise FileNotFoundError(f"no generator at {url!r}: expected config.json and model.safetensors there")
    try:
        meta = json.loads(fs.cat_file(config_path))
        config = meta["config"]
        if config.get("format") != FORMAT:
            raise ValueError(f"format {config.get('format')!r}, expected {FORMAT!r}")
        model = UNet2DModel.from_config(config["unet"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{url!r}/config.json does not describe a generator: {exc}") from None
    weights = fs.cat_file(weights_path)
    version = _version(weights)
    if version != meta.get("version"):
        raise ValueError(f"{url!r}: model.safetensors (version {version}) does not match config.json ({meta.get('version')}); rewrite it")
    try:
        model.load_state_dict(load_safetensors(weights))
    except RuntimeError as exc:
        raise ValueError(f"{url!r}: weights do not fit the UNet in config.json: {exc}") from None
    model.eval().requires_grad_(False)
    return TrainedGenerator(
        model=model,
        config=config,
        losses=list(meta.get("losses", [])),
        seconds=float(meta.get("seconds", 0.0)),
        num_parameters=int(meta.get("num_parameters", sum(p.numel() for p in model.parameters()))),
        version=version,
        url=url,
    )
