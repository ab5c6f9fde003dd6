"""Tests for synthaug_pipeline.lib.report: the headline table and report.md from real evaluation results."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from synthaug_pipeline.lib.evaluation import compare, evaluate_under_shift
from synthaug_pipeline.lib.report import headline_rows, headline_table, per_class_order, render_report_markdown


class Shifted(nn.Module):
    """Predicts (mean pixel value // 20 + offset) mod K: offset 0 is right on _encoded images."""

    def __init__(self, num_classes: int, offset: int) -> None:
        super().__init__()
        self.num_classes, self.offset = num_classes, offset
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value = (x.mean(dim=(1, 2, 3)) + 1.0) * 127.5
        decoded = (((value - 10.0) / 20.0).round().long() + self.offset) % self.num_classes
        return nn.functional.one_hot(decoded, self.num_classes).float() * 10 + self.dummy


def _encoded(classes) -> np.ndarray:
    values = np.asarray(classes) * 20 + 10
    return np.broadcast_to(values[:, None, None, None], (len(values), 8, 8, 1)).astype(np.uint8)


def _payload(num_classes: int, corruptions: list[str], shift_sets: bool) -> dict:
    class_ids = [f"k{i}" for i in range(num_classes)]
    labels = np.repeat(np.arange(num_classes), 2)
    images = _encoded(labels)
    sets = {"sketch": (_encoded([0, 1]), np.array([0, 1]))} if shift_sets else None
    models = {
        "classifier_baseline": evaluate_under_shift(
            Shifted(num_classes, 1), images, labels, class_ids, corruptions, [1, 3], shift_sets=sets
        ),
        "classifier_augmented": evaluate_under_shift(
            Shifted(num_classes, 0), images, labels, class_ids, corruptions, [1, 3], shift_sets=sets
        ),
    }
    evaluation = {"models": models, "delta": compare(*models.values()), "test_images": len(labels)}
    return {
        "profile": {"name": "tiny", "augmented": {"synthetic_ratio": 0.5, "aux_bn": True}},
        "dataset": {"dataset": "tiny", "source": "test", "class_ids": class_ids, "image_shape": [8, 8, 1]},
        "judge": {"model": "synthaug_cnn_small", "test_top1": 0.9},
        "per_class": {
            c: {
                "n_synthetic": 4,
                "n_real": 6,
                "mean_judge_confidence": 0.8,
                "fid": 1.5,
                "kid_mean": 0.01 * (i + 1),
                "feature_extractor": "judge:synthaug_cnn_small@abc/penultimate",
            }
            for i, c in enumerate(class_ids)
        },
        "shards": [
            {"class_id": c, "num_accepted": 3, "uri": f"file:///s/{c}.parquet", "sha256": "ab" * 32, "num_rows": 4, "filter_version": "f1"}
            for c in class_ids
        ],
        "models": {"baseline": {"url": "/m/b", "version": "v1"}, "augmented": {"url": "/m/a", "version": "v2"}},
        "evaluation": evaluation,
        "run_id": "run1",
    }


def test_headline_has_top5_only_with_many_classes_and_shift_sets() -> None:
    many = headline_rows(_payload(12, ["contrast"], shift_sets=True)["evaluation"])
    names = [row[0] for row in many]
    assert names == ["top-1 in-domain", "top-5 in-domain", "top-1 under shift (mean)", "drop under shift", "top-1 on shift set sketch"]
    assert many[0] == ("top-1 in-domain", "0.0%", "100.0%", "+100.0")
    assert many[-1] == ("top-1 on shift set sketch", "0.0%", "100.0%", "+100.0")
    few = [row[0] for row in headline_rows(_payload(3, ["contrast"], shift_sets=False)["evaluation"])]
    assert "top-5 in-domain" not in few and not any("shift set" in name for name in few)


def test_headline_without_corruptions_says_n_a() -> None:
    table = headline_table(_payload(3, [], shift_sets=False)["evaluation"])
    assert "top-1 under shift (mean)" in table and "n/a" in table


def test_report_markdown_shows_shift_breakdown_sets_and_per_class_deltas() -> None:
    markdown = render_report_markdown(_payload(12, ["contrast", "pixelate"], shift_sets=True))
    assert "| top-5 in-domain |" in markdown
    assert "## Under shift: corruptions of the test split" in markdown
    assert "| pixelate (mean) |" in markdown and "| contrast@3 |" in markdown
    assert "Drop under shift" in markdown
    assert "## Under shift: extra test sets (evaluation.shift_folders)" in markdown
    assert "| sketch | 2 | 2/12 | 0.0% | 100.0% | +100.0 |" in markdown
    assert "| k5 | 4 | 6 | 3 | 0.800 | 0.06 | 1.500 | 0.0% | 100.0% | +100.0 |" in markdown  # counts, KID, FID, per-class delta
    assert "auxiliary batch-norm on" in markdown
    plain = render_report_markdown(_payload(3, [], shift_sets=False))
    assert "Under shift" not in plain and "| top-1 in-domain |" in plain


def _class_rows(markdown: str) -> list[str]:
    start = markdown.index("| class | synthetic | real |")
    return [line for line in markdown[start:].splitlines()[2:] if line.startswith("| ")]


def test_per_class_table_is_sorted_by_kid_and_survives_empty_classes() -> None:
    payload = _payload(4, [], shift_sets=False)
    payload["per_class"]["k1"]["kid_mean"] = 0.5  # the worst class
    # An empty class: scored, but nothing could be computed (None, not absent).
    payload["per_class"]["k2"].update(n_synthetic=0, mean_judge_confidence=None, fid=None, kid_mean=None)
    del payload["per_class"]["k3"]  # a class with no scores at all
    markdown = render_report_markdown(payload)
    rows = _class_rows(markdown)
    assert [row.split(" | ")[0] for row in rows] == ["| k1", "| k0", "| k2", "| k3"]
    assert rows[0] == "| k1 | 4 | 6 | 3 | 0.800 | 0.5 | 1.500 | 0.0% | 100.0% | +100.0 |"
    assert rows[2].startswith("| k2 | 0 | 6 | 3 | n/a | n/a | n/a | ")
    assert rows[3].startswith("| k3 | 0 | n/a | 3 | n/a | n/a | n/a | ")
    assert "Sorted by KID (the ranking metric" in markdown
    assert per_class_order(["a", "b", "c"], {"a": {"kid_mean": 0.1}, "b": {}, "c": {"kid_mean": 0.3}}) == ["c", "a", "b"]


def test_report_names_the_extractor_the_scores_came_from() -> None:
    payload = _payload(3, [], shift_sets=False)
    markdown = render_report_markdown(payload)
    assert "FID and KID use features from `judge:synthaug_cnn_small@abc/penultimate` (not Inception)" in markdown
    for summary in payload["per_class"].values():
        summary["feature_extractor"] = "inception-v3-compat:pool3@0123456789ab"
    inception = render_report_markdown(payload)
    assert "(not Inception)" not in inception
    assert "FID and KID use Inception features from `inception-v3-compat:pool3@0123456789ab`, but at per-class sample sizes" in inception
    payload["per_class"]["k0"]["feature_extractor"] = "efficientnet_lite0:x"
    mixed = render_report_markdown(payload)
    assert "`efficientnet_lite0:x`, `inception-v3-compat:pool3@0123456789ab` (different classes used different extractors" in mixed
