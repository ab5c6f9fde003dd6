"""Suite-wide guards.

Entering a `DagsterInstance` sets a context variable (the definitions-state storage) that
Dagster reads whenever definitions load; leaving it restores the previous value. A context
that is never closed (`dg.build_asset_context()` without `with`) leaves at garbage-collection
time, which can restore the storage of an instance whose temporary folder is long gone, and
a later, unrelated test then fails with "unable to open database file". This guard collects
garbage after every test module and fails the module that leaked, instead of whichever test
happens to load definitions next.
"""

import gc
import os

import pytest


def _current_defs_state_storage():
    try:
        from dagster._core.storage.defs_state.base import DefsStateStorage
    except ImportError:  # a Dagster without definitions-state storage cannot leak it
        return None
    return DefsStateStorage.get()


@pytest.fixture(autouse=True, scope="module")
def no_dagster_instance_outlives_its_module(request):
    before = _current_defs_state_storage()
    yield
    gc.collect()
    leaked = _current_defs_state_storage()
    if leaked is not before:
        pytest.fail(
            f"{request.module.__name__} left a Dagster instance's state storage current ({leaked!r}); "
            "close every instance and built context with `with`",
            pytrace=False,
        )


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory):
    """A SeaweedFS S3 server with bucket ``services.S3_BUCKET`` for the module that accepts only the credentials
    ``services.S3_ACCESS_KEY`` / ``S3_SECRET``, set in the standard AWS variables; the environment and fsspec's
    S3 defaults are restored after."""
    import fsspec.config

    from synthaug_pipeline_tests.services import S3_ACCESS_KEY, S3_BUCKET, S3_SECRET, seaweedfs

    saved_env = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    saved_conf = fsspec.config.conf.get("s3")
    os.environ.update(AWS_ACCESS_KEY_ID=S3_ACCESS_KEY, AWS_SECRET_ACCESS_KEY=S3_SECRET)
    try:
        with seaweedfs(tmp_path_factory.mktemp("seaweedfs"), S3_BUCKET, identity=(S3_ACCESS_KEY, S3_SECRET)) as endpoint:
            yield endpoint
    finally:
        for key, value in saved_env.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
        if saved_conf is None:
            fsspec.config.conf.pop("s3", None)
        else:
            fsspec.config.conf["s3"] = saved_conf
