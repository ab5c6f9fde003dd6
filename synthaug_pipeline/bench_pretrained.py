"""`synthaug bench generation --backend text2img|dit`: our pretrained sampling path against the stock diffusers
pipeline call, on the same GPU, in one run, with the real model's architecture and random weights.

    synthaug bench generation --backend text2img [--images 64] [--batch 16] [--steps 20] [--compile] [--out FILE]
    synthaug bench generation --backend dit [...]
    synthaug bench generation --backend text2img --tiny      # the same code at toy sizes, on a CPU (tests)

``text2img`` builds Stable Diffusion 1.5's UNet, VAE and CLIP ViT-L/14 text encoder from their configs (the
same shapes and FLOPs as the hub checkpoint; no download) at 512 px; ``dit`` builds DiT-XL/2 (28 layers,
hidden 1152, patch 2) with the SD VAE at 256 px. Weights are random: images/s and FLOPs are those of the real
model, image quality is not measured.

*Stock*: ``StableDiffusionPipeline`` / ``DiTPipeline`` as ``from_pretrained`` gives it (float32, its shipped
scheduler: PNDM for SD 1.5, DDIM for DiT), called with default settings (50 steps, guidance 7.5 / 4.0, one
image per call). *Ours*: :func:`~synthaug_pipeline.lib.pretrained_sampling.generate_class` with the levers it has:
bfloat16 weights, PyTorch SDPA attention, channels_last, guidance as one batched forward, ``--batch`` images
per call (the VAE decodes each batch at once), DPM-Solver++ with ``--steps`` steps, ``--compile`` for
torch.compile. Both use the same prompts and seeds.

FLOPs: :class:`torch.utils.flop_counter.FlopCounterMode` counts one denoiser forward at batch 1 (2 x
multiply-adds of every matmul/convolution and of SDPA, as PyTorch's counter does; norms and pointwise ops
are not counted). Per image: forwards per step (2 with guidance) x steps x that. Achieved TFLOP/s =
per-image denoiser FLOPs x images/s; the share of the GPU's dense bf16 peak uses :data:`BF16_PEAK_TFLOPS`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from synthaug_pipeline.lib.machine import describe_machine, finish_machine, machine_summary
from synthaug_pipeline.lib.pretrained import PretrainedGenerator
from synthaug_pipeline.lib.pretrained_sampling import generate_class
from synthaug_pipeline.lib.pretrained_settings import SamplingSettings

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' data sheets, TFLOP/s, by a name fragment.
BF16_PEAK_TFLOPS = {
    "H200": 989.4,
    "H100 SXM": 989.4,
    "H100 PCIe": 756.0,
    "H100": 989.4,
    "A100": 312.0,
    "L40S": 362.1,
    "L4": 121.0,
    "A10": 125.0,
}
PROMPTS = ["a photo of a crane, a large long-necked wading bird", "a photo of a tank suit", "a photo of a Cardigan Welsh corgi"]


def _byte_clip_tokenizer(folder: Path, max_length: int):
    """A CLIP BPE tokenizer whose vocabulary is the 256 bytes (+ word ends): any text tokenizes, no download."""
    from transformers import CLIPTokenizer

    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    chars = [chr(b) if b in printable else chr(next(extra)) for b in range(256)]
    vocab = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer.from_pretrained(folder, model_max_length=max_length)


def _vae(tiny: bool):
    from diffusers import AutoencoderKL

    if tiny:
        return AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            block_out_channels=(8, 8),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=4,
            sample_size=16,
        )
    # stabilityai/sd-vae-ft-ema (DiT) and SD 1.5's VAE share this config
    return AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
        scaling_factor=0.18215,
    )


def build_text2img(tiny: bool, folder: Path):
    """Stable Diffusion 1.5's architecture (or a toy one) with random weights, as the stock pipeline."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    max_length = 16 if tiny else 77
    tokenizer = _byte_clip_tokenizer(folder / "tokenizer", max_length)
    width = 16 if tiny else 768
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer) if tiny else 49408,
            hidden_size=width,
            intermediate_size=4 * width,
            num_hidden_layers=1 if tiny else 12,
            num_attention_heads=2 if tiny else 12,
            max_position_embeddings=max_length,
            hidden_act="quick_gelu",
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    if tiny:
        unet = UNet2DConditionModel(
            sample_size=8,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=(8, 16),
            layers_per_block=1,
            norm_num_groups=4,
            cross_attention_dim=width,
            attention_head_dim=2,
        )
    else:  # runwayml/stable-diffusion-v1-5 unet/config.json
        unet = UNet2DConditionModel(
            sample_size=64,
            block_out_channels=(320, 640, 1280, 1280),
            layers_per_block=2,
            cross_attention_dim=768,
            attention_head_dim=8,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        )
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True, steps_offset=1)
    return StableDiffusionPipeline(
        vae=_vae(tiny),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_dit(tiny: bool, folder: Path):
    """DiT-XL/2 at 256 px (or a toy one) with random weights, as the stock pipeline."""
    from diffusers import DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    if tiny:
        transformer = DiTTransformer2DModel(
            num_attention_heads=2,
            attention_head_dim=4,
            in_channels=4,
            out_channels=8,
            num_layers=1,
            sample_size=8,
            patch_size=2,
            num_embeds_ada_norm=1000,
        )
    else:  # facebook/DiT-XL-2-256 transformer/config.json
        transformer = DiTTransformer2DModel(
            num_attention_heads=16,
            attention_head_dim=72,
            in_channels=4,
            out_channels=8,
            num_layers=28,
            sample_size=32,
            patch_size=2,
            num_embeds_ada_norm=1000,
        )
    return DiTPipeline(transformer=transformer, vae=_vae(tiny), scheduler=DDIMScheduler(beta_schedule="linear", clip_sample=False))


def denoiser_forward_flops(pipeline, backend: str, device: str, dtype: torch.dtype) -> int:
    """FLOPs of one denoiser forward at batch 1, as torch.utils.flop_counter counts them."""
    from torch.utils.flop_counter import FlopCounterMode

    if backend == "dit":
        model = pipeline.transformer
        c = model.config
        inputs = {
            "hidden_states": torch.randn(1, c.in_channels, c.sample_size, c.sample_size),
            "timestep": torch.tensor([500]),
            "class_labels": torch.tensor([1]),
        }
    else:
        model = pipeline.unet
        c = model.config
        length = pipeline.tokenizer.model_max_length
        inputs = {
            "sample": torch.randn(1, c.in_channels, c.sample_size, c.sample_size),
            "timestep": torch.tensor([500]),
            "encoder_hidden_states": torch.randn(1, length, c.cross_attention_dim),
        }
    inputs = {k: v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device) for k, v in inputs.items()}
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(**inputs)
    return int(counter.get_total_flops())


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_stock(pipeline, backend: str, images: int, device: str) -> dict:
    """The stock pipeline call with default settings, one image per call (what its examples do)."""
    pipeline.set_progress_bar_config(disable=True)
    call = (lambda i: pipeline(class_labels=[i % 1000])) if backend == "dit" else (lambda i: pipeline(PROMPTS[i % len(PROMPTS)]))
    call(0)  # warm-up (cuDNN autotuning, allocator)
    _sync(device)
    started = time.perf_counter()
    for i in range(images):
        call(i)
    _sync(device)
    seconds = time.perf_counter() - started
    steps = 50
    return {
        "images": images,
        "seconds": seconds,
        "images_per_second": images / seconds,
        "dtype": "float32",
        "steps": steps,
        "scheduler": type(pipeline.scheduler).__name__,
        "batch": 1,
        "guidance_scale": 4.0 if backend == "dit" else 7.5,
    }


def time_ours(pipeline, backend: str, images: int, batch: int, steps: int, dtype: str, compile: bool, device: str) -> tuple[dict, int]:
    torch_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[dtype]
    pipeline.to(device=device, dtype=torch_dtype)
    denoiser_name = "transformer" if backend == "dit" else "unet"
    for name in (denoiser_name, "vae"):
        getattr(pipeline, name).to(memory_format=torch.channels_last)
    if compile:
        setattr(pipeline, denoiser_name, torch.compile(getattr(pipeline, denoiser_name)))
    pipeline.set_progress_bar_config(disable=True)
    generator = PretrainedGenerator(
        pipeline=pipeline,
        kind=backend,
        model=f"random {backend} architecture",
        path="(in memory)",
        version="random",
        dtype=dtype,
        device=device,
        num_parameters=sum(p.numel() for m in pipeline.components.values() if isinstance(m, torch.nn.Module) for p in m.parameters()),
        load_seconds=0.0,
        compiled=compile,
        scheduler_config=dict(pipeline.scheduler.config),
        family="dit" if backend == "dit" else "sd1",
    )
    guidance = 4.0 if backend == "dit" else 7.5
    settings = SamplingSettings(sampler="dpmsolver++", steps=steps, guidance_scale=guidance, batch_size=batch)
    size = generator.native_size
    inputs = {"class_index": 1} if backend == "dit" else {"prompts": [PROMPTS[i % len(PROMPTS)] for i in range(images)]}
    warm = {"class_index": 1} if backend == "dit" else {"prompts": inputs["prompts"][:batch]}
    generate_class(generator, "warm-up", list(range(batch)), settings, (size, size, 3), **warm)  # compile / autotune
    _sync(device)
    started = time.perf_counter()
    result = generate_class(generator, "bench", list(range(images)), settings, (size, size, 3), **inputs)
    _sync(device)
    seconds = time.perf_counter() - started
    facts = {
        "images": images,
        "seconds": seconds,
        "images_per_second": images / seconds,
        "dtype": dtype,
        "steps": steps,
        "scheduler": "DPMSolverMultistepScheduler (dpmsolver++)",
        "batch": batch,
        "guidance_scale": guidance,
        "compiled": compile,
        "attention": generator.attention,
        "channels_last": True,
        "batch_sizes_used": sorted(set(result.batch_sizes)),
    }
    return facts, size


def bf16_peak(device_name: str) -> float | None:
    for fragment, peak in BF16_PEAK_TFLOPS.items():
        if fragment.lower() in device_name.lower():
            return peak
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="synthaug bench generation --backend", description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=("text2img", "dit"), required=True)
    parser.add_argument("--tiny", action="store_true", help="toy-sized models on any device (tests); numbers mean nothing")
    parser.add_argument("--images", type=int, default=None, help="images per path (default 64; tiny: 4)")
    parser.add_argument("--stock-images", type=int, default=None, help="images for the stock path (default: --images / 4, at least 2)")
    parser.add_argument("--batch", type=int, default=None, help="our images per call (default 16 for SD, 32 for DiT; tiny: 2)")
    parser.add_argument("--steps", type=int, default=20, help="our DPM-Solver++ steps (default 20; the stock call uses its 50)")
    parser.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default="bfloat16")
    parser.add_argument("--compile", action="store_true", help="torch.compile our denoiser")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cuda or cpu")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/generation_<backend>[_tiny].json)")
    args = parser.parse_args(argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("synthaug bench generation: error: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    if not args.tiny and not device.startswith("cuda"):
        print(
            "synthaug bench generation: error: the full-size benchmark needs a CUDA GPU; use --tiny to run the code on a CPU",
            file=sys.stderr,
        )
        return 2
    images = args.images or (4 if args.tiny else 64)
    batch = args.batch or (2 if args.tiny else 32 if args.backend == "dit" else 16)
    stock_images = args.stock_images or max(2, images // 4)
    if min(images, batch, stock_images, args.steps) < 1:
        parser.error("--images, --stock-images, --batch and --steps must be at least 1")
    info = describe_machine(device=device if device == "cpu" else f"cuda ({torch.cuda.get_device_name(0)})")
    build = build_dit if args.backend == "dit" else build_text2img
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731

    with tempfile.TemporaryDirectory() as folder:
        torch.manual_seed(0)
        pipeline = build(args.tiny, Path(folder))
        num_parameters = sum(p.numel() for m in pipeline.components.values() if isinstance(m, torch.nn.Module) for p in m.parameters())
        pipeline.to(device)
        flops = denoiser_forward_flops(pipeline, args.backend, device, torch.float32)
        log(f"stock {type(pipeline).__name__}: {stock_images} images, float32, 50 steps ...")
        stock = time_stock(pipeline, args.backend, stock_images, device)
        log(f"ours: {images} images, {args.dtype}, batch {batch}, {args.steps} steps ...")
        ours, size = time_ours(pipeline, args.backend, images, batch, args.steps, args.dtype, args.compile, device)

    guided = 2  # both paths guide with one batched forward on [uncond, cond]
    per_image = {name: flops * guided * path["steps"] for name, path in (("stock", stock), ("ours", ours))}
    peak = bf16_peak(info["device"]) if device.startswith("cuda") else None
    utilisation = {}
    for name, path in (("stock", stock), ("ours", ours)):
        achieved = per_image[name] * path["images_per_second"] / 1e12
        utilisation[name] = {"denoiser_tflops_per_second": achieved, "share_of_bf16_peak": achieved / peak if peak else None}
    record = {
        "command": "synthaug bench generation " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": datetime.date.today().isoformat(),
        "machine": finish_machine(info),
        "backend": args.backend,
        "architecture": ("toy " if args.tiny else "")
        + ("DiT-XL/2 + SD VAE" if args.backend == "dit" else "Stable Diffusion 1.5 (UNet, VAE, CLIP ViT-L/14 text)"),
        "image_size": size,
        "num_parameters": num_parameters,
        "denoiser_forward_flops_batch1": flops,
        "flops_method": "torch.utils.flop_counter.FlopCounterMode, one denoiser forward at batch 1 (2 x MACs of matmul/conv/SDPA)",
        "denoiser_flops_per_image": per_image,
        "bf16_peak_tflops": peak,
        "stock": stock,
        "ours": ours,
        "speedup": ours["images_per_second"] / stock["images_per_second"],
        "utilisation": utilisation,
        "weights": "random (same shapes and FLOPs as the hub checkpoint; image quality not measured)",
    }
    out = Path(args.out) if args.out else Path("benchmarks/results") / f"generation_{args.backend}{'_tiny' if args.tiny else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1, default=str) + "\n")
    print(markdown(record))
    return 0


def markdown(record: dict) -> str:
    s, o, u = record["stock"], record["ours"], record["utilisation"]

    def share(value):
        return "n/a" if value is None else f"{value:.1%}"

    return "\n".join(
        [
            f"Command: `{record['command']}`  ",
            f"Machine: {machine_summary(record['machine'])}. Date: {record['date']}.  ",
            f"{record['architecture']}, {record['image_size']} px, {record['num_parameters'] / 1e6:.0f} M parameters, random weights; "
            f"denoiser forward {record['denoiser_forward_flops_batch1'] / 1e9:.1f} GFLOPs at batch 1.",
            "",
            "| path | dtype | scheduler, steps | batch | images/s | denoiser TFLOP/s | share of bf16 peak |",
            "|---|---|---|---|---|---|---|",
            f"| stock pipeline call | {s['dtype']} | {s['scheduler']}, {s['steps']} | {s['batch']} | {s['images_per_second']:.3g} | "
            f"{u['stock']['denoiser_tflops_per_second']:.3g} | {share(u['stock']['share_of_bf16_peak'])} |",
            f"| ours | {o['dtype']} | {o['scheduler']}, {o['steps']} | {o['batch']} | {o['images_per_second']:.3g} | "
            f"{u['ours']['denoiser_tflops_per_second']:.3g} | {share(u['ours']['share_of_bf16_peak'])} |",
            "",
            f"Speed-up: **{record['speedup']:.1f}x**.",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
