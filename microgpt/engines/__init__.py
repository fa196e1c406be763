"""Engines run the trainer somewhere (MicroPython VM, QEMU, Wokwi, a board) and yield its UART.

Every engine is one small module with one class implementing `Engine`: `lines()` yields what
the chip printed, one line at a time, as raw bytes without the trailing b"\\n" (a "\\r" may
remain; the parser copes). An engine raises `EngineError` (or `Silence`) with a message that
names the fix when it cannot start or stops hearing the chip; the runner records it in the
report. Engines never parse the protocol: that is `microgpt.uart`'s job.
"""
import abc
import collections
import os
import queue
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

from ..errors import EngineError, Silence  # noqa: F401  (the engines' errors, re-exported)


class Engine(abc.ABC):
    """A place the trainer runs. The runner calls prepare(), reads lines(), then stop(); after
    a successful run read_file() brings back what the trainer wrote; close() cleans up."""

    name = "engine"

    def prepare(self) -> None:
        """Put the run on the target: its flash, its filesystem, or its REPL."""

    @abc.abstractmethod
    def lines(self) -> Iterator[bytes]:
        """Yield UART lines as they arrive (bytes, newline stripped)."""

    def stop(self) -> None:
        """End the target's processes and release its ports; safe to call twice."""

    def read_file(self, name: str) -> bytes | None:
        """A file the trainer left on the target's filesystem (weights.bin), after stop();
        None where the target has no such file or gives no files back (Wokwi)."""
        return None

    def close(self) -> None:
        """stop(), then remove what the engine made (temp dirs); safe to call twice."""
        self.stop()

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
        return f"{what} exited with code {self._proc.returncode}:\n{tail}"

    def kill(self) -> None:
        if self._proc.poll() is None:
            self._signal(signal.SIGTERM)  # lets QEMU flush the flash file
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
    """An engine that is a program whose stdout is the chip's UART: the VM, QEMU, wokwi-cli."""

    what = "the program"  # in error messages
    silence_s: float = 120.0
    deadline_s: float | None = None
    _process: ChildProcess | None = None
    _tempdir: str | None = None

    def _workdir(self, workdir, prefix: str) -> Path:
        """Where the engine keeps its flash: `workdir`, or a temp dir that close() removes."""
        if workdir:
            return Path(workdir)
        self._tempdir = tempfile.mkdtemp(prefix=prefix)
        return Path(self._tempdir)

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

    def close(self) -> None:
        self.stop()
        if self._tempdir:
            shutil.rmtree(self._tempdir, ignore_errors=True)
            self._tempdir = None
