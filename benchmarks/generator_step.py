"""Milliseconds per DDPM training step (the step of lib/diffusion.train_generator) and variants that might speed it up.

    python benchmarks/generator_step.py digits base ema_foreach fused_ema_foreach channels_last_fused_ema_foreach
    python benchmarks/generator_step.py fashion base --steps 10 --profile

Variants (combine the words): ``ema_foreach`` (one torch._foreach_lerp_ for the EMA instead of a loop), ``fused``
(AdamW fused=True), ``channels_last`` (model and input in channels_last), ``compile`` (torch.compile the UNet).
Random data of the profile's shape (digits 8x8, Fashion 32x32, one channel, 10 classes, batch 128): the step's cost
does not depend on the pixels. ``--profile`` prints torch.profiler's top operators for the first variant. Prints one
line per variant; run it on an idle machine.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from synthaug_pipeline.lib.config import GeneratorConfig
from synthaug_pipeline.lib.diffusion import build_unet

SHAPES = {"digits": ([32, 64], 8), "fashion": ([32, 64, 64], 32)}  # the packaged profiles' UNet and image size


def step_fn(which: str, variant: str):
    channels, size = SHAPES[which]
    torch.manual_seed(0)
    model = build_unet(GeneratorConfig(block_out_channels=channels), size, 1, 10)
    last = "channels_last" in variant
    if last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    ema = copy.deepcopy(model).requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4, **({"fused": True} if "fused" in variant else {}))
    forward = torch.compile(model) if "compile" in variant else model
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    data, labels = torch.randn(2000, 1, size, size), torch.randint(0, 10, (2000,))
    gen = torch.Generator().manual_seed(0)
    params, ema_params = list(model.parameters()), list(ema.parameters())

    def step() -> float:
        index = torch.randint(0, len(data), (128,), generator=gen)
        noise = torch.randn((128, 1, size, size), generator=gen)
        t = torch.randint(0, 1000, (128,), generator=gen)
        noisy = scheduler.add_noise(data[index], noise, t)
        if last:
            noisy = noisy.contiguous(memory_format=torch.channels_last)
        loss = F.mse_loss(forward(noisy, t, class_labels=labels[index]).sample.float(), noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        with torch.no_grad():
            if "ema_foreach" in variant:
                torch._foreach_lerp_(ema_params, params, 0.001)
            else:
                for e, p in zip(ema_params, params):
                    e.lerp_(p, 0.001)
        return loss.item()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", choices=sorted(SHAPES))
    parser.add_argument("variants", nargs="+")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability {torch.backends.cpu.get_cpu_capability()}")
    for variant in args.variants:
        step = step_fn(args.which, variant)
        for _ in range(5):  # warm-up (and compilation)
            step()
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        print(f"{args.which} {variant}: {(time.perf_counter() - start) / args.steps * 1000:.1f} ms/step")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        step = step_fn(args.which, args.variants[0])
        step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(5):
                step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
