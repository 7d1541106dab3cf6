"""Child process of the stress suite: runs ONE scenario and exits.

    python child.py FIXTURES_DIR SCENARIO_NAME THREADS ROUNDS TIMEOUT_S

Exit status: 0 = the scenario passed (the line ``cffi-stress: OK`` is on stderr before the
normal interpreter exit, so a crash or hang *at exit* is still seen by the parent);
1 = an invariant broke (``cffi-stress: FAILED: <message>`` on stderr);
3 = a sub-process started by the scenario crashed or hung
(``cffi-stress: CRASHED: <message>``). Anything else (a signal, a hang) is classified by
the parent. The parent removes PYTHON_GIL from the environment (or sets it to
$CFFI_FT_STRESS_PYTHON_GIL, see ``_support.python_env``).

With CFFI_FT_STRESS_REQUIRE_GIL_OFF=1 on a free-threaded build, a scenario that ends
with the GIL enabled fails (exit 1): a run with the GIL back on proves nothing about
thread safety. `xtask stress` sets it for its comparison backends.
"""
import faulthandler
import os
import sys
import traceback


def gil_enabled():
    """Whether this free-threaded build runs with the GIL now (False on GIL builds)."""
    import sysconfig
    if not sysconfig.get_config_var("Py_GIL_DISABLED"):
        return False
    return bool(sys._is_gil_enabled())


def main(argv):
    fixtures_dir, name, threads, rounds, timeout = argv[1:6]
    threads, rounds, timeout = int(threads), int(rounds), float(timeout)
    faulthandler.enable()
    if timeout > 10:
        # a hang shows where the Python threads were
        faulthandler.dump_traceback_later(timeout - 5, exit=False)
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, here)
    import cffi_stress
    from cffi_stress._support import Fixtures, CrashInSubprocess
    sc = cffi_stress.get(name)
    fx = Fixtures(fixtures_dir)
    sys.stderr.write("cffi-stress: start %s threads=%d rounds=%d\n" % (name, threads, rounds))
    sys.stderr.flush()
    try:
        sc.func(threads, rounds, fx)
    except CrashInSubprocess as e:
        sys.stderr.write("cffi-stress: CRASHED: %s\n" % e)
        sys.stderr.flush()
        os._exit(3)
    except BaseException as e:
        tb = getattr(e, "worker_traceback", None) or traceback.format_exc()
        sys.stderr.write(tb)
        msg = ("%s" % e) if isinstance(e, AssertionError) else "%s: %s" % (type(e).__name__, e)
        sys.stderr.write("cffi-stress: FAILED: %s\n" % msg.replace("\n", "\\n"))
        sys.stderr.flush()
        os._exit(1)
    faulthandler.cancel_dump_traceback_later()
    if os.environ.get("CFFI_FT_STRESS_REQUIRE_GIL_OFF") == "1" and gil_enabled():
        sys.stderr.write("cffi-stress: FAILED: the GIL is enabled at the end of the scenario "
                         "(PYTHON_GIL=%s)\n" % os.environ.get("PYTHON_GIL", "unset"))
        sys.stderr.flush()
        os._exit(1)
    sys.stderr.write("cffi-stress: OK\n")
    sys.stderr.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
