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
import dataclasses
import json
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

from . import payload as payloads
from .chip import CKPT, WEIGHTS, checkpoint_step, read_weights
from .errors import BuildError, MicrogptError, OutputError, PlanError
from .fileio import output_error, refuse_existing, write_atomic
from .report import Report, diagnose, plot_losses
from .uart import UartParser

try:
    import fcntl
except ImportError:  # Windows: runs are kept apart by their work directories alone
    fcntl = None

RECORD = "run.json"  # in the work directory: what a resumed run needs
LOCK = "lock"  # in the work directory: held by the run using it, and the mark that this tool made it
INTERRUPTS = ("SIGINT", "SIGTERM", "SIGHUP")
_log = logging.getLogger(__name__)


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
        self._replace = self._started = False  # the claim's overwrite, and whether the run writes yet

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

    @classmethod
    def cut_in(cls, directory: Path) -> "RunDir":
        """The cut run in `directory` (its work directory holds what a resumed run needs),
        whatever its report is called; report.json's when there is none."""
        cut = sorted(work for work in Path(directory).glob("*.work") if (work / RECORD).is_file())
        if len(cut) > 1:
            reports = ", ".join(work.with_suffix(".json").name for work in cut)
            raise OutputError(f"{directory} holds {len(cut)} cut runs ({reports}): name one, e.g. --resume "
                              f"{cut[0].with_suffix('.json')}")
        return cls(cut[0].with_suffix(".json") if cut else Path(directory) / "report.json")

    @property
    def outputs(self) -> tuple[Path, ...]:
        return self.report, self.loss_curve, self.uart_log, self.weights

    @contextlib.contextmanager
    def claim(self, *, overwrite: bool = False, resume: bool = False):
        """Hold the run's files for this process: refused when another run holds them; when an
        earlier run's files are there (unless `overwrite` replaces them, once the run starts, or
        `resume` continues it); when the directory cannot be written; when a work directory is
        there that this tool did not make. A claim that ends in an exception (a signal too)
        before the run started leaves nothing behind; whatever it removes, it removes while it
        holds the lock, and never what another run holds."""
        made_parent = self._made_parent or not self.report.parent.exists()
        self._replace, self._started = overwrite and not resume, False
        with interruptible():  # SIGTERM and SIGHUP too end the claim through its clean-up
            held = _hold_signals()  # taken whole or not at all: a signal waits until the claim stands
            try:
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
            except BaseException:
                _release_signals(held)
                raise
            try:
                _release_signals(held)  # a signal that came meanwhile arrives here, and is cleaned up after
                yield self
            except BaseException:
                if not (self._started and self.report.exists()):  # no report of this run: leave no trace of it
                    if self._started:
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
            self._refuse_foreign_work()
            self.work.mkdir(parents=True, exist_ok=True)
            lock = open(self.work / LOCK, "a+")
            if fcntl is None:
                break
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.close()
                raise OutputError(f"{self.report} is in use by another run: wait for it to end, or name "
                                  "another --report") from None
            with contextlib.suppress(FileNotFoundError):
                if os.path.samestat(os.fstat(lock.fileno()), os.stat(self.work / LOCK)):
                    break
            lock.close()
        return lock, {p.name for p in self.work.iterdir()} == {LOCK}

    def _refuse_foreign_work(self) -> None:
        """Only a work directory this tool made (its lock inside; or empty: one a run is making
        now) is reused or removed; a symlink is never followed."""
        if not os.path.lexists(self.work):
            return
        if self.work.is_symlink() or not self.work.is_dir():
            what = "a symlink" if self.work.is_symlink() else "not a directory"
            raise OutputError(f"{self.work} is {what}, not a work directory this tool made: move it away, or "
                              "name another --report")
        names = os.listdir(self.work)
        if names and LOCK not in names:
            raise OutputError(f"{self.work} is a directory this tool did not make (no {LOCK} in it): move it "
                              "away, or name another --report")

    def _check(self, overwrite: bool, resume: bool) -> None:
        work = [self.work] if (self.work / RECORD).exists() else []
        if resume:
            if not (self.work / RECORD).is_file():
                raise OutputError(f"{self.report} has no run to resume ({self.work.name}/{RECORD} is missing: "
                                  "a run keeps it only when it did not finish)")
        else:
            refuse_existing([*self.outputs, *work], overwrite, f"{self.report} belongs to an earlier run",
                            "name another --report, --overwrite to replace it, or --resume to continue it if it was cut")

    def start(self) -> None:
        """The run starts writing: the earlier run's files that `overwrite` replaces go now (not
        at the claim: a run refused before it starts loses nothing)."""
        if self._replace:
            for path in self.outputs:
                path.unlink(missing_ok=True)
            self._clear_work()
        self._started = True

    def _clear_work(self) -> None:
        for path in self.work.iterdir():
            if path.name != LOCK:
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()

    def _remove_work(self) -> None:
        """The work directory removed, its lock last: no other claim sees its files without it."""
        with contextlib.suppress(OSError):
            self._clear_work()
            (self.work / LOCK).unlink(missing_ok=True)
            self.work.rmdir()

    def _discard(self, made_work: bool, made_parent: bool) -> None:
        if made_work:
            self._remove_work()
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
            self._remove_work()
        if self._lock:
            self._lock.close()
            self._lock = None


def _hold_signals():
    """Hold the interrupting signals back (where the OS can); returns what to pass to _release_signals."""
    if not hasattr(signal, "pthread_sigmask"):
        return None
    return signal.pthread_sigmask(signal.SIG_BLOCK, [getattr(signal, name) for name in INTERRUPTS])


def _release_signals(held) -> None:
    if held is not None:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


@contextlib.contextmanager
def interruptible():
    """SIGINT, SIGTERM and SIGHUP raise Interrupted in the main thread, so that whatever runs ends
    as after Ctrl-C (a run still writes its report; a virtual board is powered off). A signal
    ignored when the tool started stays ignored: `nohup` ignores SIGHUP, and a shell starts a
    background job with SIGINT ignored, so that neither a closed terminal nor Ctrl-C ends it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise Interrupted(signum)

    names = [name for name in INTERRUPTS
             if hasattr(signal, name) and signal.getsignal(getattr(signal, name)) is not signal.SIG_IGN]
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
    engine_error = interrupted = None
    started_over = False  # a resumed run with no checkpoint to resume from
    try:
        with interruptible():
            unreached = placed = None
            try:  # options the target cannot run are refused before anything is written: no report
                placed = None if resume else payloads.build(options, docs, engine.target(), engine.platform())
            except (OutputError, BuildError, PlanError):
                raise
            except MicrogptError as e:
                unreached = e  # the target did not answer: reported below, as any engine failure
            # The parser expects what the payload decided (a resumed run's: what its record kept of it).
            expect = rundir.record() if resume else dataclasses.asdict(placed.options) if placed else {}
            parser = UartParser(expect.get("steps"), expect.get("log_every"))
            rundir.start()
            try:
                if resume:
                    with open(rundir.uart_log, "rb") as earlier:
                        for line in earlier:
                            parser.feed(line.rstrip(b"\n"))
                    started_over = not parser.checkpoints
                    if started_over:
                        _log.warning(f"{rundir.report}: the run wrote no checkpoint (it ran without --ckpt-every, "
                                    "or was cut before its first): it starts again from step 1")
                with open(rundir.uart_log, "ab" if resume else "wb") as log:
                    if unreached:
                        raise unreached
                    if not resume:
                        engine.place(placed)
                        rundir.write_record({"engine": engine.name, "settings": engine.settings(),
                                             "steps": parser.expect_steps, "log_every": parser.log_every})
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
    if started_over and state.resumed_from is None:
        state = dataclasses.replace(state, resumed_from=0)  # the report says so too: resumed from step 0
    failure = diagnose(state, rundir.uart_log, engine_error)
    weights = resume_step = None
    if failure is None:
        try:
            weights = _keep_weights(engine, rundir.weights)
        except MicrogptError as e:
            failure = f"the run ended, but its weights could not be read back: {e}"
    elif state.checkpoints or state.config.get("ckpt_every"):
        resume_step = _held_checkpoint(engine)
    title = f"microgpt on {engine.name}: {state.steps} steps" + (" (error)" if failure else "")
    png = plot_losses(state.losses, title, (state.val or {}).get("loss"))
    if png is not None:
        write_atomic(rundir.loss_curve, png)
    report = Report(engine.name, failure, interrupted, state, str(rundir.uart_log),
                    None if weights is None else str(weights), None if png is None else str(rundir.loss_curve),
                    resume_step)
    report.write(rundir.report)
    rundir.release(finished=failure is None)
    return report


def run_apart(make_engine, options: payloads.RunOptions, docs: list[str], report: Path | None = None):
    """One run for a script (benchmarks, measurements): `make_engine(workdir)` builds its engine, its
    files go beside `report` or, without one, to a directory removed after it. (the Report, the
    engine, the UART log)."""
    with tempfile.TemporaryDirectory() as tmp, RunDir(report or Path(tmp) / "report.json").claim() as rundir:
        engine = make_engine(rundir.work)
        return run(engine, rundir, options, docs), engine, rundir.uart_log.read_bytes()


def _held_checkpoint(engine) -> int | None:
    """The step of the checkpoint the target holds, which a resumed run continues from (the UART's
    last ckpt record is not that: a cut can lose it after the checkpoint was written); None where
    there is none, or it cannot be read (a board without power)."""
    try:
        return checkpoint_step(engine.read_file(CKPT))
    except MicrogptError:
        return None


def _keep_weights(engine, out: Path) -> Path | None:
    """The trained weights, read back from the target into `out` (whole or not at all)."""
    data = engine.read_file(WEIGHTS)
    if data is None:
        return None
    read_weights(data, f"{WEIGHTS} from the {engine.name} run")
    return write_atomic(out, data)
