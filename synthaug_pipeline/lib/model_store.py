"""Models between assets: the ``ModelRef`` record, and a store that loads each model once per process.

A model asset (``judge``, ``generator``, the classifiers) hands on a :class:`ModelRef`: where the model
is, its content version, and what it is. Consumers never load a model themselves: they ask the run's
:class:`ModelStore` (through the ``models`` resource), which loads each (kind, url, version) once per
process and counts loads, so a batched backfill of N classes in one run loads the generator once, and
a benchmark can say how many loads a run made. A version mismatch (the folder was rewritten after the
asset recorded it) is an error, never a silent reload of other weights.
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from synthaug_pipeline.lib.records import record


@record("model_ref")
@dataclass(frozen=True)
class ModelRef:
    """A model an asset made or loaded. ``role``: judge, generator, classifier_baseline, ...; ``model``: the
    architecture or backend name; ``details``: JSON-able facts its consumers need (backend, dtype, class
    indices, lineage, test accuracy ...)."""

    role: str
    url: str
    version: str
    model: str
    num_parameters: int | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        return self.details.get(key, default)


class ModelVersionError(ValueError):
    """A stored model's content changed since the asset that recorded it ran."""


class ModelStore:
    """Loaded models of this process, keyed by (kind, key); at most ``capacity`` kept (least recent dropped)."""

    def __init__(self, capacity: int = 8):
        self.capacity = capacity
        self.loads: Counter[str] = Counter()  # kind -> loads made
        self._models: OrderedDict[tuple[str, Hashable], Any] = OrderedDict()
        self._counted: set[tuple[str, Hashable]] = set()
        self._lock = threading.Lock()

    def get(self, kind: str, key: Hashable, load: Callable[[], Any]) -> Any:
        """The model of ``kind`` under ``key``, loading it with ``load()`` the first time."""
        with self._lock:
            slot = (kind, key)
            if slot in self._models:
                self._models.move_to_end(slot)
                return self._models[slot]
            model = load()
            self.loads[kind] += 1
            self._models[slot] = model
            while len(self._models) > self.capacity:
                self._models.popitem(last=False)
            return model

    def versioned(self, kind: str, url: str, version: str, load: Callable[[str], Any]) -> Any:
        """A model saved at ``url`` whose ``.version`` must equal ``version`` (what its asset recorded)."""

        def load_checked():
            model = load(url)
            if version and getattr(model, "version", version) != version:
                raise ModelVersionError(
                    f"{kind} at {url} has version {model.version}, expected {version}: it was overwritten; re-materialize {kind}"
                )
            return model

        return self.get(kind, (url, version), load_checked)

    def record_load(self, kind: str, key: Hashable) -> None:
        """Count a load made by a loader that keeps its own cache (pretrained pipelines): once per key, and the
        model itself is not held here, so that cache alone decides when it is freed."""
        with self._lock:
            if (kind, key) not in self._counted:
                self._counted.add((kind, key))
                self.loads[kind] += 1

    def clear(self) -> None:
        with self._lock:
            self._models.clear()
            self._counted.clear()
            self.loads.clear()


PROCESS_STORE = ModelStore()
"""The store of this process: every run step in this process shares it (in-process executor: one load per run)."""
