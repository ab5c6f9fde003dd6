"""Model lineage: which shards (by URI and content hash) and settings fed each trained classifier.

Every classifier directory holds ``lineage.json`` beside its weights, so lineage survives without
the Dagster instance and works on any fsspec URL:

    write_lineage(model_url, record)              # at training time
    read_lineage(model_url)                       # `synthaug lineage MODEL`
    models_using_shard(output_url, shard_uri)     # `synthaug lineage --shard URI`
"""

from __future__ import annotations

import json

import fsspec

from synthaug_pipeline.lib.redaction import redact_url, redact_urls

LINEAGE_FILE = "lineage.json"


def write_lineage(model_url: str, record: dict) -> str:
    """Write ``<model_url>/lineage.json``; returns its URI."""
    fs, root = fsspec.core.url_to_fs(model_url)
    fs.makedirs(root, exist_ok=True)
    uri = f"{root.rstrip('/')}/{LINEAGE_FILE}"
    fs.pipe_file(uri, json.dumps(redact_urls(record), indent=2, sort_keys=True).encode())
    return uri


def read_lineage(model_url: str) -> dict:
    """The lineage record of the model at ``model_url`` (a model folder)."""
    fs, root = fsspec.core.url_to_fs(model_url)
    uri = f"{root.rstrip('/')}/{LINEAGE_FILE}"
    if not fs.exists(uri):
        raise FileNotFoundError(f"no {LINEAGE_FILE} in {model_url!r}: pass a model folder written by the pipeline (…/models/<name>/<run>)")
    return _parse(uri, fs.cat_file(uri))


class LineageError(ValueError):
    """A lineage.json that cannot be read; the message names the file."""


def _parse(uri: str, data: bytes) -> dict:
    try:
        record = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LineageError(f"{redact_url(uri)} is not a valid lineage record ({exc}); restore it or re-train the model") from None
    if not isinstance(record, dict) or not isinstance(record.get("shards", []), list):
        raise LineageError(f"{redact_url(uri)} is not a lineage record (expected a JSON object with a 'shards' list)")
    return record


def verify_shards(record: dict) -> list[tuple[str, str]]:
    """``(uri, status)`` for every shard a model trained on: ``ok``, ``missing`` or ``changed`` (its bytes no longer
    hash to the recorded sha256: the model's lineage no longer describes what is there)."""
    from synthaug_pipeline.lib.shard_reading import file_sha256

    results = []
    for shard in record.get("shards", []):
        uri = shard.get("uri", "")
        try:
            status = "ok" if file_sha256(uri) == shard.get("sha256") else "changed"
        except FileNotFoundError:
            status = "missing"
        results.append((uri, status))
    return results


def _same_uri(a: str, b: str) -> bool:
    # local URIs are written with or without the scheme; recorded URIs carry no credentials
    strip = lambda u: redact_url(u.removeprefix("file://")).rstrip("/")  # noqa: E731
    return strip(a) == strip(b)


def lineage_records(output_url: str) -> list[tuple[str, dict]]:
    """``(path, record)`` of every model's lineage under ``<output_url>/models``, sorted by path."""
    fs, root = fsspec.core.url_to_fs(output_url)
    pattern = f"{root.rstrip('/')}/models/*/*/{LINEAGE_FILE}"
    return [(path, _parse(path, fs.cat_file(path))) for path in sorted(fs.glob(pattern))]


def models_using_shard(output_url: str, shard_uri: str) -> list[dict]:
    """Every model under ``<output_url>/models`` whose lineage lists ``shard_uri``, oldest first."""
    found = []
    for path, record in lineage_records(output_url):
        for shard in record.get("shards", []):
            if _same_uri(shard["uri"], shard_uri):
                found.append(
                    {
                        "model": path.rsplit("/", 1)[0],
                        "name": record.get("name"),
                        "version": record.get("version"),
                        "shard_sha256": shard["sha256"],
                    }
                )
                break
    return found


def _materialization_text(entry: dict | None) -> str:
    if not entry:
        return "none recorded"
    return f"storage id {entry.get('storage_id')}, run {entry.get('run_id')}"


def describe_lineage(record: dict) -> list[str]:
    """The lines `synthaug lineage MODEL` prints: the settings that fed the model and what it read.

    Regime, seed, ratio, aux BN, optimizer, learning rate, steps, filter and generator versions, the
    shards, and the upstream materializations (storage id and run of class_catalog and of each class's
    real_images / synthetic_shards). Fields an older record lacks print as "?".
    """
    training = record.get("training") or {}
    real = record.get("real") or {}
    experiment = record.get("experiment") or {}
    shards = record.get("shards") or []
    filters = record.get("filter_versions") or sorted({s["filter_version"] for s in shards if "filter_version" in s})
    generators = record.get("generator_versions") or sorted({s["generator_version"] for s in shards if "generator_version" in s})
    aux_bn = record.get("aux_bn", training.get("aux_bn", "?"))
    lines = [
        f"model: {record.get('name')} version {record.get('version')}, run {record.get('run_id')}",
        f"real data: {real.get('dataset')} ({real.get('source')}), {real.get('images')} images, regime {real.get('regime') or experiment.get('regime') or 'full'}",
    ]
    if experiment:
        lines.append(f"experiment: {experiment.get('key')} (group {experiment.get('group')})")
    lines += [
        f"seed: {training.get('seed', '?')}",
        f"synthetic ratio: {record.get('synthetic_ratio', training.get('synthetic_ratio', 0))}",
        f"aux BN: {aux_bn}",
        f"training: {training.get('model', '?')}, optimizer {training.get('optimizer', '?')}, learning rate {training.get('learning_rate', '?')}, "
        f"{training.get('steps', '?')} steps, batch size {training.get('batch_size', '?')}, weight decay {training.get('weight_decay', '?')}",
        f"filter versions: {', '.join(filters) or 'none'}",
        f"generator versions: {', '.join(generators) or 'none'}",
        f"shards: {len(shards)}",
    ]
    for shard in shards:
        lines.append(
            f"  {shard['uri']}  sha256 {shard['sha256'][:16]}  accepted {shard.get('num_accepted', '?')}"
            + (f"  used {shard['images_used']}" if "images_used" in shard else "")
            + f"  filter {shard.get('filter_version', '?')}  generator {shard.get('generator_version', '?')}  run {shard.get('run_id', '?')}"
        )
    upstream = record.get("upstream")
    if upstream is None:
        lines.append("upstream materializations: not recorded (a model trained before they were)")
    else:
        lines.append("upstream materializations:")
        lines.append(f"  class_catalog: {_materialization_text(upstream.get('class_catalog'))}")
        for asset, partitions in upstream.items():
            if asset == "class_catalog":
                continue
            for partition, entry in (partitions or {}).items():
                lines.append(f"  {asset}[{partition}]: {_materialization_text(entry)}")
    return lines
