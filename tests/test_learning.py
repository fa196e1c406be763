"""scripts/learning.py's arithmetic: the bigram anchor against a hand count, a budget's steps
against chip_speed's board time, and the UART log split into step records and the rest."""
import importlib.util
import math

from conftest import ROOT

from microgpt import chip_speed

_spec = importlib.util.spec_from_file_location("learning", ROOT / "scripts" / "learning.py")
learning = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(learning)


def test_the_bigram_loss_is_the_hand_count_with_one_added_to_every_cell():
    # 27 tokens, every cell 1 to start. Counted from "ab" and "a": BOS→a twice, a→b once, a→BOS once,
    # b→BOS once. Rows: BOS 27 + 2 = 29 (a: 3), a 27 + 2 = 29 (b: 2), b 27 + 1 = 28 (BOS: 2).
    held_out = -(math.log(3 / 29) + math.log(2 / 29) + math.log(2 / 28)) / 3  # "ab": BOS→a, a→b, b→BOS
    assert math.isclose(learning.bigram_loss(["ab", "a"], ["ab"]), held_out, rel_tol=1e-12)
    # Cut to block_size 1, as the chip reads a name: only BOS→a of each name counts, and is scored.
    assert math.isclose(learning.bigram_loss(["ab", "a"], ["ab"], block_size=1), -math.log(3 / 29), rel_tol=1e-12)


def test_a_budgets_steps_are_the_most_whose_board_time_fits_it():
    per_step, step_bytes, other_bytes = 0.4475e6, 5.38, 612
    for budget in (10, 60, 300):
        steps = learning.steps_for(budget, per_step, step_bytes, other_bytes)

        def board(n):  # chip_speed's board time of n steps and all their bytes, and the slack kept spare
            return (chip_speed.board_seconds(per_step, (step_bytes * n + other_bytes) / n, n)
                    + learning.SLACK * chip_speed.BYTE_S)

        assert board(steps) <= budget < board(steps + 1)


def test_the_uart_log_splits_into_step_records_and_the_rest():
    log = (b"boot noise\nMGPT start v=2 steps=4\nMGPT step n=2 ms=1 heap=9 loss=AAAAAAAA\n"
           b"MGPT step n=4 ms=1 heap=9 loss=AAAAAAAA\nMGPT val loss=2.5 names=1\nMGPT sample 0 ab\nMGPT end steps=4\n")
    steps = learning.step_record_bytes(log)
    assert steps == 2 * len(b"MGPT step n=2 ms=1 heap=9 loss=AAAAAAAA\n")
    assert chip_speed.uart_bytes(log) - steps == len(b"MGPT start v=2 steps=4\nMGPT val loss=2.5 names=1\n"
                                                     b"MGPT sample 0 ab\nMGPT end steps=4\n")
