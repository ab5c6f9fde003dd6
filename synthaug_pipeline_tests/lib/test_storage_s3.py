"""output.url on a real S3 server (SeaweedFS, the conftest `s3_endpoint` fixture): preflight, shards, racing writers."""

from __future__ import annotations

import multiprocessing
import threading

import pytest

from synthaug_pipeline.lib.config import load_profile
from synthaug_pipeline.lib.shard_reading import file_sha256, read_shards
from synthaug_pipeline.lib.shards import list_class_shards, write_class_shard
from synthaug_pipeline.lib.storage import OutputNotWritableError, check_output_writable, configure_output_storage, output_filesystem
from synthaug_pipeline_tests.lib.shard_writers import race_writer, writer_table
from synthaug_pipeline_tests.lib.test_shard_concurrency import ROUNDS, race
from synthaug_pipeline_tests.services import S3_BUCKET as BUCKET
from synthaug_pipeline_tests.services import S3_SECRET as SECRET
from synthaug_pipeline_tests.services import free_ports


def _profile(url: str, endpoint: str, *extra: str):
    return load_profile("digits", [f"output.url={url}", f"output.endpoint_url={endpoint}", "output.region=us-east-1", *extra])


def test_preflight_passes_on_an_existing_bucket_and_leaves_nothing(s3_endpoint):
    profile = _profile(f"s3://{BUCKET}/preflight", s3_endpoint)
    check_output_writable(profile)
    fs, root = output_filesystem(profile)
    fs.invalidate_cache()
    assert [path for path in fs.find(root) if "write-probe" in path] == []  # the probe object was deleted


def test_preflight_missing_bucket_is_one_line(s3_endpoint):
    with pytest.raises(OutputNotWritableError) as caught:
        check_output_writable(_profile("s3://no-such-bucket/x", s3_endpoint))
    message = str(caught.value)
    assert "bucket 'no-such-bucket' does not exist" in message and "s3://no-such-bucket/x" in message
    assert "\n" not in message and SECRET not in message


def test_preflight_wrong_credentials_is_one_line(s3_endpoint, monkeypatch):
    import s3fs

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "a-wrong-secret-key")
    s3fs.S3FileSystem.clear_instance_cache()  # a cached filesystem would still hold the right key
    with pytest.raises(OutputNotWritableError) as caught:
        check_output_writable(_profile(f"s3://{BUCKET}/x", s3_endpoint, "output.retries=0"))
    message = str(caught.value)
    assert "access denied" in message and "AWS_ACCESS_KEY_ID" in message
    assert "\n" not in message and "a-wrong-secret-key" not in message and SECRET not in message


def test_preflight_unreachable_endpoint_fails_within_the_timeout(s3_endpoint):
    (closed_port,) = free_ports(1)  # nothing listens there
    profile = _profile(f"s3://{BUCKET}/x", f"http://127.0.0.1:{closed_port}", "output.connect_timeout_s=2", "output.retries=1")
    outcome: dict = {}

    def probe():
        try:
            check_output_writable(profile)
        except OutputNotWritableError as exc:
            outcome["error"] = str(exc)

    worker = threading.Thread(target=probe, daemon=True)
    worker.start()
    worker.join(timeout=120)  # a hang guard, not a speed check: a hang would never return
    assert not worker.is_alive(), "preflight hung on an endpoint with nothing listening"
    assert f"cannot reach the storage endpoint http://127.0.0.1:{closed_port}" in outcome["error"]
    assert "\n" not in outcome["error"] and SECRET not in outcome["error"]


def test_shard_round_trip_through_s3(s3_endpoint):
    profile = _profile(f"s3://{BUCKET}/roundtrip", s3_endpoint)
    configure_output_storage(profile.output)
    base = f"{profile.output_url}/synthetic_shards"
    first = write_class_shard(base, "n01", writer_table("n01", 0, 0))
    second = write_class_shard(base, "n01", writer_table("n01", 1, 1))
    assert second.uri.startswith(f"s3://{BUCKET}/roundtrip/synthetic_shards/class=n01/shard-")
    assert list_class_shards(base, "n01") == [second.uri]
    assert read_shards(list_class_shards(base, "n01"), accepted_only=False).equals(writer_table("n01", 1, 1))
    assert file_sha256(first.uri) == first.sha256  # superseded, still readable for lineage


def test_two_writer_processes_s3_never_empty_never_double(s3_endpoint):
    profile = _profile(f"s3://{BUCKET}/race", s3_endpoint)
    configure_output_storage(profile.output)
    base = f"{profile.output_url}/synthetic_shards"
    settings = profile.output.model_dump()
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(3)

    def start():
        procs = [ctx.Process(target=race_writer, args=(base, "7", w, ROUNDS, barrier, settings)) for w in range(2)]
        for p in procs:
            p.start()
        return procs

    race(base, "7", start, barrier)
