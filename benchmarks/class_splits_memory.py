"""Peak memory of training + evaluation over N classes: every class stacked in RAM vs the spill file (lib.class_splits).

    python benchmarks/class_splits_memory.py [--classes 1000] [--train 40] [--test 10] [--size 64]

A fake per-class store builds one class's uint8 images on lookup (like the lazy ``Partitions`` of ``real_images``).
Each mode runs in a fresh child process: read the train and test splits of every class (``stacked``: concatenated
in RAM, as before; ``spill``: :func:`~synthaug_pipeline.lib.class_splits.spill_classes`), train ``synthaug_cnn_small``
for 20 steps of 64 images, evaluate on the test split. Recorded per mode: peak RSS (``ru_maxrss``), the anonymous
part of RSS at the end (``RssAnon``: memory the process owns; a memmap's file pages are ``RssFile``, page cache the
kernel can drop), the pixels' size, and whether the trained weights and the accuracy are identical across modes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


class FakeStore(Mapping):
    def __init__(self, classes: int, train: int, test: int, size: int):
        self.keys, self.train, self.test, self.size = [f"c{i:04d}" for i in range(classes)], train, test, size

    def __getitem__(self, key):
        import numpy as np

        from synthaug_pipeline.lib.datasets import RealClass

        index = self.keys.index(key)
        rng = np.random.default_rng(index)
        shape = (self.size, self.size, 3)
        pixels = lambda n: np.clip(rng.integers(0, 128, (n, *shape)) + (index % 128), 0, 255).astype(np.uint8)  # noqa: E731
        return RealClass(key, index, key, train=pixels(self.train), test=pixels(self.test))

    def __iter__(self):
        return iter(self.keys)

    def __len__(self):
        return len(self.keys)


def status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) // 1024
    return -1


def child(args: argparse.Namespace) -> None:
    import numpy as np

    from synthaug_pipeline.lib.class_splits import spill_classes
    from synthaug_pipeline.lib.classifier import train_classifier
    from synthaug_pipeline.lib.config import ClassifierConfig
    from synthaug_pipeline.lib.evaluation import evaluate

    store = FakeStore(args.classes, args.train, args.test, args.size)
    baseline = status("VmRSS")
    started = time.perf_counter()
    if args.mode == "stacked":
        parts = [store[key] for key in store]  # what stack_classes did: every class resident, then concatenated
        train = np.concatenate([p.train for p in parts]), np.concatenate([np.full(len(p.train), p.class_index) for p in parts])
        test = np.concatenate([p.test for p in parts]), np.concatenate([np.full(len(p.test), p.class_index) for p in parts])
        del parts
    else:
        spilled = spill_classes(store, ("train", "test"))
        train = spilled["train"].images, spilled["train"].labels
        test = spilled["test"].images, spilled["test"].labels
    read_s = time.perf_counter() - started
    cfg = ClassifierConfig(model="synthaug_cnn_small", steps=20, batch_size=64, seed=0)
    trained = train_classifier(*train, args.classes, cfg)
    top1 = evaluate(trained.model, *test, list(store))["top1"]
    digest = hashlib.sha256(b"".join(t.numpy().tobytes() for t in trained.model.state_dict().values())).hexdigest()[:16]
    print(
        json.dumps(
            {
                "mode": args.mode,
                "read_s": round(read_s, 1),
                "total_s": round(time.perf_counter() - started, 1),
                "rss_before_mb": baseline,
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                "rss_anon_end_mb": status("RssAnon"),
                "rss_file_end_mb": status("RssFile"),
                "pixels_mb": round((len(train[0]) + len(test[0])) * args.size * args.size * 3 / 2**20),
                "weights_sha256": digest,
                "top1": top1,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--train", type=int, default=40, help="training images per class")
    parser.add_argument("--test", type=int, default=10, help="test images per class")
    parser.add_argument("--size", type=int, default=64, help="image side (RGB)")
    parser.add_argument("--mode", choices=("stacked", "spill"), help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "class_splits_memory.json"))
    args = parser.parse_args()
    if args.mode:
        child(args)
        return
    from synthaug_pipeline.lib.machine import describe_machine, finish_machine, machine_summary

    machine = describe_machine()
    results = []
    for mode in ("stacked", "spill"):
        argv = [sys.executable, __file__, "--mode", mode, "--classes", str(args.classes), "--train", str(args.train),
                "--test", str(args.test), "--size", str(args.size)]
        done = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)
        if done.returncode != 0:
            raise SystemExit(f"{mode} failed:\n{done.stderr[-3000:]}")
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    record = {
        "command": "python benchmarks/class_splits_memory.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": finish_machine(machine),
        "machine_summary": machine_summary(machine),
        "classes": args.classes, "train_per_class": args.train, "test_per_class": args.test, "size": args.size,
        "results": results,
        "identical": results[0]["weights_sha256"] == results[1]["weights_sha256"] and results[0]["top1"] == results[1]["top1"],
    }
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
