"""A real cffi client in ABI mode under threads: cairocffi 1.7.1 (pure Python; it
`ffi.dlopen`s the system's libcairo when imported), built from its sdist against the
patched cffi of this venv by `cargo xtask test-upstream --suites client-cairo`, which also
runs cairocffi's own tests (see client_cairo_plugin.py).

Four deterministic pictures (gradients, filled and stroked paths, a clip, a repeating
surface pattern, a group, a path copied out of cairo and appended back; no text, whose
rendering depends on the fonts installed) are drawn single-threaded first: their pixels,
their PNG bytes and what cairo reported while drawing them (extents, hit tests, the
copied path). Then 8 threads released together by a barrier draw them again, many
rounds, each into its own ImageSurface and each thread starting at another picture; every
round's pixels, PNG bytes and reports must equal the single-threaded ones, byte for byte.
The same threads run once more in a fresh interpreter, where their first calls are the
process's first calls of most cairo functions and its first uses of most C types (the
library's attributes looked up, ctypes built, from 8 threads at once), against the
references of this process.

PNG bytes come from `write_to_png(BytesIO)`, which makes an `ffi.callback` per call, and
from `write_to_png(path)`, which needs none. Creating callbacks from several threads at
once is hazard C1, fixed by step 4 (callbacks): where the GIL is off and the kit has no
step 4, the threads take turns for the BytesIO write (a lock around that call only);
everything else, the file write included, runs at once.
"""
import io
import json
import math
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from client_threads import run_in_threads

# A plain import, not importorskip: a library that does not load must fail the suite.
import cairocffi

THREADS = 8
ROUNDS = 100
PICTURES = 4
WIDTH, HEIGHT = 160, 120


def callbacks_thread_safe():
    """Whether callbacks may be created from several threads at once (C1): with the GIL,
    or with a kit that has step 4."""
    import _cffi_backend
    kit = getattr(_cffi_backend, "__cffi_ft__", None)
    return sys._is_gil_enabled() or (kit is not None and 4 in kit["steps"])


def _star(ctx, cx, cy, outer, inner, points):
    for i in range(2 * points):
        r = outer if i % 2 == 0 else inner
        a = math.pi * i / points - math.pi / 2
        (ctx.move_to if i == 0 else ctx.line_to)(cx + r * math.cos(a), cy + r * math.sin(a))
    ctx.close_path()


def _tile(k):
    """An 8x8 two-colour checker tile for a repeating pattern."""
    tile = cairocffi.ImageSurface(cairocffi.FORMAT_ARGB32, 8, 8)
    t = cairocffi.Context(tile)
    t.set_source_rgb(1, 1, 1)
    t.paint()
    t.set_source_rgb(0.2 * k, 0.5, 0.9 - 0.2 * k)
    t.rectangle(0, 0, 4, 4)
    t.rectangle(4, 4, 4, 4)
    t.fill()
    tile.flush()
    return tile


def draw(k):
    """Picture `k` on a new opaque ImageSurface; returns (surface, reports), reports
    being what cairo said about the paths while drawing."""
    surface = cairocffi.ImageSurface(cairocffi.FORMAT_ARGB32, WIDTH, HEIGHT)
    ctx = cairocffi.Context(surface)
    reports = []

    background = cairocffi.LinearGradient(0, 0, WIDTH, HEIGHT)
    background.add_color_stop_rgb(0, 0.1 + 0.2 * k, 0.2, 0.5)
    background.add_color_stop_rgb(0.6, 0.9, 0.7 - 0.1 * k, 0.2)
    background.add_color_stop_rgb(1, 0.3, 0.8, 0.4 + 0.1 * k)
    ctx.set_source(background)
    ctx.paint()

    # a disc in a radial gradient
    cx, cy, r = 40 + 10 * k, 45, 30 - 3 * k
    disc = cairocffi.RadialGradient(cx - 8, cy - 8, 2, cx, cy, r)
    disc.add_color_stop_rgba(0, 1, 1, 1, 1)
    disc.add_color_stop_rgba(1, 0.6, 0.1, 0.2 + 0.2 * k, 0.85)
    ctx.arc(cx, cy, r, 0, 2 * math.pi)
    reports.append(("disc fill extents", ctx.fill_extents()))
    ctx.set_source(disc)
    ctx.fill()

    # a star, rotated, even-odd filled, then stroked dashed
    ctx.save()
    ctx.translate(110, 60)
    ctx.transform(cairocffi.Matrix.init_rotate(k * math.pi / 7))
    _star(ctx, 0, 0, 38, 15, 5 + k)
    ctx.set_fill_rule(cairocffi.FILL_RULE_EVEN_ODD)
    ctx.set_source_rgba(0.1, 0.3 + 0.15 * k, 0.8, 0.7)
    reports.append(("star in fill", ctx.in_fill(0, 0), ctx.in_fill(20, 0)))
    ctx.fill_preserve()
    ctx.set_dash([6, 3, 1 + k, 3], k)
    ctx.set_line_width(2.5)
    ctx.set_line_join(cairocffi.LINE_JOIN_ROUND)
    ctx.set_source_rgb(0.05, 0.05, 0.1)
    reports.append(("star stroke extents", ctx.stroke_extents()))
    reports.append(("star device origin", ctx.user_to_device(0, 0)))
    ctx.stroke()
    ctx.restore()

    # curves: copied out of cairo, appended back, stroked with round caps
    ctx.move_to(5, HEIGHT - 10)
    ctx.curve_to(40, 20 + 10 * k, 90, HEIGHT + 10, WIDTH - 5, 15 + 5 * k)
    ctx.rel_curve_to(-20, 30, -50, 10, -60, 40)
    path = ctx.copy_path()
    flat = ctx.copy_path_flat()
    reports.append(("curve path", path))
    reports.append(("curve flat points", len(flat), flat[-1]))
    ctx.new_path()
    ctx.append_path(path)
    ctx.set_line_cap(cairocffi.LINE_CAP_ROUND)
    ctx.set_line_width(4 + k)
    ctx.set_source_rgba(0.9, 0.9, 0.1, 0.9)
    ctx.stroke()

    # a rounded rectangle as clip, a repeating checker pattern painted through it
    ctx.save()
    x, y, w, h, rr = 8, 8, 52, 34, 9
    ctx.new_sub_path()
    ctx.arc(x + w - rr, y + rr, rr, -math.pi / 2, 0)
    ctx.arc(x + w - rr, y + h - rr, rr, 0, math.pi / 2)
    ctx.arc(x + rr, y + h - rr, rr, math.pi / 2, math.pi)
    ctx.arc(x + rr, y + rr, rr, math.pi, 3 * math.pi / 2)
    ctx.close_path()
    ctx.clip()
    reports.append(("clip extents", ctx.clip_extents()))
    pattern = cairocffi.SurfacePattern(_tile(k))
    pattern.set_extend(cairocffi.EXTEND_REPEAT)
    pattern.set_filter(cairocffi.FILTER_NEAREST)
    pattern.set_matrix(cairocffi.Matrix(xx=1, yx=0.3 * k, xy=0, yy=1, x0=k, y0=0))
    ctx.set_source(pattern)
    ctx.paint_with_alpha(0.75)
    ctx.restore()

    # a group: two overlapping rectangles, composited with an operator
    ctx.push_group()
    ctx.set_source_rgb(0.8, 0.2, 0.1)
    ctx.rectangle(70, 85, 40, 25)
    ctx.fill()
    ctx.set_operator(cairocffi.OPERATOR_XOR)
    ctx.set_source_rgb(0.1, 0.2, 0.9)
    ctx.rectangle(85, 92, 40, 22)
    ctx.fill()
    ctx.pop_group_to_source()
    ctx.paint_with_alpha(0.8)

    surface.flush()
    return surface, reports


def png_bytes(surface):
    out = io.BytesIO()
    surface.write_to_png(out)
    return out.getvalue()


def reference_pictures(tmp_dir):
    """Single-threaded: per picture (pixels, PNG bytes, reports)."""
    refs = []
    for k in range(PICTURES):
        surface, reports = draw(k)
        path = os.path.join(tmp_dir, "reference%d.png" % k)
        surface.write_to_png(path)
        with open(path, "rb") as f:
            from_file = f.read()
        png = png_bytes(surface)
        assert png == from_file, "picture %d: PNG to a stream and to a file differ" % k
        refs.append((bytes(surface.get_data()), png, reports))
    return refs


def run_threads(refs, tmp_dir, rounds):
    """THREADS threads released by a barrier draw the pictures `rounds` times each and
    check every result against `refs`; returns (errors, rounds done per thread)."""
    png_turns = None if callbacks_thread_safe() else threading.Lock()
    done = [0] * THREADS

    def work(t, start):
        path = os.path.join(tmp_dir, "thread%d.png" % t)
        start()
        for r in range(rounds):
            k = (t + r) % PICTURES
            pixels, png, reports = refs[k]
            surface, got_reports = draw(k)
            assert got_reports == reports, "picture %d: cairo reported %r, expected %r" % (k, got_reports, reports)
            assert bytes(surface.get_data()) == pixels, "picture %d: pixels differ" % k
            if png_turns is None:
                got = png_bytes(surface)
            else:
                with png_turns:
                    got = png_bytes(surface)
            assert got == png, "picture %d: PNG to a stream differs (%d vs %d bytes)" % (k, len(got), len(png))
            surface.write_to_png(path)
            with open(path, "rb") as f:
                got = f.read()
            assert got == png, "picture %d: PNG to a file differs (%d vs %d bytes)" % (k, len(got), len(png))
            done[t] += 1

    return run_in_threads(THREADS, work), done


@pytest.fixture(scope="module")
def refs(tmp_path_factory):
    return reference_pictures(str(tmp_path_factory.mktemp("cairo-reference")))


def test_import_keeps_gil_state(free_threaded):
    assert sys._is_gil_enabled() is (not free_threaded)


def test_libcairo_is_the_systems():
    # ABI mode: cairocffi has no compiled part; its library came from ffi.dlopen
    assert type(cairocffi.cairo).__name__.startswith("FFILibrary_libcairo")
    major, minor, _ = map(int, cairocffi.cairo_version_string().split("."))
    assert (major, minor) >= (1, 16), cairocffi.cairo_version_string()


def test_pictures_are_deterministic_and_distinct(refs):
    assert len(refs) == PICTURES
    for k, (pixels, png, reports) in enumerate(refs):
        assert len(pixels) == WIDTH * HEIGHT * 4
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
        assert len(set(pixels[i:i + 4] for i in range(0, len(pixels), 4))) > 500, "picture %d is too plain" % k
        surface, again = draw(k)
        assert again == reports
        assert bytes(surface.get_data()) == pixels, "picture %d: a second drawing differs" % k
        assert png_bytes(surface) == png
    assert len({png for _, png, _ in refs}) == PICTURES


def test_png_round_trip(refs):
    # the pictures are opaque, so decoding their PNG gives the same pixels back
    for k, (pixels, png, _) in enumerate(refs):
        decoded = cairocffi.ImageSurface.create_from_png(io.BytesIO(png))
        assert (decoded.get_width(), decoded.get_height()) == (WIDTH, HEIGHT)
        assert decoded.get_format() in (cairocffi.FORMAT_ARGB32, cairocffi.FORMAT_RGB24)
        assert bytes(decoded.get_data()) == pixels, "picture %d: the PNG decodes to other pixels" % k


def test_pictures_from_8_threads(refs, tmp_path):
    started = time.monotonic()
    errors, done = run_threads(refs, str(tmp_path), ROUNDS)
    elapsed = time.monotonic() - started
    assert not errors, errors[:3]
    assert done == [ROUNDS] * THREADS
    print("%d threads x %d rounds in %.2f s" % (THREADS, ROUNDS, elapsed))


def test_pictures_from_8_threads_in_a_fresh_interpreter(refs, tmp_path, free_threaded):
    """The threads' calls are the fresh process's first calls into most of cairo."""
    with open(tmp_path / "refs.pickle", "wb") as f:
        pickle.dump(refs, f)
    child = textwrap.dedent("""
        import importlib.util, json, pickle, sys
        spec = importlib.util.spec_from_file_location("client_cairo_child", sys.argv[1])
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        with open(sys.argv[2], "rb") as f:
            refs = pickle.load(f)
        errors, done = mod.run_threads(refs, sys.argv[3], int(sys.argv[4]))
        print(json.dumps({"errors": errors[:3], "done": done, "gil": sys._is_gil_enabled()}))
    """)
    out = subprocess.run(
        [sys.executable, "-X", "faulthandler", "-c", child, __file__, str(tmp_path / "refs.pickle"),
         str(tmp_path), str(ROUNDS // 4)],
        capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, "child exited with %d:\n%s" % (out.returncode, out.stderr[-3000:])
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert not result["errors"], result["errors"]
    assert result["done"] == [ROUNDS // 4] * THREADS
    assert result["gil"] is (not free_threaded)
