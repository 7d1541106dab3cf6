"""pytest plugin of the client-cairo suite (`-p client_cairo_plugin`, found through
PYTHONPATH): lets cairocffi 1.7.1's own test modules, run from the installed package,
work in a cell, which has cairocffi and the system's libcairo but none of the optional
dependencies of those tests. Nothing is dropped silently: what cannot run is reported as
skipped, with the reason.

- `test_cairo.py` imports pikepdf at module level, only to read back PDFs its tests wrote
  (5 tests). pikepdf has no 3.13t wheel (and would bring Pillow and lxml), so the cells do
  not install it. Where it is missing, a stand-in module takes its place, whose
  `Pdf.open` skips the test: after everything the test did with cairo, which has run.
- `test_numpy.py` needs numpy, which the cells do not install: skipped as a module.
- `test_pixbuf.py` dlopens gdk-pixbuf, GObject and GLib when it is imported: skipped as a
  module where they do not load.
- `test_xcb.py` skips itself without xcffib (not installed).
"""
import importlib.util
import sys
import types

import pytest


def _stand_in_pikepdf():
    module = types.ModuleType("pikepdf")
    module.__doc__ = "Stand-in for pikepdf (see client_cairo_plugin): Pdf.open skips the test."
    module.CFFI_FT_STAND_IN = True

    class Pdf:
        @staticmethod
        def open(*args, **kwargs):
            pytest.skip("pikepdf is not installed: the PDF this test wrote is not read back")

    module.Pdf = Pdf
    return module


if importlib.util.find_spec("pikepdf") is None:
    sys.modules["pikepdf"] = _stand_in_pikepdf()


def _numpy_missing():
    if importlib.util.find_spec("numpy") is None:
        return "numpy is not installed in the cells"
    return None


def _gdk_pixbuf_missing():
    try:
        import cairocffi.pixbuf  # noqa: F401  (dlopens gdk-pixbuf, GObject, GLib)
    except OSError as e:
        return "gdk-pixbuf does not load: %s" % (str(e).strip().splitlines() or ["?"])[-1]
    return None


#: cairocffi's test modules that need more than libcairo: file name -> why it cannot run
#: here (None when it can).
_NEEDS = {"test_numpy.py": _numpy_missing, "test_pixbuf.py": _gdk_pixbuf_missing}


class _NotRunnable(pytest.Module):
    """A test module whose dependencies are missing: its collection is one skip."""

    reason = "?"

    def collect(self):
        pytest.skip(self.reason, allow_module_level=True)


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makemodule(module_path, parent):
    missing = _NEEDS.get(module_path.name)
    if missing is None or module_path.parent.name != "cairocffi":
        return None
    reason = missing()
    if reason is None:
        return None
    module = _NotRunnable.from_parent(parent, path=module_path)
    module.reason = "cairocffi/%s not run: %s" % (module_path.name, reason)
    return module
