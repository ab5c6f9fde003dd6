"""Open the Dagster instance of `synthaug run`: SQLite under the home folder by default, or whatever its
dagster.yaml names (PostgreSQL in docker/dagster.yaml), with one line when it cannot be opened."""

from __future__ import annotations

import contextlib
import logging
import os

import dagster as dg

from synthaug_pipeline.lib.redaction import redact_url


class InstanceUnavailableError(RuntimeError):
    """The instance's storage cannot be reached or configured; the message is one line naming the fix."""


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0][:240] if lines else type(exc).__name__


def _root_cause(exc: BaseException) -> BaseException:
    seen = set()
    while (exc.__cause__ or exc.__context__) is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return exc


@contextlib.contextmanager
def _quiet_root_logger():
    # dagster-postgres logs a WARNING per connection retry on the root logger: the terminal gets our one line instead
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def describe_storage(home: str) -> str:
    """Where the instance in ``home`` keeps runs and events, without credentials: "sqlite" or "postgres at host:port/db"."""
    path = os.path.join(home, "dagster.yaml")
    try:
        import yaml

        config = yaml.safe_load(open(path)) or {}
    except (OSError, ValueError):
        return "sqlite"
    storage = (config.get("storage") or {}) if isinstance(config, dict) else {}
    if "postgres" not in storage:
        return "sqlite"
    pg = storage["postgres"] or {}
    if "postgres_url" in pg:
        return f"postgres at {redact_url(str(_value(pg['postgres_url'])))}"
    db = pg.get("postgres_db") or {}
    return f"postgres at {_value(db.get('hostname'))}:{_value(db.get('port', 5432))}/{_value(db.get('db_name'))}"


def _value(setting) -> str:
    if isinstance(setting, dict) and "env" in setting:
        return os.environ.get(setting["env"], f"${setting['env']}")
    return str(setting)


def open_instance(home: str) -> dg.DagsterInstance:
    """``DagsterInstance.get()`` for ``home`` (DAGSTER_HOME), or :class:`InstanceUnavailableError` in one line:
    PostgreSQL not reachable, wrong credentials, missing database, an unset variable of dagster.yaml, no driver."""
    where = f"Dagster instance {home} ({describe_storage(home)})"
    try:
        with _quiet_root_logger():
            instance = dg.DagsterInstance.get()
            instance.get_runs(limit=1)  # a first query: lazily connecting storages fail here, not mid-run
            return instance
    except ImportError as exc:
        raise InstanceUnavailableError(
            f"{where}: {_first_line(exc)}; install the PostgreSQL storage with pip install 'synthaug_pipeline[scaleout]'"
        ) from None
    except dg.DagsterInvalidConfigError as exc:
        unset = [line for line in str(exc).splitlines() if "environment variable" in line.lower()]
        detail = redact_url(unset[0].strip() if unset else _first_line(exc))
        raise InstanceUnavailableError(f"{where}: its dagster.yaml cannot be used: {detail}") from None
    except Exception as exc:  # noqa: BLE001 - any storage failure is one line
        cause = _root_cause(exc)
        text = redact_url(_first_line(cause))
        password = os.environ.get("DAGSTER_PG_PASSWORD")
        if password and len(password) >= 4:
            text = text.replace(password, "***")
        raise InstanceUnavailableError(f"{where}: cannot open its storage: {text}") from None
