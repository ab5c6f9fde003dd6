import math

import dagster as dg
import numpy as np
import pytest
from dagster._serdes import serialize_value
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from synthaug_pipeline.lib.images import grid_markdown
from synthaug_pipeline.lib.metadata import (
    METADATA_LIMIT_BYTES,
    OMITTED_KEY,
    bounded_metadata,
    estimated_entry_bytes,
    round_floats,
)

_EMPTY_EVENT_BYTES = len(serialize_value(dg.AssetMaterialization("a", metadata={})))


def stored_bytes(metadata: dict) -> int:
    """What the metadata adds to a materialization event as Dagster's event log serializes it."""
    return len(serialize_value(dg.AssetMaterialization("a", metadata=metadata))) - _EMPTY_EVENT_BYTES


def preview(seed: int, size: int = 512) -> str:
    images = np.random.default_rng(seed).integers(0, 256, (40, size, size, 3), dtype=np.uint8)
    return grid_markdown(images, f"preview {seed}")


def big_inline_image(kb: int) -> str:
    return f"![x](data:image/png;base64,{'A' * kb * 1024})"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0.123456789, 0.1235),
        (-2.718281828, -2.718),
        (1.5e-7, 1.5e-7),
        (6.02214076e-7, 6.022e-7),
        (12345.678, 12346.0),  # the integer part stays
        (1718000000.123456, 1718000000.0),  # a timestamp keeps its seconds
        (0.0, 0.0),
        (np.float32(0.333333), 0.3333),
        (12345678901234567890, 12345678901234567890),  # ints exact
        (True, True),
        ("0.123456", "0.123456"),  # text is text
        (None, None),
        ({"a": [0.111111, {"b": 2.22222, "c": 3}], "d": (1.0, 0.987654)}, {"a": [0.1111, {"b": 2.222, "c": 3}], "d": (1.0, 0.9877)}),
    ],
)
def test_round_floats(value, expected):
    got = round_floats(value)
    assert got == expected and type(got) is type(expected)


def test_round_floats_keeps_nan_and_infinities():
    nan, inf, ninf = round_floats([math.nan, math.inf, -math.inf])
    assert math.isnan(nan) and inf == math.inf and ninf == -math.inf


def test_small_metadata_passes_through_unchanged_except_rounding():
    markdown = preview(0, size=64)
    metadata = {
        "images": 150,
        "seconds": 12.3456789,
        "backend": "ddpm",
        "url": dg.MetadataValue.url("s3://bucket/x"),
        "preview": dg.MetadataValue.md(markdown),
        "scores": dg.MetadataValue.json({"fid": 1.23456789, "n": 7, "per_class": [0.5, 0.333333]}),
        "top1": dg.MetadataValue.float(0.912345678),
        "table": dg.MetadataValue.table([dg.TableRecord({"class": "3", "score": 0.87654321, "n": 4})]),
        "when": dg.MetadataValue.timestamp(1718000000.123456),
    }
    got = bounded_metadata(metadata)
    assert list(got) == list(metadata)
    assert got["images"] == 150 and got["seconds"] == 12.35 and got["backend"] == "ddpm"
    assert got["url"] == metadata["url"] and got["preview"] == metadata["preview"] and got["when"] == metadata["when"]
    assert got["scores"] == dg.MetadataValue.json({"fid": 1.235, "n": 7, "per_class": [0.5, 0.3333]})
    assert got["top1"] == dg.MetadataValue.float(0.9123)
    assert isinstance(got["table"], dg.TableMetadataValue)
    assert got["table"].records[0].data == {"class": "3", "score": 0.8765, "n": 4}
    assert got["table"].schema == metadata["table"].schema
    dg.AssetMaterialization("a", metadata=got)  # Dagster accepts every rebuilt value


def test_previews_lose_their_images_first_and_keep_their_text():
    table = "| a | b |\n|---|---|\n| 1 | 2 |"
    metadata = {
        "accepted_preview": dg.MetadataValue.md("**accepted**\n\n" + big_inline_image(200)),
        "near_duplicates": dg.MetadataValue.md("**flagged**\n\n" + big_inline_image(100) + "\n\n" + table),
        "lineage": dg.MetadataValue.json({"shards": ["s" * 100] * 500}),  # ~50 KB, larger than nothing else but kept
        "images": 3,
    }
    got = bounded_metadata(metadata)
    assert stored_bytes(got) <= METADATA_LIMIT_BYTES
    assert got["lineage"] == metadata["lineage"] and got["images"] == 3
    # the largest preview went first, and that was enough
    assert isinstance(got["accepted_preview"], dg.MarkdownMetadataValue)
    assert "data:image" not in got["accepted_preview"].value
    assert got["accepted_preview"].value.startswith("**accepted**\n\n(preview omitted: 201 KB; the metadata was")
    assert "KB over the 256 KB metadata cap)" in got["accepted_preview"].value
    assert got["near_duplicates"] == metadata["near_duplicates"]


def test_largest_entries_become_notes_when_previews_are_not_enough():
    metadata = {
        "log": "x" * 300_000,
        "lineage": dg.MetadataValue.json({"shards": ["s" * 100] * 1500}),  # ~150 KB
        "table": dg.MetadataValue.md("| a |\n" * 10_000),  # ~60 KB
        "images": 3,
    }
    got = bounded_metadata(metadata)
    assert stored_bytes(got) <= METADATA_LIMIT_BYTES
    assert got["log"].startswith("omitted: 294 KB; the metadata was ") and "KB over the 256 KB metadata cap" in got["log"]
    assert got["lineage"] == metadata["lineage"] and got["table"] == metadata["table"] and got["images"] == 3


def test_too_many_entries_are_dropped_and_counted():
    metadata = {f"k{i:05d}": i for i in range(5000)}  # ~5000 x 170 bytes: over the cap even as notes
    got = bounded_metadata(metadata)
    assert stored_bytes(got) <= METADATA_LIMIT_BYTES
    kept = [key for key in got if key != OMITTED_KEY]
    assert all(got[key] == metadata[key] for key in kept)  # what is kept is untouched
    assert got[OMITTED_KEY].startswith(f"{5000 - len(kept)} entries dropped; the metadata was ")


def test_real_previews_of_large_images_fit_several_per_asset():
    metadata = {f"preview_{i}": dg.MetadataValue.md(preview(i)) for i in range(3)}  # 512 px noise: the worst case
    assert bounded_metadata(metadata) == metadata  # the thumbnails already fit: nothing is cut


def test_limit_too_small_is_refused():
    with pytest.raises(ValueError, match="limit_bytes must be >= 1024"):
        bounded_metadata({"a": 1}, limit_bytes=100)


_texts = st.one_of(
    st.text(max_size=50),
    st.integers(0, 400).map(lambda kb: "é" * (kb * 256)),  # non-ASCII: escaped to 6 bytes a character when stored
    st.integers(1, 300).map(big_inline_image),
)
_json = st.recursive(
    st.one_of(st.integers(-(2**40), 2**40), st.floats(allow_nan=False), st.text(max_size=30), st.none()),
    lambda children: st.lists(children, max_size=20) | st.dictionaries(st.text(max_size=8), children, max_size=20),
    max_leaves=200,
)
_values = st.one_of(
    _texts,
    _texts.map(dg.MetadataValue.md),
    _texts.map(dg.MetadataValue.text),
    st.integers(),
    st.floats(allow_nan=False),
    st.floats(allow_nan=False).map(dg.MetadataValue.float),
    _json.map(lambda v: dg.MetadataValue.json({"v": v})),
    st.lists(st.fixed_dictionaries({"a": st.floats(allow_nan=False), "b": st.text(max_size=20)}), min_size=1, max_size=50).map(
        lambda rows: dg.MetadataValue.table([dg.TableRecord(row) for row in rows])
    ),
    st.integers(1, 20).map(lambda n: {"shards": ["s" * 1000] * (n * 20)}),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(metadata=st.dictionaries(st.text(min_size=1, max_size=20), _values, max_size=40), limit=st.integers(1024, 300 * 1024))
def test_nothing_over_the_cap_comes_out(metadata, limit):
    got = bounded_metadata(metadata, limit_bytes=limit)
    assert stored_bytes(got) <= limit
    assert set(got) <= set(metadata) | {OMITTED_KEY}
    if sum(estimated_entry_bytes(key, value) for key, value in metadata.items()) <= limit:
        assert set(got) == set(metadata)  # under the cap: every entry stays
