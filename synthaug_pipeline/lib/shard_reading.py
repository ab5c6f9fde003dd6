"""Reading shards back: their rows (:func:`read_shards`, :func:`read_verified_shards`), a file's sha256, decoded images.

A class's current shard is found through its manifest
(:func:`~synthaug_pipeline.lib.shards.current_class_shard`); its rows follow
:data:`~synthaug_pipeline.lib.shard_schema.SHARD_SCHEMA`, and :func:`read_shards`
refuses files of any other contract with a message saying to re-materialize
``synthetic_shards``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from synthaug_pipeline.lib.redaction import redact_url
from synthaug_pipeline.lib.shard_schema import CONTRACT_METADATA_KEY, SHARD_CONTRACT, SHARD_SCHEMA
from synthaug_pipeline.lib.shards import ShardRef


def read_shards(uris: Sequence[str], accepted_only: bool = True, columns: Sequence[str] | None = None) -> pa.Table:
    """Read and concatenate shards.

    With ``accepted_only`` (the default) only rows with ``accepted == True`` are
    returned. ``columns`` selects columns (in that order); the ``accepted``
    column is read for filtering even when not selected. No URIs gives an
    empty table with the shard schema.

    Raises ``FileNotFoundError`` naming a missing URI, and ``ValueError`` for
    unknown column names or a file that is not a :data:`SHARD_CONTRACT`
    (``synthaug-shard/3``) shard, e.g. one written before ``filter_policy``
    existed (the message says so; re-materialize its ``synthetic_shards``).
    """
    if isinstance(uris, str):
        uris = [uris]
    selected = list(columns) if columns is not None else list(SHARD_SCHEMA.names)
    unknown = [name for name in selected if name not in SHARD_SCHEMA.names]
    if unknown:
        raise ValueError(f"unknown shard columns: {', '.join(unknown)}")
    to_read = selected + (["accepted"] if accepted_only and "accepted" not in selected else [])

    tables = []
    for uri in uris:
        fs, path = fsspec.core.url_to_fs(uri)
        if not fs.isfile(path):
            raise FileNotFoundError(f"shard not found: {uri}")
        with fs.open(path, "rb") as handle:
            # Contract first (footer only): an older shard lacks columns, and reading them would fail less clearly.
            contract = (pq.read_schema(handle).metadata or {}).get(CONTRACT_METADATA_KEY, b"").decode()
            if contract != SHARD_CONTRACT:
                older = contract.startswith("synthaug-shard/")
                hint = "; re-materialize its synthetic_shards partition (scores are cached)" if older else ""
                raise ValueError(f"{uri} is not a {SHARD_CONTRACT} shard (contract metadata: {contract or 'none'}){hint}")
            handle.seek(0)
            table = pq.read_table(handle, columns=to_read)
        if accepted_only:
            table = table.filter(pc.fill_null(table["accepted"], False))
        tables.append(table.select(selected))

    if not tables:
        empty_schema = pa.schema([SHARD_SCHEMA.field(name) for name in selected], metadata=SHARD_SCHEMA.metadata)
        return empty_schema.empty_table()
    return pa.concat_tables(tables)


def file_sha256(uri: str) -> str:
    """Hex sha256 of the bytes at ``uri`` (streamed, so large files are fine)."""
    fs, path = fsspec.core.url_to_fs(uri)
    if not fs.isfile(path):
        raise FileNotFoundError(f"file not found: {uri}")
    digest = hashlib.sha256()
    with fs.open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def decode_shard_images(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Decode a shard table's images to uint8 ``[N, H, W, C]`` plus ``class_index`` labels (int64).

    Every row must have the same ``height``, ``width`` and ``channels`` (else
    ``ValueError`` listing the shapes found), and each decoded image must match
    its row's recorded shape. An empty table gives images shaped
    ``(0, 0, 0, 0)`` and empty labels.
    """
    # Imported here: images.py imports torch, which readers of shard metadata
    # (listing, hashing, filtering) should not have to load.
    from synthaug_pipeline.lib.images import decode_image

    needed = ["image", "height", "width", "channels", "class_index"]
    absent = [name for name in needed if name not in table.column_names]
    if absent:
        raise ValueError(f"table lacks columns needed to decode images: {', '.join(absent)}")
    labels = np.asarray(table["class_index"].to_numpy(zero_copy_only=False), dtype=np.int64)
    if table.num_rows == 0:
        return np.zeros((0, 0, 0, 0), dtype=np.uint8), labels

    shapes = pa.table({k: table[k] for k in ("height", "width", "channels")}).group_by(["height", "width", "channels"]).aggregate([])
    if shapes.num_rows != 1:
        found = sorted(tuple(row.values()) for row in shapes.to_pylist())
        raise ValueError(f"shard rows have different image shapes (height, width, channels): {found}")
    height, width, channels = (int(shapes[k][0].as_py()) for k in ("height", "width", "channels"))

    images = np.empty((table.num_rows, height, width, channels), dtype=np.uint8)
    # Decoding is per image by nature (each row is its own PNG/WebP/JPEG).
    for i, data in enumerate(table["image"].to_pylist()):
        decoded = decode_image(data, channels)
        if decoded.shape != (height, width, channels):
            raise ValueError(f"row {i}: decoded image has shape {decoded.shape}, row says {(height, width, channels)}")
        images[i] = decoded
    return images, labels


def read_verified_shards(refs: Sequence[ShardRef], accepted_only: bool = True) -> pa.Table:
    """The rows of ``refs``' shards, after checking each file is the exact bytes its scoring run wrote.

    Raises ``ValueError`` naming the class when a shard's sha256 changed (re-materialize its
    ``synthetic_shards`` partition) and ``FileNotFoundError`` when one is gone.
    """
    for ref in refs:
        if file_sha256(ref.uri) != ref.sha256:
            raise ValueError(
                f"shard {redact_url(ref.uri)} changed since it was written (sha256 mismatch): "
                f"re-materialize synthetic_shards[{ref.class_id}]"
            )
    return read_shards([ref.uri for ref in refs], accepted_only=accepted_only)
