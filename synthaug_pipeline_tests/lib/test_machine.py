"""The one machine description every benchmark record carries."""

from __future__ import annotations

import json
import os

import torch

from synthaug_pipeline.lib.machine import cpu_model, describe_machine, finish_machine, machine_summary


def test_description_is_json_and_names_what_the_numbers_depend_on():
    info = describe_machine()
    assert json.loads(json.dumps(info)) == info
    assert info["cores"] == os.cpu_count() and info["cpu"] == cpu_model() and info["cpu"]
    assert info["torch"] == torch.__version__ and info["torch_threads"] == torch.get_num_threads()
    assert info["device"] == "cpu" or info["device"].startswith("cuda (")
    assert describe_machine(device="cpu")["device"] == "cpu"
    assert "load_average_1_5_15_min_at_end" not in info


def test_summary_is_one_line_with_the_load_at_both_ends():
    info = describe_machine(device="cpu")
    info["load_average_1_5_15_min_at_start"] = [1.5, 1.0, 0.5]
    assert machine_summary(info) == (
        f"{os.cpu_count()} cores ({cpu_model()}), cpu, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"Python {info['python']}; load average at start 1.5"
    )
    finished = finish_machine(info)
    assert finished is info and len(info["load_average_1_5_15_min_at_end"]) == 3
    assert machine_summary(info).startswith(f"{os.cpu_count()} cores") and ", at end " in machine_summary(info)
    info["load_average_1_5_15_min_at_start"] = None  # a platform without getloadavg
    assert "load average" not in machine_summary(info)
