"""Cost accounting: seconds per generated and per accepted image, and accuracy gained per device-hour."""

import pytest

from synthaug_pipeline.lib.cost import class_cost, cost_markdown, cost_metadata, headline_cost, run_cost


def test_class_cost_divides_the_class_steps_by_images():
    cost = class_cost("cpu", {"sampling": 6.0, "scoring": 3.0, "shard": 1.0}, generated=100, accepted=40)
    assert cost["device"] == "CPU" and cost["device_seconds"] == 10.0
    assert cost["seconds_per_generated_image"] == pytest.approx(0.1)
    assert cost["seconds_per_accepted_image"] == pytest.approx(0.25)
    assert cost["missing"] == []
    assert cost_metadata(cost) == {"cpu_seconds": 10.0, "cpu_seconds_per_image": 0.1, "cpu_seconds_per_accepted_image": 0.25}


def test_nothing_accepted_or_a_missing_time_is_explicit():
    cost = class_cost("cuda:0", {"sampling": None, "scoring": 2.0, "shard": 0.5}, generated=10, accepted=0)
    assert cost["device"] == "GPU" and cost["device_seconds"] == 2.5
    assert cost["seconds_per_accepted_image"] is None and cost["missing"] == ["sampling"]


def test_run_cost_counts_the_generator_once_and_reports_points_per_hour():
    classes = {
        "a": class_cost("cuda", {"sampling": 1800.0, "scoring": 0.0, "shard": 0.0}, 100, 50),
        "b": class_cost("cuda", {"sampling": 1800.0, "scoring": 0.0, "shard": 0.0}, 100, 25),
    }
    cost = run_cost(classes, generator_seconds=3600.0, generator_device="cuda", top1_delta=0.02)
    assert cost["device"] == "GPU" and cost["total_seconds"] == 7200.0 and cost["device_hours"] == 2.0
    assert cost["top1_gain_points"] == pytest.approx(2.0)
    assert cost["points_per_device_hour"] == pytest.approx(1.0)  # 2 points over 2 GPU-hours
    assert cost["seconds_per_accepted_image"] == pytest.approx(3600.0 / 75)
    assert "accuracy gained per GPU-hour: +1.00 points" in headline_cost(cost)
    table = "\n".join(cost_markdown(cost))
    assert "| a | 100 | 50 | 1800.00 | 0.00 | 0.00 | 18 | 36 |" in table


def test_no_gain_known_or_no_time_gives_no_rate():
    assert run_cost({}, None, None, None)["points_per_device_hour"] is None
    assert run_cost({}, 0.0, "cpu", 0.05)["points_per_device_hour"] is None
    assert "n/a" in headline_cost(run_cost({}, None, None, None))
