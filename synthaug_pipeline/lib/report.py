"""The run report: the headline table (baseline vs augmented) and per-class detail, as Markdown."""

from __future__ import annotations


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _signed(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:+.1f}"


def headline_rows(evaluation: dict) -> list[tuple[str, str, str, str]]:
    """(metric, baseline, augmented, delta in points) rows of the headline table."""
    base = evaluation["models"]["classifier_baseline"]
    aug = evaluation["models"]["classifier_augmented"]
    rows = [
        ("top-1 in-domain", base["in_domain"]["top1"], aug["in_domain"]["top1"]),
        ("top-1 under shift (mean)", base["shifted_mean_top1"], aug["shifted_mean_top1"]),
        ("drop under shift", base["shift_drop"], aug["shift_drop"]),
    ]
    return [(name, _pct(b), _pct(a), _signed(a - b)) for name, b, a in rows]


def headline_table(evaluation: dict) -> str:
    """The headline table as fixed-width text for a terminal."""
    rows = [("metric", "baseline", "augmented", "delta (pts)"), *headline_rows(evaluation)]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render_report_markdown(payload: dict) -> str:
    """report.md: headline, shift breakdown, per-class scores and accuracy, shards."""
    evaluation = payload["evaluation"]
    base = evaluation["models"]["classifier_baseline"]
    aug = evaluation["models"]["classifier_augmented"]
    profile = payload["profile"]
    lines = [
        f"# synthaug report: {profile['name']}",
        "",
        f"Dataset `{payload['dataset']['dataset']}` ({payload['dataset']['source']}), {len(payload['dataset']['class_ids'])} classes, "
        f"images {payload['dataset']['image_shape']}; {evaluation['test_images']} test images. "
        f"Judge `{payload['judge']['model']}` test top-1 {_pct(payload['judge']['test_top1'])}. Run `{payload['run_id']}`.",
        "",
        "| metric | baseline (real only) | augmented (real + synthetic) | delta (points) |",
        "|---|---|---|---|",
        *[f"| {name} | {b} | {a} | {d} |" for name, b, a, d in headline_rows(evaluation)],
        "",
        "## Under shift (top-1 per corruption and severity)",
        "",
        "| corruption | baseline | augmented |",
        "|---|---|---|",
        *[f"| {key} | {_pct(base['shifted'][key])} | {_pct(aug['shifted'][key])} |" for key in base["shifted"]],
        "",
        "## Per class",
        "",
        "| class | generated | accepted | mean judge confidence | FID-style distance | baseline top-1 | augmented top-1 |",
        "|---|---|---|---|---|---|---|",
    ]
    accepted = {shard["class_id"]: shard["num_accepted"] for shard in payload["shards"]}
    for class_id in payload["dataset"]["class_ids"]:
        summary = payload["per_class"].get(class_id, {})
        fid = summary.get("fid")
        lines.append(
            f"| {class_id} | {summary.get('n_synthetic', 0)} | {accepted.get(class_id, 0)} | "
            f"{summary.get('mean_judge_confidence', float('nan')):.3f} | {'n/a' if fid is None else f'{fid:.3f}'} | "
            f"{_pct(base['in_domain']['per_class'].get(class_id))} | {_pct(aug['in_domain']['per_class'].get(class_id))} |"
        )
    extractor = next((s.get("feature_extractor") for s in payload["per_class"].values()), None)
    lines += [
        "",
        f"FID-style distances use features from `{extractor}` (not Inception): compare them within this run, not with published FIDs.",
        "",
        "## Lineage",
        "",
        f"- baseline model: `{payload['models']['baseline']['url']}` (version {payload['models']['baseline']['version']})",
        f"- augmented model: `{payload['models']['augmented']['url']}` (version {payload['models']['augmented']['version']}), "
        f"synthetic ratio {profile['augmented']['synthetic_ratio']}, trained on these shards:",
        *[
            f"  - `{s['uri']}` sha256 {s['sha256'][:16]}, {s['num_accepted']}/{s['num_rows']} accepted, filter {s['filter_version']}"
            for s in payload["shards"]
        ],
        "",
    ]
    return "\n".join(lines)
