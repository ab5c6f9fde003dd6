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


RECORD = {
    "name": "experiment-few_shot-r1-s2-auxbn",
    "version": "v9",
    "run_id": "run-9",
    "experiment": {"key": "few_shot-r1-s2-auxbn", "group": "few_shot-r1-auxbn", "regime": "few_shot", "ratio": 1.0, "seed": 2},
    "real": {"dataset": "digits", "source": "sklearn", "regime": "few_shot", "images": 20},
    "synthetic_ratio": 1.0,
    "aux_bn": True,
    "training": {"model": "synthaug_cnn", "optimizer": "sgd", "learning_rate": 0.05, "steps": 321, "seed": 2, "batch_size": 64},
    "shards": [
        {"class_id": "0", "uri": "/out/synthetic_shards/class=0/s.parquet", "sha256": "cd" * 32, "num_accepted": 9,
         "filter_version": "filter-abc", "generator_version": "gen-123", "run_id": "run-3", "images_used": 10},
    ],
    "filter_versions": ["filter-abc"],
    "generator_versions": ["gen-123"],
    "upstream": {
        "class_catalog": {"storage_id": 4, "run_id": "run-1", "timestamp": 1.0},
        "real_images": {"0": {"storage_id": 7, "run_id": "run-2", "timestamp": 2.0}, "1": None},
        "synthetic_shards": {"0": {"storage_id": 31, "run_id": "run-3", "timestamp": 3.0}},
    },
}


def test_cli_lineage_prints_the_settings_and_upstream_materializations(tmp_path, capsys):
    from synthaug_pipeline.cli import main

    model = tmp_path / "models" / "experiment-few_shot-r1-s2-auxbn" / "run-9"
    write_lineage(str(model), RECORD)
    assert main(["lineage", str(model)]) == 1  # the recorded shard does not exist here: lineage says so
    out = capsys.readouterr().out.splitlines()
    assert "shards verified: 0 of 1 match their sha256" in out and any(line.startswith("shard missing: ") for line in out)
    for line in (
        "real data: digits (sklearn), 20 images, regime few_shot",
        "experiment: few_shot-r1-s2-auxbn (group few_shot-r1-auxbn)",
        "seed: 2",
        "synthetic ratio: 1.0",
        "aux BN: True",
        "filter versions: filter-abc",
        "generator versions: gen-123",
        "shards: 1",
        "upstream materializations:",
        "  class_catalog: storage id 4, run run-1",
        "  real_images[0]: storage id 7, run run-2",
        "  real_images[1]: none recorded",
        "  synthetic_shards[0]: storage id 31, run run-3",
    ):
        assert line in out, line
    training = next(line for line in out if line.startswith("training:"))
    assert "optimizer sgd" in training and "learning rate 0.05" in training and "321 steps" in training
    shard = next(line for line in out if "s.parquet" in line)
    assert "used 10" in shard and "filter filter-abc" in shard and "generator gen-123" in shard


def test_lineage_of_an_older_model_says_what_was_not_recorded():
    from synthaug_pipeline.lib.lineage import describe_lineage

    lines = describe_lineage({"name": "classifier_baseline", "version": "v0", "shards": [], "training": {"steps": 5}})
    assert "upstream materializations: not recorded (a model trained before they were)" in lines
    assert "filter versions: none" in lines and "seed: ?" in lines
    assert any("optimizer ?" in line and "5 steps" in line for line in lines)


def test_verify_shards_tells_ok_from_missing_and_changed():
    import hashlib

    import fsspec

    from synthaug_pipeline.lib.lineage import verify_shards

    fs = fsspec.filesystem("memory")
    fs.pipe_file("/verify/ok.parquet", b"shard bytes")
    fs.pipe_file("/verify/changed.parquet", b"other bytes")
    digest = hashlib.sha256(b"shard bytes").hexdigest()
    record = {
        "shards": [
            {"uri": "memory:///verify/ok.parquet", "sha256": digest},
            {"uri": "memory:///verify/changed.parquet", "sha256": digest},
            {"uri": "memory:///verify/gone.parquet", "sha256": digest},
        ]
    }
    assert [status for _, status in verify_shards(record)] == ["ok", "changed", "missing"]


def test_a_corrupt_lineage_file_is_one_line_naming_it(tmp_path, capsys):
    import pytest

    from synthaug_pipeline.cli import main
    from synthaug_pipeline.lib.lineage import LineageError

    (tmp_path / "lineage.json").write_text("{not json")
    with pytest.raises(LineageError, match="lineage.json is not a valid lineage record"):
        read_lineage(str(tmp_path))
    assert main(["lineage", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("synthaug: error: ") and len(err.splitlines()) == 1
