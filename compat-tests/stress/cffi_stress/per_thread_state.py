"""per-thread-state scenarios (hazards E1-E4): research notes section 5, scenario 35.
(E3 and E4 are also exercised by scenario 16, registered under callbacks.)"""
from . import scenario
from ._support import Racer


@scenario(35, "s35_errno_per_thread", ["E1"], rounds=30)
def s35(threads, rounds, fx):
    """T threads each set ffi.errno to a thread-specific value, call C that adds 1 to
    errno, and read ffi.errno back. Invariant: each thread sees its own value + 1."""
    ffi, lib = fx.warm_lib(["stress_errno_inc"])
    ITER = 2000
    with Racer(threads) as r:
        for rnd in range(rounds):
            def body(tid):
                for it in range(ITER):
                    v = (tid + 1) * 1000000 + it
                    ffi.errno = v
                    lib.stress_errno_inc()
                    got = ffi.errno
                    if got != v + 1:
                        raise AssertionError("thread %d: errno %r after setting %r and adding 1"
                                             % (tid, got, v))
                return None
            r.run(body)
