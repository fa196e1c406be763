"""Serial ports: find the board, open its port, and errors that say what is wrong."""
import contextlib
import errno
import select
import socket

import serial
from serial.tools import list_ports

from .errors import EngineError

# USB vendor IDs of the chips that put ESP32 boards on USB: the ESP32's own USB (S2/S3/C3...)
# and the USB-serial bridges found on dev kits.
BOARD_VIDS = {0x303A: "Espressif", 0x10C4: "Silicon Labs CP210x", 0x1A86: "WCH CH340", 0x0403: "FTDI"}
UART_BAUD = 115200  # MicroPython's REPL on the ESP32's UART0
FLASH_BAUD = 460800  # esptool's flasher stub; the ROM bootloader itself starts at 115200
IN_USE_WAIT_S = 0.5  # how long a TCP port is watched for the close that says it is in use


def describe(port) -> str:
    chip = BOARD_VIDS.get(port.vid, "")
    return f"{port.device}  {port.description}" + (f"  [{chip}]" if chip else "")


def pick_port(ports) -> str:
    """The one board among `ports` (pyserial ListPortInfo); else an error listing the candidates."""
    boards = [p for p in ports if p.vid in BOARD_VIDS]
    if len(boards) == 1:
        return boards[0].device
    if boards:
        listing = "\n  ".join(describe(p) for p in boards)
        raise EngineError(f"{len(boards)} ESP32/USB-serial ports found; pick one with --port:\n  {listing}")
    listing = "\n  ".join(describe(p) for p in ports) or "(none)"
    raise EngineError(
        "no ESP32 or USB-serial adapter (Espressif, CP210x, CH340, FTDI) found: plug the board in "
        f"(and check its cable carries data), or name the port with --port. Serial ports seen:\n  {listing}"
    )


def find_port() -> str:
    return pick_port(list_ports.comports())


def open_serial(port: str, baud: int = UART_BAUD, timeout: float = 1.0, *, release_lines: bool = False) -> serial.Serial:
    """Open `port` exclusively (so a second program cannot interleave bytes) or say why not.

    release_lines: open with DTR and RTS released. On dev kits these drive IO0 and EN through the
    auto-reset circuit, which ignores them while both are asserted (pyserial's default): released,
    the chip runs, and a pulse on RTS alone resets it."""
    ser = serial.serial_for_url(port, baudrate=baud, timeout=timeout, exclusive=True, do_not_open=True)
    if release_lines:
        ser.dtr = ser.rts = False
    try:
        ser.open()
    except serial.SerialException as e:
        raise EngineError(open_error(port, e)) from None
    if port.startswith("socket://") and _closed_at_once(ser):
        ser.close()
        raise EngineError(f"{port} is in use: the virtual board there takes one client at a time and another "
                          "(mpremote, a terminal, another microgpt) has it; close that one and retry.")
    return ser


def _closed_at_once(ser: serial.Serial) -> bool:
    """Did the other end close a TCP port as soon as it was opened? (`sim board --tcp` does so
    when another client has the board.)"""
    with socket.fromfd(ser.fileno(), socket.AF_INET, socket.SOCK_STREAM) as s:  # a duplicate: pyserial keeps its own
        if not select.select([s], [], [], IN_USE_WAIT_S)[0]:
            return False
        try:
            return s.recv(1, socket.MSG_PEEK) == b""
        except OSError:  # reset: closed as well
            return True


def link_lost(e: OSError) -> bool:
    """Is this error the port going away (cable pulled, board unpowered, its USB re-enumerating)?"""
    return isinstance(e, serial.SerialException) or e.errno in (errno.EIO, errno.ENXIO, errno.ENODEV, errno.EBADF)


@contextlib.contextmanager
def watch_link(port: str):
    """Turn the port going away under us into one clear EngineError."""
    try:
        yield
    except OSError as e:
        if not link_lost(e):
            raise
        raise EngineError(f"serial connection to {port} lost ({e}): check the USB cable and the board's power") from None


def open_error(port: str, e: OSError) -> str:
    if e.errno == errno.ENOENT:
        return f"serial port {port} does not exist: is the board plugged in? Omit --port to list the boards found."
    if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EBUSY):
        return (f"serial port {port} is busy: another program (serial monitor, mpremote, esptool, "
                "another microgpt) has it open; close it and retry.")
    if e.errno == errno.EACCES:
        return f"no permission to open {port}: add yourself to the 'dialout' (or 'uucp') group and log in again."
    return f"cannot open serial port {port}: {e}"
