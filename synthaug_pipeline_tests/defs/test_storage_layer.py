"""The Dagster layer at scale: values at output.url (no pickles), batched class runs with one model load,
named jobs whose runs the UI can re-execute, and 1000-partition definitions."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import dagster as dg
import numpy as np
import pytest
from PIL import Image

from synthaug_pipeline.definitions import build_definitions
from synthaug_pipeline.defs.launch import CODE_LOCATION_MODULE
from synthaug_pipeline.lib.datasets import RealClass
from synthaug_pipeline.lib.model_store import PROCESS_STORE, ModelRef
from synthaug_pipeline.lib.records import read_value
from synthaug_pipeline.orchestration import run_pipeline
from synthaug_pipeline_tests.tiny_models import TINY_FOLDER_SETTINGS


def image_folder(root, classes: int, per_class: int = 6):
    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / f"c{c:03d}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(rng.normal(40 + 9 * c, 20, (8, 8)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, "L").save(folder / f"{i}.png")
    return root


def tiny(data, output, classes_per_run: int) -> list[str]:
    return [f"data.path={data}", *TINY_FOLDER_SETTINGS, f"execution.classes_per_run={classes_per_run}", f"output.url={output}"]


@pytest.fixture(scope="module")
def batched_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("batched")
    data, output = image_folder(root / "data", classes=20), root / "output"
    PROCESS_STORE.clear()
    (root / "home").mkdir()
    with dg.instance_for_test(temp_dir=str(root / "home")) as instance:
        lines: list[str] = []
        result = run_pipeline("folder", tiny(data, output, 20), instance, echo=lines.append)
        yield instance, result, lines, output, dict(PROCESS_STORE.loads)


def test_a_batched_run_of_20_classes_loads_each_model_once_and_records_each_class(batched_run):
    instance, result, lines, output, loads = batched_run
    assert loads == {"generator": 1, "judge": 1, "classifier_baseline": 1, "classifier_augmented": 1}
    for asset in ("real_images", "synthetic_images", "synthetic_shards"):
        records = instance.fetch_materializations(dg.AssetKey(asset), limit=100).records
        assert sorted(r.partition_key for r in records) == [f"c{c:03d}" for c in range(20)]
        assert len({r.run_id for r in records}) == 1  # one run for the 20 classes
    record = instance.fetch_materializations(dg.AssetKey("synthetic_images"), limit=100).records[0]
    assert record.asset_materialization.metadata["images"].value == 3  # each class its own metadata
    assert any("classes c000..c019 (20)" in line for line in lines)
    assert result.evaluation is not None


def test_every_run_is_a_run_of_a_named_job_the_ui_can_find(batched_run):
    instance, result, *_ = batched_run
    runs = [instance.get_run_by_id(run_id) for run_id in result.run_ids]
    assert {run.job_name for run in runs} == {
        "synthaug_catalog", "synthaug_real_images", "synthaug_models", "synthaug_synthetic", "synthaug_classifiers"
    }
    for run in runs:
        origin = run.remote_job_origin
        assert origin is not None and origin.job_name == run.job_name
        assert origin.repository_origin.code_location_origin.location_name == CODE_LOCATION_MODULE
        assert run.run_config["resources"]["settings"]["config"]["profile"] == "folder"


def test_values_live_at_the_output_url_as_arrays_and_json_not_in_dagster_home(batched_run):
    instance, _, _, output, _ = batched_run
    stored = {p.relative_to(output).as_posix() for p in (output / "assets").rglob("*") if p.is_file()}
    assert not [p for p in stored if not (p.endswith("/value.json") or "/arrays-" in p)]
    real = read_value(*_local(output / "assets" / "real_images" / "c007"))
    assert isinstance(real, RealClass) and real.class_id == "c007" and real.train.dtype == np.uint8
    assert isinstance(read_value(*_local(output / "assets" / "generator" / "_")), ModelRef)
    leftovers = [p for p in os.listdir(instance.storage_directory()) if not os.path.isdir(os.path.join(instance.storage_directory(), p, "compute_logs"))]
    assert leftovers == []  # only Dagster's own compute logs


def _local(path):
    import fsspec

    return fsspec.filesystem("file"), str(path)


def test_definitions_with_1000_class_partitions_load(tmp_path):
    for c in range(1000):
        (tmp_path / "data" / f"c{c:04d}").mkdir(parents=True)
    defs = build_definitions("folder", [f"data.path={tmp_path / 'data'}", f"output.url={tmp_path / 'out'}"])
    job = defs.resolve_job_def("synthaug_synthetic")
    assert len(job.partitions_def.get_partition_keys()) == 1000
    policy = next(a for a in defs.assets if dg.AssetKey("synthetic_images") in a.keys).backfill_policy
    assert policy.max_partitions_per_run == 20


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_cli_run_is_re_executed_from_the_ui(tmp_path, monkeypatch):
    """The webserver's GraphQL API (what the UI's Re-execute button calls) launches a re-execution of a
    `synthaug run` stage run; the launched run is a run of the same job with the same settings."""
    from synthaug_pipeline.orchestration import prepare_dagster_home

    monkeypatch.chdir(tmp_path)
    home = prepare_dagster_home(str(tmp_path / "home"))
    data, output = image_folder(tmp_path / "data", classes=2), tmp_path / "output"
    overrides = tiny(data, output, 20)
    with dg.DagsterInstance.get() as instance:
        from synthaug_pipeline.defs.launch import execute_named_job

        defs = build_definitions("folder", overrides)
        settings = defs.resources["settings"]
        run_config = {"resources": {"settings": {"config": {"profile": "folder", "overrides": list(settings.overrides)}}}}
        parent = execute_named_job(defs, "synthaug_catalog", instance, asset_selection=["class_catalog"], run_config=run_config, tags={})
        assert parent.success
    port = _free_port()
    env = {**os.environ, "DAGSTER_HOME": str(home), "SYNTHAUG_PROFILE": "digits", "SYNTHAUG_SET": ""}
    server = subprocess.Popen(
        [sys.executable, "-m", "dagster_webserver", "-m", CODE_LOCATION_MODULE, "-h", "127.0.0.1", "-p", str(port)],
        env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        query = """mutation($p: ReexecutionParams) { launchPipelineReexecution(reexecutionParams: $p) {
            __typename ... on LaunchRunSuccess { run { runId pipelineName parentRunId runConfigYaml } }
            ... on PythonError { message } ... on PipelineNotFoundError { message } } }"""
        body = json.dumps({"query": query, "variables": {"p": {"parentRunId": parent.run_id, "strategy": "ALL_STEPS"}}}).encode()
        deadline, answer = time.time() + 120, None
        while time.time() < deadline and answer is None:
            try:
                request = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", body, {"Content-Type": "application/json"})
                answer = json.loads(urllib.request.urlopen(request, timeout=30).read())
            except OSError:
                time.sleep(1)
        assert answer is not None, "the webserver did not answer within 120 s"
        launched = answer["data"]["launchPipelineReexecution"]
        assert launched["__typename"] == "LaunchRunSuccess", launched
        assert launched["run"]["pipelineName"] == "synthaug_catalog" and launched["run"]["parentRunId"] == parent.run_id
        assert "profile: folder" in launched["run"]["runConfigYaml"]
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_the_io_manager_stores_at_a_memory_url_and_reads_lazily(tmp_path):
    """Through Dagster with output.url=memory://: values round-trip, and a fan-in reader gets a lazy mapping."""
    import fsspec

    from synthaug_pipeline.defs.io_managers import Partitions

    output = "memory://synthaug-io-test/out"
    defs = build_definitions("digits", ["data.classes=['0', '1', '2']", f"output.url={output}"])
    with dg.instance_for_test() as instance:
        assets = list(defs.assets)
        assert dg.materialize(assets, selection=["class_catalog"], instance=instance, resources=dict(defs.resources)).success
        tags = {"dagster/asset_partition_range_start": "0", "dagster/asset_partition_range_end": "2"}
        assert dg.materialize(assets, selection=["real_images"], instance=instance, resources=dict(defs.resources), tags=tags).success
        value = defs.load_asset_value("real_images", instance=instance, partition_key="1")
    assert isinstance(value, Partitions) and list(value) == ["1"] and repr(value) == "Partitions(real_images, 1 partitions)"
    real = value["1"]
    assert isinstance(real, RealClass) and real.class_index == 1 and len(real.train) > 0
    fs = fsspec.filesystem("memory")
    assert fs.exists("/synthaug-io-test/out/assets/real_images/2/value.json")
    assert not [p for p in fs.find("/synthaug-io-test/out/assets") if p.endswith((".pkl", ".pickle"))]


def test_the_catalog_lists_a_folder_and_real_images_decodes_only_its_batch(tmp_path, monkeypatch):
    """A folder dataset: class_catalog decodes no image, a real_images step of 2 of 5 classes decodes only those 2,
    and a file that cannot be decoded is counted in its class's real_images metadata."""
    from synthaug_pipeline.defs import resources

    data = image_folder(tmp_path / "data", classes=5)
    (data / "c003" / "broken.png").write_bytes(b"not an image")
    decoded = []
    real_decode = __import__("synthaug_pipeline.lib.images", fromlist=["decode_image"]).decode_image
    monkeypatch.setattr("synthaug_pipeline.lib.images.decode_image", lambda data, channels: decoded.append(1) or real_decode(data, channels))
    resources._dataset.cache_clear()
    defs = build_definitions("folder", tiny(data, tmp_path / "output", 2))
    with dg.instance_for_test() as instance:
        assets, res = list(defs.assets), dict(defs.resources)
        assert dg.materialize(assets, selection=["class_catalog"], instance=instance, resources=res).success
        assert decoded == []  # listed, not decoded
        catalog = defs.load_asset_value("class_catalog", instance=instance)
        assert [c["train"] + c["validation"] + c["test"] for c in catalog["classes"]] == [6, 6, 6, 7, 6]  # the plan lists broken.png
        tags = {"dagster/asset_partition_range_start": "c002", "dagster/asset_partition_range_end": "c003"}
        assert dg.materialize(assets, selection=["real_images"], instance=instance, resources=res, tags=tags).success
        assert len(decoded) == 13  # 6 + 7 files of the two classes, none of the other three
        metadata = {
            r.partition_key: r.asset_materialization.metadata
            for r in instance.fetch_materializations(dg.AssetKey("real_images"), limit=10).records
        }
        real = defs.load_asset_value("real_images", instance=instance, partition_key="c003")["c003"]
    assert sorted(metadata) == ["c002", "c003"]
    assert metadata["c003"]["skipped_files"].value == {"not_an_image": 1} and metadata["c002"]["skipped_files"].value == {}
    assert len(real.train) + len(real.validation if real.validation is not None else []) + len(real.test) == 6
    resources._dataset.cache_clear()
