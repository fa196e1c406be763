"""Engines run the trainer somewhere (MicroPython VM, QEMU, Wokwi, a board) and yield its UART.

The pipeline (microgpt.run) decides what goes on the chip once, as a `payload.Payload`; an
engine only places it and runs it:

    engine = QemuEngine(...)            # checks its tools (QEMU, a token, a port) before anything is built
    target = engine.target()            # what the chip imports (.mpy version, arch)
    engine.place(payload.build(options, docs, target, engine.platform()))
    for line in engine.lines(): ...     # the UART, one raw line at a time
    engine.stop(); engine.read_file("weights.bin"); engine.close()

`lines()` yields bytes without the trailing b"\\n" (a "\\r" may remain; the parser copes). An engine
raises `EngineError` (or `Silence`) with a message that names the fix when it cannot start or stops
hearing the chip; the pipeline records it in the report. Engines never parse the protocol: that is
`microgpt.uart`'s job. An engine whose target keeps its flash in `workdir` can run again from it
without `place` (a resumed run).
"""
import abc
import collections
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from .. import mpy, planner
from ..errors import EngineError, Silence
from ..payload import Payload


class Engine(abc.ABC):
    name = "engine"
    # The engine's own command-line options (beyond the run options every engine takes): a
    # command refuses any other engine's option instead of dropping it.
    OPTIONS: tuple[str, ...] = ()

    @abc.abstractmethod
    def target(self) -> mpy.Target:
        """What the chip imports; may start or connect to it."""

    @abc.abstractmethod
    def place(self, payload: Payload) -> None:
        """Put the payload on the target: its flash, its filesystem, or over its REPL."""

    @abc.abstractmethod
    def lines(self) -> Iterator[bytes]:
        """Run the trainer and yield UART lines as they arrive (bytes, newline stripped)."""

    def platform(self) -> planner.Platform:
        """The heap the trainer runs in, which the planner checks the run against: the ESP32's."""
        return planner.ESP32

    def settings(self) -> dict:
        """What it takes to build this engine again on the same workdir (a resumed run), as JSON."""
        return {}

    def stop(self) -> None:  # noqa: B027 (a hook: engines with processes or ports override it)
        """End the target's processes and release its ports; safe to call twice."""

    def read_file(self, name: str) -> bytes | None:
        """A file the trainer left on the target's filesystem (weights.bin), after stop();
        None where the target has no such file or gives no files back (Wokwi)."""
        return None

    def close(self) -> None:
        """stop(), and let go of everything; safe to call twice."""
        self.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def split_lines(read: Callable[[], bytes | None], silence_s: float, deadline_s: float | None = None) -> Iterator[bytes]:
    """Turn a byte stream into lines.

    `read()` returns the bytes available now (b"" when none arrived within its own short
    timeout) or None at end of stream. Raises Silence after `silence_s` seconds without a
    byte, or when `deadline_s` (wall-clock seconds since the start) passes; yields a trailing
    partial line at end of stream.
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
            raise Silence(f"no output from the chip for {silence_s:g} s (raise --silence if the run is just slow)")
        if deadline_s is not None and now - start > deadline_s:
            yield from _rest(buf)
            raise Silence(f"the run did not finish within {deadline_s:g} s")
    yield from _rest(buf)


def _rest(buf: bytes) -> Iterator[bytes]:
    # A line cut short still goes to the log: it may be the last thing the chip said.
    if buf:
        yield buf


def queue_reader(chunks: queue.Queue) -> Callable[[], bytes | None]:
    """A `split_lines` read() over a queue another thread fills: bytes, an EngineError to raise, None at the end."""
    def read() -> bytes | None:
        try:
            item = chunks.get(timeout=0.1)
        except queue.Empty:
            return b""
        if isinstance(item, EngineError):
            raise item
        return item
    return read


class ChildProcess:
    """A child process whose stdout is the chip's UART; stderr is kept for error messages.

    Shared by the engines that drive a program: the MicroPython VM, QEMU, wokwi-cli.
    """

    def __init__(self, argv: Sequence[str], env: dict | None = None):
        # Own session: a Ctrl-C in the terminal reaches us, not the child, and kill() can end
        # the child together with anything it spawned.
        try:
            self._proc = subprocess.Popen(
                list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                env=env, start_new_session=os.name == "posix",
            )
        except OSError as e:
            raise EngineError(f"could not start {argv[0]}: {e}") from e
        self._chunks: queue.Queue = queue.Queue()
        self._stderr: collections.deque = collections.deque(maxlen=20)
        self._readers = [
            threading.Thread(target=self._pump_stdout, daemon=True),
            threading.Thread(target=self._pump_stderr, daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _pump_stdout(self) -> None:
        while chunk := self._proc.stdout.read1(4096):
            self._chunks.put(chunk)
        self._chunks.put(None)

    def _pump_stderr(self) -> None:
        for line in self._proc.stderr:
            self._stderr.append(line.decode(errors="replace").rstrip())

    def lines(self, silence_s: float, deadline_s: float | None) -> Iterator[bytes]:
        """UART lines until the process closes its stdout; then collect its exit code."""
        yield from split_lines(queue_reader(self._chunks), silence_s, deadline_s)
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            return  # stdout closed but still running: no exit code to judge; close() ends it
        self._readers[1].join(timeout=5)

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode

    def failure(self, what: str) -> str:
        tail = "\n".join(self._stderr) or "(nothing on stderr)"
        code = self._proc.returncode
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        return f"{what} {how}:\n{tail}"

    def kill(self) -> None:
        if self._proc.poll() is None:
            self._signal(signal.SIGTERM)  # lets QEMU exit cleanly (its plugins write their counts)
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._signal(getattr(signal, "SIGKILL", signal.SIGTERM))
                self._proc.wait()
        for reader in self._readers:
            reader.join(timeout=5)
        self._proc.stdout.close()
        self._proc.stderr.close()

    def _signal(self, sig: int) -> None:
        try:
            if os.name == "posix":
                os.killpg(self._proc.pid, sig)
            else:
                self._proc.send_signal(sig)
        except ProcessLookupError:
            pass


class ProcessEngine(Engine):
    """An engine that is a program whose stdout is the chip's UART: the VM, QEMU, wokwi-cli. Its
    flash (or filesystem) is a file in `workdir`."""

    what = "the program"  # in error messages
    silence_s: float = 120.0
    deadline_s: float | None = None
    _process: ChildProcess | None = None

    def __init__(self, workdir: str | os.PathLike, silence_s: float, deadline_s: float | None):
        self.workdir = Path(workdir)
        self.silence_s, self.deadline_s = silence_s, deadline_s

    @abc.abstractmethod
    def command(self) -> list[str]:
        """The program's argv."""

    def env(self) -> dict | None:
        return None

    def lines(self) -> Iterator[bytes]:
        self._process = ChildProcess(self.command(), env=self.env())
        # A run that stops early (program killed, image unbootable) simply ends; the parser judges.
        yield from self._process.lines(self.silence_s, self.deadline_s)
        self.check_exit(self._process.returncode)

    def check_exit(self, code: int | None) -> None:
        if code:
            raise EngineError(self._process.failure(self.what))

    def stop(self) -> None:
        if self._process:
            self._process.kill()
            self._process = None
