"""End-to-end test of `synthaug bench generation` on a tiny setting (two classes, 20-step schedule)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from synthaug_pipeline.bench_generation import main

TINY = [
    "--set",
    "data.classes=['0','1']",
    "--set",
    "generator.train_steps=10",
    "--set",
    "generator.block_out_channels=[16,32]",
    "--set",
    "generator.num_train_timesteps=20",
    "--set",
    "judge.model=synthaug_cnn_small",
    "--set",
    "judge.steps=10",
    "--images-per-class",
    "3",
]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run as fast on one thread, and two threads thrash when other tests share the 2 cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_bench_generation_end_to_end(tmp_path, capsys):
    out = tmp_path / "x.json"
    assert main([*TINY, "--out", str(out), "--save-models", str(tmp_path / "models")]) == 0
    record = json.loads(out.read_text())

    assert record["command"].startswith("python -m synthaug_pipeline.bench_generation")
    assert record["machine"]["cores"] >= 1 and record["machine"]["cpu"] and record["machine"]["torch"] == torch.__version__
    settings = record["settings"]
    assert settings["classes"] == ["0", "1"] and settings["images_per_class"] == 3
    assert settings["naive"]["steps"] == 20 and settings["fast"]["sampler"] == "dpmsolver++"  # the profile's
    assert settings["generator"]["train_seconds"] > 0
    for path in ("fast", "naive", "real_reference"):
        result = record[path]
        assert result["images"] == 6
        assert 0.0 <= result["judged_correct_share"] <= 1.0
        assert result["mean_class_fid"] >= 0 and result["pooled_fid"] >= 0
        assert set(result["per_class"]) == {"0", "1"}
        ratios = [c["diversity_ratio"] for c in result["per_class"].values()]
        assert all(r > 0 for r in ratios) and result["mean_diversity_ratio"] == pytest.approx(sum(ratios) / 2)
    for path in ("fast", "naive"):
        assert record[path]["images_per_second"] > 0 and record[path]["seconds"] > 0
    comparison = record["comparison"]
    assert comparison["speedup"] > 0
    assert comparison["share_diff_points"] == pytest.approx(
        100 * (record["fast"]["judged_correct_share"] - record["naive"]["judged_correct_share"])
    )
    assert set(record["targets"]) == {"speedup", "judged_correct_share", "mean_class_fid"}
    assert record["all_targets_met"] == all(t["met"] for t in record["targets"].values())
    snippet = capsys.readouterr().out
    assert "| images/s |" in snippet and record["command"] in snippet

    # Reusing the saved models skips training and samples the same fast-path images (same seeds).
    again = tmp_path / "again.json"
    args = [*TINY, "--out", str(again), "--generator", str(tmp_path / "models/generator"), "--judge", str(tmp_path / "models/judge")]
    assert main(args) == 0
    reused = json.loads(again.read_text())
    assert reused["settings"]["generator"]["train_seconds"] is None
    assert reused["settings"]["generator"]["version"] == settings["generator"]["version"]
    assert reused["fast"]["per_class"] == record["fast"]["per_class"]


def test_bench_generation_rejects_bad_settings(capsys):
    assert main(["--set", "generator.no_such_field=1"]) == 2
    assert "no_such_field" in capsys.readouterr().err


def test_diversity_ratio_sees_samples_that_are_all_alike():
    from synthaug_pipeline.bench_generation import quality
    from synthaug_pipeline.lib.classifier import predict

    class PixelJudge(torch.nn.Module):
        """Features are the pixels; it always says class 0."""

        num_classes = 2

        def __init__(self):
            super().__init__()
            self.unused = torch.nn.Parameter(torch.zeros(1))

        def forward_features(self, x):
            return x.flatten(1)

        def forward_head(self, features, pre_logits=False):
            return features if pre_logits else torch.nn.functional.one_hot(torch.zeros(len(features), dtype=torch.long), 2).float()

    judge = PixelJudge()
    rng = np.random.default_rng(0)
    varied = rng.integers(0, 256, (20, 4, 4, 1), dtype=np.uint8)
    alike = np.repeat(varied[:1], 20, axis=0) + rng.integers(0, 3, (20, 4, 4, 1), dtype=np.uint8)
    real = {0: predict(judge, varied)[1]}
    ratios = {name: quality({0: batch}, judge, real, ["0"])["mean_diversity_ratio"] for name, batch in (("varied", varied), ("alike", alike))}
    assert ratios["varied"] == pytest.approx(1.0) and ratios["alike"] < 0.05


@pytest.mark.parametrize("backend", ["dit", "text2img"])
def test_pretrained_architecture_bench_runs_at_toy_size(tmp_path, capsys, backend):
    out = tmp_path / f"{backend}.json"
    args = ["--backend", backend, "--tiny", "--images", "3", "--batch", "2", "--steps", "2", "--stock-images", "1", "--device", "cpu"]
    assert main([*args, "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["backend"] == backend and record["architecture"].startswith("toy ")
    assert record["stock"]["steps"] == 50 and record["stock"]["dtype"] == "float32" and record["stock"]["batch"] == 1
    assert record["ours"]["dtype"] == "bfloat16" and record["ours"]["batch_sizes_used"] == [1, 2]  # 3 images in batches of 2
    assert record["denoiser_forward_flops_batch1"] > 0
    assert record["denoiser_flops_per_image"]["ours"] == record["denoiser_forward_flops_batch1"] * 2 * 2  # guided x 2 steps
    assert record["bf16_peak_tflops"] is None and record["utilisation"]["ours"]["share_of_bf16_peak"] is None  # a CPU has no entry
    assert record["speedup"] > 0 and "| ours | bfloat16 |" in capsys.readouterr().out


def test_the_full_size_pretrained_bench_needs_a_gpu(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(["--backend", "text2img"]) == 2
    assert "needs a CUDA GPU; use --tiny" in capsys.readouterr().err
