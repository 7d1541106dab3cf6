"""pytest plugin of the client-pycares suite (`-p client_pycares_plugin`, found through
PYTHONPATH): runs those of pycares 4.11.0's own tests (`tests/test_all.py` of its sdist)
that need no DNS. A cell has no name server to reach (the machines that run it have no
DNS), and a test must send nothing to an address off the machine, so every test that
would send a query to a name server is skipped, with the reason: nothing is dropped
silently.

What runs: the lookups of localhost, 127.0.0.1 and ports that c-ares answers from
/etc/hosts, /etc/services and its RFC 6761 rule for localhost (getaddrinfo, gethostbyname,
gethostbyaddr, getnameinfo), numeric getnameinfo, `.onion` names (refused before anything
is sent), the channel's servers and reinit, the errors raised before a query is sent, and
ChannelCloseTest's closes of channels that have no query (from other threads, at once,
twice, by the garbage collector through pycares's shutdown thread). Checked under
`strace -f -e trace=connect,sendto,sendmsg`: every address that the suite's sockets reach
(these tests and test_client_pycares.py) is on the loopback.

A reverse lookup is answered from /etc/hosts only where that file has the address; where
it does not, c-ares asks the name server, so that test is skipped too (this machine's
/etc/hosts has 127.0.0.1 but no ::1). Querying, cancelling and closing with queries in
flight run in test_client_pycares.py, against a name server on 127.0.0.1.
"""
import pytest

#: Why a test sends a query to a name server.
_PUBLIC = "queries a public name server (8.8.8.8 and others), and there is no DNS here"
_SYSTEMS = "sends a query to the system's name server (/etc/resolv.conf), and there is no DNS here"

#: pycares's tests that need a name server: "Class.test" -> why.
_NEEDS_DNS = {
    "DNSTest.test_getaddrinfo5": _PUBLIC,
    "DNSTest.test_query_a": _PUBLIC,
    "DNSTest.test_query_a_bad": _PUBLIC,
    "DNSTest.test_query_a_rotate": _PUBLIC,
    "DNSTest.test_query_aaaa": _PUBLIC,
    "DNSTest.test_query_caa": _PUBLIC,
    "DNSTest.test_query_cname": _PUBLIC,
    "DNSTest.test_query_mx": _PUBLIC,
    "DNSTest.test_query_ns": _PUBLIC,
    "DNSTest.test_query_txt": _PUBLIC,
    "DNSTest.test_query_txt_chunked": _PUBLIC,
    "DNSTest.test_query_txt_multiple_chunked": _PUBLIC,
    "DNSTest.test_query_txt_bytes1": _PUBLIC,
    "DNSTest.test_query_txt_bytes2": _PUBLIC,
    "DNSTest.test_query_txt_multiple_chunked_with_non_ascii_content": _PUBLIC,
    "DNSTest.test_query_class_chaos": "queries a root name server (199.7.83.42), and there is no DNS here",
    "DNSTest.test_query_soa": _PUBLIC,
    "DNSTest.test_query_srv": _PUBLIC,
    "DNSTest.test_query_naptr": _PUBLIC,
    "DNSTest.test_query_ptr": _PUBLIC,
    "DNSTest.test_query_ptr_ipv6": _PUBLIC,
    "DNSTest.test_query_cancelled": "sends a query to 8.8.8.8 before it cancels it",
    "DNSTest.test_query_timeout": "sends a query to 1.2.3.4 and waits for its timeout",
    "DNSTest.test_channel_nameservers": _PUBLIC,
    "DNSTest.test_channel_nameservers2": _PUBLIC,
    "DNSTest.test_channel_local_ip": "sends a query to 8.8.8.8 from 127.0.0.1",
    "DNSTest.test_channel_local_ip2": "sends a query to 8.8.8.8 from 127.0.0.1",
    "DNSTest.test_channel_timeout": "looks up google.com, which is not in /etc/hosts: " + _SYSTEMS,
    "DNSTest.test_idna_encoding": _PUBLIC,
    "DNSTest.test_idna_encoding_query_a": _PUBLIC,
    "DNSTest.test_idna2008_encoding": _PUBLIC,
    "DNSTest.test_custom_resolvconf": "sends a query to the name server of its badresolv.conf (1.2.3.4)",
    "DNSTest.test_search": _PUBLIC,
    "DNSTest.test_lookup": _PUBLIC,
    "ChannelCloseTest.test_close_from_same_thread": _SYSTEMS,
    "ChannelCloseTest.test_threadsafe_close_with_pending_queries": _SYSTEMS,
    "ChannelCloseTest.test_no_crash_on_interpreter_shutdown": "its script " + _SYSTEMS,
    "ChannelCloseTest.test_close_with_active_queries_from_different_thread": "sends queries to 192.0.2.1",
    "EventThreadTest.test_query_a": _PUBLIC,
}

#: pycares's reverse lookups: "Class.test" -> the address it looks up.
_REVERSE = {
    "DNSTest.test_gethostbyaddr": "127.0.0.1",
    "DNSTest.test_gethostbyaddr6": "::1",
    "DNSTest.test_getnameinfo": "127.0.0.1",
}


def _in_hosts_file(address, path="/etc/hosts"):
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return False
    return any(line.split("#")[0].split()[:1] == [address] for line in lines)


def _why_not(name):
    """Why pycares's test `name` ("Class.test") cannot run here; None when it can."""
    if name in _NEEDS_DNS:
        return _NEEDS_DNS[name]
    address = _REVERSE.get(name)
    if address is not None and not _in_hosts_file(address):
        return "/etc/hosts has no %s, so c-ares would ask the system's name server, and there is no DNS here" % address
    return None


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name != "test_all.py" or item.path.parent.name != "tests" or item.cls is None:
            continue  # not one of pycares's tests
        reason = _why_not("%s.%s" % (item.cls.__name__, item.name))
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason="pycares %s.%s not run: %s" % (item.cls.__name__, item.name, reason)))
