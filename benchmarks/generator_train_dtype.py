"""Seconds per DDPM training step in float32 vs bfloat16 autocast (`generator.train_dtype`), for BENCHMARKS.md.

    python benchmarks/generator_train_dtype.py [--profiles digits fashion-headline] [--steps 20]

Times :func:`~synthaug_pipeline.lib.diffusion.train_generator` (forward, backward, AdamW, EMA: the real loop) with
each profile's generator settings on random images of the profile's shape, after a discarded warm-up run, and
writes benchmarks/results/generator_train_dtype.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from synthaug_pipeline.lib.config import load_profile
from synthaug_pipeline.lib.diffusion import native_bf16, train_generator
from synthaug_pipeline.lib.machine import describe_machine, finish_machine, machine_summary

SHAPES = {"digits": (8, 8, 1), "fashion": (32, 32, 1), "fashion-headline": (32, 32, 1)}


def seconds_per_step(profile_name: str, dtype: str, steps: int) -> float:
    cfg = load_profile(profile_name).generator
    shape = SHAPES[profile_name]
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (512, *shape), dtype=np.uint8)
    labels = np.arange(512) % 10

    def run(n: int) -> float:
        started = time.perf_counter()
        train_generator(images, labels, 10, cfg.model_copy(update={"train_steps": n, "warmup_steps": 0, "train_dtype": dtype}))
        return time.perf_counter() - started

    run(2)  # warm-up: first-call costs
    return (run(steps + 1) - run(1)) / steps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", nargs="+", default=["digits", "fashion-headline"])
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    machine = describe_machine()
    rows = []
    for name in args.profiles:
        steps = args.steps if SHAPES[name][0] <= 8 else max(4, args.steps // 4)
        f32, bf16 = seconds_per_step(name, "float32", steps), seconds_per_step(name, "bfloat16", steps)
        rows.append({"profile": name, "timed_steps": steps, "float32_s": round(f32, 4), "bfloat16_s": round(bf16, 4), "speedup": round(f32 / bf16, 2)})
        print(f"{name}: float32 {f32:.3f} s/step, bfloat16 {bf16:.3f} s/step ({f32 / bf16:.2f}x)")
    record = {
        "command": "python benchmarks/generator_train_dtype.py " + " ".join(f"--profiles {p}" for p in args.profiles),
        "date": time.strftime("%Y-%m-%d"),
        "machine": finish_machine(machine),
        "summary": machine_summary(machine),
        "native_bf16_cpu": native_bf16(torch.device("cpu")),
        "rows": rows,
    }
    out = Path(__file__).parent / "results" / "generator_train_dtype.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
