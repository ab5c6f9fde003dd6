"""Dagster metadata that stays small: floats rounded for reading, and a byte cap per materialization.

Every materialization's metadata is stored in Dagster's event log (the instance database) and read
back by the UI; at 1000 classes x several assets per run, a few megabytes per class partition are
tens of gigabytes. :func:`bounded_metadata` keeps one call's metadata under ``limit_bytes``: it
first strips the embedded images out of the largest previews (their text stays), then replaces the
largest entries with a short note, and drops entries only when the notes themselves do not fit.

It takes plain values (numbers, strings, JSON lists and dicts) and Dagster ``MetadataValue``
objects alike, without importing Dagster: float, JSON and table values are rebuilt through their
own class (``type(value)(...)``), every other value passes through as it is.
"""

from __future__ import annotations

import json
import math
import numbers
import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

METADATA_LIMIT_BYTES = 256 * 1024
SIGNIFICANT_DIGITS = 4
MIN_LIMIT_BYTES = 1024  # room for the note that says what was dropped
# What Dagster's event log adds around each entry: {"__class__": "EventMetadataEntry", "description": null,
# "entry_data": {"__class__": "MarkdownMetadataEntryData", "md_str": ...}, "label": ...} is ~130 bytes.
ENTRY_OVERHEAD_BYTES = 160
TABLE_RECORD_OVERHEAD_BYTES = 48  # {"__class__": "TableRecord", "data": ...} around each table row
OMITTED_KEY = "metadata_omitted"

# A Markdown image whose source is inline data: what makes a preview large.
_EMBEDDED_IMAGE = re.compile(r"!\[[^\]]*\]\(data:image/[^)]*\)")

# Dagster classes whose payload is rounded (matched by name: lib/ does not import Dagster).
_FLOAT_VALUE, _JSON_VALUE, _TABLE_VALUE, _MARKDOWN_VALUE = (
    "FloatMetadataValue",
    "JsonMetadataValue",
    "TableMetadataValue",
    "MarkdownMetadataValue",
)


def round_floats(value: Any, digits: int = SIGNIFICANT_DIGITS) -> Any:
    """``value`` with every float rounded to ``digits`` significant digits, recursing into lists, tuples
    and dicts. Ints and bools stay exact; a float's integer part is never rounded away (a timestamp
    keeps its seconds); NaN and infinities stay."""
    if isinstance(value, (bool, numbers.Integral)):
        return value
    if isinstance(value, (float, np.floating)):
        x = float(value)
        if x == 0 or not math.isfinite(x):
            return x
        integer_digits = math.floor(math.log10(abs(x))) + 1
        return float(f"{x:.{max(digits, integer_digits)}g}")
    if isinstance(value, dict):
        return {key: round_floats(item, digits) for key, item in value.items()}
    if type(value) in (list, tuple):
        return type(value)(round_floats(item, digits) for item in value)
    return value


def round_entry(value: Any, digits: int = SIGNIFICANT_DIGITS) -> Any:
    """One metadata entry with its floats rounded: a plain value, or a Dagster float, JSON or table value
    rebuilt through its own class. Any other value (text, Markdown, URLs, ...) is returned as it is."""
    kind = type(value).__name__
    if kind in (_FLOAT_VALUE, _JSON_VALUE):
        return type(value)(round_floats(value.value, digits))
    if kind == _TABLE_VALUE:
        records = [type(record)(round_floats(dict(record.data), digits)) for record in value.records]
        return type(value)(records=records, schema=value.schema)
    return round_floats(value, digits)


def _json_bytes(value: Any) -> int:
    return len(json.dumps(value, default=str))  # ASCII-escaped, as Dagster's serializer writes it


def estimated_entry_bytes(key: str, value: Any) -> int:
    """About what one entry costs in Dagster's event log (an upper estimate for the usual kinds)."""
    if type(value).__name__ == _TABLE_VALUE:
        payload = sum(_json_bytes(dict(record.data)) + TABLE_RECORD_OVERHEAD_BYTES for record in value.records)
        payload += 2 * len(repr(value.schema))  # stored as nested records with class names: longer than its repr
    elif isinstance(value, (numbers.Number, str, dict, list, type(None))) or type(value) is tuple:
        payload = _json_bytes(value)
    else:  # a Dagster MetadataValue (a tuple subclass); its class name is in the overhead
        payload = _json_bytes(getattr(value, "value", repr(value)))
    return _json_bytes(key) + payload + ENTRY_OVERHEAD_BYTES


def _text_of(value: Any) -> str | None:
    """The text of a string or Markdown/text metadata value, else None."""
    if isinstance(value, str):
        return value
    text = getattr(value, "value", None)
    return text if isinstance(text, str) else None


def _with_text(value: Any, text: str) -> Any:
    return type(value)(text) if type(value).__name__ == _MARKDOWN_VALUE else text


def _kb(n: int) -> int:
    return max(1, math.ceil(n / 1024))


def bounded_metadata(
    metadata: Mapping[str, Any],
    limit_bytes: int = METADATA_LIMIT_BYTES,
    digits: int = SIGNIFICANT_DIGITS,
    entry_bytes: Callable[[str, Any], int] = estimated_entry_bytes,
) -> dict[str, Any]:
    """``metadata`` with floats rounded (:func:`round_entry`) and at most ``limit_bytes`` in all, as
    ``entry_bytes`` measures each entry. Under the cap nothing else changes. Over it, in this order
    until it fits: embedded images are cut out of the largest previews (each leaves a one-line note,
    the rest of the text stays), the largest entries are replaced by a note saying how large they
    were and by how much the metadata was over the cap, and, last, entries are dropped (largest first)
    and ``metadata_omitted`` says how many.
    """
    if limit_bytes < MIN_LIMIT_BYTES:
        raise ValueError(f"metadata limit_bytes must be >= {MIN_LIMIT_BYTES}, got {limit_bytes}")
    result = {key: round_entry(value, digits) for key, value in metadata.items()}
    sizes = {key: entry_bytes(key, value) for key, value in result.items()}
    total = sum(sizes.values())
    if total <= limit_bytes:
        return result
    over = total - limit_bytes
    cap_note = f"the metadata was {_kb(over)} KB over the {_kb(limit_bytes)} KB metadata cap"

    def replace(key: str, value: Any) -> None:
        nonlocal total
        size = entry_bytes(key, value)
        if size < sizes[key]:
            total += size - sizes[key]
            result[key], sizes[key] = value, size

    # 1. previews: cut the inline images, keep the text around them (tables, captions)
    with_images = [key for key, value in result.items() if _EMBEDDED_IMAGE.search(_text_of(value) or "")]
    for key in sorted(with_images, key=lambda k: -sizes[k]):
        if total <= limit_bytes:
            return result
        text = _text_of(result[key])
        stripped = _EMBEDDED_IMAGE.sub(lambda m: f"(preview omitted: {_kb(len(m.group(0)))} KB; {cap_note})", text)
        replace(key, _with_text(result[key], stripped))

    # 2. the largest entries become a note
    for key in sorted(result, key=lambda k: -sizes[k]):
        if total <= limit_bytes:
            return result
        replace(key, f"omitted: {_kb(sizes[key])} KB; {cap_note}")

    # 3. too many entries for even their notes: drop the largest, and say so in one entry
    reserve = entry_bytes(OMITTED_KEY, f"{len(result)} entries dropped; {cap_note}")
    dropped = 0
    for key in sorted(result, key=lambda k: -sizes[k]):
        if total + reserve <= limit_bytes:
            break
        total -= sizes.pop(key)
        del result[key]
        dropped += 1
    result.pop(OMITTED_KEY, None)  # never two entries under one key
    result[OMITTED_KEY] = f"{dropped} entries dropped; {cap_note}"
    return result
