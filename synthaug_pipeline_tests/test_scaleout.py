"""Past one machine, for real: the instance on PostgreSQL, steps on two Celery workers (Redis), everything the
pipeline writes in an S3 bucket (SeaweedFS), the model's lineage in Dagster, a retried transient failure, and
one-line errors for unreachable services. The servers come from synthaug_pipeline_tests/services.py; without
them installed these tests skip with the install command (under CI they fail: `.ci/run` installs them)."""

from __future__ import annotations

import json
import os
import shutil

import dagster as dg
import pytest

from synthaug_pipeline.defs.executors import CELERY_BROKER_ENV, ExecutorUnavailableError, StagePool, check_executor_ready
from synthaug_pipeline.lib.config import load_profile
from synthaug_pipeline.lib.faults import FAIL_ONCE_ENV_VAR
from synthaug_pipeline.lib.lineage import read_lineage, verify_shards
from synthaug_pipeline.lib.shard_gc import gc_shards
from synthaug_pipeline.lib.shard_reading import file_sha256
from synthaug_pipeline.lib.shards import current_class_shard
from synthaug_pipeline.lib.storage import configure_output_storage, output_filesystem
from synthaug_pipeline.orchestration import run_pipeline
from synthaug_pipeline_tests.defs.test_pipeline import tiny_overrides
from synthaug_pipeline_tests.services import (
    REPO,
    S3_BUCKET,
    S3_SECRET,
    SEAWEEDFS_SERVERS,
    _wait,
    celery_workers,
    free_ports,
    postgres,
    redis,
    seaweedfs,
    stop,
)

PG_PASSWORD = "pg-secret-never-shown"
REDIS_PASSWORD = "redis-secret-never-shown"
SECRETS = (PG_PASSWORD, REDIS_PASSWORD, S3_SECRET)
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(s3_endpoint, tmp_path_factory):
    """PostgreSQL + Redis + two `synthaug worker` processes; yields (DAGSTER_HOME, worker nodes, environment)."""
    home = tmp_path_factory.mktemp("dagster_home")
    shutil.copyfile(REPO / "docker" / "dagster.yaml", home / "dagster.yaml")  # the deployment's instance config, as shipped
    with postgres(PG_PASSWORD) as pg, redis(REDIS_PASSWORD) as broker:
        env = {**pg.env(), CELERY_BROKER_ENV: broker, "DAGSTER_HOME": str(home)}
        saved = {key: os.environ.get(key) for key in (*env, FAIL_ONCE_ENV_VAR)}
        os.environ.update(env)
        marker = tmp_path_factory.mktemp("faults") / "storage_put.failed-once"
        # the workers' first shard write fails like a storage endpoint that drops mid-run; the step retry completes it
        worker_env = {**os.environ, FAIL_ONCE_ENV_VAR: f"storage_put:{marker}", "PYTHONPATH": str(REPO)}
        try:
            with celery_workers(["w1", "w2"], worker_env, home) as nodes:
                yield home, nodes, marker
        finally:
            for key, value in saved.items():
                os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)


def _overrides(output: str, endpoint: str) -> list[str]:
    return [
        *tiny_overrides(output),
        f"output.endpoint_url={endpoint}",
        "output.region=us-east-1",
        "execution.executor=celery",
        "execution.max_concurrent=2",
        "execution.step_retries=1",
        "execution.retry_delay_s=0",
    ]


@pytest.fixture(scope="module")
def distributed_run(cluster, s3_endpoint):
    home, nodes, marker = cluster
    output = f"s3://{S3_BUCKET}/scaleout"
    overrides = _overrides(output, s3_endpoint)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        lines: list[str] = []
        result = run_pipeline("digits", overrides, instance, echo=lines.append)
        yield instance, result, overrides, output, nodes, marker, lines


def _worker_of_steps(instance: dg.DagsterInstance, run_ids: list[str]) -> dict[str, set[str]]:
    """step key -> the Celery nodes that executed it, from the runs' engine events."""
    found: dict[str, set[str]] = {}
    for run_id in run_ids:
        for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
            event = record.dagster_event
            metadata = event.event_specific_data.metadata if event and event.event_specific_data else {}
            if "Celery worker" in metadata:
                found.setdefault(event.step_key, set()).add(metadata["Celery worker"].value)
    return found


def test_two_classes_through_postgres_celery_and_the_bucket(distributed_run):
    instance, result, overrides, _, nodes, marker, _ = distributed_run
    from dagster_postgres import PostgresRunStorage

    assert isinstance(instance.run_storage, PostgresRunStorage)
    assert result.evaluation is not None and result.failed_checks == []
    runs = instance.get_runs()
    assert {run.run_id for run in runs} >= set(result.run_ids)
    # every step of every run ran on a Celery worker, and both workers took steps
    by_step = _worker_of_steps(instance, result.run_ids)
    assert {"synthetic_images", "synthetic_shards", "generator", "classifier_augmented", "report"} <= set(by_step)
    assert set().union(*by_step.values()) == set(nodes)
    # shards, models and the report are in the bucket
    fs, root = output_filesystem(load_profile("digits", overrides))
    fs.invalidate_cache()
    assert fs.exists(f"{root}/report.json")
    assert fs.glob(f"{root}/models/classifier_augmented/*/lineage.json")
    # the injected transient storage failure happened once, and the retried step completed
    assert marker.exists()
    retried = [
        record.dagster_event.step_key
        for run_id in result.run_ids
        for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_UP_FOR_RETRY)
    ]
    assert retried == ["synthetic_shards"]
    # cost: every class's materialization and the report's sum
    cost = result.report["cost"]
    assert set(cost["per_class"]) == {"0", "1"} and cost["device"] == "CPU" and cost["points_per_device_hour"] is not None
    for class_id in ("0", "1"):
        (shard,) = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("synthetic_shards"), asset_partitions=[class_id]), limit=1
        ).records
        metadata = shard.asset_materialization.metadata
        # metadata floats are rounded to 4 significant digits (lib.metadata)
        assert metadata["cpu_seconds_per_image"].value == pytest.approx(cost["per_class"][class_id]["seconds_per_generated_image"], rel=1e-3)


def test_model_lineage_in_dagster_names_both_shards(distributed_run):
    instance, result, _, output, _, _, _ = distributed_run
    (record,) = instance.fetch_materializations(dg.AssetKey("classifier_augmented"), limit=1).records
    table = record.asset_materialization.metadata["shards"]
    assert isinstance(table, dg.TableMetadataValue)
    rows = {row.data["class_id"]: row.data for row in table.records}
    assert set(rows) == {"0", "1"}
    for class_id, row in rows.items():
        assert row["uri"] == current_class_shard(f"{output}/synthetic_shards", class_id)
        assert row["sha256"] == file_sha256(row["uri"]) and row["rows"] == 12
    # Dagster's own record: each shard partition's data version is its sha256, and the model's input data version covers both
    for class_id, row in rows.items():
        shard = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("synthetic_shards"), asset_partitions=[class_id]), limit=1
        ).records[0]
        assert shard.asset_materialization.tags["dagster/data_version"] == row["sha256"]
    assert "dagster/input_data_version/synthetic_shards" in record.asset_materialization.tags


def test_rematerialized_class_keeps_the_shard_a_model_references(distributed_run):
    instance, result, overrides, output, _, _, _ = distributed_run
    base = f"{output}/synthetic_shards"
    configure_output_storage(load_profile("digits", overrides).output)
    before = current_class_shard(base, "1")
    pool = StagePool(instance, 1)
    try:  # class 1's shard again, through the workers: a new run id, so a new content-addressed shard
        again = pool.execute("digits", overrides, ["synthetic_shards"], ["1"], {}, {"synthaug/stage": "test"})
    finally:
        pool.close()
    assert again.success
    after = current_class_shard(base, "1")
    assert after != before
    assert file_sha256(before)  # superseded, still there
    fs, _ = output_filesystem(load_profile("digits", overrides))
    model = json.loads(fs.cat_file(result.report["json"]))["models"]["augmented"]["url"]
    lineage = read_lineage(model)
    assert [status for _, status in verify_shards(lineage)] == ["ok", "ok"]
    report = gc_shards(output, min_age_s=0)  # a dry run: the old shard is kept because the model names it
    kept = {path.rsplit("/", 1)[-1] for path in report.kept}
    assert before.rsplit("/", 1)[-1] in kept and after.rsplit("/", 1)[-1] in kept
    assert report.removable == []


def test_no_secret_reaches_the_instance(distributed_run):
    """Passwords of PostgreSQL and Redis and the bucket's secret key: not in any run, tag, event or metadata."""
    from synthaug_pipeline_tests.services import connect

    connection = connect(int(os.environ["DAGSTER_PG_PORT"]), PG_PASSWORD, os.environ["DAGSTER_PG_DB"])
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            tables = [row[0] for row in cursor.fetchall()]
            assert {"runs", "event_logs", "run_tags"} <= set(tables)
            for table in tables:
                for secret in SECRETS:
                    cursor.execute(f'SELECT count(*) FROM "{table}" t WHERE t::text LIKE %s', (f"%{secret}%",))
                    assert cursor.fetchone()[0] == 0, f"{secret!r} stored in table {table}"
    finally:
        connection.close()


def test_preflight_errors_are_one_line(cluster):
    """Broker down, or no worker listening: one line each, before any run."""
    execution = load_profile("digits", ["execution.executor=celery"]).execution
    (closed,) = free_ports(1)
    saved = os.environ[CELERY_BROKER_ENV]
    try:
        os.environ[CELERY_BROKER_ENV] = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{closed}/0"
        with pytest.raises(ExecutorUnavailableError, match="does not answer") as down:
            check_executor_ready(execution, timeout_s=2)
        os.environ[CELERY_BROKER_ENV] = saved.rsplit("/", 1)[0] + "/5"  # a database no worker listens on
        with pytest.raises(ExecutorUnavailableError, match="no Celery worker answers") as idle:
            check_executor_ready(execution, timeout_s=2)
    finally:
        os.environ[CELERY_BROKER_ENV] = saved
    for caught in (down, idle):
        assert "\n" not in str(caught.value) and REDIS_PASSWORD not in str(caught.value)


@pytest.mark.parametrize("problem", ["unreachable", "password"])
def test_instance_storage_problems_are_one_line(cluster, problem, tmp_path, capsys, monkeypatch):
    from synthaug_pipeline.cli import main

    home, _, _ = cluster
    (tmp_path / "home").mkdir()
    shutil.copyfile(home / "dagster.yaml", tmp_path / "home" / "dagster.yaml")
    if problem == "unreachable":
        monkeypatch.setenv("DAGSTER_PG_PORT", str(free_ports(1)[0]))
    else:
        monkeypatch.setenv("DAGSTER_PG_PASSWORD", "wrong-password-123")
    code = main(["run", "--dagster-home", str(tmp_path / "home"), "--set", f"output.url={tmp_path / 'out'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 1 and "Dagster instance" in err[0] and "postgres at 127.0.0.1" in err[0]
    assert ("Connection refused" in err[0]) if problem == "unreachable" else ("password authentication failed" in err[0])
    assert PG_PASSWORD not in err[0] and "wrong-password-123" not in err[0]
    assert not (tmp_path / "out").exists()  # nothing written


def test_endpoint_down_between_shard_and_manifest_keeps_the_current_shard(tmp_path, monkeypatch):
    """The S3 server really stops mid-write (after the new shard's PUT, before the manifest's): the write fails with a
    one-line error naming the endpoint, and on a restarted server the class's current shard is still the old one."""
    from synthaug_pipeline.lib import shard_reading, shards
    from synthaug_pipeline_tests.lib.shard_writers import writer_table

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "outage")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "outage-secret-key")
    folder = tmp_path / "weed"
    folder.mkdir()

    def settings(endpoint: str):
        profile = load_profile("digits", [f"output.url=s3://outage/run", f"output.endpoint_url={endpoint}", "output.region=us-east-1"])
        configure_output_storage(profile.output)
        return f"{profile.output_url}/synthetic_shards"

    with seaweedfs(folder, "outage") as endpoint:
        base = settings(endpoint)
        old = shards.write_class_shard(base, "3", writer_table("3", 0, 0))
        real_failpoint = shards.failpoint

        def endpoint_goes_down(name: str) -> None:
            real_failpoint(name)
            if name == "shard_commit":
                stop(SEAWEEDFS_SERVERS[endpoint])  # gracefully: the same folder is served again below (see stop_seaweedfs)

        monkeypatch.setattr(shards, "failpoint", endpoint_goes_down)
        with pytest.raises(Exception) as caught:
            shards.write_class_shard(base, "3", writer_table("3", 1, 1))
        monkeypatch.setattr(shards, "failpoint", real_failpoint)
    message = str(caught.value)
    assert "\n" not in message.strip() and endpoint.split("//")[1] in message, message
    assert "outage-secret-key" not in message
    with seaweedfs(folder, "outage") as endpoint:  # the same data, a new server (new ports)
        base = settings(endpoint)
        # A restarted server answers S3 before its volume server has re-registered the old volumes with the master:
        # until then a GET of an old object is InternalError (seen under load). Wait for that warm-up, not for the shard
        # to appear: the bytes were acknowledged before the outage, so a read that never succeeds still fails the test.
        fs, _ = output_filesystem(load_profile("digits", [f"output.url={base}", f"output.endpoint_url={endpoint}", "output.region=us-east-1"]))

        def old_shard_served() -> bool:
            try:
                fs.invalidate_cache()
                fs.cat_file(old.uri)
            except OSError:
                return False
            return True

        _wait(old_shard_served, SEAWEEDFS_SERVERS[endpoint], "the restarted SeaweedFS serving its old volumes", folder / "weed.log")
        current = shards.current_class_shard(base, "3")
        assert current is not None and current.endswith(old.uri.rsplit("/", 1)[1])
        assert shards.list_class_shards(base, "3") == [current]
        assert shard_reading.read_shards([current], accepted_only=False).equals(writer_table("3", 0, 0))


def test_a_worker_sees_partitions_another_worker_committed(s3_endpoint):
    """Two processes sharing a bucket, each with its own S3 filesystem (and listing cache): a batch step in one must
    see the classes the other committed after it first listed them (a stale listing made a Celery step fail with
    KeyError on the third batch of 100 classes)."""
    import fsspec

    from synthaug_pipeline.defs.io_managers import stored_partitions
    from synthaug_pipeline.lib.records import write_value

    profile = load_profile("digits", [f"output.url=s3://{S3_BUCKET}/listing", f"output.endpoint_url={s3_endpoint}", "output.region=us-east-1"])
    worker_a, base = output_filesystem(profile)
    worker_b = fsspec.filesystem("s3", skip_instance_cache=True, **worker_a.storage_options)  # another process's instance
    folder = f"{base}/assets/synthetic_images"
    write_value(worker_a, f"{folder}/c1", {"n": 1})
    assert stored_partitions(worker_a, base, "synthetic_images") == {"c1"}  # worker A has listed the asset once
    write_value(worker_b, f"{folder}/c2", {"n": 2})
    assert stored_partitions(worker_a, base, "synthetic_images") == {"c1", "c2"}
