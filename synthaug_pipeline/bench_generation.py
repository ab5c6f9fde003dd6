"""`synthaug bench generation`: our sampler against the one a user would otherwise run.

    python -m synthaug_pipeline.bench_generation [--profile digits] [--set key=value ...]
        [--images-per-class 20] [--generator DIR] [--judge DIR] [--save-models DIR] [--out FILE]
    synthaug bench generation --backend text2img|dit [...]   # pretrained architectures: see bench_pretrained

*Fast path*: :func:`sample_images` with the profile's sampler, step count, guidance scale and batch
size (DDIM 20 steps by default, guidance as one batched forward on ``[x, x]``).
*Baseline*: :func:`sample_images_naive`, the diffusers default for the same model (all
``num_train_timesteps`` ancestral DDPM steps, guidance as two forwards). Both draw the same number of
images per class with the same guidance scale; only sampling is timed (not model loading or training).

Quality is measured with a judge classifier trained on the real training split: the share of samples
whose judge top-1 is the intended class, and FID-style distances on judge penultimate features,
per class (vs that class's real training images, averaged over classes) and pooled (all samples vs
all real training images). With ~20 samples per class the per-class FID is biased upward; the pooled
FID is the steadier number, and the ``real_reference`` row (real test images scored the same way)
shows the floor. Writes a JSON record and prints a Markdown snippet. No Dagster here.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from synthaug_pipeline.lib.classifier import load_classifier, predict, save_classifier, train_classifier
from synthaug_pipeline.lib.config import ProfileError, load_profile
from synthaug_pipeline.lib.datasets import load_dataset, validation_split
from synthaug_pipeline.lib.diffusion import train_generator
from synthaug_pipeline.lib.diffusion_sampling import image_seed, sample_images, sample_images_naive
from synthaug_pipeline.lib.diffusion_store import load_generator, save_generator
from synthaug_pipeline.lib.machine import describe_machine, finish_machine, machine_summary
from synthaug_pipeline.lib.metrics import frechet_distance, mean_pairwise_distance

TARGET_SPEEDUP = 30.0  # fast images/s over baseline images/s
TARGET_SHARE_POINTS = 2.0  # judged-correct share may fall at most this many points below the baseline's
TARGET_FID_RELATIVE = 0.10  # mean per-class FID may exceed the baseline's by at most 10%


def quality(images: dict[int, np.ndarray], judge, real_features: dict[int, np.ndarray], class_ids: list[str]) -> dict:
    """Judged-correct share, per-class / pooled FID-style distances and diversity of ``{class_index: images}``.

    ``diversity_ratio``: mean pairwise distance of a class's judge features over that of its real
    images (1 = as varied as the real class). Small-sample FID barely notices samples that are all
    alike; this does (guided samplers can collapse toward the class prototype).
    """
    correct, per_class, pooled = 0, {}, []
    for index, batch in images.items():
        probs, features = predict(judge, batch)
        hits = int((probs.argmax(axis=1) == index).sum())
        correct += hits
        pooled.append(features)
        enough = len(batch) >= 2
        fid = frechet_distance(features, real_features[index]) if enough else None
        real_diversity = mean_pairwise_distance(real_features[index]) if len(real_features[index]) >= 2 else 0.0
        ratio = mean_pairwise_distance(features) / real_diversity if enough and real_diversity > 0 else None
        per_class[class_ids[index]] = {"judged_correct_share": hits / len(batch), "fid": fid, "diversity_ratio": ratio}
    total = sum(len(b) for b in images.values())
    fids = [c["fid"] for c in per_class.values() if c["fid"] is not None]
    ratios = [c["diversity_ratio"] for c in per_class.values() if c["diversity_ratio"] is not None]
    all_real = np.concatenate(list(real_features.values()))
    return {
        "images": total,
        "judged_correct_share": correct / total,
        "mean_class_fid": float(np.mean(fids)) if fids else None,
        "pooled_fid": frechet_distance(np.concatenate(pooled), all_real) if total >= 2 else None,
        "mean_diversity_ratio": float(np.mean(ratios)) if ratios else None,
        "per_class": per_class,
    }


def _relative(new: float | None, old: float | None) -> float | None:
    return None if new is None or not old else new / old - 1.0


def markdown(record: dict) -> str:
    """A Markdown table (baseline vs fast, targets) and the command line, for BENCHMARKS.md."""
    fast, naive, ref, cmp, tgt = record["fast"], record["naive"], record["real_reference"], record["comparison"], record["targets"]
    s = record["settings"]

    def fmt(value, spec=".3g"):
        return "n/a" if value is None else format(value, spec)

    def met(key):
        return "met" if tgt[key]["met"] else "**missed**"

    rows = [
        "| | baseline (naive) | fast path | real test images | fast vs baseline | target |",
        "|---|---|---|---|---|---|",
        f"| images/s | {fmt(naive['images_per_second'])} | {fmt(fast['images_per_second'])} | | **{cmp['speedup']:.1f}x** | >= {TARGET_SPEEDUP:g}x: {met('speedup')} |",
        f"| judged as intended class | {naive['judged_correct_share']:.1%} | {fast['judged_correct_share']:.1%} | {ref['judged_correct_share']:.1%} "
        f"| {cmp['share_diff_points']:+.1f} pts (s.e. {cmp['share_diff_stderr_points']:.1f}) | >= -{TARGET_SHARE_POINTS:g} pts: {met('judged_correct_share')} |",
        f"| FID per class (mean) | {fmt(naive['mean_class_fid'])} | {fmt(fast['mean_class_fid'])} | {fmt(ref['mean_class_fid'])} "
        f"| {fmt(cmp['mean_class_fid_relative'], '+.1%')} | <= +{TARGET_FID_RELATIVE:.0%}: {met('mean_class_fid')} |",
        f"| FID pooled | {fmt(naive['pooled_fid'])} | {fmt(fast['pooled_fid'])} | {fmt(ref['pooled_fid'])} | {fmt(cmp['pooled_fid_relative'], '+.1%')} | (reported) |",
        f"| feature diversity / real (per class, mean) | {fmt(naive.get('mean_diversity_ratio'), '.2f')} | {fmt(fast.get('mean_diversity_ratio'), '.2f')} "
        f"| {fmt(ref.get('mean_diversity_ratio'), '.2f')} | | (reported) |",
    ]
    return "\n".join(
        [
            f"Command: `{record['command']}`  ",
            f"Machine: {machine_summary(record['machine'])}. Date: {record['date']}.  ",
            f"Fast: {s['fast']['sampler']} {s['fast']['steps']} steps, guidance {s['guidance_scale']} (one batched forward). "
            f"Baseline: ancestral DDPM {s['naive']['steps']} steps, guidance as two forwards. "
            f"{s['images_per_class']} images x {len(s['classes'])} classes per path; generator trained for "
            f"{s['generator']['train_steps']} steps ({fmt(s['generator']['train_seconds'], '.0f')} s, not in the ratio).",
            "",
            *rows,
        ]
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a == "--backend" or a.startswith("--backend=") for a in argv):  # pretrained architectures on a GPU: its own benchmark
        from synthaug_pipeline.bench_pretrained import main as bench_pretrained

        return bench_pretrained(argv)
    parser = argparse.ArgumentParser(
        prog="synthaug bench generation",
        description=__doc__.split("\n")[0],
        epilog="With --backend text2img|dit: the pretrained-architecture GPU benchmark (synthaug bench generation --backend dit --help).",
    )
    parser.add_argument("--profile", default="digits", help="profile name or YAML path (default digits)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a profile field")
    parser.add_argument("--images-per-class", type=int, default=20, help="images per class and path (default 20: the baseline is slow)")
    parser.add_argument("--generator", default=None, help="reuse a generator saved by save_generator instead of training one")
    parser.add_argument("--judge", default=None, help="reuse a judge saved by save_classifier instead of training one")
    parser.add_argument(
        "--save-models", default=None, metavar="DIR", help="save the trained generator and judge to DIR/generator, DIR/judge"
    )
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/generation_<profile>.json)")
    args = parser.parse_args(argv)
    if args.images_per_class < 2:
        parser.error("--images-per-class must be at least 2 (FID needs two samples)")
    try:
        profile = load_profile(args.profile, args.overrides)
        dataset = load_dataset(profile.data)
    except ProfileError as exc:
        print(f"synthaug bench generation: error: {exc}", file=sys.stderr)
        return 2
    cfg, n, num_classes = profile.generator, args.images_per_class, len(dataset.class_ids)
    info = describe_machine(device="cpu")  # both paths sample on the CPU
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731

    if args.generator:
        generator, train_seconds = load_generator(args.generator), None
    else:
        log(f"training generator ({cfg.train_steps} steps) ...")
        generator = train_generator(dataset.train.images, dataset.train.labels, num_classes, cfg)
        train_seconds = generator.seconds
    if (generator.config["num_classes"], generator.config["image_size"]) != (num_classes, dataset.image_shape[0]):
        print("synthaug bench generation: error: the generator does not fit this profile's classes or image size", file=sys.stderr)
        return 2
    if args.judge:
        judge = load_classifier(args.judge)
    else:
        log(f"training judge ({profile.judge.steps} steps) ...")
        judge = train_classifier(dataset.train.images, dataset.train.labels, num_classes, profile.judge, validation=validation_split(dataset))
    if args.save_models:
        save_generator(generator, f"{args.save_models}/generator")
        save_classifier(judge, f"{args.save_models}/judge")
    judge_top1 = float((predict(judge.model, dataset.test.images)[0].argmax(axis=1) == dataset.test.labels).mean())
    real_features = {c: predict(judge.model, dataset.train.of_class(c))[1] for c in range(num_classes)}

    sample_images(generator, 0, [0, 1], sampler=cfg.sampler, steps=min(2, cfg.sample_steps), guidance_scale=cfg.guidance_scale)  # warm-up
    fast_images, naive_images, seconds = {}, {}, {"fast": 0.0, "naive": 0.0}
    for c, class_id in enumerate(dataset.class_ids):  # interleaved, so a change in machine load hits both paths
        seeds = [image_seed(class_id, i, generator.version) for i in range(n)]
        start = time.perf_counter()
        fast_images[c] = sample_images(
            generator,
            c,
            seeds,
            sampler=cfg.sampler,
            steps=cfg.sample_steps,
            guidance_scale=cfg.guidance_scale,
            batch_size=cfg.sample_batch_size,
        )
        seconds["fast"] += time.perf_counter() - start
        start = time.perf_counter()
        naive_images[c] = sample_images_naive(generator, c, n, cfg.guidance_scale, seed=cfg.seed * 1000 + c)
        seconds["naive"] += time.perf_counter() - start
        log(f"class {class_id}: fast {seconds['fast']:.1f} s, naive {seconds['naive']:.1f} s (cumulative)")

    fast, naive = (
        quality(fast_images, judge.model, real_features, dataset.class_ids),
        quality(naive_images, judge.model, real_features, dataset.class_ids),
    )
    reference = quality({c: dataset.test.of_class(c)[:n] for c in range(num_classes)}, judge.model, real_features, dataset.class_ids)
    for name, result in (("fast", fast), ("naive", naive)):
        result["seconds"] = seconds[name]
        result["images_per_second"] = result["images"] / seconds[name]
    share_diff = fast["judged_correct_share"] - naive["judged_correct_share"]
    stderr = math.sqrt(sum(r["judged_correct_share"] * (1 - r["judged_correct_share"]) / r["images"] for r in (fast, naive)))
    comparison = {
        "speedup": fast["images_per_second"] / naive["images_per_second"],
        "share_diff_points": 100 * share_diff,
        "share_diff_stderr_points": 100 * stderr,  # binomial standard error of the difference
        "mean_class_fid_relative": _relative(fast["mean_class_fid"], naive["mean_class_fid"]),
        "pooled_fid_relative": _relative(fast["pooled_fid"], naive["pooled_fid"]),
    }
    fid_rel = comparison["mean_class_fid_relative"]
    finish_machine(info)
    record = {
        "command": shlex.join(["python", "-m", "synthaug_pipeline.bench_generation", *(argv if argv is not None else sys.argv[1:])]),
        "machine": info,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "settings": {
            "profile": profile.name,
            "overrides": args.overrides,
            "classes": dataset.class_ids,
            "images_per_class": n,
            "guidance_scale": cfg.guidance_scale,
            "fast": {
                "sampler": cfg.sampler,
                "steps": cfg.sample_steps,
                "batch_size": cfg.sample_batch_size,
                "guidance": "one batched forward on [x, x]",
            },
            "naive": {
                "sampler": "ddpm (ancestral)",
                "steps": generator.config["num_train_timesteps"],
                "batch_size": n,
                "guidance": "two forwards",
            },
            "generator": {
                "path": args.generator,
                "version": generator.version or None,
                "train_steps": generator.config["total_train_steps"],
                "train_seconds": train_seconds,
                "num_parameters": generator.num_parameters,
            },
            "judge": {"path": args.judge, "model": judge.config["model"], "steps": judge.config["steps"], "test_top1": judge_top1},
        },
        "fast": fast,
        "naive": naive,
        "real_reference": reference,
        "comparison": comparison,
        "targets": {
            "speedup": {"target": f">= {TARGET_SPEEDUP:g}", "met": comparison["speedup"] >= TARGET_SPEEDUP},
            "judged_correct_share": {
                "target": f"fast - baseline >= -{TARGET_SHARE_POINTS:g} points",
                "met": comparison["share_diff_points"] >= -TARGET_SHARE_POINTS,
            },
            "mean_class_fid": {
                "target": f"fast <= baseline * {1 + TARGET_FID_RELATIVE:g}",
                "met": fid_rel is not None and fid_rel <= TARGET_FID_RELATIVE,
            },
        },
    }
    record["all_targets_met"] = all(t["met"] for t in record["targets"].values())
    out = Path(args.out or f"benchmarks/results/generation_{profile.name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(markdown(record))
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
