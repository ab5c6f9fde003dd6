"""Typed records stored as arrays + JSON: every record type round-trips, locally and under memory://."""

import dataclasses
import datetime as dt
import json
import math

import fsspec
import numpy as np
import pytest

from synthaug_pipeline.lib.datasets import RealClass
from synthaug_pipeline.lib.diffusion import SyntheticClass
from synthaug_pipeline.lib.features import RealFeatures
from synthaug_pipeline.lib.model_store import ModelRef, ModelStore, ModelVersionError
from synthaug_pipeline.lib.records import RecordError, decode, encode, read_value, record, record_types, value_exists, write_value
from synthaug_pipeline.lib.scoring import ClassScores, ScoredClass
from synthaug_pipeline.lib.shards import ShardRef

rng = np.random.default_rng(0)
SCORES = ClassScores(
    judge_confidence=rng.random(5),
    judge_top1=np.arange(5, dtype=np.int64),
    nearest_real_distance=rng.random(5),
    summary={"fid": 1.5, "kid_mean": float("nan"), "warnings": ["few images"], "n": 5},
    is_train_copy=np.array([True, False, False, True, False]),
    clip_score=None,
)
EXAMPLES = {
    "real_class": RealClass("n01440764", 0, "tench", rng.integers(0, 255, (3, 8, 8, 3), dtype=np.uint8), np.zeros((0, 8, 8, 3), np.uint8)),
    "synthetic_class": SyntheticClass(
        "0", 0, rng.integers(0, 255, (4, 8, 8, 1), dtype=np.uint8), [1, 2, 3, 4], "ddpm", "gen", "abc", "ddim", 4, 2.5,
        prompts=["a", "b", "c", "d"], negative_prompts=[None, None, "x", None],
    ),
    "class_scores": SCORES,
    "scored_class": ScoredClass("0", 0, SCORES, {"fid": 1.5, "duplicate_threshold": 0.25}),
    "shard_ref": ShardRef("0", "s3://b/shards/class=0/x.parquet", "f" * 64, 10, 7, "v1", '{"min": 0.5}', "abc", "run", {"a": True, "b": False}),
    "model_ref": ModelRef("generator", "/m/generator/1234", "v9", "ddpm", 123, {"backend": "ddpm", "class_indices": {"0": 3}}),
    "real_features": RealFeatures("0", 0, "zero", "judge:synthaug_cnn@1", rng.random((3, 4)).astype(np.float32), rng.random((2, 4))),
}


def _equal(a, b) -> bool:
    if dataclasses.is_dataclass(a):
        return type(a) is type(b) and all(_equal(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return a == b and type(a) is type(b)


def test_every_record_type_has_an_example():
    assert set(record_types()) == set(EXAMPLES)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
@pytest.mark.parametrize("where", ["local", "memory"])
def test_records_round_trip(name, where, tmp_path):
    fs = fsspec.filesystem("file") if where == "local" else fsspec.filesystem("memory")
    folder = str(tmp_path / name) if where == "local" else f"/records-test/{name}"
    write_value(fs, folder, EXAMPLES[name], {"asset": name})
    assert _equal(read_value(fs, folder), EXAMPLES[name])
    document = json.loads(fs.cat_file(f"{folder}/value.json"))
    assert document["asset"] == name and "pickle" not in json.dumps(document)


def test_plain_values_round_trip_with_their_types():
    value = {"a": (1, 2.5, "x"), "b": [None, True, float("inf")], "t": dt.datetime(2026, 1, 2, 3, 4, tzinfo=dt.timezone.utc), "__odd__": 1,
             "arr": np.arange(6).reshape(2, 3), "scalar": np.float32(0.5)}
    document, arrays = encode(value)
    json.dumps(document, allow_nan=False)  # strict JSON
    back = decode(document, arrays)
    assert back["a"] == (1, 2.5, "x") and back["b"][2] == float("inf") and back["t"] == value["t"] and back["__odd__"] == 1
    assert np.array_equal(back["arr"], value["arr"]) and back["scalar"] == 0.5


def test_a_rewrite_replaces_the_arrays_file_and_a_changed_file_is_refused(tmp_path):
    fs = fsspec.filesystem("file")
    folder = str(tmp_path / "v")
    write_value(fs, folder, {"x": np.zeros(3)})
    write_value(fs, folder, {"x": np.ones(3)})
    files = sorted(p.name for p in (tmp_path / "v").iterdir())
    assert len([f for f in files if f.startswith("arrays-")]) == 1 and "value.json" in files
    assert np.array_equal(read_value(fs, folder)["x"], np.ones(3))
    arrays = next((tmp_path / "v").glob("arrays-*.npz"))
    arrays.write_bytes(arrays.read_bytes()[:-5] + b"xxxxx")
    with pytest.raises(RecordError, match="sha256 mismatch"):
        read_value(fs, folder, "real_images[3]")


def test_missing_value_unknown_type_and_old_version_are_one_line_errors(tmp_path):
    fs = fsspec.filesystem("file")
    with pytest.raises(RecordError, match=r"real_images\[7\] has no stored value"):
        read_value(fs, str(tmp_path / "none"), "real_images[7]")
    assert not value_exists(fs, str(tmp_path / "none"))
    folder = str(tmp_path / "old")
    write_value(fs, folder, EXAMPLES["model_ref"])
    document = json.loads((tmp_path / "old" / "value.json").read_text())
    document["value"]["__version__"] = 0
    (tmp_path / "old" / "value.json").write_text(json.dumps(document))
    with pytest.raises(RecordError, match="version 0, this code reads version 1.*re-materialize"):
        read_value(fs, folder, "generator")
    document["value"]["__record__"] = "os.system"
    (tmp_path / "old" / "value.json").write_text(json.dumps(document))
    with pytest.raises(RecordError, match="unknown"):
        read_value(fs, folder, "generator")


def test_unregistered_dataclasses_and_non_string_keys_are_refused():
    @dataclasses.dataclass
    class Loose:
        x: int

    with pytest.raises(TypeError, match="not a registered record"):
        encode(Loose(1))
    with pytest.raises(TypeError, match="keys must be strings"):
        encode({1: "a"})
    with pytest.raises(TypeError, match="cannot store a set"):
        encode({"a": {1, 2}})
    with pytest.raises(TypeError, match="taken"):
        record("real_class")(Loose)


def test_model_store_loads_each_model_once_and_refuses_a_rewritten_one():
    store, calls = ModelStore(capacity=2), []

    class Model:
        def __init__(self, version):
            self.version = version

    def load(url):
        calls.append(url)
        return Model("v1")

    for _ in range(5):
        store.versioned("generator", "/g", "v1", load)
    assert calls == ["/g"] and store.loads["generator"] == 1
    with pytest.raises(ModelVersionError, match="expected v2: it was overwritten"):
        store.versioned("generator", "/g", "v2", load)
    store.get("a", 1, lambda: 1), store.get("b", 2, lambda: 2), store.get("c", 3, lambda: 3)
    assert len(store._models) == 2  # least recently used dropped
    store.record_load("pretrained_generator", ("dit", "v1")), store.record_load("pretrained_generator", ("dit", "v1"))
    assert store.loads["pretrained_generator"] == 1 and len(store._models) == 2  # counted once, not held
