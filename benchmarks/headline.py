"""The headline experiment: do synthetic images make a Fashion-MNIST classifier better?

    python benchmarks/headline.py [--cache DIR] [--seeds 0 1 2] [--quick]

One command, resumable: every stage caches its product (models, generated images, run results) in
``--cache`` (default ``synthaug_output/headline``) and is skipped when its product exists, so images
are generated once and reused by every classifier run. Results go to
``benchmarks/results/headline.json`` and a Markdown table on stdout (pasted into BENCHMARKS.md).

Everything runs through the pipeline's own library code (the same functions the Dagster assets
call): ``train_generator`` / ``sample_images`` for generation, the judge + ``score_class`` +
``FilterPolicy`` for filtering, ``select_regime`` for the real-data regimes, ``train_classifier`` /
``train_classifier_synthetic_only`` for training and ``evaluate`` / ``evaluate_under_shift`` for
evaluation.

Stages
------
1. ``judge``: the pipeline's judge, trained on the full real training split (scores and features).
2. ``generator_full``: class-conditional DDPM trained on the full training split -- the stand-in for
   a generator pretrained on far more data than the classifier sees.
3. ``samples_full``: ``--per-class`` images per class (``--sampler``, 20 steps, ``--guidance-scale`` 2.5), scored and filtered by the
   pipeline's policy (judge confidence >= 0.5 and judge top-1 == intended class, no train copies,
   no test leaks).
4. ``control``: the honest control -- a generator trained only on the few-shot real images, its
   samples filtered by a judge that was also trained only on those images.
5. Classifier runs (each ``--seeds``): few-shot (k real images per class) real-only, + filtered
   synthetic, + unfiltered synthetic, + control synthetic; scaling (``--scaling-k`` real per class,
   synthetic pool ratio x real per class for ratios 0, 1, 3, 6); CAS (synthetic only) vs real-only
   at the same per-class count. Every run has the same number of optimisation steps.

Few-shot runs use one fixed real subset (data seed 0) so that the control generator is trained on
exactly the images the classifiers see; seeds vary initialisation, batches and augmentation.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from synthaug_pipeline.lib.classifier import (
    load_classifier,
    predict,
    save_classifier,
    synthetic_images_needed,
    train_classifier,
    train_classifier_synthetic_only,
)
from synthaug_pipeline.lib.config import ClassifierConfig, DataConfig, GeneratorConfig
from synthaug_pipeline.lib.datasets import load_dataset
from synthaug_pipeline.lib.diffusion import SAMPLERS, image_seed, load_generator, sample_images, save_generator, train_generator
from synthaug_pipeline.lib.evaluation import CORRUPTIONS, evaluate, evaluate_under_shift
from synthaug_pipeline.lib.filtering import FilterPolicy
from synthaug_pipeline.lib.machine import describe_machine, machine_summary
from synthaug_pipeline.lib.regimes import select_regime
from synthaug_pipeline.lib.scoring import score_class
from synthaug_pipeline.lib.stats import format_pm, summarize_seeds

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "headline.json"
DEFAULT_GUIDANCE = 2.5
SCALING_RATIOS = (0, 1, 3, 6)


def log(message: str) -> None:
    print(f"[{datetime.datetime.now():%H:%M:%S}] {message}", flush=True)


class Cache:
    """One folder per stage product; ``stage_seconds`` records how long each stage took when it ran."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.timings_path = root / "timings.json"
        self.timings: dict[str, float] = json.loads(self.timings_path.read_text()) if self.timings_path.exists() else {}

    def record(self, stage: str, seconds: float) -> None:
        self.timings[stage] = round(seconds, 1)
        self.timings_path.write_text(json.dumps(self.timings, indent=1))

    def path(self, name: str) -> Path:
        return self.root / name


def classifier_cfg(args: argparse.Namespace, seed: int) -> ClassifierConfig:
    return ClassifierConfig(model="synthaug_cnn", steps=args.classifier_steps, batch_size=128, seed=seed)


def train_judge(images: np.ndarray, labels: np.ndarray, num_classes: int, args: argparse.Namespace, cache: Cache, name: str):
    folder = cache.path(name)
    if not (folder / "DONE").exists():
        log(f"{name}: training on {len(images)} images for {args.judge_steps} steps")
        start = time.perf_counter()
        cfg = ClassifierConfig(model="synthaug_cnn", steps=args.judge_steps, batch_size=128, seed=0)
        trained = train_classifier(images, labels, num_classes, cfg)
        save_classifier(trained, str(folder))
        (folder / "DONE").write_text("")
        cache.record(name, time.perf_counter() - start)
    return load_classifier(str(folder)).model


def get_generator(images: np.ndarray, labels: np.ndarray, num_classes: int, steps: int, cache: Cache, name: str):
    folder = cache.path(name)
    if not (folder / "DONE").exists():
        log(f"{name}: training on {len(images)} images for {steps} steps")
        cfg = GeneratorConfig(block_out_channels=[32, 64, 64], train_steps=steps, batch_size=128, seed=0)
        start = time.perf_counter()
        generator = train_generator(
            images, labels, num_classes, cfg, progress=lambda s, loss: log(f"{name}: step {s}/{steps} loss {loss:.4f}")
        )
        save_generator(generator, str(folder))
        (folder / "DONE").write_text("")
        cache.record(name, time.perf_counter() - start)
    return load_generator(str(folder))


def get_samples(
    generator, class_ids: list[str], per_class: int, cache: Cache, name: str, sampler: str, guidance_scale: float
) -> tuple[np.ndarray, np.ndarray]:
    if guidance_scale != DEFAULT_GUIDANCE:  # the default keeps the cache names of earlier runs
        name = f"{name}_g{guidance_scale:g}"
    path = cache.path(f"{name}.npz")
    if not path.exists():
        start = time.perf_counter()
        images, labels = [], []
        for index, class_id in enumerate(class_ids):
            seeds = [image_seed(class_id, i, generator.version) for i in range(per_class)]
            images.append(sample_images(generator, index, seeds, sampler=sampler, steps=20, guidance_scale=guidance_scale, batch_size=200))
            labels.append(np.full(per_class, index, np.int64))
            log(f"{name}: class {class_id} sampled ({(index + 1) * per_class} images, {time.perf_counter() - start:.0f} s)")
        np.savez_compressed(path, images=np.concatenate(images), labels=np.concatenate(labels))
        cache.record(name, time.perf_counter() - start)
    data = np.load(path)
    return data["images"], data["labels"]


def filter_samples(
    judge,
    images: np.ndarray,
    labels: np.ndarray,
    real: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    num_classes: int,
    min_confidence: float = 0.5,
    require_label_match: bool = True,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Accept mask of the pipeline's default policy, and per-class summaries."""
    probs, features = predict(judge, images)
    real_rows = select_regime(real[1], "few_shot", k=min(REAL_FEATURES_PER_CLASS, int(np.bincount(real[1]).min())), seed=0)
    real = (real[0][real_rows], real[1][real_rows])
    _, real_features = predict(judge, real[0])
    _, test_features = predict(judge, test[0])
    policy = FilterPolicy(
        min_confidence=min_confidence, require_label_match=require_label_match, drop_train_copies=True, drop_test_leaks=True
    )
    accepted = np.zeros(len(images), dtype=bool)
    summaries = {}
    for c in range(num_classes):
        rows = np.flatnonzero(labels == c)
        scores = score_class(
            probs[rows],
            features[rows],
            c,
            real_features[real[1] == c],
            "judge:synthaug_cnn/penultimate",
            test_features=test_features[test[1] == c],
        )
        accepted[rows] = policy.apply(scores, c)
        s = scores.summary
        summaries[str(c)] = {
            "accepted": int(accepted[rows].sum()),
            "generated": len(rows),
            "judged_correct": float((scores.judge_top1 == c).mean()),
            "fid": s.get("fid"),
            "kid": s.get("kid"),
            "precision": s.get("precision"),
            "recall": s.get("recall"),
            "train_copies": s.get("train_copies"),
            "test_leaks": s.get("test_leaks"),
        }
    return accepted, summaries


def per_class_pool(
    images: np.ndarray, labels: np.ndarray, per_class: int, num_classes: int
) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """The first ``per_class`` images of each class (images are in seed order, so this is a fixed draw).

    A class with fewer accepted images contributes all it has; the shortfall is returned per class
    (and recorded with the run) rather than hidden.
    """
    keep = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(num_classes)])
    shortfall = {str(c): int(per_class - (labels == c).sum()) for c in range(num_classes) if (labels == c).sum() < per_class}
    if shortfall:
        log(f"pool of {per_class}/class: classes short of accepted images {shortfall}")
    return images[keep], labels[keep], shortfall


REAL_FEATURES_PER_CLASS = 1000  # real images per class that filtering compares against (KID/PRDC cost grows with it)


def run_settings_key(args: argparse.Namespace) -> str:
    """A short hash of every setting that changes a classifier run's result (its cache folder's name)."""
    keys = (
        "generator_steps", "per_class", "control_generator_steps", "control_per_class", "judge_steps", "classifier_steps",
        "few_shot_k", "few_shot_pool", "few_shot_ratio", "scaling_k", "shift_per_class", "corruptions", "severities",
        "min_confidence", "no_label_match", "sampler",
    )
    settings = {key: getattr(args, key) for key in keys}
    if args.guidance_scale != DEFAULT_GUIDANCE:  # the default keeps the keys of earlier runs
        settings["guidance_scale"] = args.guidance_scale
    blob = json.dumps(settings, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def paired_gains(runs: dict[str, list[dict[str, Any]]], baseline: str, metric: str) -> dict[str, dict[str, float]]:
    """Per-seed differences (points) of each run against ``baseline`` at the same seed, summarised."""
    reference = {r["seed"]: r[metric] for r in runs[baseline]}
    gains = {}
    for name, results in runs.items():
        if name == baseline or not all(r["seed"] in reference for r in results):
            continue
        diffs = [100.0 * (r[metric] - reference[r["seed"]]) for r in results]
        gains[name] = {"mean": float(np.mean(diffs)), "std": float(np.std(diffs, ddof=1)) if len(diffs) > 1 else 0.0, "n": len(diffs)}
    return gains


def run_classifier(
    name: str,
    args: argparse.Namespace,
    cache: Cache,
    seed: int,
    real: tuple[np.ndarray, np.ndarray] | None,
    synthetic: tuple[np.ndarray, np.ndarray] | None,
    ratio: float,
    test_full: tuple[np.ndarray, np.ndarray],
    test_shift: tuple[np.ndarray, np.ndarray],
    class_ids: list[str],
) -> dict[str, Any]:
    path = cache.path(f"runs_{run_settings_key(args)}") / f"{name}-s{seed}.json"
    if path.exists():
        return json.loads(path.read_text())
    path.parent.mkdir(exist_ok=True)
    cfg = classifier_cfg(args, seed)
    start = time.perf_counter()
    if real is None:
        trained = train_classifier_synthetic_only(synthetic[0], synthetic[1], len(class_ids), cfg)
    else:
        # A pool that cannot supply ceil(ratio x real) distinct images for some class (a class the
        # filter rejected most of) is oversampled rather than dropped; the run records that it was.
        reuse = bool(synthetic) and ratio > 0 and bool(
            (synthetic_images_needed(np.bincount(real[1], minlength=len(class_ids)), ratio) > np.bincount(synthetic[1], minlength=len(class_ids))).any()
        )
        if reuse:
            log(f"run {name}: the synthetic pool is short of {ratio:g} x real for some class; oversampling it")
        trained = train_classifier(
            real[0],
            real[1],
            len(class_ids),
            cfg,
            synthetic_images=synthetic[0] if synthetic else None,
            synthetic_labels=synthetic[1] if synthetic else None,
            synthetic_ratio=ratio,
            allow_synthetic_reuse=reuse,
        )
    train_seconds = time.perf_counter() - start
    full = evaluate(trained.model, test_full[0], test_full[1], class_ids)
    shift = evaluate_under_shift(trained.model, test_shift[0], test_shift[1], class_ids, args.corruptions, args.severities)
    result = {
        "name": name,
        "seed": seed,
        "num_real": trained.num_real,
        "num_synthetic": trained.num_synthetic,
        "ratio": ratio,
        "synthetic_reuse": bool(trained.config.get("synthetic_reuse", False)),
        "top1": full["top1"],
        "per_class": full["per_class"],
        "shift_subset_top1": shift["in_domain"]["top1"],
        "shifted_mean_top1": shift["shifted_mean_top1"],
        "shift_drop": shift["shift_drop"],
        "shifted": shift["shifted"],
        "train_seconds": round(train_seconds, 1),
        "eval_seconds": round(time.perf_counter() - start - train_seconds, 1),
    }
    path.write_text(json.dumps(result, indent=1))
    log(f"run {name} seed {seed}: top1 {result['top1']:.4f}, shifted {result['shifted_mean_top1']:.4f} ({train_seconds:.0f} s)")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache", default=str(ROOT / "synthaug_output" / "headline"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--few-shot-k", type=int, default=10)
    parser.add_argument("--scaling-k", type=int, default=50)
    parser.add_argument("--per-class", type=int, default=400, help="images generated per class by the full-data generator")
    parser.add_argument(
        "--sampler", default="dpmsolver++", choices=SAMPLERS, help="20 steps (default: the fashion profile's)"
    )
    parser.add_argument("--guidance-scale", type=float, default=DEFAULT_GUIDANCE, help="classifier-free guidance of every sample")
    parser.add_argument("--control-per-class", type=int, default=200, help="images generated per class by the few-shot generator")
    parser.add_argument("--few-shot-pool", type=int, default=150, help="synthetic images per class in every few-shot arm's pool")
    parser.add_argument("--generator-steps", type=int, default=1000)
    parser.add_argument("--control-generator-steps", type=int, default=400)
    parser.add_argument("--judge-steps", type=int, default=1500)
    parser.add_argument("--classifier-steps", type=int, default=400)
    parser.add_argument("--few-shot-ratio", type=float, default=3.0, help="synthetic images per real image in few-shot batches")
    parser.add_argument("--shift-per-class", type=int, default=200, help="test images per class in the corruption suite")
    parser.add_argument("--corruptions", nargs="+", default=None, help="default: every corruption the pipeline has")
    parser.add_argument("--severities", type=int, nargs="+", default=[1, 3, 5])
    parser.add_argument("--min-confidence", type=float, default=0.5, help="filter: judge confidence for the intended class")
    parser.add_argument("--no-label-match", action="store_true", help="filter: accept images the judge assigns to another class")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    args.corruptions = args.corruptions or list(CORRUPTIONS)
    unknown = [c for c in args.corruptions if c not in CORRUPTIONS]
    if unknown:
        parser.error(f"unknown corruptions {unknown}: choose from {', '.join(CORRUPTIONS)}")
    if args.scaling_k * max(SCALING_RATIOS) > args.per_class:
        parser.error(f"--scaling-k {args.scaling_k} x ratio {max(SCALING_RATIOS)} needs more than --per-class {args.per_class} images")

    cache = Cache(Path(args.cache))
    started = time.perf_counter()
    dataset = load_dataset(DataConfig(source="fashion", image_size=32))
    class_ids, num_classes = dataset.class_ids, len(dataset.class_ids)
    train, test = (dataset.train.images, dataset.train.labels), (dataset.test.images, dataset.test.labels)
    shift_rows = select_regime(test[1], "few_shot", k=args.shift_per_class, seed=0)
    test_shift = (test[0][shift_rows], test[1][shift_rows])
    corruption_suite = f"{len(shift_rows)} in the corruption suite"
    log(f"Fashion-MNIST: {len(train[1])} train, {len(test[1])} test ({corruption_suite}); {machine_summary(describe_machine())}")

    # 1-3: judge, full-data generator, its samples, filtered by the pipeline's policy.
    judge = train_judge(*train, num_classes, args, cache, f"judge_full_{args.judge_steps}")
    judge_top1 = evaluate(judge, *test, class_ids)["top1"]
    generator = get_generator(*train, num_classes, args.generator_steps, cache, f"generator_full_{args.generator_steps}")
    samples = get_samples(
        generator,
        class_ids,
        args.per_class,
        cache,
        f"samples_full_{args.generator_steps}_{args.per_class}_{args.sampler}",
        args.sampler,
        args.guidance_scale,
    )
    start = time.perf_counter()
    accepted, full_summary = filter_samples(judge, *samples, train, test, num_classes, args.min_confidence, not args.no_label_match)
    cache.record("filter_full", time.perf_counter() - start)
    filtered = (samples[0][accepted], samples[1][accepted])
    log(f"full generator: {accepted.sum()}/{len(accepted)} accepted; judge test top-1 {judge_top1:.4f}")

    # 4: the honest control -- generator and judge see only the few-shot images.
    few_rows = select_regime(train[1], "few_shot", k=args.few_shot_k, seed=0)
    few = (train[0][few_rows], train[1][few_rows])
    judge_few = train_judge(*few, num_classes, args, cache, f"judge_few_shot_k{args.few_shot_k}_{args.judge_steps}")
    generator_few = get_generator(
        *few, num_classes, args.control_generator_steps, cache, f"generator_few_shot_k{args.few_shot_k}_{args.control_generator_steps}"
    )
    control_samples = get_samples(
        generator_few,
        class_ids,
        args.control_per_class,
        cache,
        f"samples_few_shot_k{args.few_shot_k}_{args.control_generator_steps}_{args.control_per_class}_{args.sampler}",
        args.sampler,
        args.guidance_scale,
    )
    start = time.perf_counter()
    control_accepted, control_summary = filter_samples(
        judge_few, *control_samples, few, test, num_classes, args.min_confidence, not args.no_label_match
    )
    cache.record("filter_control", time.perf_counter() - start)
    control = (control_samples[0][control_accepted], control_samples[1][control_accepted])
    log(f"control generator: {control_accepted.sum()}/{len(control_accepted)} accepted")

    # 5: classifier runs.
    common = {"args": args, "cache": cache, "test_full": test, "test_shift": test_shift, "class_ids": class_ids}
    runs: dict[str, list[dict[str, Any]]] = {}

    def run(name: str, real, synthetic, ratio: float) -> None:
        runs[name] = [run_classifier(name, seed=seed, real=real, synthetic=synthetic, ratio=ratio, **common) for seed in args.seeds]

    # Every few-shot arm draws from a pool of the same size per class (the first --few-shot-pool images
    # in seed order), so filtered vs unfiltered vs control differ in which images, not how many.
    k, pool_size = args.few_shot_k, args.few_shot_pool
    shortfalls: dict[str, dict[str, int]] = {}
    arms = {"synthetic_filtered": filtered, "synthetic_unfiltered": samples, "control_generator": control}
    run(f"few_shot_k{k}_real_only", few, None, 0.0)
    for arm, pool in arms.items():
        images, labels, short = per_class_pool(*pool, pool_size, num_classes)
        shortfalls[f"few_shot_k{k}_{arm}"] = short
        run(f"few_shot_k{k}_{arm}", few, (images, labels), args.few_shot_ratio)

    ks = args.scaling_k
    scaling_rows = select_regime(train[1], "few_shot", k=ks, seed=0)
    scaling_real = (train[0][scaling_rows], train[1][scaling_rows])
    for ratio in SCALING_RATIOS:
        pool = per_class_pool(*filtered, ks * ratio, num_classes) if ratio else None
        shortfalls[f"scaling_k{ks}_ratio{ratio}"] = pool[2] if pool else {}
        run(f"scaling_k{ks}_ratio{ratio}", scaling_real, pool[:2] if pool else None, float(ratio))
    cas_pool = per_class_pool(*filtered, ks, num_classes)
    shortfalls[f"cas_{ks}_synthetic_per_class"] = cas_pool[2]
    run(f"cas_{ks}_synthetic_per_class", None, cas_pool[:2], 0.0)

    total = time.perf_counter() - started
    summary = {
        name: summarize_seeds(results, ["top1", "shifted_mean_top1", "shift_drop", "train_seconds"]) for name, results in runs.items()
    }
    record = {
        "command": shlex.join(["python", "benchmarks/headline.py", *(argv if argv is not None else sys.argv[1:])]),
        "date": datetime.date.today().isoformat(),
        "machine": machine_summary(describe_machine()),
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "cache")},
        "judge_test_top1": judge_top1,
        "stage_seconds": cache.timings,
        "wall_seconds_this_invocation": round(total, 1),
        "generation": {
            "full": {"generated": int(len(accepted)), "accepted": int(accepted.sum()), "per_class": full_summary},
            "control": {"generated": int(len(control_accepted)), "accepted": int(control_accepted.sum()), "per_class": control_summary},
        },
        "pool_shortfall_per_class": shortfalls,
        "summary": summary,
        "paired_gain_points": {
            "few_shot_vs_real_only": {
                metric: paired_gains({n: r for n, r in runs.items() if n.startswith("few_shot")}, f"few_shot_k{k}_real_only", metric)
                for metric in ("top1", "shifted_mean_top1", "shift_drop")
            },
            "scaling_vs_ratio0": {
                metric: paired_gains({n: r for n, r in runs.items() if n.startswith("scaling")}, f"scaling_k{ks}_ratio0", metric)
                for metric in ("top1", "shifted_mean_top1", "shift_drop")
            },
            "cas_vs_real_only_same_size": {
                "top1": paired_gains({n: r for n, r in runs.items() if n.startswith("cas") or n == f"scaling_k{ks}_ratio0"}, f"scaling_k{ks}_ratio0", "top1")
            },
        },
        "runs": runs,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=1))
    print(markdown(record))
    return 0


def markdown(record: dict[str, Any]) -> str:
    lines = [
        f"Command: `{record['command']}`  ",
        f"Machine: {record['machine']}",
        "",
        "| run | real images | synthetic pool | top-1 (%) | corrupted top-1 (%) | drop under shift (pts) | train s/run |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, results in record["runs"].items():
        s = record["summary"][name]
        lines.append(
            f"| {name} | {results[0]['num_real']} | {results[0]['num_synthetic']} | {format_pm(s['top1']['mean'], s['top1']['std'])} | "
            f"{format_pm(s['shifted_mean_top1']['mean'], s['shifted_mean_top1']['std'])} | "
            f"{format_pm(s['shift_drop']['mean'], s['shift_drop']['std'])} | {s['train_seconds']['mean']:.0f} |"
        )
    lines += ["", "| paired with the same seed | vs | top-1 gain (pts) | corrupted top-1 gain (pts) | drop under shift change (pts) |", "|---|---|---|---|---|"]
    for group, metrics in record["paired_gain_points"].items():
        for name, gain in metrics["top1"].items():
            shifted = metrics.get("shifted_mean_top1", {}).get(name)
            drop = metrics.get("shift_drop", {}).get(name)
            cells = [f"{g['mean']:+.1f} ± {g['std']:.1f}" if g else "" for g in (gain, shifted, drop)]
            lines.append(f"| {name} | {group.split('_vs_')[1]} | " + " | ".join(cells) + " |")
    lines += ["", "Stage seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in record["stage_seconds"].items())]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
