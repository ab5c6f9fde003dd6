"""The run report: the headline table (baseline vs augmented) and per-class detail, as Markdown."""

from __future__ import annotations

from synthaug_pipeline.lib.cost import cost_markdown, run_cost


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _signed(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:+.1f}"


def _minus(augmented: float | None, baseline: float | None) -> float | None:
    return None if augmented is None or baseline is None else augmented - baseline


def _num(value: float | None, spec: str = ".3f") -> str:
    """A score, or n/a when it could not be computed (None: e.g. an empty or one-image class)."""
    return "n/a" if value is None else format(value, spec)


def per_class_order(class_ids: list[str], per_class: dict) -> list[str]:
    """Classes by KID (the ranking metric), worst (highest) first; classes without a KID last, in catalog order."""
    kid = {c: (per_class.get(c) or {}).get("kid_mean") for c in class_ids}
    ranked = sorted((c for c in class_ids if kid[c] is not None), key=lambda c: -kid[c])
    return ranked + [c for c in class_ids if kid[c] is None]


def extractor_note(per_class: dict) -> str:
    """Which feature extractor the per-class FID/KID come from, as the scores' summaries name it."""
    names = sorted({s.get("feature_extractor") for s in per_class.values() if s and s.get("feature_extractor")})
    if not names:
        return "The feature extractor of FID/KID is not recorded in the scores."
    named = ", ".join(f"`{name}`" for name in names)
    if len(names) > 1:
        named += " (different classes used different extractors: their values do not compare)"
    if all(name.startswith("inception") for name in names):
        kind = f"FID and KID use Inception features from {named}, but at per-class sample sizes"
    else:
        kind = f"FID and KID use features from {named} (not Inception)"
    return f"{kind}: compare them within this run, not with published FIDs."


def headline_rows(evaluation: dict) -> list[tuple[str, str, str, str]]:
    """(metric, baseline, augmented, delta in points) rows of the headline table.

    Top-1 in-domain, top-5 (only with more than 10 classes), top-1 under corruption (mean) and the
    drop under corruption (in-domain minus that mean; lower is more robust), then top-1 on each extra
    shifted test set.
    """
    base = evaluation["models"]["classifier_baseline"]
    aug = evaluation["models"]["classifier_augmented"]
    rows = [("top-1 in-domain", base["in_domain"]["top1"], aug["in_domain"]["top1"])]
    if base["in_domain"].get("top5") is not None:
        rows.append(("top-5 in-domain", base["in_domain"]["top5"], aug["in_domain"].get("top5")))
    rows += [
        ("top-1 under shift (mean)", base["shifted_mean_top1"], aug["shifted_mean_top1"]),
        ("drop under shift", base["shift_drop"], aug["shift_drop"]),
    ]
    base_sets, aug_sets = base.get("shift_sets", {}), aug.get("shift_sets", {})
    rows += [(f"top-1 on shift set {name}", base_sets[name]["top1"], aug_sets.get(name, {}).get("top1")) for name in base_sets]
    return [(name, _pct(b), _pct(a), _signed(_minus(a, b))) for name, b, a in rows]


def headline_table(evaluation: dict) -> str:
    """The headline table as fixed-width text for a terminal."""
    rows = [("metric", "baseline", "augmented", "delta (pts)"), *headline_rows(evaluation)]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _comparison_row(label: str, baseline: float | None, augmented: float | None) -> str:
    return f"| {label} | {_pct(baseline)} | {_pct(augmented)} | {_signed(_minus(augmented, baseline))} |"


def _shift_lines(base: dict, aug: dict) -> list[str]:
    """The corruption breakdown (per kind, then per kind@severity) and the extra shifted test sets."""
    lines = []
    if base["shifted"]:
        base_kinds, aug_kinds = base.get("shifted_by_kind", {}), aug.get("shifted_by_kind", {})
        drop_delta = _signed(_minus(aug["shift_drop"], base["shift_drop"]))
        lines += [
            "## Under shift: corruptions of the test split",
            "",
            "Drop under shift = in-domain top-1 minus the mean over corruptions (lower is more robust): "
            f"baseline {_pct(base['shift_drop'])}, augmented {_pct(aug['shift_drop'])} ({drop_delta} points).",
            "",
            "| corruption | baseline | augmented | delta (points) |",
            "|---|---|---|---|",
            *[_comparison_row(f"{kind} (mean)", base_kinds[kind], aug_kinds.get(kind)) for kind in base_kinds],
            *[_comparison_row(key, base["shifted"][key], aug["shifted"].get(key)) for key in base["shifted"]],
            "",
        ]
    base_sets, aug_sets = base.get("shift_sets", {}), aug.get("shift_sets", {})
    if base_sets:
        lines += [
            "## Under shift: extra test sets (evaluation.shift_folders)",
            "",
            "| set | images | classes | baseline top-1 | augmented top-1 | delta (points) | baseline drop | augmented drop |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, b in base_sets.items():
            a = aug_sets.get(name, {})
            present = sum(value is not None for value in b["per_class"].values())
            lines.append(
                f"| {name} | {b['n']} | {present}/{len(b['per_class'])} | {_pct(b['top1'])} | {_pct(a.get('top1'))} | "
                f"{_signed(_minus(a.get('top1'), b['top1']))} | {_pct(b['drop'])} | {_pct(a.get('drop'))} |"
            )
        lines.append("")
    return lines


def _reached_lines(reached: dict | None) -> list[str]:
    """The ratio each class trained at when some fell short (augmented.shortfall=use_available)."""
    if not reached:
        return []
    return ["", "Classes with fewer accepted images than the ratio needs trained at the ratio they reach: "
            + ", ".join(f"{class_id} {ratio:.3g}" for class_id, ratio in reached.items())]


def render_report_markdown(payload: dict) -> str:
    """report.md: headline, shift breakdown (corruptions, extra test sets), per-class scores and accuracy, shards."""
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
        *_shift_lines(base, aug),
        "## Per class",
        "",
        "Sorted by KID (the ranking metric: unbiased at per-class sample sizes), worst first; classes without a KID last.",
        "",
        "| class | synthetic | real | accepted | mean judge confidence | KID | FID | baseline top-1 | augmented top-1 | delta (points) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    accepted = {shard["class_id"]: shard["num_accepted"] for shard in payload["shards"]}
    for class_id in per_class_order(payload["dataset"]["class_ids"], payload["per_class"]):
        summary = payload["per_class"].get(class_id) or {}
        base_class, aug_class = base["in_domain"]["per_class"].get(class_id), aug["in_domain"]["per_class"].get(class_id)
        lines.append(
            f"| {class_id} | {summary.get('n_synthetic', 0)} | {_num(summary.get('n_real'), 'd')} | {accepted.get(class_id, 0)} | "
            f"{_num(summary.get('mean_judge_confidence'))} | {_num(summary.get('kid_mean'), '.4g')} | {_num(summary.get('fid'))} | "
            f"{_pct(base_class)} | {_pct(aug_class)} | {_signed(_minus(aug_class, base_class))} |"
        )
    aux_bn = "on" if profile["augmented"].get("aux_bn") else "off"
    lines += [
        "",
        extractor_note(payload["per_class"]),
        "",
        "## Lineage",
        "",
        f"- baseline model: `{payload['models']['baseline']['url']}` (version {payload['models']['baseline']['version']})",
        f"- augmented model: `{payload['models']['augmented']['url']}` (version {payload['models']['augmented']['version']}), "
        f"synthetic ratio {profile['augmented']['synthetic_ratio']}, auxiliary batch-norm {aux_bn}, trained on these shards:",
        *[
            f"  - `{s['uri']}` sha256 {s['sha256'][:16]}, {s['num_accepted']}/{s['num_rows']} accepted, filter {s['filter_version']}"
            for s in payload["shards"]
        ],
        *_reached_lines(payload["models"]["augmented"].get("lineage", {}).get("synthetic_ratio_by_class")),
        "",
        *(cost_markdown(payload["cost"]) if payload.get("cost") else []),
    ]
    return "\n".join(lines)


def report_cost(shards: list[dict], generator: dict, evaluation: dict) -> dict:
    """The run's cost (lib.cost) from the shards' per-class records, the generator's time and the top-1 gain."""
    models = evaluation["models"]
    delta = _minus(models["classifier_augmented"]["in_domain"]["top1"], models["classifier_baseline"]["in_domain"]["top1"])
    per_class = {shard["class_id"]: shard["cost"] for shard in shards if shard.get("cost")}  # shards of older runs have none
    return run_cost(per_class, generator.get("seconds"), generator.get("device"), delta)
