"""Saving and loading trained classifiers: safetensors weights + a JSON config under any fsspec URL, versioned by content."""

from __future__ import annotations

import hashlib
import json

import fsspec
import safetensors.torch

from synthaug_pipeline.lib.classifier.models import create_classifier
from synthaug_pipeline.lib.classifier.training import TrainedClassifier

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def _join(root: str, name: str) -> str:
    return f"{root.rstrip('/')}/{name}"


def _weights_version(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def save_classifier(trained: TrainedClassifier, url: str) -> str:
    """Write ``<url>/model.safetensors`` and ``<url>/config.json`` (any fsspec URL or local path).

    Returns the version (first 16 hex digits of the weights' sha256), also set on ``trained``.
    """
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in trained.model.state_dict().items()}
    data = safetensors.torch.save(state)
    version = _weights_version(data)
    record = {
        "config": trained.config,
        "history": trained.history,
        "seconds": trained.seconds,
        "num_parameters": trained.num_parameters,
        "num_real": trained.num_real,
        "num_synthetic": trained.num_synthetic,
        "version": version,
    }
    fs, root = fsspec.core.url_to_fs(url)
    fs.makedirs(root, exist_ok=True)
    # Weights first, config last: a config.json whose version matches the weights marks a complete save.
    fs.pipe_file(_join(root, MODEL_FILE), data)
    fs.pipe_file(_join(root, CONFIG_FILE), json.dumps(record, indent=2).encode())
    trained.version = version
    return version


def load_classifier(url: str) -> TrainedClassifier:
    """Rebuild a classifier written by :func:`save_classifier` (eval mode, on CPU)."""
    fs, root = fsspec.core.url_to_fs(url)
    model_path, config_path = _join(root, MODEL_FILE), _join(root, CONFIG_FILE)
    if not fs.exists(model_path) or not fs.exists(config_path):
        raise FileNotFoundError(
            f"no saved classifier at {url!r}: expected {MODEL_FILE} and {CONFIG_FILE} there (written by save_classifier)"
        )
    data = fs.cat_file(model_path)
    record = json.loads(fs.cat_file(config_path))
    version = _weights_version(data)
    if record.get("version") not in (None, "", version):
        raise ValueError(
            f"{model_path} (version {version}) does not match {config_path} (version {record['version']}): "
            "the save was interrupted or the files come from different runs; save the classifier again"
        )
    config = record["config"]
    if "pretrained_adapter" in config:  # a pretrained judge or a fine-tuned model (lib.pretrained_classifiers)
        from synthaug_pipeline.lib.pretrained_classifiers import rebuild

        model = rebuild(config)
    else:
        model = create_classifier(config["model"], config["num_classes"], config["in_chans"])
    model.load_state_dict(safetensors.torch.load(data))
    return TrainedClassifier(
        model=model.eval(),
        config=config,
        history=record.get("history", []),
        seconds=record.get("seconds", 0.0),
        num_parameters=record.get("num_parameters", sum(p.numel() for p in model.parameters())),
        num_real=record.get("num_real", 0),
        num_synthetic=record.get("num_synthetic", 0),
        version=version,
    )
