"""The few MicroPython-only names the firmware uses, so its modules import under CPython.

Installed by tests/conftest.py (it puts this folder and firmware/ on sys.path). `const` is an
identity; `native`/`viper` decorators are identities (the firmware's plain-bytecode path)."""
import time as _time


def const(x):
    return x


def native(f):
    return f


viper = native


# time.ticks_* are MicroPython's wrap-around millisecond/microsecond counters.
_time.ticks_us = lambda: int(_time.perf_counter() * 1e6)
_time.ticks_ms = lambda: int(_time.perf_counter() * 1e3)
_time.ticks_diff = lambda a, b: a - b
