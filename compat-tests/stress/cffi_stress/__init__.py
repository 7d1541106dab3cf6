"""Registry of the stress scenarios (research notes cffi-hazards.md, section 5).

A scenario is a function ``f(threads, rounds, fx)`` registered with
``@scenario(number, name, hazards, rounds=...)``. It raises AssertionError (or any other
exception) when an invariant breaks; a crash or a hang of its process is detected by the
parent (see ``_runner``). ``rounds`` is the scenario's default number of rounds; every
round recreates the lazy state it races on (fresh FFI objects, Libs, callbacks, or fresh
API-mode names), see each scenario's docstring. ``fx`` is a ``_support.Fixtures``.

The component is derived from the first hazard's letter (A = unique-cache,
B = library-registry, C = callbacks, D = type-realization, E = per-thread-state,
F = misc).

This module does not import cffi, so that the child process of scenario 1 can check the
first import of ``_cffi_backend`` itself.
"""
import importlib

COMPONENTS = {
    "A": "unique-cache",
    "B": "library-registry",
    "C": "callbacks",
    "D": "type-realization",
    "E": "per-thread-state",
    "F": "misc",
}

MODULES = ["unique_cache", "library_registry", "callbacks", "type_realization",
           "per_thread_state", "misc"]


class Scenario:
    def __init__(self, number, name, hazards, rounds, func):
        self.number = number
        self.name = name
        self.hazards = list(hazards)
        self.component = COMPONENTS[hazards[0][0]]
        self.rounds = rounds
        self.func = func
        self.doc = (func.__doc__ or "").strip()

    def __repr__(self):
        return "<Scenario %s %s>" % (self.name, " ".join(self.hazards))


SCENARIOS = {}


def scenario(number, name, hazards, rounds):
    """Registers a scenario; ``name`` is the test id (``sNN_...``)."""
    assert name.startswith("s%02d_" % number), name

    def deco(func):
        if name in SCENARIOS or any(s.number == number for s in SCENARIOS.values()):
            raise ValueError("duplicate scenario %d %s" % (number, name))
        SCENARIOS[name] = Scenario(number, name, hazards, rounds, func)
        return func
    return deco


_loaded = False


def load_all():
    """Imports every component module; returns the scenarios sorted by number."""
    global _loaded
    if not _loaded:
        for mod in MODULES:
            importlib.import_module(__name__ + "." + mod)
        _loaded = True
    return sorted(SCENARIOS.values(), key=lambda s: s.number)


def get(name):
    load_all()
    return SCENARIOS[name]
