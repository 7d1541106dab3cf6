"""The cffi-ft stress suite: the 42 scenarios of cffi-hazards.md section 5, and the
scenarios later steps added (s43: calls racing with ffi.dlclose, step 3).

One test per scenario (test id = scenario name, e.g. ``s02_array_type_churn``). Each run
of a scenario is its own subprocess (``child.py``, PYTHON_GIL removed from the
environment), so a segfault, an abort or a hang is that scenario's failure, reported with
the signal ("crashed: SIGSEGV") or as "hang: no exit after N s". With
``--stress-repeat K`` the subprocess runs K times and the test fails if any run failed or
crashed; ``--stress-json PATH`` records per scenario:
``{number, component, hazards, rounds, threads, runs, passed, failed, crashed, hung,
seconds, details}`` (``crashed`` counts hangs too; ``hung`` is the subset that hung;
``details`` holds the first few failure/crash messages).

Rounds: every scenario has a default number of rounds (see ``cffi_stress``); each round
recreates the lazy state it races on. ``--stress-rounds R`` sets R rounds for every
scenario, ``--stress-scale F`` multiplies the defaults (a short CI run: 0.1). The other
knobs inside a round (iterations, batch sizes) are fixed per scenario. See conftest.py
for all options.
"""
import pytest

import cffi_stress
from cffi_stress._runner import run_child

SCENARIOS = cffi_stress.load_all()
MAX_DETAILS = 3


@pytest.mark.stress
@pytest.mark.parametrize("sc", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_scenario(sc, stress_settings, stress_fixtures, stress_workdir, stress_record):
    s = stress_settings
    rounds = s.rounds_for(sc)
    entry = {
        "number": sc.number, "component": sc.component, "hazards": sc.hazards,
        "rounds": rounds, "threads": s.threads,
        "runs": 0, "passed": 0, "failed": 0, "crashed": 0, "hung": 0,
        "seconds": [], "details": [],
    }
    outcomes = []
    try:
        for _ in range(s.repeat):
            o = run_child(stress_fixtures, sc.name, s.threads, rounds, s.timeout,
                          stress_workdir)
            outcomes.append(o)
            entry["runs"] += 1
            entry["seconds"].append(round(o.seconds, 2))
            if o.status == "passed":
                entry["passed"] += 1
            elif o.status == "failed":
                entry["failed"] += 1
            else:
                entry["crashed"] += 1
                if o.status == "hung":
                    entry["hung"] += 1
            if o.status != "passed" and len(entry["details"]) < MAX_DETAILS:
                entry["details"].append(o.message[:1000])
    finally:
        stress_record(sc.name, entry)
    bad = [o for o in outcomes if o.status != "passed"]
    if bad:
        first = bad[0]
        msg = "%s [%s; %s]: %d of %d runs failed or crashed (%d failed, %d crashed/hung); " \
              "first: %s" % (sc.name, sc.component, " ".join(sc.hazards), len(bad),
                             len(outcomes), entry["failed"], entry["crashed"], first.message)
        if first.stderr_tail:
            msg += "\n--- stderr tail of that run ---\n" + first.stderr_tail
        pytest.fail(msg, pytrace=False)
