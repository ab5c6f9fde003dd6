"""Typed records between assets, and how they are stored at ``output.url`` (arrays + JSON, never pickles).

Assets exchange small dataclasses defined next to the code that produces them (``RealClass`` in
:mod:`~synthaug_pipeline.lib.datasets`, ``SyntheticClass`` in :mod:`~synthaug_pipeline.lib.diffusion`,
``ScoredClass`` and ``ClassScores`` in :mod:`~synthaug_pipeline.lib.scoring`, ``ShardRef`` in
:mod:`~synthaug_pipeline.lib.shards`, ``ModelRef`` in :mod:`~synthaug_pipeline.lib.model_store`), each
registered here with :func:`record` under a stable name and a version.

:func:`encode` turns a value (records, dicts with string keys, lists, numbers, strings, numpy arrays,
datetimes) into one JSON document plus a set of named numpy arrays; :func:`decode` reverses it. Only
registered record types are rebuilt, so a stored value can never name arbitrary code to import, and a
record stored by an older version of its type is refused with a message saying to re-materialize
(old pickles silently tied results to yesterday's class definitions). :func:`write_value` and
:func:`read_value` put one value under a folder of any fsspec filesystem: ``arrays-<sha>.npz`` first,
then ``value.json`` (which names the arrays file and its sha256) as the atomic commit, so a reader sees
the old value or the new one, never half of one.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import io
import json
import math
from collections.abc import Callable
from typing import Any, TypeVar

import fsspec
import numpy as np

from synthaug_pipeline.lib.storage import put_atomic

FORMAT_VERSION = 1
VALUE_FILE = "value.json"

_RECORDS: dict[str, tuple[type, int]] = {}
_NAMES: dict[type, str] = {}
T = TypeVar("T")


class RecordError(ValueError):
    """A stored value cannot be read back as what it claims to be; the message says what to re-materialize."""


def record(name: str, version: int = 1) -> Callable[[type[T]], type[T]]:
    """Register a dataclass as a storable record named ``name``; bump ``version`` when its fields change meaning."""

    def register(cls: type[T]) -> type[T]:
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"{cls.__name__} must be a dataclass to be a record")
        if name in _RECORDS and _RECORDS[name][0].__qualname__ != cls.__qualname__:
            raise TypeError(f"record name {name!r} is taken by {_RECORDS[name][0].__qualname__}")
        _RECORDS[name] = (cls, version)
        _NAMES[cls] = name
        return cls

    return register


def record_types() -> dict[str, type]:
    """Every registered record type by name (tests round-trip each)."""
    return {name: cls for name, (cls, _) in _RECORDS.items()}


def encode(value: Any) -> tuple[Any, dict[str, np.ndarray]]:
    """``value`` as a JSON-able document and the numpy arrays it references (by key)."""
    arrays: dict[str, np.ndarray] = {}
    return _encode(value, "v", arrays), arrays


def _encode(value: Any, path: str, arrays: dict[str, np.ndarray]) -> Any:
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"__float__": repr(value)}
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            return {"__list__": _encode(value.tolist(), path, arrays)}
        key = f"a{len(arrays)}"  # positional keys: dict keys may hold any character
        arrays[key] = value
        return {"__array__": key}
    if isinstance(value, np.generic):
        return _encode(value.item(), path, arrays)
    if isinstance(value, (dt.datetime, dt.date)):
        return {"__datetime__": value.isoformat()} if isinstance(value, dt.datetime) else {"__date__": value.isoformat()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        name = _NAMES.get(type(value))
        if name is None:
            raise TypeError(f"{type(value).__qualname__} is not a registered record (decorate it with @record)")
        fields = {f.name: _encode(getattr(value, f.name), f"{path}.{f.name}", arrays) for f in dataclasses.fields(value)}
        return {"__record__": name, "__version__": _RECORDS[name][1], "fields": fields}
    if isinstance(value, dict):
        bad = [key for key in value if not isinstance(key, str)]
        if bad:
            raise TypeError(f"dict keys must be strings to be stored, got {bad[0]!r} at {path}")
        if any(key.startswith("__") and key.endswith("__") for key in value):
            return {"__dict__": {key: _encode(item, f"{path}.{key}", arrays) for key, item in value.items()}}
        return {key: _encode(item, f"{path}.{key}", arrays) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        encoded = [_encode(item, f"{path}.{i}", arrays) for i, item in enumerate(value)]
        return {"__tuple__": encoded} if isinstance(value, tuple) else encoded
    raise TypeError(f"cannot store a {type(value).__qualname__} at {path}: use a record, dict, list, number, string or array")


def decode(document: Any, arrays: dict[str, np.ndarray]) -> Any:
    """The value :func:`encode` described."""
    if isinstance(document, list):
        return [decode(item, arrays) for item in document]
    if not isinstance(document, dict):
        return document
    if "__array__" in document:
        return arrays[document["__array__"]]
    if "__float__" in document:
        return float(document["__float__"])
    if "__datetime__" in document:
        return dt.datetime.fromisoformat(document["__datetime__"])
    if "__date__" in document:
        return dt.date.fromisoformat(document["__date__"])
    if "__tuple__" in document:
        return tuple(decode(item, arrays) for item in document["__tuple__"])
    if "__list__" in document:
        return np.array(decode(document["__list__"], arrays), dtype=object)
    if "__dict__" in document:
        return {key: decode(item, arrays) for key, item in document["__dict__"].items()}
    if "__record__" in document:
        name, version = document["__record__"], document.get("__version__")
        if name not in _RECORDS:
            raise RecordError(f"stored record type {name!r} is unknown to this version of synthaug_pipeline")
        cls, current = _RECORDS[name]
        if version != current:
            raise RecordError(f"stored {name} is version {version}, this code reads version {current}")
        known = {f.name for f in dataclasses.fields(cls)}
        fields = {key: decode(item, arrays) for key, item in document["fields"].items() if key in known}
        return cls(**fields)
    return {key: decode(item, arrays) for key, item in document.items()}


def _arrays_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def write_value(fs: fsspec.AbstractFileSystem, folder: str, value: Any, info: dict[str, Any] | None = None) -> dict[str, Any]:
    """Store ``value`` under ``folder``; returns the committed ``value.json`` document (without the value).

    The arrays file is content-addressed and written before ``value.json`` names it; the arrays file the
    previous value named is removed after the commit.
    """
    document, arrays = encode(value)
    folder = folder.rstrip("/")
    fs.makedirs(folder, exist_ok=True)
    previous = _read_document(fs, folder)
    commit: dict[str, Any] = {"format": FORMAT_VERSION, **(info or {}), "arrays": None}
    if arrays:
        data = _arrays_bytes(arrays)
        sha = hashlib.sha256(data).hexdigest()
        name = f"arrays-{sha[:16]}.npz"
        put_atomic(fs, f"{folder}/{name}", data)
        commit["arrays"] = {"file": name, "sha256": sha, "bytes": len(data), "count": len(arrays)}
    commit["value"] = document
    put_atomic(fs, f"{folder}/{VALUE_FILE}", json.dumps(commit, allow_nan=False, sort_keys=True).encode())
    old = (previous or {}).get("arrays") or {}
    if old.get("file") and old["file"] != (commit["arrays"] or {}).get("file"):
        try:
            fs.rm(f"{folder}/{old['file']}")
        except FileNotFoundError:
            pass
    return {key: item for key, item in commit.items() if key != "value"}


def _read_document(fs: fsspec.AbstractFileSystem, folder: str) -> dict[str, Any] | None:
    try:
        with fs.open(f"{folder}/{VALUE_FILE}", "rb") as handle:
            return json.loads(handle.read())
    except FileNotFoundError:
        return None


def value_exists(fs: fsspec.AbstractFileSystem, folder: str) -> bool:
    return fs.exists(f"{folder.rstrip('/')}/{VALUE_FILE}")


def read_value(fs: fsspec.AbstractFileSystem, folder: str, what: str = "value") -> Any:
    """The value stored under ``folder`` by :func:`write_value`; ``what`` names it in errors (e.g. ``real_images[3]``)."""
    folder = folder.rstrip("/")
    document = _read_document(fs, folder)
    if document is None:
        raise RecordError(f"{what} has no stored value at {folder}: materialize it first")
    if document.get("format") != FORMAT_VERSION:
        raise RecordError(f"{what} at {folder} is stored in format {document.get('format')}, this code reads {FORMAT_VERSION}")
    arrays: dict[str, np.ndarray] = {}
    meta = document.get("arrays")
    if meta:
        try:
            with fs.open(f"{folder}/{meta['file']}", "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            raise RecordError(f"{what}: its arrays file {meta['file']} is missing at {folder}: re-materialize it") from None
        if hashlib.sha256(data).hexdigest() != meta["sha256"]:
            raise RecordError(f"{what}: its arrays file at {folder} changed since it was written (sha256 mismatch): re-materialize it")
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    try:
        return decode(document["value"], arrays)
    except RecordError as exc:
        raise RecordError(f"{what} at {folder}: {exc}: re-materialize it") from None
