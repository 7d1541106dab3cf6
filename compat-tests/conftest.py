"""Shared fixtures for the kit's own Python tests (run inside a built cell's venv)."""
import json
import os
import sys

import pytest


def gil_enabled():
    is_enabled = getattr(sys, "_is_gil_enabled", None)
    return True if is_enabled is None else bool(is_enabled())


def pytest_sessionfinish(session, exitstatus):
    state_file = os.environ.get("CFFI_FT_GIL_STATE_FILE")
    if state_file:
        with open(state_file, "w") as f:
            json.dump({"gil_enabled_after": gil_enabled()}, f)


@pytest.fixture
def free_threaded():
    import sysconfig
    return bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
