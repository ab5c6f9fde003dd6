"""The parts of experiments.md a reviewer reads first: paired gains with 95% intervals, the validation
numbers choices are made on, how much of the retrieval control's gain synthetic images reach, what each
arm cost, and every null or negative result said plainly.

Works on the summary :func:`~synthaug_pipeline.lib.experiment_summary.summarize_experiments` builds (plain dicts),
so it is tested without training anything.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from synthaug_pipeline.lib.stats import format_pm

ARM_LABELS = {
    "filtered": "real + filtered synthetic",
    "unfiltered": "real + unfiltered synthetic",
    "retrieval": "real + retrieved real (retrieval control)",
    "control": "real + same-data generator (control)",
    "photometric": "real + photometric copies of it (augmentation control)",
    "targeted": "real + filtered synthetic shared out by real-only validation error (closed loop)",
}


TARGETED_VALIDATION_NOTE = (
    "targeted: its images were shared out by the real-only run's errors on these same validation images, so its "
    "validation numbers are optimistic; judge it on test."
)


def _points(stat: Mapping[str, Any] | None, signed: bool = True) -> str:
    """``+10.3 ± 0.8 [+8.4, +12.2]`` (points) from a gain stat with a ``ci95``; ``—`` without a mean."""
    if not stat or stat.get("mean") is None:
        return "—"
    text = format_pm(stat["mean"], stat["std"] if stat.get("n", 0) > 1 else None)
    text = f"+{text}" if signed and stat["mean"] >= 0 else text
    interval = stat.get("ci95")
    if interval:
        text += f" [{100 * interval[0]:+.1f}, {100 * interval[1]:+.1f}]"
    return text


def _gain_groups(summary: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [g for g in summary["groups"] if g.get("vs_real_only") and g["vs_real_only"].get("paired_seeds")]


def paired_gains_markdown(summary: Mapping[str, Any]) -> str:
    """One row per group with a real-only partner: top-1 gain, gain under shift and change of the drop, with 95% intervals."""
    groups = _gain_groups(summary)
    if not groups:
        return ""
    rows = [
        "Paired gains vs real-only, test split (points; mean ± std over paired seeds, [95% t-interval]):",
        "",
        "| experiment | arm | paired seeds | top-1 gain | top-1 gain under shift | change of the drop under shift |",
        "|---|---|---|---|---|---|",
    ]
    for g in groups:
        gain = g["vs_real_only"]
        rows.append(
            f"| {g['group']} | {g.get('arm') or '—'} | {gain['paired_seeds']} | {_points(gain.get('top1'))} | "
            f"{_points(gain.get('shifted_mean_top1'))} | {_points(gain.get('shift_drop'))} |"
        )
    return "\n".join(rows)


def validation_markdown(summary: Mapping[str, Any]) -> str:
    """The validation split's numbers per group: what sampler, guidance and filter choices are made on."""
    groups = [g for g in summary["groups"] if g.get("validation")]
    if not groups:
        return ""
    rows = [
        "Validation split (carved from the training data; every choice is made on these numbers, never on test):",
        "",
        "| experiment | top-1 | top-1 under shift | top-1 gain vs real-only | gain under shift vs real-only |",
        "|---|---|---|---|---|",
    ]
    for g in groups:
        v, gain = g["validation"], g.get("validation_vs_real_only") or {}
        rows.append(
            f"| {g['group']} | {format_pm(v['top1']['mean'], v['top1']['std'] if v['top1']['n'] > 1 else None)} | "
            f"{format_pm(v['shifted_mean_top1']['mean'], v['shifted_mean_top1']['std'] if v['shifted_mean_top1']['n'] > 1 else None)} | "
            f"{_points(gain.get('top1'))} | {_points(gain.get('shifted_mean_top1'))} |"
        )
    if any(g.get("arm") == "targeted" for g in groups):
        rows += ["", TARGETED_VALIDATION_NOTE]
    return "\n".join(rows)


def retrieval_shares(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """For every arm beside a retrieval control (same regime, ratio and aux BN): its gain as a share of the retrieval gain.

    The retrieval arm trains on the same number of extra images, but real ones from the generator's training
    pool: roughly the most a generator trained on that pool could hand back. Share = arm gain / retrieval gain
    (mean paired top-1 gains, test split); None when the retrieval gain is not positive.
    """
    by_key: dict[tuple, dict[str, Mapping[str, Any]]] = {}
    for g in _gain_groups(summary):
        by_key.setdefault((g["regime"], g["ratio"], g["aux_bn"]), {})[g.get("arm") or "filtered"] = g
    shares = []
    for (regime, ratio, aux_bn), arms in by_key.items():
        retrieval = arms.get("retrieval")
        if retrieval is None:
            continue
        reference = {m: (retrieval["vs_real_only"].get(m) or {}).get("mean") for m in ("top1", "shifted_mean_top1")}
        for arm, g in arms.items():
            if arm == "retrieval":
                continue
            entry = {"group": g["group"], "arm": arm, "retrieval_group": retrieval["group"], "regime": regime, "ratio": ratio}
            for m, ref in reference.items():
                mean = (g["vs_real_only"].get(m) or {}).get("mean")
                entry[m] = None if mean is None or ref is None or ref <= 0 else mean / ref
            shares.append(entry)
    return shares


def retrieval_markdown(summary: Mapping[str, Any]) -> str:
    shares = retrieval_shares(summary)
    if not shares:
        return ""
    rows = [
        "How much of the retrieval control's gain each arm reaches (its paired gain / the retrieval arm's, same regime and ratio; "
        "retrieval = the same number of extra REAL images from the generator's training pool):",
        "",
        "| experiment | vs | share of the top-1 gain | share of the gain under shift |",
        "|---|---|---|---|",
    ]
    for s in shares:
        cells = ["—" if s[m] is None else f"{100 * s[m]:.0f}%" for m in ("top1", "shifted_mean_top1")]
        rows.append(f"| {s['group']} | {s['retrieval_group']} | {cells[0]} | {cells[1]} |")
    return "\n".join(rows)


def arm_comparison_markdown(summary: Mapping[str, Any]) -> str:
    """Filtered minus each other arm, paired by seed (the same real images in both runs of a seed), with 95% intervals."""
    rows = []
    for g in summary["groups"]:
        for arm, cmp in (g.get("vs_arms") or {}).items():
            test, validation = cmp["test"] or {}, cmp["validation"] or {}
            rows.append(
                f"| {g['group']} | {cmp['group']} | {_points(test.get('top1'))} | {_points(test.get('shifted_mean_top1'))} "
                f"| {_points(validation.get('top1'))} | {_points(validation.get('shifted_mean_top1'))} |"
            )
    if not rows:
        return ""
    return "\n".join(
        [
            "The filtered arm against each other arm (filtered minus the other, paired by seed; points, [95% interval]; "
            "positive: the filter's images did better):",
            "",
            "| filtered | against | top-1, test | under shift, test | top-1, validation | under shift, validation |",
            "|---|---|---|---|---|---|",
            *rows,
            *(
                ["", TARGETED_VALIDATION_NOTE]
                if any(cmp["group"].endswith("-targeted") or "-targeted-" in cmp["group"] for g in summary["groups"] for cmp in (g.get("vs_arms") or {}).values())
                else []
            ),
        ]
    )


def cost_markdown(summary: Mapping[str, Any]) -> str:
    """Wall time per run of each group, and the shared costs (generators, sampling) the arms draw on."""
    groups = [g for g in summary["groups"] if (g.get("seconds") or {}).get("seconds", {}).get("mean") is not None]
    if not groups:
        return ""
    rows = ["Wall time per run (seconds, mean over seeds; same classifier steps in every run):", "", "| experiment | train | evaluate |", "|---|---|---|"]
    for g in groups:
        seconds = g["seconds"]
        evaluate = seconds.get("eval_seconds", {}).get("mean")
        rows.append(f"| {g['group']} | {seconds['seconds']['mean']:.0f} | {'—' if evaluate is None else f'{evaluate:.0f}'} |")
    costs = summary.get("costs") or {}
    if costs:
        shared = "; ".join(f"{name} {value:.0f} s" for name, value in costs.items() if value is not None)
        rows += ["", f"Shared costs the arms draw on (seconds, last materialization): {shared}."]
    return "\n".join(rows)


def plain_findings(summary: Mapping[str, Any]) -> list[str]:
    """Sentences for every null or negative result: a gain whose 95% interval includes 0, a negative mean gain."""
    findings = []
    for g in _gain_groups(summary):
        for metric, label in (("top1", "top-1"), ("shifted_mean_top1", "top-1 under shift")):
            stat = g["vs_real_only"].get(metric) or {}
            if stat.get("mean") is None:
                continue
            interval = stat.get("ci95")
            if stat["mean"] < 0:
                findings.append(f"{g['group']}: {label} is LOWER than real only ({_points(stat)} points).")
            elif interval is None:
                findings.append(f"{g['group']}: {label} gain {_points(stat)} points from one paired seed: no spread, not a finding yet.")
            elif interval[0] <= 0:
                findings.append(f"{g['group']}: {label} gain {_points(stat)} points is within seed noise (the 95% interval includes 0).")
    return findings


def headline_sections(summary: Mapping[str, Any]) -> list[str]:
    """The extra sections of experiments.md, in reading order (empty ones left out)."""
    sections = [
        paired_gains_markdown(summary), arm_comparison_markdown(summary), retrieval_markdown(summary), validation_markdown(summary), cost_markdown(summary)
    ]
    findings = plain_findings(summary)
    if findings:
        sections.append("Null and negative results:\n\n" + "\n".join(f"- {f}" for f in findings))
    return [s for s in sections if s]


def headline_lines(summary: Mapping[str, Any], arms: Sequence[str] = ("filtered",)) -> list[str]:
    """The few lines a terminal ends with: each gain group's paired top-1 gain and gain under shift, with intervals."""
    lines = []
    for g in _gain_groups(summary):
        if (g.get("arm") or "filtered") not in arms:
            continue
        gain = g["vs_real_only"]
        lines.append(
            f"{g['group']} ({ARM_LABELS.get(g.get('arm') or 'filtered', g.get('arm'))}) vs real only, {gain['paired_seeds']} seeds: "
            f"top-1 {_points(gain.get('top1'))} points, under shift {_points(gain.get('shifted_mean_top1'))} points"
        )
    return lines


def comparison_lines(summary: Mapping[str, Any]) -> list[str]:
    """One terminal line per arm the filtered arm was compared with (filtered minus it, paired by seed, test split)."""
    lines = []
    for g in summary["groups"]:
        for arm, cmp in (g.get("vs_arms") or {}).items():
            test = cmp["test"] or {}
            lines.append(
                f"{g['group']} filtered minus {arm} ({cmp['group']}), {test.get('paired_seeds', 0)} seeds: "
                f"top-1 {_points(test.get('top1'))} points, under shift {_points(test.get('shifted_mean_top1'))} points"
            )
    return lines
