"""A real cffi client under threads: brotlicffi 1.2.1.0 (API mode, the brotli C sources
bundled, built from its sdist against the patched cffi of this venv by
`cargo xtask test-upstream --suites client-brotli`).

The sdist's own tests need brotli's test data, which it does not ship; these are ours.
First, single-threaded: a fixed corpus (empty, tiny, incompressible random bytes from a
fixed seed, a few MB of repetitive and random text) round-trips through one-shot
`compress`/`decompress` and through `Compressor`/`Decompressor` fed in chunks; streams
encoded by Google's own `brotli` module decode to their text. Then 8 threads released
together by a barrier do the same on the one shared module, each with its OWN Compressor
and Decompressor objects (brotlicffi refuses, by design, one object used from two threads
at once); every output must equal, byte for byte, what the single-threaded run produced.
"""
import random
import sys

import pytest

from client_threads import run_in_threads

# A plain import, not importorskip: a backend that refuses to load must fail the suite.
import brotlicffi

THREADS = 8
#: Rounds per thread over the small cases, and over the whole corpus (large case included).
SMALL_ROUNDS = 60
FULL_ROUNDS = 2
#: Feed size for the streaming paths (a prime, so chunks straddle every boundary).
CHUNK = 7919

_WORDS = (
    "the quick brown fox jumps over a lazy dog while cffi interns ctypes and brotli "
    "compresses free threaded python without the global interpreter lock again and again"
).split()


def _text(size, seed):
    """`size` bytes of text: lines of words from a small vocabulary (repetitive) with a
    random 64-bit hex token each (not), from a fixed seed."""
    rng = random.Random(seed)
    lines = []
    total = 0
    n = 0
    while total < size:
        line = "%07d %s %016x\n" % (n, " ".join(rng.choices(_WORDS, k=rng.randint(3, 14))), rng.getrandbits(64))
        lines.append(line)
        total += len(line)
        n += 1
    return "".join(lines).encode()[:size]


def _corpus():
    rng = random.Random(0x0CFF1F7)
    paragraph = _text(4096, seed=7)
    return {
        # name: (data, keyword arguments for compress and Compressor)
        "empty": (b"", {}),
        "one-byte": (b"x", {}),
        "tiny": (b"hello, brotli", {}),
        "tiny-q0": (b"hello, brotli", {"quality": 0}),
        "zeros-q11": (bytes(20000), {"quality": 11}),
        "random-64k": (rng.randbytes(64 * 1024), {"quality": 5}),
        "text-32k-textmode": (_text(32 * 1024, seed=3), {"quality": 9, "mode": brotlicffi.MODE_TEXT}),
        "repeated-paragraph": (paragraph * 64, {"quality": 6, "lgwin": 16}),
        "large-3m": (_text(2 * 1024 * 1024, seed=11) + rng.randbytes(256 * 1024) + paragraph * 192, {"quality": 4}),
    }


CORPUS = _corpus()
#: Every case but the large one.
SMALL = [name for name, (data, _) in CORPUS.items() if len(data) < 1024 * 1024]

#: Streams written by Google's `brotli` 1.2.0 module (its C encoder, not cffi), for
#: TEXT = the sentence below, four times, at quality 0, 5 and 11; and the empty stream.
KNOWN_TEXT = b"cffi-ft: brotlicffi on free-threaded CPython 3.13t, " * 4
KNOWN_STREAMS = {
    "q0": bytes.fromhex(
        "8b67000080aaaaaaeaff7415b8ab2a8082def4aa878b1eaeaaa222a002a02002202017fdbfabfe3df756"
        "f78ceaf23686bbe2c5c2c2c2c6c6aa5e6654071f3efc180c06e338935535180c0683c1600e7546a4a234"
        "0a87857692bd27f87e9059324787ed164f9059c014d889725ca775e8c0983fae29b4525b24c0703f4d6e"
    ),
    "q5": bytes.fromhex(
        "1bcf000044dd96eae85e9037aba118b2eaf1203fc88bcd88280a49a805ebf2d4145192a818cfe32ac20d"
        "26f4c9b0f642eb3f8e1b38178e840e"
    ),
    "q11": bytes.fromhex(
        "1bcf00208dd4582d3a9bd46da98efe0bf266353585e3417e901503aa1911452105e54760abed1eea1c58"
        "af7823510980eea13a6b7e9e4a58eb460107"
    ),
}


def _chunks(data):
    return [data[i:i + CHUNK] for i in range(0, len(data), CHUNK)]


def stream_compress(data, **kwargs):
    """Compresses through a new Compressor: chunked `compress`, one `flush` halfway
    (so the stream has a flushed metablock), then `finish`."""
    c = brotlicffi.Compressor(**kwargs)
    out = []
    chunks = _chunks(data)
    for i, chunk in enumerate(chunks):
        out.append(c.compress(chunk))
        if i == len(chunks) // 2:
            out.append(c.flush())
    out.append(c.finish())
    return b"".join(out)


def stream_decompress(stream, limit=None):
    """Decompresses through a new Decompressor fed in chunks; with `limit`, each call
    gets `output_buffer_limit=limit` and is drained with empty input before more."""
    d = brotlicffi.Decompressor()
    out = []
    for chunk in _chunks(stream):
        out.append(d.decompress(chunk, output_buffer_limit=limit))
        while limit is not None and not d.can_accept_more_data():
            out.append(d.decompress(b"", output_buffer_limit=limit))
    while limit is not None and not d.is_finished():
        piece = d.decompress(b"", output_buffer_limit=limit)
        assert piece, "decompressor neither finished nor produced output"
        out.append(piece)
    assert d.is_finished()
    d.finish()
    return b"".join(out)


@pytest.fixture(scope="module")
def reference():
    """Single-threaded results per case: (one-shot stream, chunked stream)."""
    return {
        name: (brotlicffi.compress(data, **kw), stream_compress(data, **kw))
        for name, (data, kw) in CORPUS.items()
    }


def test_import_keeps_gil_state(free_threaded):
    assert sys._is_gil_enabled() is (not free_threaded)


def test_corpus_is_what_it_claims():
    assert len(CORPUS["large-3m"][0]) == 3 * 1024 * 1024
    assert len(SMALL) == len(CORPUS) - 1


@pytest.mark.parametrize("quality", sorted(KNOWN_STREAMS))
def test_decodes_streams_of_googles_encoder(quality):
    stream = KNOWN_STREAMS[quality]
    assert brotlicffi.decompress(stream) == KNOWN_TEXT
    assert stream_decompress(stream) == KNOWN_TEXT
    # the bundled encoder is the same C code: same bytes
    assert brotlicffi.compress(KNOWN_TEXT, quality=int(quality[1:])) == stream


def test_empty_stream():
    assert brotlicffi.compress(b"") == bytes.fromhex("3b")
    assert brotlicffi.decompress(bytes.fromhex("3b")) == b""
    assert brotlicffi.decompress(bytes.fromhex("06")) == b""


@pytest.mark.parametrize("name", list(CORPUS))
def test_round_trip(name, reference):
    data, kw = CORPUS[name]
    one_shot, streamed = reference[name]
    assert brotlicffi.decompress(one_shot) == data
    assert brotlicffi.compress(data, **kw) == one_shot   # deterministic
    assert stream_decompress(one_shot) == data
    assert stream_decompress(streamed) == data
    assert brotlicffi.decompress(streamed) == data
    assert stream_compress(data, **kw) == streamed
    if len(data) >= 4096:
        assert stream_decompress(one_shot, limit=4096) == data


def test_compression_ratios(reference):
    # text shrinks (repeats most), random bytes do not, and nothing grows much
    assert len(reference["large-3m"][0]) < len(CORPUS["large-3m"][0]) // 3
    assert len(reference["text-32k-textmode"][0]) < len(CORPUS["text-32k-textmode"][0]) // 3
    assert len(reference["repeated-paragraph"][0]) < 2048
    assert len(reference["zeros-q11"][0]) < 32
    random_data = CORPUS["random-64k"][0]
    assert len(random_data) <= len(reference["random-64k"][0]) <= len(random_data) + 64


def test_bad_streams_raise():
    good = brotlicffi.compress(CORPUS["text-32k-textmode"][0], quality=5)
    with pytest.raises(brotlicffi.error):
        brotlicffi.decompress(b"\xff" * 64)
    with pytest.raises(brotlicffi.error):
        brotlicffi.decompress(good[: len(good) // 2])   # truncated
    with pytest.raises(brotlicffi.error):
        brotlicffi.decompress(good + b"trailing")
    with pytest.raises(brotlicffi.error):
        brotlicffi.Compressor(quality=12)


def _thread_round(name, reference, limit):
    data, kw = CORPUS[name]
    one_shot, streamed = reference[name]
    got = brotlicffi.compress(data, **kw)
    assert got == one_shot, "%s: one-shot compress differs (%d vs %d bytes)" % (name, len(got), len(one_shot))
    got = stream_compress(data, **kw)
    assert got == streamed, "%s: chunked compress differs (%d vs %d bytes)" % (name, len(got), len(streamed))
    assert brotlicffi.decompress(one_shot) == data, "%s: one-shot decompress differs" % name
    assert stream_decompress(streamed, limit=limit) == data, "%s: chunked decompress differs" % name


def test_brotli_from_8_threads(reference):
    done = [0] * THREADS

    def work(t, start):
        start()
        # each thread walks the cases from its own offset, so different cases (and
        # different ctypes, buffer sizes and error paths) run at the same time
        for r in range(SMALL_ROUNDS):
            name = SMALL[(t + r) % len(SMALL)]
            _thread_round(name, reference, limit=None if (t + r) % 2 else 1024)
            with pytest.raises(brotlicffi.error):
                brotlicffi.decompress(b"\xff" * (t + 1))
            done[t] += 1
        names = list(CORPUS)
        for r in range(FULL_ROUNDS):
            for i in range(len(names)):
                _thread_round(names[(t + i) % len(names)], reference, limit=None if r else 65536)
                done[t] += 1

    errors = run_in_threads(THREADS, work)
    assert not errors, errors[:3]
    assert done == [SMALL_ROUNDS + FULL_ROUNDS * len(CORPUS)] * THREADS
