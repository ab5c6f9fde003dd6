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
