"""The terminal display of a run: UART lines echoed, step records drawn as one progress line."""
import collections
import math
import sys
import time

import click

from ..report import loss_window

BAR_WIDTH = 20


class Terminal:
    """UART lines echoed to stdout, except step records: those drive one progress line, redrawn
    in place on a terminal and printed every ~10% otherwise, so CI logs stay short."""

    def __init__(self):
        self.total = None  # steps of the run, from its start record
        self.tty = sys.stdout.isatty()
        self.drawn = 0  # length of the progress line on screen (tty), 0 when none is
        self.tenth = -1  # last tenth of the run printed (not a tty)
        self.recent = collections.deque(maxlen=1)  # the last losses, for their running mean
        self.first = None  # (step, time) of the first step record: the pace for the time left

    def show(self, line, records):
        steps = [value for kind, value in records if kind == "step"]
        for kind, value in records:
            if kind == "start":
                self.total, self.tenth, self.first = value["steps"], -1, None
                self.recent = collections.deque(maxlen=loss_window(self.total))
            elif kind == "step":
                self.recent.extend(x for x in value["loss"] if math.isfinite(x))
        if steps:
            self._progress(steps[-1])
        else:
            self._line(line.decode("utf-8", "replace").translate(_CONTROL))

    def _line(self, text):
        if self.drawn:
            click.echo()
            self.drawn = 0
        click.echo(text)

    def _progress(self, step):
        n, total = step["n"], self.total
        now = time.monotonic()
        if self.first is None or n <= self.first[0]:
            self.first = (n, now)
        if total:
            filled = round(BAR_WIDTH * min(n, total) / total)
            bar = f"step {n}/{total} ▕{'█' * filled}{'·' * (BAR_WIDTH - filled)}▏"
        else:
            bar = f"step {n}"
        mean = sum(self.recent) / len(self.recent) if self.recent else math.nan
        text = f"{bar} loss {mean:.2f} (mean of last {len(self.recent)})"
        if step["ms"] > 0:  # 0: faster than the chip's clock tells
            text += f"  {_ms(step['ms'])} ms/step"
        done, since = n - self.first[0], now - self.first[1]
        if total and done > 0 and n < total:
            text += f"  {_duration((total - n) * since / done)} left"
        if self.tty:
            click.echo("\r" + text.ljust(self.drawn), nl=False)
            self.drawn = len(text)
        else:
            tenth = 10 * n // total if total else n
            if tenth > self.tenth:
                self.tenth = tenth
                click.echo(text)

    def close(self):
        if self.drawn:
            click.echo()
            self.drawn = 0


def _ms(ms: float) -> str:
    """A step's time: tenths of a millisecond, or two figures below one (a VM's 0.03 ms is not 0.0)."""
    return f"{ms:.1f}" if ms >= 1 else f"{ms:.2g}"


def _duration(seconds: float) -> str:
    if seconds < 0.5:
        return "<1 s"  # not "0 s": the run is not over
    seconds = round(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds >= 60 else f"{seconds} s"


# Garbled bytes must not drive the terminal (escape sequences, carriage returns, bells).
_CONTROL = {c: "\ufffd" for c in [*range(32), 127] if c != 9} | {13: None}
