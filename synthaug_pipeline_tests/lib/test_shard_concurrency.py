"""Shard commits under concurrency and crashes: manifest resolution, stale temps, legacy folders, gc."""

from __future__ import annotations

import json
import multiprocessing
import os
import threading
import time
import uuid

import fsspec
import pytest

from synthaug_pipeline.lib import shards
from synthaug_pipeline.lib.lineage import write_lineage
from synthaug_pipeline.lib.shard_gc import gc_shards
from synthaug_pipeline.lib.shard_reading import read_shards
from synthaug_pipeline.lib.shards import MANIFEST_NAME, current_class_shard, list_class_shards, write_class_shard
from synthaug_pipeline_tests.lib.shard_writers import race_writer, writer_table

ROUNDS = 20


def check_round(base_url: str, class_id: str, round_: int, writers: int = 2) -> None:
    """Exactly one current shard, valid, equal to one writer's table of this round; no visible temp files."""
    current = list_class_shards(base_url, class_id)
    assert len(current) == 1, f"round {round_}: {current}"
    back = read_shards(current, accepted_only=False)
    assert any(back.equals(writer_table(class_id, w, round_)) for w in range(writers)), f"round {round_}: content of no writer"
    fs, folder = fsspec.core.url_to_fs(f"{base_url}/class={class_id}")
    fs.invalidate_cache(folder)
    names = [p.rsplit("/", 1)[-1] for p in fs.ls(folder, detail=False)]
    assert not [n for n in names if n.startswith(".tmp-")], names


def race(base_url: str, class_id: str, start_writers, barrier) -> None:
    """Run ROUNDS rounds: writers start together, the checker inspects after both returned."""
    workers = start_writers()
    try:
        for round_ in range(ROUNDS):
            barrier.wait(timeout=120)  # writers go
            barrier.wait(timeout=120)  # writers done
            check_round(base_url, class_id, round_)
    except BaseException:
        barrier.abort()
        raise
    finally:
        for worker in workers:
            worker.join(timeout=120)
    assert all(getattr(w, "exitcode", 0) == 0 for w in workers)


def test_two_writer_processes_local_never_empty_never_double(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(3)
    base = str(tmp_path)

    def start():
        procs = [ctx.Process(target=race_writer, args=(base, "7", w, ROUNDS, barrier)) for w in range(2)]
        for p in procs:
            p.start()
        return procs

    race(base, "7", start, barrier)


def test_two_writer_threads_memory_never_empty_never_double():
    # memory:// lives in one process, so the two writers are threads here (processes for local and S3).
    base = f"memory://synthaug-race-{uuid.uuid4().hex}"
    barrier = threading.Barrier(3)

    def start():
        threads = [threading.Thread(target=race_writer, args=(base, "7", w, ROUNDS, barrier)) for w in range(2)]
        for t in threads:
            t.start()
        return threads

    try:
        race(base, "7", start, barrier)
    finally:
        fs, path = fsspec.core.url_to_fs(base)
        fs.rm(path, recursive=True)


def test_crash_between_shard_and_manifest_keeps_previous_manifest(tmp_path, monkeypatch):
    old = write_class_shard(str(tmp_path), "3", writer_table("3", 0, 0))
    real_put = shards._put_atomic

    def crash_on_manifest(loc, name, data, suffix):
        if name == MANIFEST_NAME:
            raise OSError("simulated crash before the manifest commit")
        real_put(loc, name, data, suffix)

    monkeypatch.setattr(shards, "_put_atomic", crash_on_manifest)
    with pytest.raises(OSError, match="simulated crash"):
        write_class_shard(str(tmp_path), "3", writer_table("3", 1, 1))
    monkeypatch.undo()
    # The new shard file exists (orphaned until gc), but the class still resolves to the old one.
    assert len([n for n in os.listdir(tmp_path / "class=3") if n.startswith("shard-")]) == 2
    assert list_class_shards(str(tmp_path), "3") == [old.uri]
    assert read_shards([old.uri], accepted_only=False).equals(writer_table("3", 0, 0))


def test_stale_temp_removed_by_next_write_fresh_temp_kept(tmp_path):
    folder = tmp_path / "class=3"
    folder.mkdir()
    stale, fresh = folder / ".tmp-killed.parquet", folder / ".tmp-live.parquet"
    stale.write_bytes(b"half a shard")
    fresh.write_bytes(b"a live writer's")
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    write_class_shard(str(tmp_path), "3", writer_table("3", 0, 0), stale_temp_after_s=3600)
    assert not stale.exists()
    assert fresh.exists()


def test_legacy_folder_without_manifest(tmp_path):
    info = write_class_shard(str(tmp_path), "3", writer_table("3", 0, 0))
    (tmp_path / "class=3" / MANIFEST_NAME).unlink()  # as the old code left it: exactly one shard
    assert list_class_shards(str(tmp_path), "3") == [info.uri]
    (tmp_path / "class=3" / "shard-0000000000000000.parquet").write_bytes(b"x")  # old crash: two shards
    with pytest.raises(ValueError, match="holds 2 shards and no manifest.json.*re-materialize"):
        list_class_shards(str(tmp_path), "3")


def test_bad_manifest_is_one_clear_error(tmp_path):
    write_class_shard(str(tmp_path), "3", writer_table("3", 0, 0))
    manifest = tmp_path / "class=3" / MANIFEST_NAME
    manifest.write_text("{not json")
    with pytest.raises(ValueError, match="manifest.json is not valid JSON"):
        current_class_shard(str(tmp_path), "3")
    manifest.write_text(json.dumps({"contract": shards.MANIFEST_CONTRACT, "shard": "shard-ffffffffffffffff.parquet"}))
    with pytest.raises(FileNotFoundError, match="names shard-ffffffffffffffff.parquet, which is missing"):
        current_class_shard(str(tmp_path), "3")
    manifest.write_text(json.dumps({"contract": shards.MANIFEST_CONTRACT, "shard": "../../etc/passwd"}))
    with pytest.raises(ValueError, match="is not a synthaug-shard-manifest/1 manifest"):
        current_class_shard(str(tmp_path), "3")


def test_gc_keeps_current_and_lineage_shards_removes_the_rest(tmp_path):
    output = str(tmp_path)
    base = f"{output}/synthetic_shards"
    used = write_class_shard(base, "3", writer_table("3", 0, 0))
    orphan = write_class_shard(base, "3", writer_table("3", 0, 1))
    current = write_class_shard(base, "3", writer_table("3", 0, 2))
    write_lineage(f"{output}/models/classifier_augmented/run1", {"shards": [{"uri": used.uri, "sha256": used.sha256}]})
    stale_tmp = tmp_path / "synthetic_shards" / "class=3" / ".tmp-old.parquet"
    stale_tmp.write_bytes(b"x")
    os.utime(stale_tmp, (time.time() - 7200, time.time() - 7200))

    # Everything just written is younger than the default hour: a writer may be about to commit it.
    assert gc_shards(output).removable == [str(stale_tmp)]
    dry = gc_shards(output, min_age_s=0)
    assert dry.removable == sorted([orphan.uri, str(stale_tmp)])
    assert os.path.exists(orphan.uri)  # dry run by default
    assert sorted(dry.kept) == sorted([used.uri, current.uri])

    done = gc_shards(output, delete=True, min_age_s=0)
    assert done.deleted and not os.path.exists(orphan.uri) and not stale_tmp.exists()
    assert list_class_shards(base, "3") == [current.uri]
    assert read_shards([used.uri], accepted_only=False).equals(writer_table("3", 0, 0))
    assert gc_shards(output, min_age_s=0).removable == []


def test_gc_never_empties_a_class_with_a_broken_manifest(tmp_path):
    base = f"{tmp_path}/synthetic_shards"
    a = write_class_shard(base, "3", writer_table("3", 0, 0))
    b = write_class_shard(base, "3", writer_table("3", 0, 1))
    (tmp_path / "synthetic_shards" / "class=3" / MANIFEST_NAME).write_text("{broken")
    report = gc_shards(str(tmp_path), delete=True, min_age_s=0)
    assert report.removable == [] and sorted(report.kept) == sorted([a.uri, b.uri])


def test_cli_gc_dry_run_then_delete(tmp_path, capsys):
    from synthaug_pipeline.cli import main

    base = f"{tmp_path}/synthetic_shards"
    old = write_class_shard(base, "3", writer_table("3", 0, 0))
    write_class_shard(base, "3", writer_table("3", 0, 1))
    settings = ["--profile", "digits", "--set", f"output.url={tmp_path}", "--set", "output.stale_temp_after_s=0.001"]
    time.sleep(0.01)  # older than the 1 ms age threshold
    assert main(["gc", *settings]) == 0
    assert f"unreferenced: {old.uri}" in capsys.readouterr().out and os.path.exists(old.uri)
    assert main(["gc", *settings, "--delete"]) == 0
    assert "1 shard files kept, 1 removed" in capsys.readouterr().out and not os.path.exists(old.uri)
