"""Drive an engine: its UART goes to disk as it streams, through the parser, and to the terminal.

The log is flushed line by line, so whatever arrived survives a crash, a Ctrl-C or an engine
error; the report says why the run stopped.
"""
import sys
from pathlib import Path

import click

from .engines import EngineError
from .uart import UartParser

BAR_WIDTH = 20


def run(engine, log_path, echo=True, expect_steps=None):
    """Run `engine` until the trainer ends or fails; return the parser's report dict.

    `expect_steps`: the steps asked for; a chip that starts another run (stale image) is
    stopped at once and reported as an error.
    """
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    parser = UartParser(expect_steps)
    terminal = _Terminal() if echo else None
    engine_error = None
    try:
        with open(log_path, "wb") as log:
            for line in engine.lines():
                log.write(line + b"\n")
                log.flush()
                records = parser.feed(line)
                if terminal:
                    terminal.show(line, records)
                if parser.finished:
                    break
    except EngineError as e:
        engine_error = str(e)
    except KeyboardInterrupt:
        engine_error = "interrupted (Ctrl-C)"
    finally:
        engine.close()
        if terminal:
            terminal.close()
    return parser.report(engine.name, str(log_path), engine_error)


class _Terminal:
    """UART lines echoed to stdout, except step records: those drive one progress line, redrawn
    in place on a terminal and printed every ~10% otherwise, so CI logs stay short."""

    def __init__(self):
        self.total = None  # steps of the run, from its start record
        self.tty = sys.stdout.isatty()
        self.drawn = 0  # length of the progress line on screen (tty), 0 when none is
        self.tenth = -1  # last tenth of the run printed (not a tty)

    def show(self, line, records):
        steps = [value for kind, value in records if kind == "step"]
        for kind, value in records:
            if kind == "start":
                self.total, self.tenth = value["steps"], -1
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
        if total:
            filled = round(BAR_WIDTH * min(n, total) / total)
            bar = f"step {n}/{total} ▕{'█' * filled}{'·' * (BAR_WIDTH - filled)}▏"
        else:
            bar = f"step {n}"
        text = f"{bar} loss {step['loss'][-1]:.2f}  {step['ms']:.1f} ms/step"
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


# Garbled bytes must not drive the terminal (escape sequences, carriage returns, bells).
_CONTROL = {c: "\ufffd" for c in [*range(32), 127] if c != 9} | {13: None}
