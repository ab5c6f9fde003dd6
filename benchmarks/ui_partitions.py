"""How long the Dagster UI takes to show the ``synthetic_shards`` partitions page of an instance with many classes.

    python benchmarks/scale.py --imagenet-samples samples.parquet --keep /tmp/inet1000   # leaves the instance
    python benchmarks/ui_partitions.py /tmp/inet1000 [--loads 5] [--out benchmarks/results/ui_partitions.json]

Starts ``synthaug dev`` (``dagster dev``: webserver + daemon + the code location) on 127.0.0.1 with the profile,
settings and ``$DAGSTER_HOME`` that ``scale.py --keep`` recorded in ``<work>/run.json``, waits until the webserver
answers and the code location has loaded, then opens ``/assets/synthetic_shards?view=partitions`` in headless
Chromium (Playwright driving ``/usr/bin/chromium``) ``--loads`` times, each in a fresh browser context (no cache).

**Ready** means, measured from the start of navigation: the partition status counts show every materialized
partition (the filter label ``Materialized (N)`` with N = the instance's materialized ``synthetic_shards``
partitions, read before the server starts) *and* the partition list shows its first key (the first wnid) *and*
the list's last key is reachable in it (typed into the list's filter box and shown). The page is then usable: the
status of every partition is known and any partition can be opened. The server is stopped (its process group) at
the end or after ``--timeout`` seconds, whatever happens. A screenshot of the last ready page goes to ``--shot``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ASSET = "synthetic_shards"
CHROMIUM = "/usr/bin/chromium"


def materialized_keys(home: Path) -> list[str]:
    """The instance's materialized partitions of ``synthetic_shards`` (sorted), read before the server starts."""
    import dagster as dg

    os.environ["DAGSTER_HOME"] = str(home)
    with dg.DagsterInstance.get() as instance:
        return sorted(instance.get_materialized_partitions(dg.AssetKey(ASSET)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run: dict, port: int, log: Path) -> subprocess.Popen:
    argv = [sys.executable, "-c", "import sys; from synthaug_pipeline.cli import main; sys.exit(main())", "dev",
            "--profile", run["profile"], "--dagster-home", run["dagster_home"], "--port", str(port), "--host", "127.0.0.1"]
    for item in run["overrides"]:
        argv += ["--set", item]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("SYNTHAUG_PROFILE", None), env.pop("SYNTHAUG_SET", None)
    return subprocess.Popen(argv, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True, cwd=run["dagster_home"])


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)  # dagster dev shuts its webserver, daemon and code server down on SIGINT
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def graphql(port: int, query: str) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql", data=json.dumps({"query": query}).encode(), headers={"Content-Type": "application/json"}
    )
    return json.loads(urllib.request.urlopen(request, timeout=30).read())


def wait_until_loaded(port: int, proc: subprocess.Popen, deadline: float) -> float:
    """Seconds until the webserver answers and the code location is loaded (its asset is in the asset graph)."""
    started = time.perf_counter()
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode} before it was up (see its log)")
        try:
            data = graphql(port, '{ assetOrError(assetKey: {path: ["%s"]}) { __typename ... on Asset { definition { id } } } }' % ASSET)
            asset = data.get("data", {}).get("assetOrError") or {}
            if asset.get("__typename") == "Asset" and asset.get("definition"):
                return time.perf_counter() - started
        except (OSError, ValueError):
            pass
        time.sleep(0.5)
    raise SystemExit("the server did not load the code location in time")


def load_page(browser, port: int, expected: int, first: str, last: str, shot: Path | None, limit_s: float) -> dict:
    """One timed load of the partitions page in a fresh context; see the module docstring for "ready"."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    timeout = limit_s * 1000
    try:
        started = time.perf_counter()
        page.goto(f"http://127.0.0.1:{port}/assets/{ASSET}?view=partitions", wait_until="commit", timeout=timeout)
        count = re.compile(rf"^Materialized \(({expected}|{expected:,})\)$")  # with or without a thousands separator
        page.get_by_text(count).first.wait_for(timeout=timeout)
        counts_s = time.perf_counter() - started
        page.get_by_text(first, exact=True).first.wait_for(timeout=timeout)
        list_s = time.perf_counter() - started
        page.get_by_placeholder("Filter by name").first.fill(last, timeout=timeout)
        page.get_by_text(last, exact=True).first.wait_for(timeout=timeout)
        ready_s = time.perf_counter() - started
        if shot is not None:
            page.get_by_text(last, exact=True).first.click(timeout=timeout)  # open it: its metadata and checks
            page.wait_for_timeout(3000)
            page.screenshot(path=str(shot))
        return {"counts_s": round(counts_s, 2), "first_key_s": round(list_s, 2), "ready_s": round(ready_s, 2)}
    finally:
        context.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work", help="a folder left by benchmarks/scale.py --keep (run.json, home/, output/)")
    parser.add_argument("--loads", type=int, default=5, help="timed page loads, each in a fresh browser context")
    parser.add_argument("--timeout", type=float, default=900, help="seconds for everything; the server is stopped after")
    parser.add_argument("--page-timeout", type=float, default=60, help="seconds one page load may take to be ready")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "ui_partitions.json"))
    parser.add_argument("--shot", default=str(REPO / "benchmarks" / "results" / "ui_partitions.png"))
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    from synthaug_pipeline.lib.machine import describe_machine, finish_machine, machine_summary

    work = Path(args.work).resolve()
    run = json.loads((work / "run.json").read_text())
    keys = materialized_keys(Path(run["dagster_home"]))
    if not keys:
        raise SystemExit(f"{run['dagster_home']} has no materialized {ASSET} partition")
    machine, deadline, port = describe_machine(), time.time() + args.timeout, free_port()
    log = work / "ui_server.log"
    proc = start_server(run, port, log)
    try:
        up_s = wait_until_loaded(port, proc, deadline)
        graphql(port, "mutation { setNuxSeen }")  # as the community dialog's Skip: it would cover the page in screenshots
        print(f"server and code location up in {up_s:.1f}s", flush=True)
        loads = []
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
            try:
                for i in range(args.loads):
                    shot = Path(args.shot) if i == args.loads - 1 else None
                    loads.append(load_page(browser, port, len(keys), keys[0], keys[-1], shot, args.page_timeout))
                    print(json.dumps(loads[-1]), flush=True)
            finally:
                browser.close()
    finally:
        stop_server(proc)
    ready = [load["ready_s"] for load in loads]
    record = {
        "command": "python benchmarks/ui_partitions.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": finish_machine(machine),
        "machine_summary": machine_summary(machine),
        "asset": ASSET,
        "materialized_partitions": len(keys),
        "server_and_code_location_up_s": round(up_s, 1),
        "ready_definition": "Materialized (N) count shown, first partition key listed, last key found through the list's filter",
        "loads": loads,
        "ready_s": {"first": ready[0], "median": round(statistics.median(ready), 2), "max": max(ready)},
        "screenshot": str(Path(args.shot).resolve().relative_to(REPO)) if Path(args.shot).resolve().is_relative_to(REPO) else args.shot,
        "chromium": CHROMIUM,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}: ready in {record['ready_s']}")


if __name__ == "__main__":
    main()
