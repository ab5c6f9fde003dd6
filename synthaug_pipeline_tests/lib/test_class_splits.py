"""Every class's images through a spill file: same rows as stacking them, and one class in RAM at a time."""

import weakref
from collections.abc import Mapping

import dagster as dg
import numpy as np
import pytest

from synthaug_pipeline.lib import evaluation as evaluation_lib
from synthaug_pipeline.lib.class_splits import spill_batches, spill_classes
from synthaug_pipeline.lib.classifier import train_classifier
from synthaug_pipeline.lib.config import ClassifierConfig
from synthaug_pipeline.lib.datasets import RealClass
from synthaug_pipeline.lib.evaluation import evaluate, evaluate_under_shift


def real_class(index: int, train: int = 5, test: int = 3, validation: int | None = 2, shape=(8, 8, 1)) -> RealClass:
    rng = np.random.default_rng(index)
    pixels = lambda n: rng.integers(0, 256, (n, *shape), dtype=np.uint8)  # noqa: E731
    # a class-dependent brightness, so a classifier has something to learn
    bright = lambda n: np.clip(pixels(n) // 4 + 20 * (index % 10), 0, 255).astype(np.uint8)  # noqa: E731
    return RealClass(
        f"c{index:03d}", index, f"class {index}", train=bright(train), test=bright(test),
        validation=None if validation is None else bright(validation),
    )


class CountingStore(Mapping):
    """A per-class store that builds a class's record on lookup and counts how many records are alive at once."""

    def __init__(self, num_classes: int, order=None, **kwargs):
        self.keys = [f"c{i:03d}" for i in (order if order is not None else range(num_classes))]
        self.kwargs, self.alive, self.peak, self.reads = kwargs, 0, 0, 0

    def _gone(self):
        self.alive -= 1

    def __getitem__(self, key):
        if key not in self.keys:
            raise KeyError(key)
        part = real_class(int(key[1:]), **self.kwargs)
        self.alive += 1
        self.reads += 1
        self.peak = max(self.peak, self.alive)
        weakref.finalize(part, self._gone)
        return part

    def __iter__(self):
        return iter(self.keys)

    def __len__(self):
        return len(self.keys)


def stacked(classes: list[RealClass], split: str):
    """What the pipeline did before: every class concatenated in RAM, in class order."""
    parts = sorted(classes, key=lambda part: part.class_index)
    return (
        np.concatenate([getattr(p, split) for p in parts]),
        np.concatenate([np.full(len(getattr(p, split)), p.class_index, np.int64) for p in parts]),
    )


def test_spill_holds_the_stacked_rows_reading_each_class_once_and_one_at_a_time():
    store = CountingStore(12, order=[3, 0, 11, 1, 2, 4, 5, 6, 7, 8, 10, 9])  # read order differs from class order
    spilled = spill_classes(store, ("train", "validation", "test"))
    assert store.reads == 12 and store.peak == 1
    classes = [real_class(i) for i in range(12)]
    for split in ("train", "validation", "test"):
        images, labels = stacked(classes, split)
        assert isinstance(spilled[split].images, np.memmap) and not spilled[split].images.flags.writeable
        np.testing.assert_array_equal(spilled[split].images, images)
        np.testing.assert_array_equal(spilled[split].labels, labels)
    assert spilled.counts["train"] == {f"c{i:03d}": 5 for i in range(12)}


def test_a_split_some_class_lacks_is_absent_and_empty_splits_keep_their_shape():
    spilled = spill_classes([real_class(0), real_class(1, validation=None)], ("train", "validation"))
    assert spilled.has("train") and not spilled.has("validation")
    with pytest.raises(KeyError, match="validation"):
        spilled["validation"]
    empty = spill_classes([real_class(0, test=0), real_class(1, test=0)], ("test",))["test"]
    assert empty.images.shape == (0, 8, 8, 1) and len(empty) == 0
    with pytest.raises(ValueError, match="no classes"):
        spill_classes({}, ("train",))


def test_classes_of_different_image_shapes_are_refused_and_nothing_is_left_behind(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    with pytest.raises(ValueError, match=r"train: images shaped \(9, 9, 1\).*after images shaped \(8, 8, 1\)"):
        spill_classes([real_class(0), real_class(1, shape=(9, 9, 1))], ("train",))
    spilled = spill_classes([real_class(0), real_class(1)], ("train",))
    assert list(tmp_path.iterdir()) == []  # mapped, then unlinked: freed with the arrays, whatever happens
    assert spilled["train"].images.sum() > 0


def test_take_and_spill_batches_keep_rows_and_order():
    spilled = spill_classes([real_class(i) for i in range(4)], ("train",))["train"]
    rows = np.array([7, 0, 19, 3, 3])
    subset = spilled.take(rows)
    np.testing.assert_array_equal(subset.images, np.asarray(spilled.images)[rows])
    np.testing.assert_array_equal(subset.labels, spilled.labels[rows])
    batches = [(real_class(i).train, np.full(5, i)) for i in range(3)] + [(np.zeros((0, 8, 8, 1), np.uint8), np.zeros(0))]
    joined = spill_batches(batches, "synthetic", (8, 8, 1))
    np.testing.assert_array_equal(joined.images, np.concatenate([b[0] for b in batches]))
    assert spill_batches([], "synthetic", (8, 8, 1)).images.shape == (0, 8, 8, 1)


def test_training_and_evaluation_over_the_spill_match_the_stacked_arrays_bit_for_bit(monkeypatch):
    classes = [real_class(i, train=12, test=10) for i in range(12)]
    spilled = spill_classes(classes, ("train", "test"))
    images, labels = stacked(classes, "train")
    cfg = ClassifierConfig(model="synthaug_cnn_small", steps=6, batch_size=16, seed=3)
    in_ram = train_classifier(images, labels, 12, cfg)
    spill = train_classifier(spilled["train"].images, spilled["train"].labels, 12, cfg)
    for a, b in zip(in_ram.model.state_dict().values(), spill.model.state_dict().values(), strict=True):
        assert np.array_equal(a.numpy(), b.numpy())
    test_images, test_labels = stacked(classes, "test")
    class_ids = [c.class_id for c in classes]
    whole = evaluate_under_shift(in_ram.model, test_images, test_labels, class_ids, ["gaussian_noise", "jpeg", "gaussian_blur"], [3])
    # chunks of 16 rows, batches of 16: noise carries over chunks from one generator, so the numbers are the same
    monkeypatch.setattr(evaluation_lib, "CHUNK_BYTES", 16 * 64)
    chunked = evaluate_under_shift(
        in_ram.model, spilled["test"].images, spilled["test"].labels, class_ids, ["gaussian_noise", "jpeg", "gaussian_blur"], [3],
        batch_size=16,
    )
    assert evaluation_lib.chunk_rows(spilled["test"].images, 16) == 16
    assert chunked == whole
    assert evaluate(in_ram.model, spilled["test"].images, spilled["test"].labels, class_ids, batch_size=16)["top5"] == whole["in_domain"]["top5"]


def test_training_assets_hold_one_class_at_a_time(tmp_path):
    from synthaug_pipeline.defs.resources import SynthaugSettings
    from synthaug_pipeline.defs.training.assets import build_training_assets
    from synthaug_pipeline_tests.defs.test_pipeline import tiny_overrides

    classifier_baseline = build_training_assets()[0]
    store = CountingStore(30, train=6, test=2)
    settings = SynthaugSettings(profile="digits", overrides=tiny_overrides(str(tmp_path)) + ["classifier.steps=3"])
    catalog = {"class_ids": list(store), "dataset": "fake", "source": "memory"}
    with dg.instance_for_test() as instance, dg.build_asset_context(instance=instance) as context:
        ref = classifier_baseline(context, settings=settings, class_catalog=catalog, real_images=store)
    assert store.reads == 30 and store.peak == 1
    assert ref.details["lineage"]["real"]["images"] == 180
