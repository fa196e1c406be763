"""Engines run the trainer somewhere (MicroPython VM, QEMU, Wokwi, a board) and yield its UART.

Every engine is one small module with one class implementing `Engine`: `lines()` yields what
the chip printed, one line at a time, as raw bytes without the trailing b"\\n" (a "\\r" may
remain; the parser copes). An engine raises `EngineError` (or `Silence`) with a message that
names the fix when it cannot start or stops hearing the chip; the runner records it in the
report. Engines never parse the protocol: that is `microgpt.uart`'s job.
"""
import abc
import time
from typing import Callable, Iterator


class EngineError(Exception):
    """The engine could not run, or lost the chip; the message says what to do."""


class Silence(EngineError):
    """Nothing arrived on the UART for too long."""


class Engine(abc.ABC):
    name = "engine"

    @abc.abstractmethod
    def lines(self) -> Iterator[bytes]:
        """Yield UART lines as they arrive (bytes, newline stripped)."""

    def close(self) -> None:
        """Release processes, ports and temp files; safe to call twice."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def split_lines(read: Callable[[], bytes], silence_s: float, deadline_s: float | None = None) -> Iterator[bytes]:
    """Turn a byte stream into lines.

    `read()` returns the bytes available now (b"" when none arrived within its own short
    timeout) or None at end of stream. Raises Silence after `silence_s` seconds without a
    byte, or when `deadline_s` (total) passes; yields a trailing partial line at end of stream.
    """
    buf = b""
    start = last = time.monotonic()
    while True:
        chunk = read()
        now = time.monotonic()
        if chunk is None:
            break
        if chunk:
            last = now
            buf += chunk
            *complete, buf = buf.split(b"\n")
            yield from complete
        elif now - last > silence_s:
            yield from _rest(buf)
            raise Silence(f"no output from the chip for {silence_s:g} s (raise --timeout if the run is just slow)")
        if deadline_s is not None and now - start > deadline_s:
            yield from _rest(buf)
            raise Silence(f"the run did not finish within {deadline_s:g} s (raise --timeout)")
    yield from _rest(buf)


def _rest(buf: bytes) -> Iterator[bytes]:
    # A line cut short still goes to the log: it may be the last thing the chip said.
    if buf:
        yield buf
