import contextlib

import dagster as dg
import pytest

from synthaug_pipeline.defs.instance_queries import PAGE_SIZE, latest_materializations
from synthaug_pipeline.defs.resources import latest_materialization

CLASSES = [f"n{i:08d}" for i in range(1000)]  # ImageNet-like class ids


@contextlib.contextmanager
def counting_queries(instance: dg.DagsterInstance):
    """Counts the event log's database connections: one per query it runs."""
    storage = instance.event_log_storage
    opened = storage.index_connection
    count = [0]

    @contextlib.contextmanager
    def counted():
        count[0] += 1
        with opened() as conn:
            yield conn

    storage.index_connection = counted
    try:
        yield count
    finally:
        del storage.index_connection


@pytest.fixture(scope="module")
def thousand_classes():
    instance = dg.DagsterInstance.ephemeral()
    for round_ in range(2):  # every class twice: the second is the latest
        for class_id in CLASSES:
            instance.report_runless_asset_event(dg.AssetMaterialization("synthetic_scores", partition=class_id, metadata={"round": round_}))
    instance.report_runless_asset_event(dg.AssetMaterialization("real_images", partition=CLASSES[0]))
    yield instance
    instance.dispose()


def test_a_thousand_partitions_take_a_few_queries_not_a_thousand(thousand_classes):
    with counting_queries(thousand_classes) as batched:
        found = latest_materializations(thousand_classes, "synthetic_scores", CLASSES)
    # the latest ids, then the records by id in pages; each Dagster call reads the asset's details first
    assert batched[0] <= 2 * (1 + -(-len(CLASSES) // PAGE_SIZE)) == 6
    assert list(found) == CLASSES  # in the order asked
    assert all(record.asset_materialization.metadata["round"].value == 1 for record in found.values())
    assert all(record.partition_key == class_id for class_id, record in found.items())

    with counting_queries(thousand_classes) as one_by_one:  # what the per-class lookups cost
        for class_id in CLASSES[:100]:
            latest_materialization(thousand_classes, "synthetic_scores", class_id)
    assert one_by_one[0] >= 100


def test_same_records_as_one_lookup_per_partition(thousand_classes):
    some = CLASSES[::97]
    found = latest_materializations(thousand_classes, "synthetic_scores", some)
    assert {c: r.storage_id for c, r in found.items()} == {
        c: latest_materialization(thousand_classes, "synthetic_scores", c).storage_id for c in some
    }


def test_missing_partitions_are_absent_and_none_means_every_partition(thousand_classes):
    assert list(latest_materializations(thousand_classes, "real_images", CLASSES)) == [CLASSES[0]]
    assert list(latest_materializations(thousand_classes, "real_images", ["nope", CLASSES[0], CLASSES[0]])) == [CLASSES[0]]
    assert latest_materializations(thousand_classes, "real_images", []) == {}
    assert latest_materializations(thousand_classes, "never_materialized", CLASSES) == {}
    assert sorted(latest_materializations(thousand_classes, "synthetic_scores")) == sorted(CLASSES)


def test_on_a_local_instance_with_real_runs(tmp_path):
    partitions = dg.StaticPartitionsDefinition(["a", "b", "c"])

    @dg.asset(partitions_def=partitions)
    def tiny(context: dg.AssetExecutionContext) -> int:
        context.add_output_metadata({"run_id": context.run_id})
        return 1

    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        runs = {}
        for partition in ("a", "b", "b"):
            result = dg.materialize([tiny], partition_key=partition, instance=instance)
            runs[partition] = result.run_id
        with counting_queries(instance) as queries:
            found = latest_materializations(instance, "tiny", ["a", "b", "c"])
        assert queries[0] <= 4
        assert {p: r.run_id for p, r in found.items()} == runs  # b: its second run
        assert found["b"].asset_materialization.metadata["run_id"].value == runs["b"]


def test_regeneration_schedule_reads_every_class_in_a_few_queries(thousand_classes):
    from synthaug_pipeline.defs.generation.schedules import latest_class_qualities

    with counting_queries(thousand_classes) as queries:
        qualities, never_scored = latest_class_qualities(thousand_classes, CLASSES + ["never"], "mean_judge_confidence")
    assert queries[0] <= 6
    assert [q.class_id for q in qualities] == CLASSES and never_scored == ["never"]
    assert all(q.metric_value is None and q.regeneration_round == 0 for q in qualities)


def test_training_lineage_reads_every_class_in_a_few_queries_per_asset(thousand_classes):
    from types import SimpleNamespace

    from synthaug_pipeline.defs.training.assets import upstream_materializations

    context = SimpleNamespace(instance=thousand_classes)  # all it reads of the asset context
    with counting_queries(thousand_classes) as queries:
        found = upstream_materializations(context, CLASSES, ("real_images", "synthetic_scores"))
    assert queries[0] <= 2 + 2 * 6  # class_catalog, then each per-class asset
    assert found["class_catalog"] is None
    assert [c for c, m in found["real_images"].items() if m is not None] == [CLASSES[0]]
    assert list(found["synthetic_scores"]) == CLASSES
    latest = found["synthetic_scores"][CLASSES[-1]]
    assert latest["storage_id"] == latest_materialization(thousand_classes, "synthetic_scores", CLASSES[-1]).storage_id
