"""Drive an engine: its UART goes to disk as it streams, through the parser, and to the terminal.

The log is flushed line by line, so whatever arrived survives a crash, a Ctrl-C or an engine
error; the report says why the run stopped.
"""
from pathlib import Path

from .chip import WEIGHTS, check_weights
from .errors import MicrogptError
from .fileio import write_atomic
from .report import Report
from .uart import UartParser


INTERRUPTED = "interrupted (Ctrl-C)"


def run(engine, log_path, display=None, expect_steps=None, keep_weights=None):
    """Prepare `engine` and run it until the trainer ends or fails; return its Report.

    `display`: shown each line and its records (`show(line, records)`, `close()`), e.g. the
    terminal's progress. `expect_steps`: the steps asked for; a chip that starts another run
    (stale image) is stopped at once and reported as an error. `keep_weights`: where the trained
    weights go, read back from the target, when the run succeeds (report.weights).
    """
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    parser = UartParser(expect_steps)
    engine_error = None
    try:
        with open(log_path, "wb") as log:
            engine.prepare()
            for line in engine.lines():
                log.write(line + b"\n")
                log.flush()
                records = parser.feed(line)
                if display:
                    display.show(line, records)
                if parser.finished:
                    break
    except MicrogptError as e:
        engine_error = str(e)
    except KeyboardInterrupt:
        engine_error = INTERRUPTED
    finally:
        engine.stop()
        if display:
            display.close()
    try:
        report = Report.of(parser.state(), engine.name, str(log_path), engine_error)
        if keep_weights and report.status == "ok":
            report.weights = _keep(engine, Path(keep_weights))
    finally:
        engine.close()
    return report


def _keep(engine, out: Path) -> str | None:
    """The trained weights, read back from the target into `out` (whole or not at all)."""
    data = engine.read_file(WEIGHTS)
    if data is None:
        return None
    check_weights(data, f"from the {engine.name} run")
    return str(write_atomic(out, data))


