"""`synthaug bench scoring`: how fast per-class scoring runs, and how it grows with the number of classes.

    python -m synthaug_pipeline.bench_scoring [--profile digits] [--set key=value ...] [--judge DIR]
        [--extractors judge,efficientnet_lite0] [--images-per-class 100]
        [--scale-classes 10,100,1000] [--scale-images 100] [--scale-real 100] [--scale-test 50]
        [--scale-dims 128,2048] [--out benchmarks/results/scoring.json]

*Throughput on the profile's data* (digits by default): for every class, what ``synthetic_scores``
does: judge forward (probabilities; also the features when the extractor is the judge), feature
extraction with another extractor if asked, then :func:`~synthaug_pipeline.lib.scoring.score_class`
(FID, KID, PRDC, diversity, nearest real/test distances, copy/leak flags). Scoring cost does not
depend on what an image shows, so the scored images are the class's held-out test images repeated
with +-8 grey levels of noise up to ``--images-per-class`` (no generator to train). Real-image
features (train + test, computed once per class by ``real_features``) are timed separately.

*Growth with classes*: ``score_class`` on random Gaussian features of ``--scale-images`` synthetic,
``--scale-real`` real and ``--scale-test`` test rows per class in ``D`` dimensions, for 10, 100 and
1000 classes (judge probabilities over all classes). The per-class work is independent, so the total
should grow linearly; the numbers show whether it does. Writes a JSON record and prints a Markdown
snippet. No Dagster here.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from synthaug_pipeline.lib.classifier import load_classifier, train_classifier
from synthaug_pipeline.lib.config import ProfileError, load_profile
from synthaug_pipeline.lib.datasets import load_dataset, validation_split
from synthaug_pipeline.lib.features import FeatureExtractorError, build_feature_extractor, judge_name, judge_probs_and_features
from synthaug_pipeline.lib.machine import describe_machine, finish_machine, machine_summary
from synthaug_pipeline.lib.metrics import frechet_distance, kernel_inception_distance, manifold_metrics
from synthaug_pipeline.lib.scoring import score_class


def _ints(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


def stand_in_images(real: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` images made from ``real`` (repeated, +-8 grey levels of noise): scoring inputs of a realistic size."""
    rng = np.random.default_rng(seed)
    picked = real[rng.integers(0, len(real), size=n)].astype(np.int16)
    return np.clip(picked + rng.integers(-8, 9, size=picked.shape), 0, 255).astype(np.uint8)


def profile_throughput(dataset, judge, judge_features_name: str, scoring_cfg, extractor_kind: str, n: int) -> dict:
    """Images/s of judge, features and metrics over every class of ``dataset`` (see the module docstring)."""
    cfg = scoring_cfg.model_copy(update={"feature_extractor": extractor_kind})
    started = time.perf_counter()
    extractor = build_feature_extractor(cfg, judge_model=judge, judge_features_name=judge_features_name)
    load_seconds = time.perf_counter() - started
    seconds = {"judge_and_features": 0.0, "metrics": 0.0, "real_features": 0.0}
    real_images = 0
    per_class = {}
    for index, class_id in enumerate(dataset.class_ids):
        train, test = dataset.train.of_class(index), dataset.test.of_class(index)
        images = stand_in_images(test if len(test) else train, n, seed=index)
        start = time.perf_counter()
        train_features, test_features = extractor.extract(train), extractor.extract(test)
        seconds["real_features"] += time.perf_counter() - start
        real_images += len(train) + len(test)
        start = time.perf_counter()
        probs, features = judge_probs_and_features(judge, extractor, images)
        seconds["judge_and_features"] += time.perf_counter() - start
        start = time.perf_counter()
        scores = score_class(
            probs,
            features,
            index,
            train_features,
            extractor.name,
            kid_subset_size=cfg.kid_subset_size,
            test_features=test_features,
            duplicate_fraction=cfg.duplicate_fraction,
            prdc_k=cfg.prdc_k,
        )
        seconds["metrics"] += time.perf_counter() - start
        per_class[class_id] = {k: scores.summary[k] for k in ("fid", "kid_mean", "precision", "recall", "train_copies", "test_leaks")}
    total = len(dataset.class_ids) * n
    scoring_seconds = seconds["judge_and_features"] + seconds["metrics"]
    return {
        "extractor": extractor.name,
        "feature_dim": extractor.dim,
        "extractor_load_seconds": load_seconds,
        "classes": len(dataset.class_ids),
        "images_per_class": n,
        "scored_images": total,
        "real_images": real_images,
        "seconds": seconds,
        "images_per_second": {
            "judge_and_features": total / seconds["judge_and_features"],
            "metrics": total / seconds["metrics"],
            "scoring_total": total / scoring_seconds,
            "real_features": real_images / seconds["real_features"],
        },
        "per_class": per_class,
    }


def _random_class(rng: np.random.Generator, n: int, m: int, t: int, dim: int, num_classes: int, class_index: int):
    shift = rng.normal(scale=0.3, size=dim)
    probs = rng.dirichlet(np.ones(num_classes), size=n)
    return probs, rng.normal(size=(n, dim)) + shift, rng.normal(size=(m, dim)), rng.normal(size=(t, dim))


def scaling(class_counts: list[int], n: int, m: int, t: int, dims: list[int], seed: int = 0) -> dict:
    """Seconds of ``score_class`` over ``C`` classes of random features, for each ``C`` and ``D``."""
    rows = []
    for dim in dims:
        for classes in class_counts:
            rng = np.random.default_rng(seed)
            seconds = 0.0
            for c in range(classes):
                probs, syn, real, test = _random_class(rng, n, m, t, dim, classes, c)
                start = time.perf_counter()
                score_class(probs, syn, c, real, f"random:{dim}", test_features=test)
                seconds += time.perf_counter() - start
            rows.append(
                {"dim": dim, "classes": classes, "seconds": seconds, "ms_per_class": 1000 * seconds / classes, "images": classes * n}
            )
    breakdown = {}
    metrics = {
        "fid": lambda syn, real: frechet_distance(syn, real),
        "kid": lambda syn, real: kernel_inception_distance(syn, real),
        "prdc": lambda syn, real: manifold_metrics(real, syn),
    }
    for dim in dims:  # where the time goes, per class, on 20 classes
        rng = np.random.default_rng(seed + 1)
        parts = dict.fromkeys(metrics, 0.0)
        for _ in range(20):
            _, syn, real, _ = _random_class(rng, n, m, t, dim, 2, 0)
            for name, metric in metrics.items():
                start = time.perf_counter()
                metric(syn, real)
                parts[name] += time.perf_counter() - start
        breakdown[str(dim)] = {k: 1000 * v / 20 for k, v in parts.items()}
    return {
        "synthetic_per_class": n,
        "real_per_class": m,
        "test_per_class": t,
        "rows": rows,
        "breakdown_ms_per_class": breakdown,
    }


def markdown(record: dict) -> str:
    """Tables for BENCHMARKS.md, with the command and machine."""
    lines = [
        f"Command: `{record['command']}`  ",
        f"Machine: {machine_summary(record['machine'])}. Date: {record['date']}.",
        "",
        f"Per-class scoring on `{record['settings']['profile']}` ({record['throughput'][0]['classes']} classes x "
        f"{record['throughput'][0]['images_per_class']} scored images; judge `{record['settings']['judge']['model']}`):",
        "",
        "| features | dim | judge + features (img/s) | metrics (img/s) | scoring total (img/s) | real features (img/s) |",
        "|---|---|---|---|---|---|",
    ]
    for row in record["throughput"]:
        ips = row["images_per_second"]
        lines.append(
            f"| `{row['extractor']}` | {row['feature_dim']} | {ips['judge_and_features']:,.0f} | {ips['metrics']:,.0f} | "
            f"{ips['scoring_total']:,.0f} | {ips['real_features']:,.0f} |"
        )
    for skipped in record.get("skipped_extractors", []):
        lines.append(f"| {skipped['extractor']} | | skipped: {skipped['reason']} | | | |")
    s = record["scaling"]
    lines += [
        "",
        f"`score_class` on random features, {s['synthetic_per_class']} synthetic / {s['real_per_class']} real / "
        f"{s['test_per_class']} test rows per class:",
        "",
        "| dim | classes | seconds | ms per class |",
        "|---|---|---|---|",
        *[f"| {r['dim']} | {r['classes']:,} | {r['seconds']:.2f} | {r['ms_per_class']:.1f} |" for r in s["rows"]],
        "",
        "Per-class cost by metric (ms): "
        + "; ".join(
            f"D={dim}: " + ", ".join(f"{k} {v:.1f}" for k, v in parts.items()) for dim, parts in s["breakdown_ms_per_class"].items()
        ),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="synthaug bench scoring", description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="digits", help="profile name or YAML path (default digits)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a profile field")
    parser.add_argument("--judge", default=None, help="reuse a judge saved by save_classifier instead of training one")
    parser.add_argument("--extractors", default="judge", help="comma-separated feature extractors to time (default judge)")
    parser.add_argument("--images-per-class", type=int, default=100, help="scored images per class (default 100)")
    parser.add_argument("--scale-classes", type=_ints, default=[10, 100, 1000], help="class counts for the growth test")
    parser.add_argument("--scale-images", type=int, default=100, help="synthetic rows per class in the growth test")
    parser.add_argument("--scale-real", type=int, default=100, help="real training rows per class in the growth test")
    parser.add_argument("--scale-test", type=int, default=50, help="real test rows per class in the growth test")
    parser.add_argument("--scale-dims", type=_ints, default=[128, 2048], help="feature dimensions for the growth test")
    parser.add_argument("--out", default="benchmarks/results/scoring.json", help="JSON path")
    args = parser.parse_args(argv)
    if args.images_per_class < 2 or args.scale_images < 2 or args.scale_real < 2:
        parser.error("image counts must be at least 2 (FID and KID need two samples)")
    try:
        profile = load_profile(args.profile, args.overrides)
        dataset = load_dataset(profile.data)
    except ProfileError as exc:
        print(f"synthaug bench scoring: error: {exc}", file=sys.stderr)
        return 2
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    info = describe_machine()

    if args.judge:
        trained = load_classifier(args.judge)
    else:
        log(f"training judge ({profile.judge.steps} steps, not timed) ...")
        trained = train_classifier(
            dataset.train.images, dataset.train.labels, len(dataset.class_ids), profile.judge, validation=validation_split(dataset)
        )
    judge = trained.model.eval()
    features_name = judge_name(trained.config["model"], trained.version or "unsaved")

    throughput, skipped = [], []
    for kind in [k.strip() for k in args.extractors.split(",") if k.strip()]:
        log(f"scoring {len(dataset.class_ids)} classes x {args.images_per_class} images with {kind} features ...")
        try:
            throughput.append(profile_throughput(dataset, judge, features_name, profile.scoring, kind, args.images_per_class))
        except FeatureExtractorError as exc:
            skipped.append({"extractor": kind, "reason": str(exc)})
            log(f"skipped {kind}: {exc}")
    if not throughput:
        print("synthaug bench scoring: error: no feature extractor could be built", file=sys.stderr)
        return 2
    log(f"growth: classes {args.scale_classes}, dims {args.scale_dims} ...")
    growth = scaling(args.scale_classes, args.scale_images, args.scale_real, args.scale_test, args.scale_dims)

    finish_machine(info)
    record = {
        "command": shlex.join(["python", "-m", "synthaug_pipeline.bench_scoring", *(argv if argv is not None else sys.argv[1:])]),
        "machine": info,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "settings": {
            "profile": profile.name,
            "overrides": args.overrides,
            "classes": dataset.class_ids,
            "judge": {"path": args.judge, "model": trained.config["model"], "steps": trained.config["steps"]},
            "scoring": profile.scoring.model_dump(mode="json"),
            "torch_threads": torch.get_num_threads(),
        },
        "throughput": throughput,
        "skipped_extractors": skipped,
        "scaling": growth,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(markdown(record))
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
