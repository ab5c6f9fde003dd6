"""The ablation grid's summary: results grouped by everything but the seed, mean ± std over seeds, and its markdown.

:func:`summarize_experiments` reads the results of materialized experiments (:mod:`synthaug_pipeline.lib.experiments`
defines the grid, the keys and the plans); missing and stale runs are listed, never averaged in.
:func:`render_experiments_markdown` writes the table the ``experiment_summary`` asset shows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from synthaug_pipeline.lib.experiment_report import headline_sections
from synthaug_pipeline.lib.experiments import METRICS, VALIDATION_METRICS, ExperimentError, ExperimentSpec, parse_experiment_key
from synthaug_pipeline.lib.stats import format_pm, summarize_seeds, t_interval


def summarize_experiments(
    results: Mapping[str, Mapping[str, Any]], grid_keys: Sequence[str], fingerprints: Mapping[str, str]
) -> dict[str, Any]:
    """Mean ± std over seeds of every group of the grid that has results.

    ``results``: key -> result of a materialized experiment (``spec``, ``metrics``, ``per_class``,
    optional ``shift_sets`` ({name: top-1}), ``real_images``, ``synthetic_images``, ``fingerprint``).
    ``fingerprints``: key -> the fingerprint the current setup would give it. A grid key without a
    result is *missing*; a result whose fingerprint differs is *stale* (trained under another setup
    or on other shards). Both are listed and left out of the numbers. Each group also gets the paired gain over its regime's
    real-only runs (same seeds, ratio 0, no aux BN): mean ± std of the per-seed differences.
    """
    unknown = sorted(set(results) - set(grid_keys))
    if unknown:
        raise ExperimentError(f"results for keys outside the grid: {', '.join(unknown)}")
    missing = [key for key in grid_keys if key not in results]
    stale = [key for key in grid_keys if key in results and results[key].get("fingerprint") != fingerprints.get(key)]
    current = {key: results[key] for key in grid_keys if key in results and key not in stale}

    by_group: dict[str, list[Mapping[str, Any]]] = {}
    for key in grid_keys:
        by_group.setdefault(parse_experiment_key(key).group, [])
        if key in current:
            by_group[parse_experiment_key(key).group].append(current[key])

    groups = []
    for group, runs in by_group.items():
        if not runs:
            continue
        spec = parse_experiment_key(runs[0]["spec"]["key"])
        class_ids = list(runs[0]["per_class"])
        baseline = None if spec.synthetic_only or not spec.ratio else ExperimentSpec(seed=0, regime=spec.regime, ratio=0.0).group
        groups.append(
            {
                "group": group,
                **{k: v for k, v in spec.as_dict().items() if k not in ("key", "group", "seed")},
                "seeds": sorted(r["spec"]["seed"] for r in runs),
                "n": len(runs),
                "metrics": summarize_seeds([r["metrics"] for r in runs], METRICS),
                "per_class": {c: _over_seeds(runs, "per_class", c) for c in class_ids},
                "shift_sets": {name: _over_seeds(runs, "shift_sets", name) for name in runs[0].get("shift_sets", {})},
                "real_images": summarize_seeds(runs, ["real_images"])["real_images"],
                "synthetic_images": summarize_seeds(runs, ["synthetic_images"])["synthetic_images"],
                "vs_real_only": _paired_gain(runs, by_group.get(baseline, []), baseline) if baseline else None,
                "per_class_vs_real_only": _paired_per_class(runs, by_group.get(baseline, []), class_ids) if baseline else None,
                "validation": _validation(runs),
                "validation_vs_real_only": _paired_gain(runs, by_group.get(baseline, []), baseline, "validation") if baseline else None,
                "seconds": summarize_seeds(runs, ["seconds", "eval_seconds"]),
            }
        )
    _compare_arms(groups, by_group)
    return {
        "grid": list(grid_keys),
        "materialized": sorted(current, key=list(grid_keys).index),
        "missing": missing,
        "stale": stale,
        "groups": groups,
    }


def _compare_arms(groups: list[dict[str, Any]], by_group: Mapping[str, Sequence[Mapping[str, Any]]]) -> None:
    """``vs_arms`` on each filtered group: per-seed differences filtered minus each other arm of the same regime, ratio
    and aux BN (test and validation), so "filtered beats unfiltered / photometric / ..." comes with its own interval
    instead of a comparison of two gains' spreads."""
    for g in groups:
        if g["synthetic_only"] or not g["ratio"] or g["arm"] != "filtered":
            continue
        for other in groups:
            if other is g or other["synthetic_only"] or other["arm"] == "filtered":
                continue
            if (other["regime"], other["ratio"], other["aux_bn"]) != (g["regime"], g["ratio"], g["aux_bn"]):
                continue
            runs, against = by_group[g["group"]], by_group[other["group"]]
            g.setdefault("vs_arms", {})[other["arm"]] = {
                "group": other["group"],
                "test": _paired_gain(runs, against, other["group"]),
                "validation": _paired_gain(runs, against, other["group"], "validation"),
            }


def _over_seeds(runs: Sequence[Mapping[str, Any]], field: str, name: str) -> dict[str, Any]:
    # not a dotted summarize_seeds key: class ids and shift-set names may contain dots
    return summarize_seeds([{"value": r.get(field, {}).get(name)} for r in runs], ["value"])["value"]


GAIN_METRICS = ("top1", "top5", "shifted_mean_top1", "shift_drop")


def _validation(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """Mean ± std over seeds of the validation-split numbers (None when the runs had no validation split)."""
    scored = [r["validation"] for r in runs if r.get("validation")]
    return summarize_seeds(scored, list(VALIDATION_METRICS)) if scored else None


def _paired_gain(
    runs: Sequence[Mapping[str, Any]], baseline_runs: Sequence[Mapping[str, Any]], baseline: str, field: str = "metrics"
) -> dict[str, Any] | None:
    """Per-seed differences against the real-only runs of the same seeds: mean ± std and a 95% t-interval per metric.

    ``field``: ``metrics`` (test split) or ``validation``; None for validation when the runs had none.
    """
    by_seed = {r["spec"]["seed"]: r for r in baseline_runs if r.get(field)}
    paired = [(r, by_seed[r["spec"]["seed"]]) for r in runs if r.get(field) and r["spec"]["seed"] in by_seed]
    if field != "metrics" and not paired:
        return None
    metrics = GAIN_METRICS if field == "metrics" else VALIDATION_METRICS
    deltas = [{m: _difference(r[field].get(m), b[field].get(m)) for m in metrics} for r, b in paired]
    gains = summarize_seeds(deltas, list(metrics)) if deltas else {}
    for m, stat in gains.items():
        interval = t_interval([d[m] for d in deltas if d[m] is not None])
        stat["ci95"] = list(interval) if interval else None
    return {"baseline": baseline, "paired_seeds": len(deltas), **gains}


def _paired_per_class(
    runs: Sequence[Mapping[str, Any]], baseline_runs: Sequence[Mapping[str, Any]], class_ids: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """Per class: mean ± std over seeds of (this run's top-1 minus the ratio-0 run's of the same regime and seed)."""
    by_seed = {r["spec"]["seed"]: r for r in baseline_runs}
    paired = [(r, by_seed[r["spec"]["seed"]]) for r in runs if r["spec"]["seed"] in by_seed]
    if not paired:
        return {}
    return {
        c: summarize_seeds([{"value": _difference(r["per_class"].get(c), b["per_class"].get(c))} for r, b in paired], ["value"])["value"]
        for c in class_ids
    }


def _difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else float(a) - float(b)


def _pm(stat: Mapping[str, Any] | None, signed: bool = False) -> str:
    if not stat or stat.get("mean") is None:
        return "—"
    text = format_pm(stat["mean"], stat["std"] if stat["n"] > 1 else None)
    return f"+{text}" if signed and stat["mean"] >= 0 else text


def render_experiments_markdown(summary: Mapping[str, Any], classes_shown: int = 5) -> str:
    """experiments.md: one row per group (mean ± sample std over seeds, in %), the per-class change against
    the real-only runs, then what is missing or stale.

    A top-5 column appears when some group has top-5 (more than 10 classes). With more than
    ``2 * classes_shown`` classes the per-class section lists each group's largest gains and losses only.
    """
    groups = summary["groups"]
    top5 = any(g["metrics"].get("top5", {}).get("mean") is not None for g in groups)
    header = ["experiment", "seeds", "top-1", *(["top-5"] if top5 else []), "top-1 under shift", "shift drop"]
    header += ["top-1 gain vs real-only", *(["top-5 gain vs real-only"] if top5 else []), "shift gain vs real-only", "real", "synthetic"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for g in groups:
        gain = g["vs_real_only"] or {}
        cells = [g["group"], str(g["n"]), _pm(g["metrics"]["top1"])]
        cells += [_pm(g["metrics"].get("top5"))] if top5 else []
        cells += [_pm(g["metrics"]["shifted_mean_top1"]), _pm(g["metrics"].get("shift_drop"))]
        cells += [_pm(gain.get("top1"), signed=True)]
        cells += [_pm(gain.get("top5"), signed=True)] if top5 else []
        cells += [_pm(gain.get("shifted_mean_top1"), signed=True), f"{g['real_images']['mean']:.0f}", f"{g['synthetic_images']['mean']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    grid, done = len(summary["grid"]), len(summary["materialized"])
    notes = [
        f"{done} of {grid} experiments summarized; accuracies in %, mean ± sample std over seeds (no ± with one seed); "
        "shift drop is in-domain top-1 minus top-1 under shift; gains are paired by seed against the same regime at ratio 0."
    ]
    per_class = _per_class_markdown(groups, classes_shown)
    if per_class:
        notes.append(per_class)
    notes += headline_sections(summary)
    if summary["missing"]:
        notes.append(f"Missing (not materialized, or failed): {', '.join(summary['missing'])}.")
    if summary["stale"]:
        notes.append(f"Stale (trained under another setup or on other shards; re-materialize): {', '.join(summary['stale'])}.")
    return "\n".join(lines) + "\n\n" + "\n\n".join(notes) + "\n"


def _per_class_markdown(groups: Sequence[Mapping[str, Any]], classes_shown: int) -> str:
    paired = [g for g in groups if g.get("per_class_vs_real_only")]
    if not paired:
        return ""
    title = "Per-class top-1 change vs real-only (same regime and seed, ratio 0; mean ± std over paired seeds, in points):"
    class_ids = list(paired[0]["per_class_vs_real_only"])
    if len(class_ids) <= 2 * classes_shown:
        rows = ["| class | " + " | ".join(g["group"] for g in paired) + " |", "|" + "---|" * (len(paired) + 1)]
        rows += [f"| {c} | " + " | ".join(_pm(g["per_class_vs_real_only"].get(c), signed=True) for g in paired) + " |" for c in class_ids]
        return title + "\n\n" + "\n".join(rows)
    rows = ["| experiment | largest gains | largest losses |", "|---|---|---|"]
    for g in paired:
        ranked = sorted(
            ((c, stat) for c, stat in g["per_class_vs_real_only"].items() if stat.get("mean") is not None), key=lambda item: -item[1]["mean"]
        )
        best = ", ".join(f"{c} {_pm(stat, signed=True)}" for c, stat in ranked[:classes_shown])
        worst = ", ".join(f"{c} {_pm(stat, signed=True)}" for c, stat in reversed(ranked[-classes_shown:]))
        rows.append(f"| {g['group']} | {best or '—'} | {worst or '—'} |")
    return title + "\n\n" + "\n".join(rows)
