"""Where a pretrained model's files are, which weights to read, and what version they are.

* :func:`resolve_model_path`: ``generator.model`` as a local diffusers folder, or a hub id's snapshot (at
  ``generator.revision``), downloading the half-precision weight variant when one is asked for and exists.
* :func:`weight_variant`: the ``fp16``/``bf16`` variant files a folder holds for the asked dtype (None: the
  full-precision files, which diffusers casts on load).
* :func:`model_version`: 16 hex digits of sha256 over every file's relative path and bytes. Hashing a
  multi-GB folder takes a minute, so the result is cached beside the folder in ``.synthaug_version.json``
  keyed by the file list with sizes and mtimes (read-only folders: the same JSON under the user cache
  dir, ``$XDG_CACHE_HOME/synthaug/model_versions``), and each process hashes a folder at most once.
* :func:`snapshot_revision`: the commit of a hub snapshot folder (``.../snapshots/<sha>``).

Plain functions with explicit arguments, so a model-store resource can wrap them. Pure module: no Dagster.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

VERSION_FILE = ".synthaug_version.json"
HASH_SCHEME = "sha256-files/1"  # relative path + NUL + bytes of every non-hidden file, sorted by path
VARIANT_FOR_DTYPE = {"float16": ("fp16",), "bfloat16": ("bf16", "fp16"), "float32": ()}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_WEIGHT_SUFFIXES = (".safetensors", ".bin")


class ModelFilesError(ValueError):
    """A model path, hub id or revision that cannot be used; the message names the setting."""


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


def resolve_model_path(
    model: str | None, *, revision: str | None = None, variant: str | None = None, setting: str = "generator.model"
) -> Path:
    """The local folder of ``model``: the folder itself, or the hub id's snapshot (downloaded when the hub is reachable)."""
    if not model:
        raise ModelFilesError(f"{setting} is not set: give a local diffusers folder or a hub id (e.g. facebook/DiT-XL-2-256)")
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise ModelFilesError(
                f"{setting} {model!r} is not a diffusers pipeline folder: it has no model_index.json "
                "(a folder written by DiffusionPipeline.save_pretrained, or a hub id)"
            )
        if revision is not None:
            raise ModelFilesError(
                f"generator.revision {revision!r} applies to hub ids, but {setting} {model!r} is a local folder: unset it"
            )
        return path
    if not _HUB_ID.match(model):
        raise ModelFilesError(f"{setting} {model!r} does not exist (not a folder, and not a hub id like org/name)")
    try:
        return hub_snapshot(model, revision, variant)
    except Exception as exc:  # offline, unknown repo, gated repo, unknown revision: all mean "cannot get this model"
        at = f" at generator.revision {revision!r}" if revision else ""
        raise ModelFilesError(
            f"{setting} {model!r}{at} is no local folder and is not in the hub cache, and could not be fetched "
            f"({_one_line(exc)}); download it where the hub is reachable and point {setting} at the folder"
        ) from None


@functools.lru_cache(maxsize=8)
def hub_snapshot(model: str, revision: str | None, variant: str | None) -> Path:
    """The snapshot folder of a hub id; with ``variant``, only that variant's weights are fetched when the repo has them."""
    from diffusers import DiffusionPipeline

    # once per process: a snapshot folder is immutable, and asking the hub again for every class is slow or fails offline
    if variant is not None:
        try:
            return Path(DiffusionPipeline.download(model, revision=revision, variant=variant))
        except (ValueError, OSError):  # the repo has no such variant: take the full-precision weights
            pass
    return Path(DiffusionPipeline.download(model, revision=revision))


def snapshot_revision(path: str | Path) -> str | None:
    """The commit hash of a hub cache snapshot folder (``models--org--name/snapshots/<sha>``); None for other folders."""
    path = Path(path)
    if path.parent.name == "snapshots" and re.fullmatch(r"[0-9a-f]{40}", path.name):
        return path.name
    return None


def weight_variant(path: str | Path, dtype: str) -> str | None:
    """The weight variant to load for ``dtype``: ``bf16`` or ``fp16`` files when the folder has them, else None."""
    root = Path(path)
    names = [p.name for p in root.rglob("*") if p.name.endswith(_WEIGHT_SUFFIXES)]
    for variant in VARIANT_FOR_DTYPE.get(dtype, ()):
        marker = f".{variant}."
        if any(marker in name for name in names):
            return variant
    return None


def _model_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts))


def _signature(root: Path) -> list[list]:
    return [[str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns] for p in _model_files(root)]


def model_version(path: str | Path) -> str:
    """First 16 hex digits of sha256 over every file's relative path and bytes (hidden files skipped).

    Reads the cached value beside the folder (or in the user cache) when its file list, sizes and mtimes
    still match; otherwise hashes the bytes and writes the cache.
    """
    root = Path(path).resolve()
    signature = _signature(root)
    key = hashlib.sha256(json.dumps([HASH_SCHEME, signature]).encode()).hexdigest()
    return _cached_version(str(root), key, json.dumps(signature))


@functools.lru_cache(maxsize=32)
def _cached_version(root: str, key: str, signature_json: str) -> str:
    for cache in version_cache_files(root):
        try:
            record = json.loads(cache.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and record.get("key") == key and isinstance(record.get("version"), str):
            return record["version"]
    signature = json.loads(signature_json)
    version = _hash_files(root, [name for name, _, _ in signature])
    record = {"key": key, "version": version, "scheme": HASH_SCHEME, "files": len(signature), "bytes": sum(s for _, s, _ in signature)}
    for cache in version_cache_files(root):
        if _write_atomic(cache, json.dumps(record, indent=1)):
            break
    return version


def version_cache_files(root: str | Path) -> list[Path]:
    """Where a folder's version is cached: beside it, then under the user cache dir (for read-only folders)."""
    root = Path(root).resolve()
    user_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "synthaug" / "model_versions"
    return [root / VERSION_FILE, user_cache / f"{hashlib.sha256(str(root).encode()).hexdigest()[:24]}.json"]


def _write_atomic(target: Path, text: str) -> bool:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=".tmp-", dir=target.parent)
    except OSError:
        return False
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(temp, target)
        return True
    except OSError:
        try:
            os.unlink(temp)
        except OSError:
            pass
        return False


def _hash_files(root: str, names: list[str]) -> str:
    digest = hashlib.sha256()
    for name in names:
        digest.update(name.encode() + b"\x00")
        with open(os.path.join(root, name), "rb") as handle:
            for block in iter(lambda: handle.read(1 << 24), b""):
                digest.update(block)
    return digest.hexdigest()[:16]
