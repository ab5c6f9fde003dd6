"""Sanity check of the imagenet profile's judge: EfficientNet-Lite0 (the `imagenet` extra's pip weights, used as-is)
on real ImageNet photos, through the same code the pipeline runs (the imagenet data source, the pretrained judge
and its wnid -> output mapping, predict). A wrong mapping scores ~0.1% top-1; a right one near the model's ~75%.

    python benchmarks/imagenet_judge.py [--data ../shared/datasets/imagenet-samples/samples.parquet] [--size 224]

Also scores the ImageNet-100 subset (the judge keeps those 100 logits). Prints a Markdown block and writes
benchmarks/results/imagenet_judge.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from digits_run import git_commit  # noqa: E402

from synthaug_pipeline.lib.classifier import predict  # noqa: E402
from synthaug_pipeline.lib.config import ClassifierConfig, DataConfig  # noqa: E402
from synthaug_pipeline.lib.datasets import load_dataset  # noqa: E402
from synthaug_pipeline.lib.machine import describe_machine, finish_machine, machine_summary  # noqa: E402
from synthaug_pipeline.lib.pretrained_classifiers import LITE0_PACKAGE, pretrained_judge  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "imagenet-samples" / "samples.parquet"


def score(data: str, size: int, classes, batch_size: int) -> dict:
    dataset = load_dataset(DataConfig(source="imagenet", path=data, image_size=size, channels=3, classes=classes))
    images, labels = dataset.train.images, dataset.train.labels  # one photo per class, nothing held out
    judge = pretrained_judge(ClassifierConfig(model="tf_efficientnet_lite0", pretrained=LITE0_PACKAGE), dataset.class_ids, images)
    started = time.perf_counter()
    probs, _ = predict(judge.model, images, batch_size=batch_size)
    seconds = time.perf_counter() - started
    top5 = np.argsort(-probs, axis=1)[:, :5]
    return {
        "classes": len(dataset.class_ids),
        "images": int(len(images)),
        "top1": float((probs.argmax(1) == labels).mean()),
        "top5": float((top5 == labels[:, None]).any(axis=1).mean()),
        "mean_confidence_true_class": float(probs[np.arange(len(labels)), labels].mean()),
        "predict_seconds": round(seconds, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=str(DEFAULT_DATA.resolve()))
    parser.add_argument("--size", type=int, default=224, help="data.image_size: the photos (160 px) are resized to it")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "imagenet_judge.json"))
    args = parser.parse_args()
    commit, dirty = git_commit()
    machine = describe_machine()
    results = {
        "all_1000": score(args.data, args.size, None, args.batch_size),
        "imagenet100": score(args.data, args.size, "imagenet100", args.batch_size),
    }
    record = {
        "command": f"python benchmarks/imagenet_judge.py --size {args.size}",
        "data": "shared/datasets/imagenet-samples/samples.parquet (1000 ImageNet photos, one per class, 160x160 JPEG)",
        "judge": f"tf_efficientnet_lite0, judge.pretrained={LITE0_PACKAGE}, used as-is",
        "image_size": args.size,
        "results": results,
        "machine": finish_machine(machine),
        "commit": commit,
        "dirty": dirty,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"`{record['command']}` on {machine_summary(record['machine'])}")
    print("| classes | images | top-1 | top-5 | mean p(true class) |\n|---|---|---|---|---|")
    for name, r in results.items():
        top = f"{100 * r['top1']:.1f}% | {100 * r['top5']:.1f}%"
        print(f"| {name} ({r['classes']}) | {r['images']} | {top} | {r['mean_confidence_true_class']:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
