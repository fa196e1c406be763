"""MicroPython's raw REPL over a serial port: enter it, run code, copy files, stream a long run.

Built on mpremote's SerialTransport, which speaks the raw REPL (Ctrl-A, raw-paste flow control,
the two \\x04 markers) as mpremote does on every board. This class adds what a training run needs
and mpremote lacks: reading a running program's output incrementally (mpremote's `follow` blocks
until the program ends), and errors that name the fix instead of mpremote's bare
"could not enter raw repl".
"""
import ast
import contextlib
import errno
import io

from mpremote.transport import TransportError, TransportExecError
from mpremote.transport_serial import SerialTransport

from microgpt.engines import EngineError
from microgpt.ports import UART_BAUD, link_lost, open_serial, watch_link

READ_TIMEOUT_S = 1.0  # mpremote reads ptys with a blocking read(1): this bounds it
ENTER_TIMEOUT_S = 10
CHUNK = 1024  # bytes per exec when copying files (mpremote's 256 costs 4x the round trips)
# Ports whose Ctrl-D exits the process instead of soft-resetting (MicroPython's unix/windows VM).
VM_PLATFORMS = ("linux", "darwin", "win32")


class MissingFile(EngineError):
    """The file asked for is not on the board."""


class RawRepl:
    def __init__(self, port: str, baud: int = UART_BAUD, answer_s: float = ENTER_TIMEOUT_S):
        self.port, self.baud, self.answer_s = port, baud, answer_s
        try:
            self.transport = SerialTransport(port, baudrate=baud, exclusive=True, timeout=READ_TIMEOUT_S)
        except TransportError:
            open_serial(port, baud).close()  # mpremote drops the reason: reopen once to raise it
            raise EngineError(f"cannot open serial port {port}") from None
        self._eot = 2  # raw REPL end-of-output markers seen for the running program (2 = none running)
        try:
            self._enter(soft_reset=False)
            self.platform = self.eval("__import__('sys').platform")
        except BaseException:
            self.transport.serial.close()
            raise

    def _enter(self, soft_reset: bool):
        said = io.StringIO()  # mpremote prints what the board said before raising: keep it for our message
        with self._link(), contextlib.redirect_stdout(said):
            try:
                self.transport.enter_raw_repl(soft_reset=soft_reset, timeout_overall=self.answer_s)
            except TransportError:
                answer = said.getvalue().strip()
                if answer in ("", "b''"):
                    raise EngineError(
                        f"no answer from {self.port} within {self.answer_s:g} s: is the board powered and "
                        f"running MicroPython at {self.baud} baud? Flash it with `microgpt device flash`.") from None
                raise EngineError(
                    f"{self.port} refused the raw REPL (no 'raw REPL; CTRL-B to exit' banner); it answered "
                    f"{answer[-200:]}. Is MicroPython running there? Flash it with `microgpt device flash`.") from None

    @contextlib.contextmanager
    def _link(self):
        """A dropped port, or a board that stopped answering, as one clear error."""
        with watch_link(self.port):
            try:
                yield
            except TransportError as e:
                if isinstance(e, TransportExecError):
                    raise
                raise EngineError(f"the board on {self.port} stopped answering the raw REPL ({e})") from None

    def exec(self, code: str) -> bytes:
        """Run `code` to completion and return what it printed; an exception on the board is an EngineError."""
        with self._link():
            try:
                return self.transport.exec(code)
            except TransportExecError as e:
                last = e.error_output.strip().splitlines()[-1:] or ["?"]
                raise EngineError(f"the board failed running {code.splitlines()[0]!r}: {last[0]}") from None

    def eval(self, expression: str):
        return ast.literal_eval(self.exec(f"print(repr({expression}))").decode())

    def write_file(self, path: str, data: bytes) -> None:
        with self._link():
            try:
                self.transport.fs_writefile(path, data, chunk_size=CHUNK)
            except OSError as e:
                if link_lost(e):
                    raise
                hint = ": the board's filesystem is full" if e.errno == errno.ENOSPC else ""
                raise EngineError(f"cannot write {path} ({len(data)} bytes) on the board ({e}){hint}") from None

    def read_file(self, path: str) -> bytes:
        with self._link():
            try:
                return bytes(self.transport.fs_readfile(path, chunk_size=CHUNK))
            except OSError as e:
                if link_lost(e):
                    raise
                if e.errno == errno.ENOENT:
                    raise MissingFile(f"there is no {path} on the board") from None
                raise EngineError(f"cannot read {path} from the board ({e})") from None

    def remove(self, *paths: str) -> None:
        """Delete these files where they exist."""
        self.exec(f"import os\nfor p in {paths!r}:\n try:\n  os.remove(p)\n except OSError:\n  pass")

    def soft_reset(self) -> None:
        """Restart MicroPython for a clean heap. On the VM Ctrl-D would end the process instead,
        and a fresh VM process is clean already, so there it is skipped."""
        if self.platform not in VM_PLATFORMS:
            self._enter(soft_reset=True)

    def start(self, code: str) -> None:
        """Start `code` and return at once; read its output with read()."""
        with self._link():
            self.transport.exec_raw_no_follow(code)
        self._eot = 0

    def read(self) -> bytes | None:
        """What the running program printed since the last call (b"" if nothing within the read
        timeout); None once it has ended. The raw REPL ends its stdout, then its stderr (an uncaught
        traceback), with \\x04 each; both are returned, the markers and the prompt after them are not."""
        if self._eot >= 2:
            return None
        ser = self.transport.serial
        with self._link():
            chunk = ser.read(max(1, ser.in_waiting))
        parts = chunk.split(b"\x04")
        data = b"".join(parts[: 2 - self._eot])
        self._eot += len(parts) - 1
        if self._eot >= 2:
            self._enter(soft_reset=False)  # the bulk read may have eaten the next prompt: ask for a new one
            return data or None
        return data

    def close(self) -> None:
        """Leave the board at its friendly REPL (unless a program still runs) and free the port."""
        if not self.transport.serial.is_open:
            return
        with contextlib.suppress(OSError):
            if self._eot >= 2:
                self.transport.exit_raw_repl()
            self.transport.close()
