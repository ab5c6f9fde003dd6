import pytest

from synthaug_pipeline.lib.lineage import models_using_shard, read_lineage, write_lineage


def test_lineage_roundtrip_and_reverse_lookup_on_memory_fs():
    base = "memory://lineage-test/out"
    shard = {"uri": "memory://lineage-test/out/synthetic_shards/class=a/shard-1.parquet", "sha256": "ab" * 32}
    write_lineage(f"{base}/models/classifier_augmented/run1", {"name": "classifier_augmented", "version": "v1", "shards": [shard]})
    write_lineage(f"{base}/models/classifier_baseline/run1", {"name": "classifier_baseline", "version": "v0", "shards": []})
    assert read_lineage(f"{base}/models/classifier_augmented/run1")["shards"] == [shard]
    found = models_using_shard(base, shard["uri"])
    assert [m["name"] for m in found] == ["classifier_augmented"]
    assert models_using_shard(base, "memory://elsewhere.parquet") == []


def test_file_scheme_and_plain_paths_match(tmp_path):
    shard_path = str(tmp_path / "synthetic_shards" / "class=a" / "shard-1.parquet")
    write_lineage(str(tmp_path / "models" / "m" / "r"), {"name": "m", "shards": [{"uri": shard_path, "sha256": "00"}]})
    assert len(models_using_shard(str(tmp_path), "file://" + shard_path)) == 1


def test_missing_lineage_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="lineage.json"):
        read_lineage(str(tmp_path))
