"""`synthaug bench scoring` at a tiny size: two classes, a 5-step judge, a few random-feature classes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from synthaug_pipeline.bench_scoring import main, scaling, stand_in_images
from synthaug_pipeline.cli import main as cli_main

TINY = [
    "--set",
    "data.classes=['0','1']",
    "--set",
    "judge.model=synthaug_cnn_small",
    "--set",
    "judge.steps=5",
    "--images-per-class",
    "4",
    "--scale-classes",
    "2,5",
    "--scale-images",
    "6",
    "--scale-real",
    "8",
    "--scale-test",
    "3",
    "--scale-dims",
    "4,16",
]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_bench_scoring_end_to_end(tmp_path, capsys):
    out = tmp_path / "scoring.json"
    assert main([*TINY, "--extractors", "judge", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["command"].startswith("python -m synthaug_pipeline.bench_scoring")
    assert record["machine"]["cores"] >= 1 and record["settings"]["classes"] == ["0", "1"]
    (row,) = record["throughput"]
    assert row["extractor"].startswith("judge:synthaug_cnn_small") and row["scored_images"] == 8 and row["classes"] == 2
    for key, value in row["images_per_second"].items():
        assert value > 0, key
    assert row["images_per_second"]["scoring_total"] == pytest.approx(
        8 / (row["seconds"]["judge_and_features"] + row["seconds"]["metrics"])
    )
    assert set(row["per_class"]) == {"0", "1"} and all(c["fid"] is not None for c in row["per_class"].values())
    rows = record["scaling"]["rows"]
    assert [(r["dim"], r["classes"]) for r in rows] == [(4, 2), (4, 5), (16, 2), (16, 5)]
    assert all(r["seconds"] > 0 and r["images"] == 6 * r["classes"] for r in rows)
    assert set(record["scaling"]["breakdown_ms_per_class"]) == {"4", "16"}
    snippet = capsys.readouterr().out
    assert record["command"] in snippet and "| dim | classes | seconds | ms per class |" in snippet


def test_bench_scoring_through_the_cli_reports_an_unavailable_extractor(tmp_path, capsys):
    out = tmp_path / "scoring.json"
    assert cli_main(["bench", "scoring", *TINY, "--extractors", "judge,inception", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert [s["extractor"] for s in record["skipped_extractors"]] == ["inception"]
    assert record["skipped_extractors"][0]["reason"].startswith("scoring.feature_extractor=inception needs")
    assert "skipped: scoring.feature_extractor=inception" in capsys.readouterr().out


def test_bench_scoring_rejects_bad_settings(capsys):
    assert main(["--set", "scoring.no_such_field=1"]) == 2
    assert "no_such_field" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--scale-classes", "0,10"])


def test_stand_in_images_and_scaling_helpers():
    real = np.full((3, 8, 8, 1), 100, np.uint8)
    images = stand_in_images(real, 10, seed=0)
    assert images.shape == (10, 8, 8, 1) and images.dtype == np.uint8
    assert np.abs(images.astype(int) - 100).max() <= 8 and images.std() > 0
    result = scaling([3], n=5, m=6, t=2, dims=[4])
    assert result["rows"][0]["classes"] == 3 and result["rows"][0]["ms_per_class"] > 0
