"""Tests for synthaug_pipeline.lib.aux_bn: converting, routing and stripping auxiliary batch-norm."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from torch import nn

import synthaug_pipeline.lib.classifier  # noqa: F401 - registers synthaug_cnn_small with timm
from synthaug_pipeline.lib.aux_bn import (
    DualBatchNorm,
    DualBatchNorm1d,
    DualBatchNorm2d,
    convert_to_aux_bn,
    dual_bn_layers,
    route_synthetic,
    strip_aux_bn,
)


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4, momentum=0.3)),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(1),
        nn.Linear(4, 6),
        nn.BatchNorm1d(6),
    )


def _batch(n: int = 10, shift: float = 0.0) -> torch.Tensor:
    return torch.randn(n, 4, 5, 5, generator=torch.Generator().manual_seed(n)) * 2 + shift


# -- convert -----------------------------------------------------------------------------------------


def test_convert_wraps_every_batchnorm_and_keeps_the_original_as_main() -> None:
    model = _net()
    originals = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    converted = convert_to_aux_bn(model)
    assert converted is model
    layers = dual_bn_layers(model)
    assert len(layers) == 3
    assert [layer.main for layer in layers] == originals  # the very same module objects
    for layer in layers:
        assert layer.aux is not layer.main
        assert type(layer.aux) is type(layer.main) and layer.aux.momentum == layer.main.momentum
        for name, value in layer.main.state_dict().items():
            assert torch.equal(value, layer.aux.state_dict()[name])
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) and not _inside_dual(model, m) for m in model.modules())
    assert convert_to_aux_bn(model) is model and len(dual_bn_layers(model)) == 3  # converting twice changes nothing


def _inside_dual(model: nn.Module, bn: nn.Module) -> bool:
    return any(bn is layer.main or bn is layer.aux for layer in dual_bn_layers(model))


def test_convert_keeps_train_eval_mode_shares_shared_layers_and_wraps_a_bare_layer() -> None:
    bn = nn.BatchNorm2d(3)
    model = nn.Sequential(nn.Conv2d(3, 3, 1), bn, nn.Conv2d(3, 3, 1), bn).eval()
    convert_to_aux_bn(model)
    assert model[1] is model[3] and isinstance(model[1], DualBatchNorm)
    assert not model[1].training and not model[1].aux.training
    strip_aux_bn(model)
    assert model[1] is bn and model[3] is bn
    bare = convert_to_aux_bn(nn.BatchNorm1d(5))
    assert isinstance(bare, DualBatchNorm) and isinstance(bare.main, nn.BatchNorm1d)


def test_convert_refuses_a_model_without_batchnorm() -> None:
    with pytest.raises(ValueError, match="no BatchNorm layer"):
        convert_to_aux_bn(nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3)))


def test_fresh_dual_layers() -> None:
    layer = DualBatchNorm2d(3, momentum=0.5)
    assert isinstance(layer.main, nn.BatchNorm2d) and layer.main.momentum == 0.5 and layer.aux.num_features == 3
    assert isinstance(DualBatchNorm1d(4).aux, nn.BatchNorm1d)


# -- route -------------------------------------------------------------------------------------------


def test_without_a_mask_the_layer_is_exactly_main() -> None:
    layer = DualBatchNorm(nn.BatchNorm2d(4))
    with torch.no_grad():
        layer.aux.weight.fill_(3.0)  # would show if aux were used
    reference = copy.deepcopy(layer.main)
    x = _batch()
    assert torch.equal(layer(x), reference(x))
    assert torch.equal(layer.main.running_mean, reference.running_mean)
    layer.eval(), reference.eval()
    assert torch.equal(layer(x), reference(x))


@pytest.mark.parametrize("pattern", ["interleaved", "real_first", "synthetic_first"])
def test_split_batch_equals_two_separate_batchnorm_layers(pattern: str) -> None:
    layer = DualBatchNorm(nn.BatchNorm2d(4))
    with torch.no_grad():  # different affine parameters, so a wrong route shows
        layer.aux.weight.copy_(torch.tensor([0.5, 2.0, -1.0, 3.0]))
        layer.aux.bias.copy_(torch.tensor([1.0, -1.0, 0.5, 0.0]))
    separate_main, separate_aux = copy.deepcopy(layer.main), copy.deepcopy(layer.aux)
    mask = {
        "interleaved": torch.tensor([i % 3 == 0 for i in range(10)]),
        "real_first": torch.arange(10) >= 6,
        "synthetic_first": torch.arange(10) < 4,
    }[pattern]
    x = _batch(10) + mask[:, None, None, None] * 5.0  # the synthetic samples have other statistics

    layer.synthetic_mask = mask
    out = layer(x)
    assert torch.allclose(out[~mask], separate_main(x[~mask]), atol=1e-6)
    assert torch.allclose(out[mask], separate_aux(x[mask]), atol=1e-6)
    # running statistics: each layer saw exactly its own samples
    assert torch.allclose(layer.main.running_mean, separate_main.running_mean)
    assert torch.allclose(layer.main.running_var, separate_main.running_var)
    assert torch.allclose(layer.aux.running_mean, separate_aux.running_mean)
    assert torch.allclose(layer.aux.running_var, separate_aux.running_var)
    assert int(layer.main.num_batches_tracked) == int(layer.aux.num_batches_tracked) == 1


def test_running_stats_only_move_for_the_routed_samples() -> None:
    model = convert_to_aux_bn(_net())
    layers = dual_bn_layers(model)
    before = [copy.deepcopy(layer.state_dict()) for layer in layers]
    x = torch.randn(6, 1, 5, 5)
    with route_synthetic(model, torch.ones(6, dtype=torch.bool)):  # a synthetic-only batch
        model(x)
    for layer, state in zip(layers, before):
        for name, value in layer.main.state_dict().items():
            assert torch.equal(value, state[f"main.{name}"]), name  # main untouched
        assert not torch.equal(layer.aux.running_mean, state["aux.running_mean"])
        assert int(layer.aux.num_batches_tracked) == 1
    with route_synthetic(model, torch.zeros(6, dtype=torch.bool)):  # a real-only batch
        model(x)
    for layer in layers:
        assert int(layer.main.num_batches_tracked) == 1 and int(layer.aux.num_batches_tracked) == 1


def test_gradients_reach_each_layer_only_through_its_samples() -> None:
    layer = DualBatchNorm(nn.BatchNorm2d(4))
    mask = torch.arange(8) >= 5
    with route_synthetic(layer, mask):
        out = layer(_batch(8))
    out[~mask].square().sum().backward()  # a loss on the real samples only
    assert layer.main.weight.grad.abs().sum() > 0
    assert layer.aux.weight.grad is None or torch.equal(layer.aux.weight.grad, torch.zeros(4))


def test_route_restores_masks_and_validates() -> None:
    model = convert_to_aux_bn(_net())
    mask = [True, False, True, False]
    with route_synthetic(model, mask) as routed:
        assert routed is model
        assert all(torch.equal(layer.synthetic_mask, torch.tensor(mask)) for layer in dual_bn_layers(model))
    assert all(layer.synthetic_mask is None for layer in dual_bn_layers(model))
    with pytest.raises(RuntimeError, match="boom"):
        with route_synthetic(model, mask):
            raise RuntimeError("boom")
    assert all(layer.synthetic_mask is None for layer in dual_bn_layers(model))

    with pytest.raises(ValueError, match="1-D bool"):
        with route_synthetic(model, torch.tensor([1, 0, 1, 0])):
            pass
    with pytest.raises(ValueError, match="convert_to_aux_bn"):
        with route_synthetic(_net(), mask):
            pass
    with pytest.raises(ValueError, match="does not match a batch of 5"):
        with route_synthetic(model, mask):
            model(torch.randn(5, 1, 5, 5))


def test_single_sample_group_on_a_vector_layer_fails_as_documented() -> None:
    layer = DualBatchNorm(nn.BatchNorm1d(3))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        with route_synthetic(layer, torch.tensor([False, False, True])):
            layer(torch.randn(3, 3))


# -- strip -------------------------------------------------------------------------------------------


def test_strip_gives_back_the_plain_model_with_the_same_state_dict_keys() -> None:
    model = _net()
    keys = list(model.state_dict())
    structure = [type(m) for m in model.modules()]
    convert_to_aux_bn(model)
    assert list(model.state_dict()) != keys  # main./aux. prefixes while converted
    with route_synthetic(model, torch.arange(8) % 2 == 0):
        model(torch.randn(8, 1, 5, 5))
    mains = [layer.main for layer in dual_bn_layers(model)]
    stripped = strip_aux_bn(model)
    assert stripped is model
    assert list(model.state_dict()) == keys
    assert [type(m) for m in model.modules()] == structure
    assert [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)] == mains
    fresh = _net()
    fresh.load_state_dict(model.state_dict())  # loads into a never-converted model, strict
    x = torch.randn(4, 1, 5, 5)
    model.eval(), fresh.eval()
    assert torch.equal(model(x), fresh(x))
    assert strip_aux_bn(DualBatchNorm(nn.BatchNorm2d(2))).__class__ is nn.BatchNorm2d


def test_timm_model_roundtrip() -> None:
    torch.manual_seed(0)
    model = timm.create_model("synthaug_cnn_small", num_classes=3, in_chans=1)
    keys = list(model.state_dict())
    convert_to_aux_bn(model)
    assert len(dual_bn_layers(model)) == 6  # two per stage
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with route_synthetic(model, torch.arange(6) >= 3):
        loss = nn.functional.cross_entropy(model(torch.randn(6, 1, 8, 8)), torch.tensor([0, 1, 2, 0, 1, 2]))
    loss.backward()
    optimizer.step()
    strip_aux_bn(model)
    assert list(model.state_dict()) == keys
    assert model.eval()(torch.randn(2, 1, 8, 8)).shape == (2, 3)
