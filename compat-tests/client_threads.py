"""Runs a client scenario's body in N threads released together (shared by the
test_client_*.py suites)."""
import threading


def run_in_threads(n, body):
    """Calls ``body(t, start)`` in threads t = 0..n-1, where ``start()`` returns once all n
    threads have called it. Returns one line per thread that raised ("thread t: <its
    exception>"), real errors before the broken-barrier errors they caused in the
    others, for the caller to assert on."""
    barrier = threading.Barrier(n)
    errors = []

    def work(t):
        try:
            body(t, barrier.wait)
        except BaseException as e:   # reported by the caller
            barrier.abort()          # nobody waits for a thread that is gone
            errors.append((isinstance(e, threading.BrokenBarrierError), "thread %d: %r" % (t, e)))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return [line for _, line in sorted(errors, key=lambda x: x[0])]
