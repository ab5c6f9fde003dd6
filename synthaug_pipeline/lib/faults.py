"""Failpoints: named places where a test can kill the process, to prove that a crash there loses nothing.

``failpoint("shard_write")`` does nothing unless the environment variable ``SYNTHAUG_KILL_AT`` names that
point (``name``, or ``name#n`` for its n-th hit in this process); then the process sends itself SIGKILL, the
way the OOM killer or a closed laptop ends it: no exception handler, no ``finally``, no atexit runs. The
fault-injection tests run `synthaug run` in a real subprocess with it set, re-run the same command, and
compare the result with an uninterrupted run.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal

KILL_AT_ENV_VAR = "SYNTHAUG_KILL_AT"
FAILPOINTS = ("synthetic_images", "synthetic_scores", "shard_write", "shard_commit", "training_step")
_hits: collections.Counter[str] = collections.Counter()
_suspended = 0


@contextlib.contextmanager
def suspended():
    """No failpoint fires inside (work that is not the run's own, such as the timing steps of the estimate)."""
    global _suspended
    _suspended += 1
    try:
        yield
    finally:
        _suspended -= 1


def failpoint(name: str) -> None:
    """SIGKILL this process if ``SYNTHAUG_KILL_AT`` is ``name`` (or ``name#n`` and this is the n-th hit)."""
    wanted = os.environ.get(KILL_AT_ENV_VAR)
    if not wanted or _suspended or not wanted.startswith(name):
        return
    _hits[name] += 1
    point, _, nth = wanted.partition("#")
    if point == name and _hits[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


FAIL_ONCE_ENV_VAR = "SYNTHAUG_FAIL_ONCE"  # "name:/path/of/marker": the first hit of `name` in any process raises


class InjectedStorageError(ConnectionError):
    """A transient failure injected by :func:`fail_once` (a storage endpoint that drops a request)."""


def fail_once(name: str) -> None:
    """Raise :class:`InjectedStorageError` at the first hit of ``name`` across all processes, then never again.

    ``SYNTHAUG_FAIL_ONCE=name:/path/marker`` arms it; the hit that creates the marker file (atomically, so only
    one process wins) raises. The retry tests use it to show that a step that fails on a transient storage
    error is completed by its retry, with nothing half-written.
    """
    armed = os.environ.get(FAIL_ONCE_ENV_VAR)
    if not armed or _suspended:
        return
    point, _, marker = armed.partition(":")
    if point != name or not marker:
        return
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.close(fd)
    raise InjectedStorageError(f"injected transient storage failure at {name} (connection reset by the storage endpoint)")
