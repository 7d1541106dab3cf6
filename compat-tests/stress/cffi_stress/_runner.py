"""Runs one scenario in a child process and classifies the outcome."""
import os
import signal
import subprocess
import sys
import time

from ._support import python_env, signal_name

CHILD = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "child.py")


class Outcome:
    def __init__(self, status, message, seconds, stderr_tail=""):
        self.status = status          # "passed" | "failed" | "crashed" | "hung"
        self.message = message
        self.seconds = seconds
        self.stderr_tail = stderr_tail

    def __repr__(self):
        return "<Outcome %s %s>" % (self.status, self.message)


def _marker(stderr, tag):
    for line in reversed(stderr.splitlines()):
        if line.startswith("cffi-stress: " + tag):
            return line[len("cffi-stress: " + tag):].strip(": ").strip()
    return None


def _tail(s, n=2000):
    s = s.strip()
    return s[-n:]


def run_child(fixtures_dir, name, threads, rounds, timeout, cwd):
    cmd = [sys.executable, CHILD, fixtures_dir, name, str(threads), str(rounds), str(timeout)]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=cwd, env=python_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, errors="replace",
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)    # the child's own process group
        except ProcessLookupError:
            pass
        out, err = proc.communicate()
        dt = time.monotonic() - t0
        where = ("at exit, after the scenario had passed" if _marker(err, "OK") is not None
                 else "during the scenario")
        return Outcome("hung", "hang: no exit after %g s (%s)" % (timeout, where), dt,
                       _tail(err))
    dt = time.monotonic() - t0
    rc = proc.returncode
    ok = _marker(err, "OK") is not None
    if rc == 0 and ok:
        return Outcome("passed", "", dt)
    if rc < 0:
        sig = signal_name(rc)
        where = " at exit, after the scenario had passed" if ok else ""
        return Outcome("crashed", "crashed: %s%s" % (sig, where), dt, _tail(err))
    crashed = _marker(err, "CRASHED")
    if rc == 3 and crashed is not None:
        return Outcome("crashed", "crashed in a sub-process: %s" % crashed, dt, _tail(err))
    failed = _marker(err, "FAILED")
    if rc == 1 and failed is not None:
        return Outcome("failed", "failed: %s" % failed, dt, _tail(err))
    if ok:
        return Outcome("crashed", "exit status %d at exit, after the scenario had passed"
                       % rc, dt, _tail(err))
    last = err.strip().splitlines()[-1] if err.strip() else ""
    return Outcome("crashed", "exit status %d: %s" % (rc, last[:300]), dt, _tail(err))
