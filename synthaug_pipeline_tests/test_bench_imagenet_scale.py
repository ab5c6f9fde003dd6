"""benchmarks/scale.py --imagenet-samples: the sample set it runs (each photo as train and, a copy, as test) and its
benchmark-only relaxation of the two shard checks that need 2 real images per class (the product keeps them)."""

import importlib.util
import io
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from synthaug_pipeline.defs.scoring import assets
from synthaug_pipeline.lib.imagenet import imagenet_1k

SCALE = Path(__file__).resolve().parents[1] / "benchmarks" / "scale.py"


@pytest.fixture(scope="module")
def scale():
    spec = importlib.util.spec_from_file_location("bench_scale", SCALE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _samples(path: Path, wnids) -> Path:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(buffer, format="JPEG")
    pq.write_table(pa.table({"wnid": list(wnids), "name": ["x"] * len(wnids), "image": [buffer.getvalue()] * len(wnids)}), path)
    return path


def test_the_first_n_wnids_each_as_train_and_as_a_test_copy(scale, tmp_path):
    samples = _samples(tmp_path / "samples.parquet", imagenet_1k()[::-1])
    table = pq.read_table(scale.orchestration_samples(str(samples), tmp_path, 3))
    rows = sorted(zip(table.column("wnid").to_pylist(), table.column("split").to_pylist()))
    assert rows == sorted((w, s) for w in imagenet_1k()[:3] for s in ("train", "test"))
    assert len(set(table.column("image").to_pylist())) == 1  # the test image is the training image: not held out


def test_a_sample_set_missing_a_class_is_refused(scale, tmp_path):
    samples = _samples(tmp_path / "samples.parquet", imagenet_1k()[:999])
    with pytest.raises(SystemExit, match="one image for each of the 1000"):
        scale.orchestration_samples(str(samples), tmp_path, 3)


def test_only_classes_with_one_real_image_pass_the_relaxed_checks(scale, monkeypatch):
    missing = {"fid": None, "kid_mean": None, "n_synthetic": 2, "warnings": ["fid/kid need at least 2 real images"]}
    assert not assets.metrics_computed_check("c", {**missing, "n_real": 1})[0]  # the product: refused
    monkeypatch.setattr(assets, "metrics_computed_check", assets.metrics_computed_check)  # restored after the test
    monkeypatch.setattr(assets, "accepted_test_leak_check", assets.accepted_test_leak_check)
    scale.orchestration_only_checks()

    passed, metadata = assets.metrics_computed_check("c", {**missing, "n_real": 1})
    assert passed and "orchestration only" in metadata["orchestration_only"]
    assert not assets.metrics_computed_check("c", {**missing, "n_real": 5})[0]  # enough images, still missing: fails
    assert not assets.metrics_computed_check("c", {**missing, "n_real": 1, "error": "scoring failed"})[0]

    accepted = np.array([True, True])
    one = SimpleNamespace(is_test_leak=None, summary={"n_real": 1, "n_test": 1})
    assert assets.accepted_test_leak_check(one, accepted)[0]
    unchecked = SimpleNamespace(is_test_leak=None, summary={"n_real": 3, "n_test": 1})
    assert not assets.accepted_test_leak_check(unchecked, accepted)[0]
    leaking = SimpleNamespace(is_test_leak=np.array([True, False]), summary={"n_real": 1, "n_test": 1})
    assert not assets.accepted_test_leak_check(leaking, accepted)[0]  # a flagged leak still fails
