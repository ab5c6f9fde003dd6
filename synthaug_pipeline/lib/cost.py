"""What synthetic images cost: device seconds per generated and per accepted image, and accuracy per device-hour.

A class's cost is the wall time of its own steps on the device they ran on: sampling
(``synthetic_images``), scoring (``synthetic_scores``) and writing the shard (``synthetic_shards``).
Training (or loading) the generator is shared by every class and counted once for the run. On a GPU
the wall time of a step is the time it held the GPU (the ``gpu`` pool gives a step the device to
itself); on a CPU it is wall time, not core-seconds. The run's headline adds

    accuracy gained per device-hour = (augmented - baseline top-1, in points) / (generator + all classes, in hours)

so a run says what each point of accuracy cost in machine time.
"""

from __future__ import annotations

STAGES = ("sampling", "scoring", "shard")


def device_kind(device: str | None) -> str:
    """``GPU`` for a CUDA (or other accelerator) device name, ``CPU`` otherwise."""
    return "CPU" if not device or str(device).startswith("cpu") else "GPU"


def _per(seconds: float, count: int) -> float | None:
    return round(seconds / count, 6) if count > 0 else None


def class_cost(device: str | None, seconds: dict[str, float | None], generated: int, accepted: int) -> dict:
    """The cost record of one class: seconds by stage (a stage without a recorded time counts 0 and is listed as
    missing), their sum, and seconds per generated and per accepted image (None when there are none)."""
    known = {stage: float(value) for stage, value in seconds.items() if value is not None}
    total = sum(known.values())
    return {
        "device": device_kind(device),
        "seconds": {stage: round(value, 3) for stage, value in known.items()},
        "missing": sorted(stage for stage, value in seconds.items() if value is None),
        "device_seconds": round(total, 3),
        "generated": int(generated),
        "accepted": int(accepted),
        "seconds_per_generated_image": _per(total, generated),
        "seconds_per_accepted_image": _per(total, accepted),
    }


def run_cost(class_costs: dict[str, dict], generator_seconds: float | None, generator_device: str | None, top1_delta: float | None) -> dict:
    """Every class's cost summed with the generator's, and the accuracy gained per device-hour.

    ``top1_delta`` is augmented minus baseline in-domain top-1 as a fraction (0.012 = 1.2 points)."""
    kinds = {cost["device"] for cost in class_costs.values()} | ({device_kind(generator_device)} if generator_seconds else set())
    device = "GPU" if "GPU" in kinds else "CPU"
    class_seconds = sum(cost["device_seconds"] for cost in class_costs.values())
    total = class_seconds + float(generator_seconds or 0.0)
    generated = sum(cost["generated"] for cost in class_costs.values())
    accepted = sum(cost["accepted"] for cost in class_costs.values())
    hours = total / 3600
    points = None if top1_delta is None else 100 * top1_delta
    return {
        "device": device,
        "generator_seconds": round(float(generator_seconds or 0.0), 3),
        "class_seconds": round(class_seconds, 3),
        "total_seconds": round(total, 3),
        "device_hours": round(hours, 6),
        "generated": generated,
        "accepted": accepted,
        "seconds_per_generated_image": _per(class_seconds, generated),
        "seconds_per_accepted_image": _per(class_seconds, accepted),
        "top1_gain_points": None if points is None else round(points, 3),
        "points_per_device_hour": round(points / hours, 3) if points is not None and hours > 0 else None,
        "per_class": class_costs,
    }


def _num(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def headline_cost(cost: dict) -> str:
    """One line for the terminal and the report, next to the headline table."""
    device = cost["device"]
    return (
        f"accuracy gained per {device}-hour: {_num(cost['points_per_device_hour'], '+.2f')} points "
        f"({_num(cost['top1_gain_points'], '+.2f')} points for {cost['total_seconds']:.1f} {device}-seconds: generator "
        f"{cost['generator_seconds']:.1f} s, {len(cost['per_class'])} classes {cost['class_seconds']:.1f} s; "
        f"{_num(cost['seconds_per_accepted_image'], '.3g')} s per accepted image)"
    )


def cost_markdown(cost: dict) -> list[str]:
    """The report's cost section: the headline line and a per-class table."""
    device = cost["device"]
    lines = [
        "## Cost",
        "",
        headline_cost(cost) + ".",
        "",
        f"Device time ({device}) is the wall time of each step; the generator is trained once for all classes.",
        "",
        "| class | images | accepted | sampling s | scoring s | shard s | s per image | s per accepted image |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for class_id, item in cost["per_class"].items():
        stage = item["seconds"]
        lines.append(
            f"| {class_id} | {item['generated']} | {item['accepted']} | "
            + " | ".join(_num(stage.get(name), ".2f") for name in STAGES)
            + f" | {_num(item['seconds_per_generated_image'], '.3g')} | {_num(item['seconds_per_accepted_image'], '.3g')} |"
        )
    return [*lines, ""]


def cost_metadata(cost: dict) -> dict:
    """A class's cost as flat numbers for its materialization (Dagster plots numeric metadata over time)."""
    device = cost["device"].lower()
    return {
        f"{device}_seconds": cost["device_seconds"],
        f"{device}_seconds_per_image": cost["seconds_per_generated_image"],
        f"{device}_seconds_per_accepted_image": cost["seconds_per_accepted_image"],
    }
