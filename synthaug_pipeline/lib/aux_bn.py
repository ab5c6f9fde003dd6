"""Auxiliary batch-norm: synthetic images get their own BatchNorm statistics and affine parameters.

Synthetic and real images have different low-level statistics; sharing BatchNorm layers makes the
network normalise real images with statistics partly estimated on synthetic ones (Xie et al. 2020,
"Adversarial Examples Improve Image Recognition", use the same trick for adversarial images).
With auxiliary BN, every BatchNorm layer becomes a :class:`DualBatchNorm` holding

* ``main`` -- the original layer, used by real images and at evaluation time, and
* ``aux`` -- a copy, used by synthetic images during training.

Everything else (convolutions, linear layers) is shared. Usage::

    model = convert_to_aux_bn(model)            # in place; BN weights copied into main and aux
    with route_synthetic(model, is_synthetic):  # bool mask [N], True = synthetic sample
        loss = loss_fn(model(x), y)
    model = strip_aux_bn(model)                 # plain model with the main BN layers back

Without a mask (outside :func:`route_synthetic`) a DualBatchNorm is exactly its ``main`` layer, so
evaluation needs nothing special, and :func:`strip_aux_bn` gives a model whose ``state_dict`` has the
same keys as before conversion (``save_classifier`` / ``predict`` work unchanged).

A batch whose mask splits the samples normalises each group with its own batch statistics (in train
mode), exactly as two separate BatchNorm layers applied to the two groups would; running statistics
of a layer are only updated by the samples routed through it (a synthetic-only batch leaves ``main``
untouched). Caveat of train-mode BatchNorm: a group of a single sample fails on layers whose input has
one value per channel (BatchNorm1d, or a 1x1 feature map) -- PyTorch raises "Expected more than 1
value per channel when training".
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = [
    "DualBatchNorm",
    "DualBatchNorm1d",
    "DualBatchNorm2d",
    "convert_to_aux_bn",
    "dual_bn_layers",
    "route_synthetic",
    "strip_aux_bn",
]


class DualBatchNorm(nn.Module):
    """A BatchNorm layer (``main``) and an auxiliary copy (``aux``) chosen per sample.

    ``synthetic_mask`` (bool ``[N]``, True = synthetic) is set by :func:`route_synthetic` for one
    forward pass; None (the default) sends everything through ``main``. Wraps any BatchNorm module,
    including subclasses such as timm's ``BatchNormAct2d`` (whose activation then applies to both
    paths); ``aux`` defaults to a deep copy of ``main`` (same weights, buffers and settings).
    """

    def __init__(self, main: nn.Module, aux: nn.Module | None = None) -> None:
        super().__init__()
        self.main = main
        self.aux = aux if aux is not None else copy.deepcopy(main)
        self.synthetic_mask: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = self.synthetic_mask
        if mask is None:
            return self.main(x)
        if mask.ndim != 1 or mask.shape[0] != x.shape[0]:
            raise ValueError(
                f"synthetic mask shaped {tuple(mask.shape)} does not match a batch of {x.shape[0]} samples: "
                "route_synthetic's mask needs one entry per sample of the forward pass"
            )
        mask = mask.to(x.device)
        synthetic = torch.nonzero(mask).flatten()
        if len(synthetic) == 0:
            return self.main(x)
        if len(synthetic) == len(mask):
            return self.aux(x)
        real = torch.nonzero(~mask).flatten()
        # Each group goes through its own layer alone, so train-mode batch statistics (and running
        # statistics) never mix the groups; then put the samples back in their original order.
        out = torch.cat([self.main(x.index_select(0, real)), self.aux(x.index_select(0, synthetic))])
        inverse = torch.empty(len(mask), dtype=torch.long, device=x.device)
        inverse[torch.cat([real, synthetic])] = torch.arange(len(mask), device=x.device)
        return out.index_select(0, inverse)

    def extra_repr(self) -> str:
        return "main: real samples and evaluation; aux: synthetic samples"


class DualBatchNorm2d(DualBatchNorm):
    """:class:`DualBatchNorm` around two fresh ``BatchNorm2d(num_features, ...)`` layers."""

    def __init__(self, num_features: int, **bn_kwargs) -> None:
        super().__init__(nn.BatchNorm2d(num_features, **bn_kwargs))


class DualBatchNorm1d(DualBatchNorm):
    """:class:`DualBatchNorm` around two fresh ``BatchNorm1d(num_features, ...)`` layers."""

    def __init__(self, num_features: int, **bn_kwargs) -> None:
        super().__init__(nn.BatchNorm1d(num_features, **bn_kwargs))


def dual_bn_layers(model: nn.Module) -> list[DualBatchNorm]:
    """Every DualBatchNorm inside ``model`` (the model itself included)."""
    return [m for m in model.modules() if isinstance(m, DualBatchNorm)]


def convert_to_aux_bn(model: nn.Module) -> nn.Module:
    """Replace every BatchNorm layer (1d/2d/3d, SyncBatchNorm, subclasses) by a :class:`DualBatchNorm`.

    In place; returns ``model`` (or the new wrapper when ``model`` itself is a BatchNorm layer). Both
    paths start from the original layer's weights, running statistics and train/eval mode; the
    ``main`` path *is* the original module object. Layers already converted are left alone, a layer
    registered in several places becomes one shared DualBatchNorm. Raises ValueError when the model
    has no BatchNorm layer (auxiliary BN would silently do nothing).
    """
    memo: dict[int, DualBatchNorm] = {}

    def wrap(bn: nn.Module) -> DualBatchNorm:
        if id(bn) not in memo:
            memo[id(bn)] = DualBatchNorm(bn).train(bn.training)
        return memo[id(bn)]

    def visit(module: nn.Module) -> None:
        # _modules, not named_children(): that yields a module registered twice under one parent only
        # once, and the second registration would stay a plain BatchNorm.
        for name, child in list(module._modules.items()):
            if child is None or isinstance(child, DualBatchNorm):
                continue
            if isinstance(child, _BatchNorm):
                setattr(module, name, wrap(child))
            else:
                visit(child)

    if isinstance(model, DualBatchNorm):
        return model
    if isinstance(model, _BatchNorm):
        return wrap(model)
    visit(model)
    if not memo and not dual_bn_layers(model):
        raise ValueError(f"{type(model).__name__} has no BatchNorm layer to give an auxiliary copy")
    return model


def strip_aux_bn(model: nn.Module) -> nn.Module:
    """Undo :func:`convert_to_aux_bn`: every DualBatchNorm is replaced by its ``main`` layer (in place).

    Returns ``model`` (or the main layer when ``model`` itself is a DualBatchNorm). The result has
    the same modules and ``state_dict`` keys as before conversion; the aux layers are dropped.
    """
    if isinstance(model, DualBatchNorm):
        return model.main

    def visit(module: nn.Module) -> None:
        for name, child in list(module._modules.items()):  # every registration, as in convert_to_aux_bn
            if isinstance(child, DualBatchNorm):
                setattr(module, name, child.main)
            elif child is not None:
                visit(child)

    visit(model)
    return model


@contextmanager
def route_synthetic(model: nn.Module, mask: torch.Tensor | np.ndarray | list[bool]) -> Iterator[nn.Module]:
    """Route the samples flagged True in ``mask`` (bool ``[N]``) through the aux BN of every layer.

    Meant for one forward pass over a batch of N samples (backward may run inside or after the
    block). The previous masks (normally none) are restored on exit, even after an error. Raises
    ValueError when ``model`` has no DualBatchNorm layer (convert it with :func:`convert_to_aux_bn`).
    """
    layers = dual_bn_layers(model)
    if not layers:
        raise ValueError("route_synthetic needs a model converted with convert_to_aux_bn (no DualBatchNorm found)")
    mask = torch.as_tensor(np.asarray(mask) if isinstance(mask, list) else mask)
    if mask.dtype != torch.bool or mask.ndim != 1:
        raise ValueError(f"the synthetic mask must be a 1-D bool array, got {mask.dtype} shaped {tuple(mask.shape)}")
    device = next((p.device for p in model.parameters()), mask.device)
    mask = mask.to(device)
    previous = [layer.synthetic_mask for layer in layers]
    for layer in layers:
        layer.synthetic_mask = mask
    try:
        yield model
    finally:
        for layer, old in zip(layers, previous, strict=True):
            layer.synthetic_mask = old
