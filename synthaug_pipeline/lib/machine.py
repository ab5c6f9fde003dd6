"""What a benchmark ran on: one description for every benchmark record (pure: no Dagster here).

``describe_machine()`` returns a JSON-able dict (cores, CPU model, accelerator, torch and Python
versions, torch threads, the load average when it was taken); ``finish_machine()`` adds the load
average at the end of the run; ``machine_summary()`` renders either as the one line BENCHMARKS.md
quotes.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):  # not on every platform
        return None


def describe_machine(device: str | None = None) -> dict:
    """This machine now. ``device`` names where the benchmark computes; default: the CUDA device if any, else cpu."""
    if device is None:
        device = f"cuda ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "cpu"
    return {
        "cores": os.cpu_count(),
        "cpu": cpu_model(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "python": platform.python_version(),
        "load_average_1_5_15_min_at_start": _load_average(),
    }


def finish_machine(info: dict) -> dict:
    """``info`` with the load average at the end of the run (so a reader can tell whether the machine was shared)."""
    info["load_average_1_5_15_min_at_end"] = _load_average()
    return info


def machine_summary(info: dict) -> str:
    """One line: ``2 cores (CPU), cpu, torch 2.14.1 (2 threads), Python 3.11.7; load average ...``."""
    line = (
        f"{info['cores']} cores ({info['cpu']}), {info['device']}, torch {info['torch']} ({info['torch_threads']} threads), "
        f"Python {info['python']}"
    )
    start, end = info.get("load_average_1_5_15_min_at_start"), info.get("load_average_1_5_15_min_at_end")
    if start:
        line += f"; load average at start {start[0]}" + (f", at end {end[0]}" if end else "")
    return line
