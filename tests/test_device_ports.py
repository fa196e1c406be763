"""Finding the board's port, and opening it: missing and busy ports say so."""
import os

import pytest
from serial.tools.list_ports_common import ListPortInfo

from microgpt.engines import EngineError
from microgpt.ports import find_port, open_serial, pick_port


def port(device, vid=None, description="n/a"):
    info = ListPortInfo(device, skip_link_detection=True)
    info.vid, info.description = vid, description
    return info


def test_the_one_board_among_other_ports_is_picked():
    ports = [port("/dev/ttyS0"), port("/dev/ttyACM0", 0x2341, "Arduino Uno"), port("/dev/ttyUSB0", 0x10C4, "CP2102 USB to UART")]
    assert pick_port(ports) == "/dev/ttyUSB0"


@pytest.mark.parametrize("vid", [0x303A, 0x10C4, 0x1A86, 0x0403])
def test_every_espressif_and_usb_serial_vendor_counts(vid):
    assert pick_port([port("/dev/ttyX", vid)]) == "/dev/ttyX"


def test_two_boards_are_listed_for_the_user_to_choose():
    ports = [port("/dev/ttyUSB0", 0x1A86, "USB Serial"), port("/dev/ttyACM0", 0x303A, "USB JTAG/serial debug unit")]
    with pytest.raises(EngineError, match="2 ESP32/USB-serial ports found; pick one with --port") as e:
        pick_port(ports)
    assert "/dev/ttyUSB0  USB Serial  [WCH CH340]" in str(e.value)
    assert "/dev/ttyACM0  USB JTAG/serial debug unit  [Espressif]" in str(e.value)


def test_no_board_lists_the_ports_seen():
    with pytest.raises(EngineError, match=r"no ESP32 or USB-serial adapter.*--port.*seen:\n  /dev/ttyS0  n/a"):
        pick_port([port("/dev/ttyS0")])
    with pytest.raises(EngineError, match=r"seen:\n  \(none\)"):
        pick_port([])


def test_find_port_reads_this_machines_ports():
    try:
        assert find_port().startswith("/dev/")  # a board happens to be plugged in
    except EngineError as e:
        assert "pick one with --port" in str(e) or "no ESP32" in str(e)


def test_missing_port(tmp_path):
    with pytest.raises(EngineError, match=r"serial port .*ttyUSB9 does not exist: is the board plugged in\?"):
        open_serial(str(tmp_path / "ttyUSB9"))


def test_busy_port():
    master, slave = os.openpty()
    try:
        first = open_serial(os.ttyname(slave))
        with pytest.raises(EngineError, match="is busy: another program .* has it open; close it and retry"):
            open_serial(os.ttyname(slave))
        first.close()
        open_serial(os.ttyname(slave)).close()  # free again once the other program let go
    finally:
        os.close(master)
        os.close(slave)
