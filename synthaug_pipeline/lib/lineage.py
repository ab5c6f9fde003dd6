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

LINEAGE_FILE = "lineage.json"


def write_lineage(model_url: str, record: dict) -> str:
    """Write ``<model_url>/lineage.json``; returns its URI."""
    fs, root = fsspec.core.url_to_fs(model_url)
    fs.makedirs(root, exist_ok=True)
    uri = f"{root.rstrip('/')}/{LINEAGE_FILE}"
    fs.pipe_file(uri, json.dumps(record, indent=2, sort_keys=True).encode())
    return uri


def read_lineage(model_url: str) -> dict:
    """The lineage record of the model at ``model_url`` (a model folder)."""
    fs, root = fsspec.core.url_to_fs(model_url)
    uri = f"{root.rstrip('/')}/{LINEAGE_FILE}"
    if not fs.exists(uri):
        raise FileNotFoundError(f"no {LINEAGE_FILE} in {model_url!r}: pass a model folder written by the pipeline (…/models/<name>/<run>)")
    return json.loads(fs.cat_file(uri))


def _same_uri(a: str, b: str) -> bool:
    strip = lambda u: u.removeprefix("file://").rstrip("/")  # noqa: E731 - local URIs are written with or without the scheme
    return strip(a) == strip(b)


def models_using_shard(output_url: str, shard_uri: str) -> list[dict]:
    """Every model under ``<output_url>/models`` whose lineage lists ``shard_uri``, oldest first."""
    fs, root = fsspec.core.url_to_fs(output_url)
    pattern = f"{root.rstrip('/')}/models/*/*/{LINEAGE_FILE}"
    found = []
    for path in sorted(fs.glob(pattern)):
        record = json.loads(fs.cat_file(path))
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
