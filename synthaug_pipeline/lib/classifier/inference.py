"""Predictions of a trained classifier: probabilities and (optionally) penultimate features, in batches."""

from __future__ import annotations


import numpy as np
import torch
from torch import nn

from synthaug_pipeline.lib.images import to_model_tensor
from synthaug_pipeline.lib.classifier.recipe import _check_images


@torch.no_grad()
def predict(
    model: nn.Module, images: np.ndarray, batch_size: int = 512, device: str | torch.device = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities ``[N, K]`` and pre-logits features ``[N, D]`` (both float32).

    The model needs timm's ``forward_features`` / ``forward_head(pre_logits=True)``. It runs in eval
    mode on ``device`` without gradients; its original device and train/eval mode are restored.
    """
    _check_images(images, "predict")
    if len(images) == 0:
        features_dim = getattr(model, "head_hidden_size", None) or model.num_features
        return np.zeros((0, model.num_classes), np.float32), np.zeros((0, features_dim), np.float32)
    original_device = next(model.parameters()).device
    was_training = model.training
    model.eval().to(device)
    try:
        probabilities, features = [], []
        for start in range(0, len(images), batch_size):
            x = to_model_tensor(images[start : start + batch_size]).to(device)
            feature_map = model.forward_features(x)
            # forward_head twice (cheap next to the backbone) rather than applying the classifier to
            # the pre-logits ourselves: that stays right for any timm head layout.
            features.append(model.forward_head(feature_map, pre_logits=True).float().cpu())
            probabilities.append(model.forward_head(feature_map).float().softmax(dim=1).cpu())
    finally:
        model.to(original_device).train(was_training)
    return torch.cat(probabilities).numpy(), torch.cat(features).numpy()


# --------------------------------------------------------------------------------------------------
# Storage
# --------------------------------------------------------------------------------------------------
