"""The run pipeline: a run directory claimed, the payload built once for the engine's target and
placed, the UART on disk as it streams and through the parser, then the weights read back and the
report written. One path for every engine (`sim run`, `device run`, and their `--resume`).

    with RunDir(report).claim(overwrite=False) as rundir:
        engine = QemuEngine(rundir.work, ...)
        report = run(engine, rundir, options, docs)

Every file of a run is named after its report (`<stem>.json`): the loss curve `<stem>.png`, the
UART log `<stem>.uart.log`, the weights `<stem>.weights.bin`, and the working directory
`<stem>.work/` (the engine's flash and what a resumed run needs), removed when the run succeeds.
A report path that holds an earlier run is refused unless told to replace it; one in use by a
running run is refused always.
"""
import contextlib
import json
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

from . import payload as payloads
from .chip import WEIGHTS, read_weights
from .errors import MicrogptError, OutputError
from .fileio import output_error, write_atomic
from .report import Report, diagnose, plot_losses
from .uart import UartParser

try:
    import fcntl
except ImportError:  # Windows: runs are kept apart by their work directories alone
    fcntl = None

RECORD = "run.json"  # in the work directory: what a resumed run needs
INTERRUPTS = ("SIGINT", "SIGTERM", "SIGHUP")


class Interrupted(BaseException):
    """A signal ended the run: the report is still written."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class RunDir:
    """The files of one run, named after its report."""

    def __init__(self, report: Path):
        report = Path(os.path.abspath(report))
        try:
            str(report).encode("utf-8")
        except UnicodeEncodeError:
            raise OutputError(f"{os.fsdecode(report)!r}: the report's path must be UTF-8 text (report.json records "
                              "its paths): name another --report") from None
        if report.suffix != ".json":
            raise OutputError(f"{report}: the report is JSON, and its UART log, loss curve and weights go beside it: "
                              "name the report .json")
        self.report = report
        stem = report.with_suffix("")
        self.loss_curve = stem.with_name(stem.name + ".png")
        self.uart_log = stem.with_name(stem.name + ".uart.log")
        self.weights = stem.with_name(f"{stem.name}.{WEIGHTS}")
        self.work = stem.with_name(stem.name + ".work")
        self._lock = None
        self._made_parent = False  # RunDir.new made the directory: a run that never starts removes it

    @classmethod
    def new(cls, engine: str, root: Path = Path("runs")) -> "RunDir":
        """report.json in a new directory runs/<engine>-<time>[-N] (mkdir is atomic: two runs
        started in the same second get two directories)."""
        stamp, n = f"{engine}-{time.strftime('%Y%m%d-%H%M%S')}", 1
        while True:
            directory = root / (stamp if n == 1 else f"{stamp}-{n}")
            try:
                directory.mkdir(parents=True)
                rundir = cls(directory / "report.json")
                rundir._made_parent = True
                return rundir
            except FileExistsError:
                n += 1
            except OSError as e:
                raise OutputError(f"{output_error(e, directory)}; or name a report with --report DIR/report.json"
                                  ) from None

    @property
    def outputs(self) -> tuple[Path, ...]:
        return self.report, self.loss_curve, self.uart_log, self.weights

    @contextlib.contextmanager
    def claim(self, *, overwrite: bool = False, resume: bool = False):
        """Hold the run's files for this process: refused when another run holds them; when an
        earlier run's files are there (unless `overwrite` replaces them or `resume` continues
        it); when the directory cannot be written. A claim that ends in an exception before the
        run started leaves nothing behind; whatever it removes, it removes while it holds the lock,
        and never what another run holds."""
        made_parent = self._made_parent or not self.report.parent.exists()
        try:
            self.report.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.report.parent):
                pass  # a read-only or full directory is refused now, not after the run
            self._lock, made_work = self._lock_work()
        except OSError as e:
            raise output_error(e, self.report.parent) from None
        try:
            self._check(overwrite, resume)
        except BaseException:
            self._discard(made_work, made_parent)
            self.release()
            raise
        try:
            yield self
        except BaseException:
            if not self.report.exists():  # no report of this run: leave no trace of it
                self.uart_log.unlink(missing_ok=True)
                self._discard(made_work, made_parent)
            raise
        finally:
            self.release()

    def _lock_work(self):
        """The work directory's lock, held, and whether the directory held nothing else (no
        earlier run's state). A lock file that a finishing or refused run removed while this one
        waited for it is no longer the lock: this one then takes the file that is there now."""
        while True:
            self.work.mkdir(parents=True, exist_ok=True)
            lock = open(self.work / "lock", "a+")
            if fcntl is None:
                break
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.close()
                raise OutputError(f"{self.report} is in use by another run: wait for it to end, or name "
                                  "another --report") from None
            with contextlib.suppress(FileNotFoundError):
                if os.path.samestat(os.fstat(lock.fileno()), os.stat(self.work / "lock")):
                    break
            lock.close()
        return lock, {p.name for p in self.work.iterdir()} == {"lock"}

    def _check(self, overwrite: bool, resume: bool) -> None:
        earlier = [p.name for p in self.outputs if p.exists()]
        if (self.work / RECORD).exists():
            earlier.append(self.work.name)
        if resume:
            if not (self.work / RECORD).is_file():
                raise OutputError(f"{self.report} has no run to resume ({self.work.name}/{RECORD} is missing: "
                                  "a run keeps it only when it did not finish)")
        elif earlier and not overwrite:
            raise OutputError(f"{self.report} belongs to an earlier run ({', '.join(earlier)} in {self.report.parent}): "
                              "name another --report, --overwrite to replace it, or --resume to continue it if it was cut")
        elif earlier:
            for path in self.outputs:
                path.unlink(missing_ok=True)
            for path in self.work.iterdir():
                if path.name != "lock":
                    shutil.rmtree(path) if path.is_dir() else path.unlink()

    def _discard(self, made_work: bool, made_parent: bool) -> None:
        if made_work:
            shutil.rmtree(self.work, ignore_errors=True)
        if made_parent:
            with contextlib.suppress(OSError):  # not empty: another run is starting in it
                self.report.parent.rmdir()

    def write_record(self, record: dict) -> None:
        write_atomic(self.work / RECORD, json.dumps(record, indent=2).encode())

    def record(self) -> dict:
        return json.loads((self.work / RECORD).read_text())

    def release(self, finished: bool = False) -> None:
        """Let go of the claim; a finished run's work directory goes (nothing there to resume),
        while the claim still holds it."""
        if finished:
            shutil.rmtree(self.work, ignore_errors=True)
        if self._lock:
            self._lock.close()
            self._lock = None


@contextlib.contextmanager
def interruptible():
    """SIGINT, SIGTERM and SIGHUP raise Interrupted in the main thread, so that whatever runs ends
    as after Ctrl-C (a run still writes its report; a virtual board is powered off)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise Interrupted(signum)

    names = [name for name in INTERRUPTS if hasattr(signal, name)]
    before = {name: signal.signal(getattr(signal, name), interrupt) for name in names}
    try:
        yield
    finally:
        for name, handler in before.items():
            signal.signal(getattr(signal, name), handler)


def run(engine, rundir: RunDir, options: payloads.RunOptions | None = None, docs: list[str] | None = None, *,
        display=None) -> Report:
    """Run `engine` into `rundir` and return the report written there. With `options` and `docs`
    a new run: its payload is built for the engine's target and placed. Without, the run in
    rundir's work directory resumes from the engine's flash: the UART log is appended to and
    the report covers the whole run. `display` is shown each line and its records
    (`show(line, records)`, `close()`), e.g. the terminal's progress."""
    resume = options is None
    steps = rundir.record()["steps"] if resume else options.steps
    parser = UartParser(steps)
    engine_error = interrupted = None
    try:
        with interruptible():
            try:
                if resume:
                    with open(rundir.uart_log, "rb") as earlier:
                        for line in earlier:
                            parser.feed(line.rstrip(b"\n"))
                with open(rundir.uart_log, "ab" if resume else "wb") as log:
                    if not resume:
                        engine.place(payloads.build(options, docs, engine.target()))
                        rundir.write_record({"engine": engine.name, "settings": engine.settings(), "steps": steps})
                    for line in engine.lines():
                        log.write(line + b"\n")
                        log.flush()
                        records = parser.feed(line)
                        if display:
                            display.show(line, records)
                        if parser.finished:
                            break
            except OutputError:
                raise  # the host's own disk: nothing ran, and the claim leaves nothing behind
            except MicrogptError as e:
                engine_error = str(e)
            except KeyboardInterrupt:
                interrupted = "SIGINT"
            except Interrupted as e:
                interrupted = str(e)
            finally:
                engine.stop()
                if display:
                    display.close()
    finally:
        engine.close()
    if interrupted:
        engine_error = f"interrupted ({interrupted})"
    state = parser.state()
    failure = diagnose(state, rundir.uart_log, engine_error)
    weights = None
    if failure is None:
        try:
            weights = _keep_weights(engine, rundir.weights)
        except MicrogptError as e:
            failure = f"the run ended, but its weights could not be read back: {e}"
    title = f"microgpt on {engine.name}: {state.steps} steps" + (" (error)" if failure else "")
    png = plot_losses(state.losses, title, (state.val or {}).get("loss"))
    if png is not None:
        write_atomic(rundir.loss_curve, png)
    report = Report(engine.name, failure, interrupted, state, str(rundir.uart_log),
                    None if weights is None else str(weights), None if png is None else str(rundir.loss_curve))
    report.write(rundir.report)
    rundir.release(finished=failure is None)
    return report


def _keep_weights(engine, out: Path) -> Path | None:
    """The trained weights, read back from the target into `out` (whole or not at all)."""
    data = engine.read_file(WEIGHTS)
    if data is None:
        return None
    read_weights(data, f"from the {engine.name} run")
    return write_atomic(out, data)
