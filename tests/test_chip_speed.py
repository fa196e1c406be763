"""microgpt.chip_speed without QEMU: reading the insn plugin's match lines, the count per step
between the C module's marks, UART bytes per step, a board's time."""
import pytest

from microgpt import chip_speed


def match_lines(events):
    """The insn plugin's `match` output for (address, instructions since the last match) events on one CPU."""
    return "".join(f"0x{address:x}, 'ufloat.s\tf8, a12, 0', 1 hits, {i} match hits, \u0394+{delta} since last match, "
                   f"{delta} avg insns/match\n" for i, (address, delta) in enumerate(events, 1))


def test_marks_sum_the_deltas_into_the_cpus_count():
    log = "Adding SPI flash device\n" + match_lines([(0x400fdaf3, 1000), (0x4009cfaf, 500), (0x4009cfaf, 250)])
    log += "cpu 0 insns: 5\ncpu 1 insns: 9999\n"
    assert chip_speed.marks(log) == [(0x400fdaf3, 1000), (0x4009cfaf, 1500), (0x4009cfaf, 1750)]


def test_marks_refuse_counts_of_two_cpus():
    log = match_lines([(0x10, 5), (0x10, 7)]).replace(" 2 match hits", " 1 match hits")
    with pytest.raises(RuntimeError, match="more than one CPU"):
        chip_speed.marks(log)


def test_per_step_counts_between_the_first_and_last_mark_of_the_once_a_step_address():
    # Boot's marks elsewhere, 4 steps of 400,000 instructions marked at 0x20, one execution QEMU
    # reported twice (120 instructions apart), the run's end elsewhere.
    found = [(0x10, 100_000), (0x10, 300_000), (0x20, 1_000_000), (0x20, 1_400_000), (0x20, 1_400_120),
             (0x20, 1_800_000), (0x20, 2_200_000), (0x10, 9_000_000)]
    assert chip_speed.per_step_between_marks(found, 4) == 400_000


def test_per_step_needs_an_address_marked_once_a_step():
    with pytest.raises(RuntimeError, match="ran once per step"):
        chip_speed.per_step_between_marks([(0x10, 100), (0x10, 200_000)], 3)


def test_uart_bytes_count_start_through_end_with_line_ends():
    log = b"ets Jul 29 2019\r\nMGPT start v=2\r\nMGPT step n=1 loss=AAAA\r\nMGPT end steps=1\r\n>>> \r\n"
    assert chip_speed.uart_bytes(log) == len(b"MGPT start v=2\r\nMGPT step n=1 loss=AAAA\r\nMGPT end steps=1\r\n")


def test_board_time_is_instructions_at_240_mhz_plus_the_uart_at_115200_baud():
    assert chip_speed.board_seconds(240_000, 0) == pytest.approx(1.0)
    assert chip_speed.board_seconds(0, 11.52) == pytest.approx(1.0)
