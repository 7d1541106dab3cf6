"""pytest options and session fixtures of the cffi-ft stress suite.

Options (all optional):

--stress-threads T   threads per scenario (default 8; scenarios that use "another T" or
                     "T/2" threads derive them from T)
--stress-rounds R    run every scenario with exactly R rounds (overrides the defaults)
--stress-scale F     multiply every scenario's default number of rounds by F
                     (default 1.0; at least 1 round). Ignored when --stress-rounds is given.
--stress-repeat K    run each scenario's subprocess K times (default 1)
--stress-timeout S   seconds before a scenario's subprocess counts as hung (default 120)
--stress-json PATH   write per-scenario results to PATH at the end of the session

A short CI run: ``--stress-scale 0.1`` (or ``--stress-rounds 2``).

The suite is collected only when this directory (or a file in it) is named on the
command line, or with CFFI_FT_STRESS=1 in the environment: a plain ``pytest compat-tests``
(the build checks) does not run it. Without the options registered (CFFI_FT_STRESS=1 from
a parent directory) the defaults apply.

The helper library, the ABI modules and the API-mode modules are built once per session
into a pytest temporary dir (nothing is written to the source tree).
"""
import json
import os
import sys
import threading

import pytest

# nothing is written to the source tree: no .pyc files for the suite's own modules
# (the subprocesses get PYTHONDONTWRITEBYTECODE=1)
sys.dont_write_bytecode = True

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)


def pytest_addoption(parser):
    g = parser.getgroup("cffi-stress", "cffi-ft stress scenarios")
    g.addoption("--stress-threads", type=int, default=8, help="threads per scenario (8)")
    g.addoption("--stress-rounds", type=int, default=None,
                help="rounds for every scenario (default: each scenario's own)")
    g.addoption("--stress-scale", type=float, default=1.0,
                help="multiply the default rounds (1.0)")
    g.addoption("--stress-repeat", type=int, default=1,
                help="subprocess runs per scenario (1)")
    g.addoption("--stress-timeout", type=float, default=120.0,
                help="seconds before a scenario subprocess counts as hung (120)")
    g.addoption("--stress-json", default=None, help="write the results as JSON here")


def pytest_ignore_collect(collection_path, config):
    if collection_path.name != "test_stress.py" or os.environ.get("CFFI_FT_STRESS") == "1":
        return None
    here = os.path.realpath(HERE)
    base = str(config.invocation_params.dir)
    for arg in config.args:
        p = os.path.realpath(os.path.join(base, arg.split("::")[0]))
        if p == here or p.startswith(here + os.sep):
            return None
    return True     # not asked for: `pytest compat-tests` runs the build checks only


class StressSettings:
    def __init__(self, config):
        opt = config.getoption
        self.threads = max(1, opt("--stress-threads", 8))
        self.rounds = opt("--stress-rounds", None)
        self.scale = opt("--stress-scale", 1.0)
        self.repeat = max(1, opt("--stress-repeat", 1))
        self.timeout = opt("--stress-timeout", 120.0)
        self.json_path = opt("--stress-json", None)

    def rounds_for(self, sc):
        if self.rounds is not None:
            return max(1, self.rounds)
        return max(1, int(round(sc.rounds * self.scale)))


def pytest_configure(config):
    config._stress_settings = StressSettings(config)
    config._stress_results = {}
    config._stress_lock = threading.Lock()
    config.addinivalue_line("markers", "stress: a cffi-ft stress scenario (own subprocess)")
    if not config.pluginmanager.hasplugin("run_parallel"):
        config.addinivalue_line("markers", "thread_unsafe: (pytest-run-parallel) run once")


def pytest_itemcollected(item):
    # `-k unique-cache` (xtask stress --only <component>) selects a component's scenarios
    sc = getattr(getattr(item, "callspec", None), "params", {}).get("sc")
    if sc is not None:
        item.extra_keyword_matches.add(sc.component)


# The session fixtures (the helper library, the ABI and API modules) are built in the
# setup of the first scenario that runs, and pytest-timeout counts setup: seconds
# normally, 4-7 minutes under ThreadSanitizer (pycparser and cffi's model in an
# instrumented interpreter). That first scenario gets this much more, so that a slow
# build is not reported as a hung scenario (and every later one as an error).
FIXTURE_BUILD_ALLOWANCE_S = 1200


@pytest.hookimpl(trylast=True)   # after -k/-m deselection: the first item is one that runs
def pytest_collection_modifyitems(config, items):
    s = config._stress_settings
    per_test = s.repeat * (s.timeout + 30) + 60
    first = True
    for item in items:
        if item.get_closest_marker("stress") is None:
            continue
        if config.pluginmanager.hasplugin("timeout"):
            allowance = FIXTURE_BUILD_ALLOWANCE_S if first else 0
            item.add_marker(pytest.mark.timeout(per_test + allowance))
        first = False
        # each scenario starts its own threads; pytest-run-parallel must not multiply it
        item.add_marker(pytest.mark.thread_unsafe(reason="runs its own subprocesses"))


def pytest_sessionfinish(session, exitstatus):
    config = session.config
    s = getattr(config, "_stress_settings", None)
    if s is None or not s.json_path:
        return
    import sysconfig
    with config._stress_lock:
        results = dict(config._stress_results)
    data = {
        "meta": {
            "python": sys.version.split()[0],
            "executable": sys.executable,
            "free_threaded": bool(sysconfig.get_config_var("Py_GIL_DISABLED")),
            "threads": s.threads,
            "rounds": s.rounds,
            "scale": s.scale,
            "repeat": s.repeat,
            "timeout_s": s.timeout,
        },
        "scenarios": dict(sorted(results.items())),
    }
    path = os.path.abspath(s.json_path)
    tmp = path + ".tmp-%d" % os.getpid()
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


@pytest.fixture(scope="session")
def stress_settings(pytestconfig):
    return pytestconfig._stress_settings


@pytest.fixture(scope="session")
def stress_fixtures(tmp_path_factory):
    """Builds the helper library and the ABI/API modules once; returns their dir."""
    from cffi_stress import _build
    d = tmp_path_factory.mktemp("cffi-stress-fixtures")
    _build.build_all(str(d))
    return str(d)


@pytest.fixture(scope="session")
def stress_workdir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cffi-stress-run"))


@pytest.fixture(scope="session")
def stress_record(pytestconfig):
    def record(name, entry):
        with pytestconfig._stress_lock:
            pytestconfig._stress_results[name] = entry
    return record
