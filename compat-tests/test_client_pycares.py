"""A real cffi client that calls back into Python from C: pycares 4.11.0 (API mode, with
its bundled c-ares 1.34.5), built from its sdist against the patched cffi of this venv by
`cargo xtask test-upstream --suites client-pycares`, which also runs pycares's own tests
that need no DNS (see client_pycares_plugin.py).

Every answer pycares gives comes through an `extern "Python"` function (`@ffi.def_extern`:
_host_cb, _addrinfo_cb, _nameinfo_cb, _query_cb) that c-ares calls from C: inside the call
that asked when the answer comes from /etc/hosts, from `process_fd` when it comes over a
socket, from c-ares's own thread (a thread Python did not create) with `event_thread=True`,
and from pycares's shutdown thread when a closed channel cancels its queries.

There is no DNS here, and nothing may be sent off this machine: localhost and 127.0.0.1
are looked up in /etc/hosts (c-ares's file lookup, and its RFC 6761 rule that localhost
is the loopback address), and everything else goes to NameServer, a name server of this
file on 127.0.0.1 that answers for the zone cffi-ft.test.

Each answer is checked, and each callback must come exactly once, on the thread that
should run it: single-threaded first, then 8 threads released together by a barrier, a
channel each, many rounds of lookups (their callbacks counted per request); then the same
threads in fresh interpreters, where their first lookups are the process's first calls of
the `extern "Python"` functions (hazard C3, the binding cache filled by concurrent first
calls, fixed by step 4); then 8 channels whose answers come on c-ares's own threads.
"""
import json
import select
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from client_threads import run_in_threads

# A plain import, not importorskip: a client that does not load must fail the suite.
import pycares

THREADS = 8
ROUNDS = 120
BATCH = 6           # rounds asked before the answers are waited for
FRESH_RUNS = 4      # fresh interpreters for the first-calls scenario
ZONE = "cffi-ft.test"
SILENT = "silent." + ZONE       # NameServer never answers it
WAIT_LIMIT = 60.0   # seconds; c-ares gives up on a query long before


def host(t, r):
    return "t%d-r%d.%s" % (t, r, ZONE)


def nowhere(t, r):
    return "nowhere-t%d-r%d.%s" % (t, r, ZONE)


def ipv4_of(t, r):
    return "127.%d.%d.%d" % (t + 1, r >> 8, r & 255)


def ipv6_of(t, r):
    # IPv4-mapped, so that c-ares's sorting of the addresses it got (a connect() of a UDP
    # socket to each, which sends nothing) stays on the loopback too
    return "::ffff:" + ipv4_of(t, r)


class NameServer:
    """A name server on 127.0.0.1 (UDP, a port of its own), serving from one thread until
    stop(): host(t, r) has one A record, ipv4_of(t, r), and one AAAA record, ipv6_of(t, r),
    and no other type (NODATA); SILENT is never answered; every other name is NXDOMAIN.
    A query it cannot read is never answered either, and stop() reports it."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.unreadable = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="NameServer", daemon=True)
        self._thread.start()

    def stop(self):
        self._stop.set()
        self._thread.join()
        self.sock.close()
        assert not self.unreadable, "NameServer could not read %d queries: %r" % (
            len(self.unreadable), self.unreadable[:3])

    def _serve(self):
        while not self._stop.is_set():
            ready, _, _ = select.select([self.sock], [], [], 0.05)
            if not ready:
                continue
            packet, peer = self.sock.recvfrom(4096)
            try:
                reply = self.reply(packet)
            except (IndexError, UnicodeDecodeError, struct.error) as e:
                self.unreadable.append((packet, e))
                continue
            if reply is not None:
                self.sock.sendto(reply, peer)

    @staticmethod
    def records(name, qtype):
        """The zone: rdata of `name`'s records of `qtype` ([] for NODATA), or None for
        NXDOMAIN."""
        labels = name.split(".")
        if name.endswith("." + ZONE) and len(labels) == 3 and labels[0][:1] == "t" and "-r" in labels[0]:
            t, r = labels[0][1:].split("-r")
            if t.isdigit() and r.isdigit():
                if qtype == 1:   # A
                    return [socket.inet_pton(socket.AF_INET, ipv4_of(int(t), int(r)))]
                if qtype == 28:  # AAAA
                    return [socket.inet_pton(socket.AF_INET6, ipv6_of(int(t), int(r)))]
                return []
        return None

    def reply(self, packet):
        qid, flags, qdcount = struct.unpack("!HHH", packet[:6])
        if qdcount != 1:
            return struct.pack("!HHHHHH", qid, 0x8001, 0, 0, 0, 0)  # FORMERR
        pos, labels = 12, []
        while packet[pos]:
            labels.append(packet[pos + 1:pos + 1 + packet[pos]].decode("ascii").lower())
            pos += 1 + packet[pos]
        qtype, _qclass = struct.unpack("!HH", packet[pos + 1:pos + 5])
        question = packet[12:pos + 5]
        name = ".".join(labels)
        if name == SILENT:
            return None
        rdatas = self.records(name, qtype)
        rcode = 3 if rdatas is None else 0
        answers = b"".join(
            struct.pack("!HHHIH", 0xC00C, qtype, 1, 60, len(rdata)) + rdata for rdata in rdatas or []
        )
        header = struct.pack("!HHHHHH", qid, 0x8400 | (flags & 0x0100) | rcode, 1, len(rdatas or []), 0, 0)
        return header + question + answers


def resolver(port, **options):
    """A channel that looks names up in /etc/hosts, then asks NameServer on `port` (the
    order of the system's /etc/nsswitch.conf, files then DNS where it says nothing). Not
    `lookups="f"`: pycares 4.11.0 hands that string to c-ares in a buffer it has already
    freed (`options.lookups = ffi.new(...)`), so c-ares now and then reads another one
    and then answers no lookup (ECONNREFUSED)."""
    settings = dict(servers=["127.0.0.1"], udp_port=port, tcp_port=port,
                    flags=pycares.ARES_FLAG_NOSEARCH, timeout=5.0, tries=6)
    settings.update(options)
    return pycares.Channel(**settings)


def wait(channel):
    """Processes the channel's sockets until it has nothing in flight (the loop of
    pycares's README and tests)."""
    deadline = time.monotonic() + WAIT_LIMIT
    while True:
        read_fds, write_fds = channel.getsock()
        if not read_fds and not write_fds:
            return
        assert time.monotonic() < deadline, "queries still in flight after %d s" % WAIT_LIMIT
        timeout = channel.timeout()
        if timeout == 0.0:
            channel.process_fd(pycares.ARES_SOCKET_BAD, pycares.ARES_SOCKET_BAD)
            continue
        readable, writable, _ = select.select(read_fds, write_fds, [], timeout)
        for fd in readable:
            channel.process_read_fd(fd)
        for fd in writable:
            channel.process_write_fd(fd)


def summary(result):
    """A result as plain, comparable values."""
    if result is None:
        return None
    if isinstance(result, pycares.ares_host_result):
        return ["host", result.name, sorted(result.aliases), sorted(result.addresses)]
    if isinstance(result, pycares.ares_addrinfo_result):
        return ["addrinfo", sorted([n.family, n.addr[0].decode(), n.addr[1]] for n in result.nodes)]
    if isinstance(result, pycares.ares_nameinfo_result):
        return ["nameinfo", result.node, result.service]
    if isinstance(result, list):
        return ["query", sorted([r.type, r.host] for r in result)]
    raise TypeError("unexpected result %r" % (result,))


class Callbacks:
    """Callbacks that record, per request tag, each call: (summary, errno, thread)."""

    def __init__(self):
        self.calls = {}
        self._lock = threading.Lock()

    def __call__(self, tag):
        def callback(result, errno):
            with self._lock:
                self.calls.setdefault(tag, []).append((summary(result), errno, threading.get_ident()))
        return callback

    def threads(self):
        """The threads that called back."""
        with self._lock:
            return {ident for calls in self.calls.values() for _, _, ident in calls}

    def wait_for(self, n):
        """Waits until n tags have been called back (by other threads)."""
        deadline = time.monotonic() + WAIT_LIMIT
        while len(self.calls) < n:
            assert time.monotonic() < deadline, "%d of %d callbacks after %d s" % (len(self.calls), n, WAIT_LIMIT)
            time.sleep(0.001)

    def check(self, expected, thread=None, what=""):
        """Every tag of `expected` ({tag: (summary, errno)}) called back exactly once, with
        its answer, and on `thread` (an ident) where given; no other tag."""
        with self._lock:
            calls = dict(self.calls)
        extra = sorted(set(calls) - set(expected), key=repr)
        assert not extra, "%scallbacks nobody asked for: %r" % (what, extra[:3])
        for tag, (result, errno) in expected.items():
            got = calls.get(tag, [])
            assert len(got) == 1, "%s%r: called back %d times, expected once: %r" % (what, tag, len(got), got[:3])
            assert got[0][:2] == (result, errno), "%s%r: got %r, expected %r" % (what, tag, got[0][:2], (result, errno))
            if thread is not None:
                assert got[0][2] == thread, "%s%r: called back on thread %d, not %d (which asked)" % (
                    what, tag, got[0][2], thread)


def from_hosts_file(port):
    """The answers of the lookups that c-ares takes from /etc/hosts, asked single-threaded:
    {kind: summary}. Their aliases depend on the machine's /etc/hosts; the threads must
    get these same answers."""
    channel = resolver(port)
    callbacks = Callbacks()
    channel.gethostbyname("localhost", socket.AF_INET, callbacks("name4"))
    channel.gethostbyaddr("127.0.0.1", callbacks("addr4"))
    channel.getnameinfo(("127.0.0.1", 80), pycares.ARES_NI_LOOKUPHOST | pycares.ARES_NI_LOOKUPSERVICE,
                        callbacks("nameinfo"))
    wait(channel)
    channel.close()
    answers = {}
    for tag, calls in callbacks.calls.items():
        assert len(calls) == 1, (tag, calls)
        result, errno, _ = calls[0]
        assert errno is None, "%s: %s" % (tag, pycares.errno.errorcode.get(errno, errno))
        answers[tag] = result
    return answers


def ask(channel, t, r, callbacks):
    """Round r of thread t: seven lookups, four answered from /etc/hosts, three by
    NameServer."""
    tag = lambda kind: (kind, t, r)  # noqa: E731
    channel.gethostbyname("localhost", socket.AF_INET, callbacks(tag("name4")))
    channel.getaddrinfo("localhost", 1000 + t, callbacks(tag("info6")), family=socket.AF_INET6)
    channel.gethostbyaddr("127.0.0.1", callbacks(tag("addr4")))
    channel.getnameinfo(("127.0.0.1", 80), pycares.ARES_NI_LOOKUPHOST | pycares.ARES_NI_LOOKUPSERVICE,
                        callbacks(tag("nameinfo")))
    channel.query(host(t, r), pycares.QUERY_TYPE_A, callbacks(tag("query")))
    channel.getaddrinfo(host(t, r), 53, callbacks(tag("info")))
    channel.gethostbyname(nowhere(t, r), socket.AF_INET, callbacks(tag("nowhere")))


def server_answers(t, r):
    """What NameServer's answers to round r of thread t must be: {tag: (summary, errno)}."""
    return {
        ("query", t, r): (["query", [["A", ipv4_of(t, r)]]], None),
        ("info", t, r): (["addrinfo", sorted([[socket.AF_INET, ipv4_of(t, r), 53],
                                               [socket.AF_INET6, ipv6_of(t, r), 53]])], None),
        ("nowhere", t, r): (None, pycares.errno.ARES_ENOTFOUND),
    }


def answers(t, r, local):
    """What ask(channel, t, r) must get back: {tag: (summary, errno)}."""
    expected = {
        ("name4", t, r): (local["name4"], None),
        ("info6", t, r): (["addrinfo", [[socket.AF_INET6, "::1", 1000 + t]]], None),
        ("addr4", t, r): (local["addr4"], None),
        ("nameinfo", t, r): (local["nameinfo"], None),
    }
    expected.update(server_answers(t, r))
    return expected


def lookups_in_threads(port, local, rounds):
    """THREADS threads released by a barrier, a channel each, ask `rounds` rounds (BATCH
    at a time, then wait for the answers) and check every callback; returns (errors,
    callbacks per thread)."""
    done = [0] * THREADS

    def work(t, start):
        channel = resolver(port)
        callbacks = Callbacks()
        me = threading.get_ident()
        start()
        for first in range(0, rounds, BATCH):
            for r in range(first, min(first + BATCH, rounds)):
                ask(channel, t, r, callbacks)
            wait(channel)
        expected = {}
        for r in range(rounds):
            expected.update(answers(t, r, local))
        callbacks.check(expected, thread=me)
        done[t] = sum(len(c) for c in callbacks.calls.values())
        channel.close()

    return run_in_threads(THREADS, work), done


@pytest.fixture(scope="module")
def server():
    server = NameServer()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def local(server):
    return from_hosts_file(server.port)


def test_import_keeps_gil_state(free_threaded):
    assert sys._is_gil_enabled() is (not free_threaded)


def test_pycares_is_api_mode_with_its_bundled_c_ares():
    assert pycares.__version__ == "4.11.0"
    assert pycares.ARES_VERSION == "1.34.5"
    # API mode: a compiled module whose lib is cffi's Lib, not an ffi.dlopen library
    assert type(pycares._cares.lib).__name__ == "Lib"
    assert pycares._cares.__file__.endswith(".so")


def test_lookups_from_the_hosts_file(server, local):
    name, aliases, addresses = local["name4"][1:]
    assert (name, addresses) == ("localhost", ["127.0.0.1"]), local["name4"]
    assert local["addr4"] == local["name4"], "the reverse lookup of 127.0.0.1 differs: %r" % (local,)
    assert local["nameinfo"] == ["nameinfo", "localhost", "http"]
    # localhost is the loopback address whatever /etc/hosts says (RFC 6761), and c-ares
    # never asks a name server for it
    channel = resolver(server.port)
    callbacks = Callbacks()
    channel.gethostbyname("localhost", socket.AF_INET6, callbacks("name6"))
    channel.getaddrinfo("localhost", 80, callbacks("info4"), family=socket.AF_INET)
    channel.getaddrinfo("localhost", None, callbacks("info"))
    callbacks.check({
        "name6": (["host", "localhost", [], ["::1"]], None),
        "info4": (["addrinfo", [[socket.AF_INET, "127.0.0.1", 80]]], None),
        "info": (["addrinfo", sorted([[socket.AF_INET, "127.0.0.1", 0], [socket.AF_INET6, "::1", 0]])], None),
    }, thread=threading.get_ident(), what="answered in the call that asked: ")
    wait(channel)
    channel.close()


def test_names_nobody_has(server):
    # not in /etc/hosts, and NXDOMAIN from the name server (a PTR query for the address)
    channel = resolver(server.port)
    callbacks = Callbacks()
    channel.gethostbyname("nowhere." + ZONE, socket.AF_INET, callbacks("name"))
    channel.getaddrinfo("nowhere." + ZONE, 80, callbacks("info"))
    channel.gethostbyaddr("192.0.2.7", callbacks("addr"))
    wait(channel)
    callbacks.check({
        "name": (None, pycares.errno.ARES_ENOTFOUND),
        "info": (None, pycares.errno.ARES_ENOTFOUND),
        "addr": (None, pycares.errno.ARES_ENOTFOUND),
    }, thread=threading.get_ident())
    channel.close()


def test_answers_of_the_name_server(server, local):
    channel = resolver(server.port)
    callbacks = Callbacks()
    ask(channel, 3, 258, callbacks)
    channel.query(host(1, 2), pycares.QUERY_TYPE_AAAA, callbacks("aaaa"))
    channel.query(host(1, 2), pycares.QUERY_TYPE_MX, callbacks("nodata"))
    channel.query("nowhere." + ZONE, pycares.QUERY_TYPE_A, callbacks("nxdomain"))
    wait(channel)
    expected = answers(3, 258, local)
    assert expected[("query", 3, 258)] == (["query", [["A", "127.4.1.2"]]], None)
    expected.update({
        "aaaa": (["query", [["AAAA", "::ffff:127.2.0.2"]]], None),
        "nodata": (None, pycares.errno.ARES_ENODATA),
        "nxdomain": (None, pycares.errno.ARES_ENOTFOUND),
    })
    callbacks.check(expected, thread=threading.get_ident())
    channel.close()


def silent_queries(channel, callbacks, n):
    """Asks n queries that NameServer never answers; returns what cancelling them must
    call back."""
    for k in range(n):
        channel.query(SILENT, pycares.QUERY_TYPE_A, callbacks(("silent", k)))
    return {("silent", k): (None, pycares.errno.ARES_ECANCELLED) for k in range(n)}


def test_cancel_calls_back_every_query_in_flight(server):
    channel = resolver(server.port)
    callbacks = Callbacks()
    expected = silent_queries(channel, callbacks, 4)
    channel.gethostbyname(SILENT, socket.AF_INET, callbacks("name"))
    channel.getaddrinfo(SILENT, None, callbacks("info"))
    assert callbacks.calls == {}
    assert channel.timeout() > 0.0
    channel.cancel()
    expected.update({"name": expected["silent", 0], "info": expected["silent", 0]})
    callbacks.check(expected, thread=threading.get_ident(), what="cancelled: ")
    wait(channel)
    # the channel still works
    channel.query(host(0, 1), pycares.QUERY_TYPE_A, callbacks("after"))
    wait(channel)
    expected["after"] = (["query", [["A", "127.1.0.1"]]], None)
    callbacks.check(expected)
    channel.close()


def test_unanswered_queries_time_out(server):
    channel = resolver(server.port, timeout=0.2, tries=1)
    callbacks = Callbacks()
    channel.query(SILENT, pycares.QUERY_TYPE_A, callbacks("silent"))
    channel.query(host(2, 3), pycares.QUERY_TYPE_A, callbacks("answered"))
    wait(channel)
    callbacks.check({
        "silent": (None, pycares.errno.ARES_ETIMEOUT),
        "answered": (["query", [["A", "127.3.0.3"]]], None),
    }, thread=threading.get_ident())
    channel.close()


def test_closed_channel_cancels_on_the_shutdown_thread(server):
    # pycares destroys a closed channel on its shutdown thread, which first cancels the
    # queries in flight
    channel = resolver(server.port)
    callbacks = Callbacks()
    expected = silent_queries(channel, callbacks, 3)
    channel.close()
    with pytest.raises(RuntimeError, match="destroyed"):
        channel.query(host(0, 0), pycares.QUERY_TYPE_A, callbacks("after close"))
    callbacks.wait_for(3)
    callbacks.check(expected)
    assert threading.get_ident() not in callbacks.threads(), "cancelled on the thread that closed"


def test_lookups_from_8_threads(server, local):
    started = time.monotonic()
    errors, done = lookups_in_threads(server.port, local, ROUNDS)
    elapsed = time.monotonic() - started
    assert not errors, errors[:3]
    assert done == [7 * ROUNDS] * THREADS
    print("%d threads x %d rounds (%d callbacks each) in %.2f s" % (THREADS, ROUNDS, 7 * ROUNDS, elapsed))


def test_lookups_from_8_threads_in_fresh_interpreters(server, local, tmp_path, free_threaded):
    """The threads' first lookups are the fresh process's first calls of pycares's
    `extern "Python"` functions, 8 at once (C3)."""
    child = textwrap.dedent("""
        import importlib.util, json, sys
        spec = importlib.util.spec_from_file_location("client_pycares_child", sys.argv[1])
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        errors, done = mod.lookups_in_threads(int(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4]))
        print(json.dumps({"errors": errors[:3], "done": done, "gil": sys._is_gil_enabled()}))
    """)
    rounds = ROUNDS // 4
    for run in range(FRESH_RUNS):
        out = subprocess.run(
            [sys.executable, "-X", "faulthandler", "-c", child, __file__, str(server.port), json.dumps(local),
             str(rounds)],
            capture_output=True, text=True, timeout=600, cwd=str(tmp_path),
        )
        assert out.returncode == 0, "run %d: child exited with %d:\n%s" % (run, out.returncode, out.stderr[-3000:])
        result = json.loads(out.stdout.strip().splitlines()[-1])
        assert not result["errors"], "run %d: %r" % (run, result["errors"])
        assert result["done"] == [7 * rounds] * THREADS, "run %d" % run
        assert result["gil"] is (not free_threaded)


def test_answers_on_c_ares_threads(server):
    """8 channels with `event_thread=True`: c-ares answers on a thread of its own per
    channel, which Python did not create, so 8 such threads call back at once."""
    if not pycares.ares_threadsafety():
        pytest.skip("c-ares built without threads")
    done = [0] * THREADS

    def work(t, start):
        channel = resolver(server.port, event_thread=True)
        callbacks = Callbacks()
        me = threading.get_ident()
        expected = {}
        start()
        for first in range(0, ROUNDS, BATCH):
            for r in range(first, min(first + BATCH, ROUNDS)):
                channel.query(host(t, r), pycares.QUERY_TYPE_A, callbacks(("query", t, r)))
                channel.getaddrinfo(host(t, r), 53, callbacks(("info", t, r)))
                channel.gethostbyname(nowhere(t, r), socket.AF_INET, callbacks(("nowhere", t, r)))
                expected.update(server_answers(t, r))
            callbacks.wait_for(len(expected))
        callbacks.check(expected)
        threads = callbacks.threads()
        assert len(threads) == 1 and me not in threads, "answered on %r, asked on %d" % (threads, me)
        done[t] = len(callbacks.calls)
        channel.close()

    errors = run_in_threads(THREADS, work)
    assert not errors, errors[:3]
    assert done == [3 * ROUNDS] * THREADS
