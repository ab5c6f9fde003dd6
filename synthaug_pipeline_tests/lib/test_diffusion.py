"""Fast tests for the class-conditional DDPM (tiny 8x8 models, a few dozen CPU steps)."""

from __future__ import annotations

import copy
import json

import fsspec
import numpy as np
import pytest
import torch

from synthaug_pipeline.lib.config import GeneratorConfig
from synthaug_pipeline.lib.diffusion import (
    TrainedGenerator,
    build_unet,
    check_init_compatible,
    native_bf16,
    train_generator,
    training_autocast_dtype,
)
from synthaug_pipeline.lib.diffusion_sampling import SAMPLERS, consistent_clip, image_seed, make_scheduler, sample_images
from synthaug_pipeline.lib.diffusion_store import load_generator, save_generator

TINY = dict(block_out_channels=[16, 32], norm_num_groups=8, batch_size=32, learning_rate=2e-3, warmup_steps=5)


def two_class_images(n: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Class 0: bright top half; class 1: bright bottom half; a little noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    images = np.zeros((n, 8, 8, 1), dtype=np.int64)
    images[labels == 0, :4] = 220
    images[labels == 1, 4:] = 220
    images += rng.integers(0, 30, images.shape)
    return np.clip(images, 0, 255).astype(np.uint8), labels


def weights_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run as fast on one thread, and two threads thrash when other tests share the 2 cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained(one_thread) -> TrainedGenerator:
    images, labels = two_class_images()
    calls: list[tuple[int, float]] = []
    generator = train_generator(images, labels, 2, GeneratorConfig(train_steps=50, **TINY), progress=lambda s, l: calls.append((s, l)))
    generator.progress_calls = calls  # for test_training_reports_progress
    return generator


# ---- build_unet -------------------------------------------------------------------------------


@pytest.mark.parametrize("size,channels,blocks", [(8, 1, [16, 32]), (8, 1, [32, 64, 64]), (32, 3, [16, 32, 32])])
def test_build_unet_output_shape(size, channels, blocks):
    cfg = GeneratorConfig(block_out_channels=blocks, norm_num_groups=8)
    model = build_unet(cfg, size, channels, num_classes=3)
    assert model.config.num_class_embeds == 4  # 3 classes + null
    x = torch.randn(2, channels, size, size)
    out = model(x, torch.tensor([10, 500]), class_labels=torch.tensor([0, 3])).sample
    assert out.shape == x.shape


def test_build_unet_rejects_indivisible_size():
    cfg = GeneratorConfig(block_out_channels=[16, 32, 32], norm_num_groups=8)
    with pytest.raises(ValueError, match="image_size 6 .*divisible by 4"):
        build_unet(cfg, 6, 1, 2)


# ---- training ---------------------------------------------------------------------------------


def test_training_loss_decreases(trained):
    losses = trained.losses
    assert len(losses) == 5  # 50 steps, one entry per 10
    assert np.mean(losses[-2:]) < 0.6 * losses[0]
    assert all(np.isfinite(losses))


def test_training_result_metadata(trained):
    cfg = trained.config
    assert cfg["num_classes"] == 2 and cfg["null_class"] == 2 and cfg["image_size"] == 8 and cfg["channels"] == 1
    assert json.loads(json.dumps(cfg)) == cfg  # JSON-able
    assert trained.num_parameters == sum(p.numel() for p in trained.model.parameters())
    assert not trained.model.training and next(trained.model.parameters()).device.type == "cpu"
    assert trained.seconds > 0


def test_training_reports_progress(trained):
    steps = [s for s, _ in trained.progress_calls]
    assert steps == [1, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50]  # the first step too: a long run is never silent
    assert all(np.isfinite(l) for _, l in trained.progress_calls)


def test_training_is_deterministic():
    images, labels = two_class_images(32)
    cfg = GeneratorConfig(train_steps=6, **{**TINY, "batch_size": 8})
    a = train_generator(images, labels, 2, cfg)
    b = train_generator(images, labels, 2, cfg)
    c = train_generator(images, labels, 2, cfg.model_copy(update={"seed": 1}))
    assert weights_equal(a.model, b.model)
    assert a.losses == b.losses
    assert not weights_equal(a.model, c.model)


def test_bfloat16_training_learns_and_is_recorded(trained):
    """generator.train_dtype=bfloat16: autocast forward, float32 weights and EMA; it learns the task as float32 does."""
    images, labels = two_class_images()
    cfg = GeneratorConfig(train_steps=50, train_dtype="bfloat16", **TINY)
    bf16 = train_generator(images, labels, 2, cfg)
    assert bf16.config["train_dtype"] == "bfloat16" and trained.config["train_dtype"] == "float32"
    assert all(p.dtype == torch.float32 for p in bf16.model.parameters())
    assert all(np.isfinite(bf16.losses)) and np.mean(bf16.losses[-2:]) < 0.6 * bf16.losses[0]
    assert not weights_equal(bf16.model, trained.model)  # the forward pass really ran in bfloat16
    bottom = sample_images(bf16, 1, list(range(8)), steps=10).astype(float)
    assert bottom[:, 4:].mean() > bottom[:, :4].mean()  # class 1 is bright at the bottom


def test_training_autocast_dtype_setting():
    cpu = torch.device("cpu")
    assert training_autocast_dtype("float32", cpu) is None
    assert training_autocast_dtype("bfloat16", cpu) is torch.bfloat16
    assert training_autocast_dtype("auto", cpu) is (torch.bfloat16 if native_bf16(cpu) else None)
    with pytest.raises(ValueError, match="generator.train_dtype 'fp8' is unknown"):
        training_autocast_dtype("fp8", cpu)
    with pytest.raises(ValueError, match="train_dtype"):
        GeneratorConfig(train_dtype="float16")


def test_ema_warm_up_decay():
    # After one step the EMA decay is min(0.999, 1/10) = 0.1: ema = 0.1 * init + 0.9 * raw.
    # (A plain 0.999 decay would leave the EMA at 99.9% of the random init.)
    images, labels = two_class_images(8)
    cfg = GeneratorConfig(train_steps=1, ema_decay=0.999, **{**TINY, "batch_size": 4})
    ema = train_generator(images, labels, 2, cfg).model
    raw = train_generator(images, labels, 2, cfg.model_copy(update={"ema_decay": 0.0})).model
    torch.manual_seed(cfg.seed)  # train_generator initialises weights from this seed
    init = build_unet(cfg, 8, 1, 2)
    for (name, e), r, i in zip(ema.named_parameters(), raw.parameters(), init.parameters()):
        torch.testing.assert_close(e, 0.1 * i + 0.9 * r, atol=1e-6, rtol=1e-5, msg=name)


def test_fine_tune_starts_from_previous_weights(trained):
    images, labels = two_class_images(16)
    cfg = GeneratorConfig(train_steps=1, **{**TINY, "batch_size": 4, "learning_rate": 1e-12})
    tuned = train_generator(images, labels, 2, cfg, init_from=trained)
    for (name, p), q in zip(trained.model.named_parameters(), tuned.model.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=0, msg=name)
    assert tuned.config["total_train_steps"] == 51
    with pytest.raises(ValueError, match="init_from"):
        train_generator(images, labels, 3, cfg, init_from=trained)


def test_fine_tune_records_where_it_started(trained, tmp_path):
    images, labels = two_class_images(16)
    start = copy.copy(trained)
    url = str(tmp_path / "start")
    version = save_generator(start, url)
    loaded = load_generator(url)
    assert (loaded.url, loaded.version) == (url, version)
    tuned = train_generator(images, labels, 2, GeneratorConfig(train_steps=1, **{**TINY, "batch_size": 4}), init_from=loaded)
    assert (tuned.config["init_from"], tuned.config["init_from_url"]) == (version, url)
    save_generator(tuned, str(tmp_path / "tuned"))
    assert load_generator(str(tmp_path / "tuned")).config["init_from"] == version  # the saved config keeps both
    assert load_generator(str(tmp_path / "tuned")).config["init_from_url"] == url
    scratch = train_generator(images, labels, 2, GeneratorConfig(train_steps=1, **{**TINY, "batch_size": 4}))
    assert (scratch.config["init_from"], scratch.config["init_from_url"]) == (None, None)


@pytest.mark.parametrize(
    "change, size, channels, classes, match",
    [
        ({"block_out_channels": [16, 64]}, 8, 1, 2, r"generator.block_out_channels=\[16, 64\] \(it has \[16, 32\]\)"),
        ({"layers_per_block": 2}, 8, 1, 2, r"generator.layers_per_block=2 \(it has 1\)"),
        ({}, 8, 1, 3, r"num_classes 2 vs 3 now.*data.classes"),
        ({}, 16, 1, 2, r"image_size 8 vs 16 now"),
        ({}, 8, 3, 2, r"channels 1 vs 3 now"),
    ],
)
def test_fine_tune_names_the_mismatched_setting(trained, change, size, channels, classes, match):
    cfg = GeneratorConfig(train_steps=1, **{**TINY, **change})
    with pytest.raises(ValueError, match=r"generator.init_from .*" + match):
        check_init_compatible(trained, cfg, size, channels, classes)
    check_init_compatible(trained, GeneratorConfig(train_steps=1, **TINY), 8, 1, 2)  # the matching case passes


@pytest.mark.parametrize(
    "images,labels,match",
    [
        (np.zeros((0, 8, 8, 1), np.uint8), np.zeros(0, int), "empty"),
        (np.zeros((4, 8, 8, 1), np.float32), np.zeros(4, int), "uint8"),
        (np.zeros((4, 8, 8, 1), np.uint8), np.array([0, 1, 2, 1]), r"\[0, 2\)"),
        (np.zeros((4, 8, 8, 1), np.uint8), np.array([0, -1, 0, 1]), r"\[0, 2\)"),
        (np.zeros((4, 8, 8, 1), np.uint8), np.zeros(3, int), "labels"),
    ],
)
def test_training_validates_inputs(images, labels, match):
    with pytest.raises(ValueError, match=match):
        train_generator(images, labels, 2, GeneratorConfig(train_steps=1, **TINY))


# ---- sampling ---------------------------------------------------------------------------------


def test_sample_shape_dtype_and_reproducible(trained):
    a = sample_images(trained, 0, [1, 2, 3], steps=5)
    b = sample_images(trained, 0, [1, 2, 3], steps=5)
    assert a.shape == (3, 8, 8, 1) and a.dtype == np.uint8
    assert a.tobytes() == b.tobytes()
    assert not np.array_equal(a[0], a[1]) and not np.array_equal(a[1], a[2])
    assert sample_images(trained, 0, [], steps=5).shape == (0, 8, 8, 1)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_sample_is_batch_independent(trained, sampler):
    alone = sample_images(trained, 1, [2], sampler=sampler, steps=4)
    in_batch = sample_images(trained, 1, [1, 2, 3], sampler=sampler, steps=4)
    split = sample_images(trained, 1, [9, 2, 7], sampler=sampler, steps=4, batch_size=2)
    # Observed exact on CPU; allow one grey level for conv kernels that vary with batch size.
    assert np.abs(alone[0].astype(int) - in_batch[1]).max() <= 1
    assert np.abs(alone[0].astype(int) - split[1]).max() <= 1


def test_samples_follow_the_class(trained):
    # Even 50 steps teach "bright top" vs "bright bottom": the guided class mean must agree.
    top = sample_images(trained, 0, list(range(8)), steps=10).astype(float)
    bottom = sample_images(trained, 1, list(range(8)), steps=10).astype(float)
    assert top[:, :4].mean() > top[:, 4:].mean()
    assert bottom[:, 4:].mean() > bottom[:, :4].mean()


def test_guidance_scale_one_and_zero_mean_unguided(trained):
    one = sample_images(trained, 0, [4, 5], steps=4, guidance_scale=1.0)
    zero = sample_images(trained, 0, [4, 5], steps=4, guidance_scale=0.0)
    guided = sample_images(trained, 0, [4, 5], steps=4, guidance_scale=3.0)
    assert np.array_equal(one, zero)
    assert not np.array_equal(one, guided)


def test_sample_progress(trained):
    calls = []
    sample_images(trained, 0, list(range(5)), steps=2, batch_size=2, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(2, 5), (4, 5), (5, 5)]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"sampler": "heun"}, "unknown sampler 'heun'.*ddim"),
        ({"class_index": 2}, "class_index 2"),
        ({"class_index": -1}, "class_index -1"),
        ({"steps": 0}, "steps"),
        ({"guidance_scale": -1.0}, "guidance_scale"),
    ],
)
def test_sample_validates_arguments(trained, kwargs, match):
    args = {"class_index": 0, **kwargs}
    with pytest.raises(ValueError, match=match):
        sample_images(trained, seeds=[1], **args)


def test_sample_detects_non_finite_model(trained):
    broken = copy.deepcopy(trained)
    with torch.no_grad():
        broken.model.conv_in.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="class index 1.*'ddim'"):
        sample_images(broken, 1, [1, 2], steps=3)
    # the class id and every setting worth changing are named
    with pytest.raises(
        ValueError,
        match=r"class 'seven' \(class index 1\) \(generator.sampler='euler', generator.sample_steps=3, generator.guidance_scale=2.0, "
        r"at timestep \d+\); change generator.sampler .*generator.sample_steps .*generator.guidance_scale",
    ):
        sample_images(broken, 1, [1, 2], sampler="euler", steps=3, guidance_scale=2.0, class_id="seven")


def test_steps_beyond_the_training_schedule_name_the_setting(trained):
    with pytest.raises(ValueError, match=r"generator.sample_steps.*num_train_timesteps 1000, got 1001"):
        sample_images(trained, 0, [1], steps=1001)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_guidance_is_one_batched_forward_per_step(trained, sampler):
    """Classifier-free guidance runs [x, x] with [class, null] labels in one forward: `steps` calls of 2N, not 2 x steps of N."""
    calls: list[tuple[int, list[int]]] = []

    def record(module, args, kwargs, output):
        calls.append((args[0].shape[0], kwargs["class_labels"].tolist()))

    handle = trained.model.register_forward_hook(record, with_kwargs=True)
    try:
        sample_images(trained, 1, [1, 2, 3], sampler=sampler, steps=4, guidance_scale=2.5)
        guided = list(calls)
        calls.clear()
        sample_images(trained, 1, [1, 2, 3], sampler=sampler, steps=4, guidance_scale=2.5, batch_size=2)
        split = list(calls)
        calls.clear()
        sample_images(trained, 1, [1, 2, 3], sampler=sampler, steps=4, guidance_scale=1.0)
        unguided = list(calls)
    finally:
        handle.remove()
    assert guided == [(6, [1, 1, 1, 2, 2, 2])] * 4  # null class = num_classes = 2
    assert split == [(4, [1, 1, 2, 2])] * 4 + [(2, [1, 2])] * 4
    assert unguided == [(3, [1, 1, 1])] * 4


def test_cpu_sampling_ignores_dtype_and_keeps_the_model_where_it_ran(trained):
    reference = sample_images(trained, 0, [5, 6], steps=3)
    for dtype in ("float16", "bfloat16"):
        assert sample_images(trained, 0, [5, 6], steps=3, device="cpu", dtype=dtype).tobytes() == reference.tobytes()
    assert next(trained.model.parameters()).device.type == "cpu" and next(trained.model.parameters()).dtype == torch.float32
    assert trained.model.conv_in.weight.is_contiguous()  # channels_last is for CUDA only
    with pytest.raises(ValueError, match="generator.dtype 'float64'"):
        sample_images(trained, 0, [5], steps=3, dtype="float64")
    with pytest.raises(ValueError, match="generator.device 'tpu'"):
        sample_images(trained, 0, [5], steps=3, device="tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error when CUDA is missing")
def test_cuda_without_a_device_names_the_setting(trained):
    with pytest.raises(ValueError, match="generator.device is 'cuda' but torch sees no CUDA device"):
        sample_images(trained, 0, [5], steps=3, device="cuda")


def test_compiled_unet_gives_the_same_images_and_compiles_once(trained, monkeypatch):
    compiles, real_compile = [], torch.compile

    def eager_compile(model, **kwargs):  # the eager backend runs TorchDynamo without a C++ toolchain
        compiles.append(model)
        return real_compile(model, backend="eager", **kwargs)

    monkeypatch.setattr(torch, "compile", eager_compile)
    generator = copy.copy(trained)
    generator.compiled = {}
    reference = sample_images(trained, 1, [3, 4], steps=3)
    assert np.array_equal(sample_images(generator, 1, [3, 4], steps=3, compile=True), reference)
    assert np.array_equal(sample_images(generator, 0, [3, 4], steps=3, compile=True), sample_images(trained, 0, [3, 4], steps=3))
    assert compiles == [trained.model] and type(generator.compiled["cpu"]).__name__ == "OptimizedModule"


@pytest.mark.gpu
def test_cuda_sampling_in_bfloat16_stays_on_the_device(trained):
    generator = copy.deepcopy(trained)
    cpu = sample_images(generator, 0, list(range(8)), steps=5).astype(int)
    fp32 = sample_images(generator, 0, list(range(8)), steps=5, device="cuda").astype(int)
    assert next(generator.model.parameters()).device.type == "cuda"  # not moved back after the class
    assert generator.model.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert np.abs(fp32 - cpu).mean() < 2.0  # same noise, float32 on both: only kernel rounding differs
    bf16 = sample_images(generator, 0, list(range(8)), steps=5, device="cuda", dtype="bfloat16").astype(int)
    assert next(generator.model.parameters()).dtype == torch.float32  # autocast, not a cast of the weights
    assert np.abs(bf16 - cpu).mean() < 12.0
    assert np.array_equal(bf16, sample_images(generator, 0, list(range(8)), steps=5, device="cuda", dtype="bfloat16").astype(int))
    assert save_generator(generator, "memory://synthaug-test/gpu") == save_generator(copy.copy(trained), "memory://synthaug-test/cpu")


def test_make_scheduler_names():
    for name in SAMPLERS:
        scheduler = make_scheduler(name, 1000, "squaredcos_cap_v2")
        scheduler.set_timesteps(10)
        assert len(scheduler.timesteps) == 10
    with pytest.raises(ValueError, match="ddim, ddpm, dpmsolver\\+\\+, sde-dpmsolver\\+\\+, euler"):
        make_scheduler("plms", 1000, "linear")


@pytest.mark.parametrize("name", SAMPLERS)
def test_every_sampler_steps_through_distinct_timesteps_even_at_the_full_schedule(name):
    # DPM-Solver++'s default linspace spacing repeats a timestep at steps == num_train_timesteps (a zero
    # step size, then NaNs); every sampler must visit distinct timesteps from the last one down.
    for train, steps in ((20, 20), (20, 7), (1000, 20)):
        scheduler = make_scheduler(name, train, "squaredcos_cap_v2")
        scheduler.set_timesteps(steps)
        timesteps = [int(t) for t in scheduler.timesteps]
        assert len(set(timesteps)) == steps and timesteps[0] == train - 1, (name, train, steps, timesteps)


@pytest.mark.parametrize("name", ["ddim", "euler"])
def test_consistent_clip_keeps_the_implied_clean_image_in_range(name):
    scheduler = make_scheduler(name, 1000, "squaredcos_cap_v2")
    scheduler.set_timesteps(10)
    t = scheduler.timesteps[3]
    a = scheduler.alphas_cumprod[int(t)].double()
    x0 = torch.linspace(-3, 3, 64, dtype=torch.float64).reshape(1, 1, 8, 8)  # a prediction overshooting both ends
    eps = torch.randn((1, 1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    if name == "ddim":
        x = a.sqrt() * x0 + (1 - a).sqrt() * eps  # x_t
        implied = lambda e: (x - (1 - a).sqrt() * e) / a.sqrt()  # noqa: E731
    else:
        sigma = ((1 - a) / a).sqrt()
        x = x0 + sigma * eps  # Euler's sample in sigma space
        implied = lambda e: x - sigma * e  # noqa: E731
    fixed = consistent_clip(scheduler, eps.float(), x.float(), t)
    assert fixed.dtype == torch.float32
    assert torch.allclose(implied(fixed.double()), x0.clamp(-1, 1), atol=1e-3)
    inside = x0.abs() <= 1
    assert torch.allclose(fixed.double()[inside], eps[inside], atol=1e-4)  # in-range pixels keep their noise


def test_consistent_clip_leaves_self_clipping_samplers_alone():
    eps, x = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
    for name in ("ddpm", "dpmsolver++", "sde-dpmsolver++"):
        scheduler = make_scheduler(name, 1000, "linear")
        scheduler.set_timesteps(5)
        assert consistent_clip(scheduler, eps, x, scheduler.timesteps[0]) is eps


# ---- persistence and seeds --------------------------------------------------------------------


@pytest.mark.parametrize("where", ["local", "memory"])
def test_save_load_roundtrip(trained, tmp_path, where):
    url = str(tmp_path / "gen") if where == "local" else "memory://synthaug-test/gen"
    version = save_generator(copy.copy(trained), url)
    assert len(version) == 16 and int(version, 16) >= 0
    loaded = load_generator(url)
    assert loaded.version == version
    assert loaded.config == trained.config and loaded.losses == trained.losses
    assert weights_equal(loaded.model, trained.model)
    assert np.array_equal(sample_images(loaded, 1, [3, 4], steps=3), sample_images(trained, 1, [3, 4], steps=3))
    assert save_generator(loaded, url) == version  # same weights, same version


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no generator"):
        load_generator(str(tmp_path / "missing"))
    fs = fsspec.filesystem("memory")
    fs.pipe_file("/synthaug-test/bad/config.json", b"{not json")
    fs.pipe_file("/synthaug-test/bad/model.safetensors", b"junk")
    with pytest.raises(ValueError, match="does not describe a generator"):
        load_generator("memory://synthaug-test/bad")


def test_load_detects_mismatched_weights(trained):
    url = "memory://synthaug-test/torn"
    save_generator(copy.copy(trained), url)
    fsspec.filesystem("memory").pipe_file("/synthaug-test/torn/model.safetensors", b"x" * 100)
    with pytest.raises(ValueError, match="does not match"):
        load_generator(url)


def test_image_seed_stable_and_distinct():
    seed = image_seed("cat", 3, "abcd")
    assert seed == image_seed("cat", 3, "abcd")
    # Pinned value: guards against an accidental switch to hash() or a new encoding.
    assert seed == int.from_bytes(__import__("hashlib").sha256(b"cat\x003\x00abcd").digest()[:8], "big") & (2**63 - 1)
    assert 0 <= seed < 2**63
    seeds = {image_seed(c, i, v) for c in ("cat", "dog") for i in range(50) for v in ("v1", "v2")}
    assert len(seeds) == 200
