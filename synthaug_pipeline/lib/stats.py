"""Aggregating repeated runs: mean and spread over seeds, and "71.2 ± 0.8" formatting.

A difference of one point between two classifiers means little unless the seed-to-seed spread is
smaller; every ablation is run with several seeds and reported as mean ± sample standard deviation.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from numbers import Real
from typing import Any

__all__ = ["format_pm", "mean_std", "summarize_seeds", "t_interval"]


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1) of ``values``; the std of a single value is 0.

    Raises ValueError for no values or a value that is not a finite real number (bools included).
    """
    numbers = [_number(v, "mean_std") for v in values]
    if not numbers:
        raise ValueError("mean_std needs at least one value")
    n = len(numbers)
    mean = math.fsum(numbers) / n
    if n == 1:
        return mean, 0.0
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in numbers) / (n - 1))


def t_interval(values: Iterable[float], level: float = 0.95) -> tuple[float, float] | None:
    """The ``level`` confidence interval of the mean of ``values`` (Student's t, n - 1 degrees of freedom).

    None with fewer than two values (no spread to estimate). With three seeds the 95% interval is
    mean ± 4.30 x std / sqrt(3): wide on purpose, a gain whose interval excludes 0 is not seed noise.
    """
    numbers = [_number(v, "t_interval") for v in values]
    if len(numbers) < 2:
        return None
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    from scipy.stats import t  # scipy is a dependency; imported here so the module stays cheap to import

    mean, std = mean_std(numbers)
    half = float(t.ppf(0.5 + level / 2, len(numbers) - 1)) * std / math.sqrt(len(numbers))
    return mean - half, mean + half


def summarize_seeds(results: Sequence[Mapping[str, Any]], keys: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
    """Aggregate numeric fields across the results of runs that differ only in their seed.

    ``keys`` name the fields; a dotted key reaches into nested dicts (``"in_domain.top1"``). Without
    ``keys``, every top-level field that is a number in every result is used. Returns
    ``{key: {"mean", "std", "n"}}`` (std from :func:`mean_std`, n = number of runs that had a value).
    A run whose field is missing or None is left out of that field's n; a field no run has gives
    ``{"mean": None, "std": None, "n": 0}``. Raises ValueError for no results or a non-numeric value.
    """
    results = list(results)
    if not results:
        raise ValueError("summarize_seeds needs at least one result")
    if keys is None:
        keys = [k for k, v in results[0].items() if _is_number(v) and all(_is_number(r.get(k)) for r in results)]
    summary: dict[str, dict[str, Any]] = {}
    for key in keys:
        values = [value for value in (_lookup(r, key) for r in results) if value is not None]
        for value in values:
            if not _is_number(value):
                raise ValueError(f"summarize_seeds: field {key!r} holds {value!r}, not a number")
        if not values:
            summary[key] = {"mean": None, "std": None, "n": 0}
            continue
        mean, std = mean_std(values)
        summary[key] = {"mean": mean, "std": std, "n": len(values)}
    return summary


def format_pm(mean: float | None, std: float | None, scale: float = 100, digits: int = 1) -> str:
    """``"71.2 ± 0.8"`` for mean 0.712 and std 0.008 (values times ``scale``, ``digits`` decimals).

    Without a std (None) only the mean is written; without a mean, ``"n/a"``.
    """
    if mean is None:
        return "n/a"
    text = f"{mean * scale:.{digits}f}"
    return text if std is None else f"{text} ± {std * scale:.{digits}f}"


def _is_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _number(value: Any, what: str) -> float:
    if not _is_number(value) or not math.isfinite(value):
        raise ValueError(f"{what}: expected finite numbers, got {value!r}")
    return float(value)


def _lookup(result: Mapping[str, Any], key: str) -> Any:
    value: Any = result
    for part in key.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value
