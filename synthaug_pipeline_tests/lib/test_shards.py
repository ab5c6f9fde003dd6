"""Tests for synthaug_pipeline.lib.shards: contract, atomic replace-on-rewrite, reading."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import uuid

import fsspec
import numpy as np
import pyarrow as pa
import pytest

from synthaug_pipeline.lib import storage
from synthaug_pipeline.lib.images import encode_image
from synthaug_pipeline.lib.shard_reading import decode_shard_images, file_sha256, read_shards
from synthaug_pipeline.lib.shard_schema import SHARD_CONTRACT, SHARD_SCHEMA, build_shard_table
from synthaug_pipeline.lib.shards import ShardInfo, list_class_shards, write_class_shard

CREATED = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.timezone.utc)


def make_images(n: int, seed: int, shape=(8, 8, 1)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)


def make_columns(class_id: str = "3", n: int = 5, seed: int = 0, shape=(8, 8, 1), accepted=None) -> dict:
    images = make_images(n, seed, shape)
    rng = np.random.default_rng(seed + 1000)
    if accepted is None:
        accepted = rng.random(n) > 0.4
    return {
        "image": [encode_image(im, "png") for im in images],
        "image_format": "png",
        "height": shape[0],
        "width": shape[1],
        "channels": shape[2],
        "class_id": class_id,
        "class_index": 3,
        "prompt": [f"a photo of digit {class_id}"] * n,
        "generator_id": "ddpm-digits",
        "generator_version": "abc123",
        "sampler": "ddim",
        "steps": 20,
        "guidance_scale": 2.5,
        "seed": np.arange(seed * 100, seed * 100 + n, dtype=np.int64),
        "image_index": np.arange(n),
        "judge_confidence": rng.random(n).astype(np.float32),
        "judge_top1": np.full(n, 3),
        "nearest_real_distance": rng.random(n) * 10,
        "accepted": np.asarray(accepted, dtype=bool),
        "filter_version": "v1-0123456789ab",
        "filter_policy": '{"min_confidence":0.5,"require_label_match":true}',
        "run_id": "run-1",
        "created_at": CREATED,
    }


def make_table(**kwargs) -> pa.Table:
    return build_shard_table(make_columns(**kwargs))


def files_in(folder) -> list[str]:
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


@pytest.fixture
def memory_url():
    url = f"memory://synthaug-test-{uuid.uuid4().hex}"
    yield url
    fs, path = fsspec.core.url_to_fs(url)
    if fs.exists(path):
        fs.rm(path, recursive=True)


# --------------------------------------------------------------------------- #
# Schema / build_shard_table
# --------------------------------------------------------------------------- #


def test_schema_has_contract_and_nullability():
    assert SHARD_SCHEMA.metadata[b"synthaug_shard_contract"] == SHARD_CONTRACT.encode()
    nullable = {f.name for f in SHARD_SCHEMA if f.nullable}
    assert nullable == {
        "prompt", "negative_prompt", "conditioning_image_id", "clip_score", "run_id",
        # contract 3: null where the generator has no hub revision, no dtype (old records), no batch or no safety checker
        "generator_revision", "generator_dtype", "generation_batch", "safety_flagged",
    }
    assert SHARD_SCHEMA.field("created_at").type == pa.timestamp("us", tz="UTC")
    assert SHARD_SCHEMA.field("seed").type == pa.int64()
    assert SHARD_SCHEMA.field("guidance_scale").type == pa.float32()
    assert SHARD_CONTRACT == "synthaug-shard/3"
    assert SHARD_SCHEMA.field("filter_policy").type == pa.string() and not SHARD_SCHEMA.field("filter_policy").nullable


def test_every_row_must_carry_the_filter_policy():
    cols = make_columns()
    del cols["filter_policy"]
    with pytest.raises(ValueError, match="missing required columns: filter_policy"):
        build_shard_table(cols)
    with pytest.raises(ValueError, match="'filter_policy' is required but has 2 null values"):
        build_shard_table({**make_columns(n=3), "filter_policy": ['{"a":1}', None, None]})


def test_build_shard_table_broadcasts_scalars_and_fills_optional_nulls():
    table = make_table(n=4)
    assert table.schema.equals(SHARD_SCHEMA, check_metadata=True)
    assert table.num_rows == 4
    assert table["generator_id"].to_pylist() == ["ddpm-digits"] * 4
    assert table["negative_prompt"].null_count == 4  # omitted optional column
    assert table["clip_score"].null_count == 4
    assert table["created_at"].to_pylist() == [CREATED] * 4


def test_build_shard_table_lists_missing_and_unknown_columns():
    cols = make_columns()
    del cols["seed"], cols["accepted"]
    cols["bogus"] = [1] * 5
    with pytest.raises(ValueError) as info:
        build_shard_table(cols)
    message = str(info.value)
    assert "seed" in message and "accepted" in message and "bogus" in message


@pytest.mark.parametrize(
    "column, values, match",
    [
        ("class_index", ["a"] * 5, "class_index"),
        ("class_index", ["3"] * 5, "class_index"),  # numeric strings are not integers
        ("steps", [1.5] * 5, "steps"),  # no silent truncation
        ("image", ["not bytes"] * 5, "image"),
        ("height", [2**40] * 5, "height"),  # int32 overflow
        ("accepted", [1, 0, 1, 0, 1], "accepted"),
        ("generator_id", [None] * 5, "generator_id"),  # null in a required column
        ("seed", [1, 2, 3], "different lengths"),
    ],
)
def test_build_shard_table_rejects_wrong_types(column, values, match):
    cols = make_columns()
    cols[column] = values
    with pytest.raises(ValueError, match=match):
        build_shard_table(cols)


# --------------------------------------------------------------------------- #
# write / read on the local filesystem
# --------------------------------------------------------------------------- #


def test_write_then_read_back_equal(tmp_path):
    table = make_table(n=6, seed=1)
    info = write_class_shard(str(tmp_path), "3", table)
    folder = tmp_path / "class=3"
    assert isinstance(info, ShardInfo)
    assert files_in(folder) == ["manifest.json", os.path.basename(info.uri)]
    assert list_class_shards(str(tmp_path), "3") == [info.uri] == [str(folder / os.path.basename(info.uri))]
    data = (folder / os.path.basename(info.uri)).read_bytes()
    assert info.sha256 == hashlib.sha256(data).hexdigest() == file_sha256(info.uri)
    assert os.path.basename(info.uri) == f"shard-{info.sha256[:16]}.parquet"
    assert info.num_bytes == len(data)
    assert info.num_rows == 6
    assert info.num_accepted == int(np.sum(make_columns(n=6, seed=1)["accepted"]))

    back = read_shards([info.uri], accepted_only=False)
    assert back.schema.equals(SHARD_SCHEMA, check_metadata=True)
    assert back.equals(table)


def test_rewrite_makes_the_new_shard_current_and_keeps_the_old_file(tmp_path):
    first_table = make_table(n=5, seed=1)
    first = write_class_shard(str(tmp_path), "3", first_table)
    new_table = make_table(n=3, seed=2)
    second = write_class_shard(str(tmp_path), "3", new_table)
    assert second.uri != first.uri
    assert list_class_shards(str(tmp_path), "3") == [second.uri]
    assert read_shards([second.uri], accepted_only=False).equals(new_table)
    # Superseded but kept: a model's lineage may name it (gc_shards removes it once unreferenced).
    assert files_in(tmp_path / "class=3") == sorted(["manifest.json", os.path.basename(first.uri), os.path.basename(second.uri)])
    assert file_sha256(first.uri) == first.sha256
    assert read_shards([first.uri], accepted_only=False).equals(first_table)


def test_identical_rewrite_same_uri_one_file(tmp_path):
    table = make_table(n=4, seed=3)
    first = write_class_shard(str(tmp_path), "3", table)
    second = write_class_shard(str(tmp_path), "3", make_table(n=4, seed=3))
    assert first == second
    assert files_in(tmp_path / "class=3") == ["manifest.json", os.path.basename(first.uri)]


def test_other_classes_are_untouched(tmp_path):
    a = write_class_shard(str(tmp_path), "3", make_table(class_id="3", seed=1))
    b = write_class_shard(str(tmp_path), "7", make_table(class_id="7", seed=2))
    write_class_shard(str(tmp_path), "3", make_table(class_id="3", seed=4))
    assert list_class_shards(str(tmp_path), "7") == [b.uri]
    assert a.uri not in list_class_shards(str(tmp_path), "3")


def test_file_url_and_glob_characters_in_class_id(tmp_path):
    base = "file://" + str(tmp_path)
    info = write_class_shard(base, "n01[x]*", make_table(class_id="n01[x]*"))
    assert info.uri.startswith("file://")
    assert list_class_shards(base, "n01[x]*") == [info.uri]
    assert read_shards([info.uri], accepted_only=False).num_rows == 5


def test_list_ignores_temp_and_other_files(tmp_path):
    info = write_class_shard(str(tmp_path), "3", make_table())
    folder = tmp_path / "class=3"
    (folder / ".tmp-deadbeef.parquet").write_bytes(b"partial")
    (folder / ".shard-hidden.parquet").write_bytes(b"x")
    (folder / "notes.txt").write_text("hi")
    assert list_class_shards(str(tmp_path), "3") == [info.uri]
    assert list_class_shards(str(tmp_path), "missing-class") == []


@pytest.mark.parametrize("bad", ["", "a/b", "..", "../up", "a\\b", "x..y", "s3::x", None])
def test_bad_class_id_raises_and_writes_nothing(tmp_path, bad):
    with pytest.raises(ValueError, match="class_id"):
        write_class_shard(str(tmp_path), bad, make_table())
    with pytest.raises(ValueError, match="class_id"):
        list_class_shards(str(tmp_path), bad)
    assert files_in(tmp_path) == []


def test_schema_violations_raise_and_write_nothing(tmp_path):
    good = make_table()
    missing = good.drop_columns(["seed"])
    with pytest.raises(ValueError, match="seed"):
        write_class_shard(str(tmp_path), "3", missing)
    wrong_type = good.set_column(good.schema.get_field_index("steps"), "steps", pa.array(["20"] * 5))
    with pytest.raises(ValueError, match="steps"):
        write_class_shard(str(tmp_path), "3", wrong_type)
    with pytest.raises(ValueError, match="class_id"):
        write_class_shard(str(tmp_path), "4", good)  # rows say class 3
    assert files_in(tmp_path) == []  # not even the class folder


def test_foreign_but_conforming_table_is_accepted(tmp_path):
    # Columns in another order and wider integer types: cast to the contract.
    good = make_table()
    shuffled = pa.table({name: good[name] for name in reversed(good.column_names)})
    shuffled = shuffled.set_column(shuffled.schema.get_field_index("steps"), "steps", good["steps"].cast(pa.int64()))
    info = write_class_shard(str(tmp_path), "3", shuffled)
    assert read_shards([info.uri], accepted_only=False).equals(good)


def test_crash_during_rename_keeps_previous_shard(tmp_path, monkeypatch):
    old_table = make_table(seed=1)
    old = write_class_shard(str(tmp_path), "3", old_table)

    def boom(src, dst):
        raise OSError("simulated crash during rename")

    monkeypatch.setattr(storage.os, "replace", boom)
    with pytest.raises(OSError, match="simulated crash"):
        write_class_shard(str(tmp_path), "3", make_table(seed=2))
    monkeypatch.undo()

    # No new visible shard, no temp left behind, previous shard intact.
    assert files_in(tmp_path / "class=3") == ["manifest.json", os.path.basename(old.uri)]
    assert list_class_shards(str(tmp_path), "3") == [old.uri]
    assert file_sha256(old.uri) == old.sha256
    assert read_shards([old.uri], accepted_only=False).equals(old_table)


# --------------------------------------------------------------------------- #
# Object store (memory://)
# --------------------------------------------------------------------------- #


def test_memory_url_write_rewrite_read(memory_url):
    t1 = make_table(seed=1)
    first = write_class_shard(memory_url, "3", t1)
    assert first.uri.startswith(memory_url + "/class=3/shard-")
    assert list_class_shards(memory_url, "3") == [first.uri]
    assert read_shards([first.uri], accepted_only=False).equals(t1)
    assert file_sha256(first.uri) == first.sha256

    t2 = make_table(n=2, seed=2)
    second = write_class_shard(memory_url, "3", t2)
    assert list_class_shards(memory_url, "3") == [second.uri]
    assert read_shards([second.uri], accepted_only=False).equals(t2)
    assert write_class_shard(memory_url, "3", t2) == second
    assert list_class_shards(memory_url, "3") == [second.uri]


def test_memory_failed_put_keeps_previous_shard(memory_url, monkeypatch):
    old = write_class_shard(memory_url, "3", make_table(seed=1))
    fs, _ = fsspec.core.url_to_fs(memory_url)

    def boom(*args, **kwargs):
        raise OSError("simulated network failure")

    monkeypatch.setattr(type(fs), "pipe_file", boom)
    with pytest.raises(OSError, match="simulated"):
        write_class_shard(memory_url, "3", make_table(seed=2))
    monkeypatch.undo()
    assert list_class_shards(memory_url, "3") == [old.uri]


# --------------------------------------------------------------------------- #
# Reading
# --------------------------------------------------------------------------- #


def test_read_accepted_only_and_column_selection(tmp_path):
    accepted = [True, False, True, False, False]
    info = write_class_shard(str(tmp_path), "3", make_table(accepted=accepted))
    kept = read_shards([info.uri])
    assert kept.num_rows == 2
    assert kept["accepted"].to_pylist() == [True, True]
    assert kept["image_index"].to_pylist() == [0, 2]

    selected = read_shards([info.uri], columns=["image_index", "seed"])
    assert selected.column_names == ["image_index", "seed"]
    assert selected["image_index"].to_pylist() == [0, 2]  # filtered although 'accepted' not selected

    assert read_shards([info.uri], accepted_only=False).num_rows == 5
    with pytest.raises(ValueError, match="nope"):
        read_shards([info.uri], columns=["nope"])


def test_read_concatenates_and_handles_empty(tmp_path):
    a = write_class_shard(str(tmp_path), "3", make_table(class_id="3", n=4, accepted=[True] * 4))
    b = write_class_shard(str(tmp_path), "7", make_table(class_id="7", n=2, accepted=[True, False]))
    both = read_shards([a.uri, b.uri])
    assert both.num_rows == 5
    assert both["class_id"].to_pylist() == ["3"] * 4 + ["7"]
    empty = read_shards([])
    assert empty.num_rows == 0 and empty.schema.equals(SHARD_SCHEMA)


def test_read_missing_uri_names_it(tmp_path):
    info = write_class_shard(str(tmp_path), "3", make_table())
    missing = str(tmp_path / "class=3" / "shard-0000000000000000.parquet")
    with pytest.raises(FileNotFoundError, match="shard-0000000000000000"):
        read_shards([info.uri, missing])
    with pytest.raises(FileNotFoundError):
        file_sha256(missing)


def test_read_rejects_non_contract_parquet(tmp_path):
    import pyarrow.parquet as pq

    path = tmp_path / "other.parquet"
    pq.write_table(pa.table({"accepted": [True]}), path)
    with pytest.raises(ValueError, match="is not a synthaug-shard/3 shard \\(contract metadata: none\\)$"):
        read_shards([str(path)], columns=["accepted"])


def test_read_refuses_a_contract_1_shard_with_a_hint(tmp_path):
    """A shard written before filter_policy existed: refused by contract, not by a missing-column error."""
    import pyarrow.parquet as pq

    old = make_table().drop_columns(["filter_policy"])
    old = old.replace_schema_metadata({b"synthaug_shard_contract": b"synthaug-shard/1"})
    path = tmp_path / "class=3" / "shard-0000000000000001.parquet"
    path.parent.mkdir()
    pq.write_table(old, path)
    with pytest.raises(ValueError, match=r"contract metadata: synthaug-shard/1\); re-materialize its synthetic_shards"):
        read_shards([str(path)])


# --------------------------------------------------------------------------- #
# decode_shard_images
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("shape", [(8, 8, 1), (6, 10, 3)])
def test_decode_shard_images_roundtrip(tmp_path, shape):
    cols = make_columns(n=4, seed=5, shape=shape, accepted=[True] * 4)
    info = write_class_shard(str(tmp_path), "3", build_shard_table(cols))
    images, labels = decode_shard_images(read_shards([info.uri]))
    assert images.dtype == np.uint8 and images.shape == (4, *shape)
    np.testing.assert_array_equal(images, make_images(4, 5, shape))
    np.testing.assert_array_equal(labels, [3, 3, 3, 3])


def test_decode_shard_images_rejects_mixed_shapes():
    small = make_table(n=2, seed=1, shape=(8, 8, 1))
    large = make_table(n=2, seed=2, shape=(16, 16, 1))
    with pytest.raises(ValueError, match="different image shapes"):
        decode_shard_images(pa.concat_tables([small, large]))


def test_decode_shard_images_rejects_wrong_recorded_shape():
    cols = make_columns(n=2, shape=(8, 8, 1))
    cols["height"] = 9
    with pytest.raises(ValueError, match="row 0"):
        decode_shard_images(build_shard_table(cols))


def test_decode_shard_images_empty():
    images, labels = decode_shard_images(read_shards([]))
    assert images.shape[0] == 0 and labels.shape == (0,)
