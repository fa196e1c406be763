"""The one parser of the trainer's UART (docs/uart-protocol.md): raw lines in, a RunState out
(microgpt.report turns it into the report).

Whatever the engine, the wire carries more than the protocol: ROM bootloader chatter, the
MicroPython banner, records cut short by a reset, bytes garbled in transit. The parser keeps
every `MGPT` record it can use, counts those it cannot (`bad_records`) and never raises, so a
damaged log still yields a report that says what went wrong.
"""
import base64
import dataclasses
import re
import struct

from .chip import KNOBS, Shape
from .errors import MicrogptError
from .payload import MAX_STEPS

TAG = "MGPT "
RESET_LOOP_BOOTS = 3  # boots in a row without reaching a new step: the chip is in a reset loop

_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|nan|inf)")
_LINE_BREAK = re.compile(r"\r\n?|\n")  # a lone \r ends a line too, as on a terminal
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")


def _int(s):
    if not _INT.fullmatch(s):
        raise ValueError(s)
    return int(s)  # ValueError too for absurdly long digit strings


def _float(s):
    if not _FLOAT.fullmatch(s):
        raise ValueError(s)
    return float(s)


def _num(s):
    return _int(s) if _INT.fullmatch(s) else _float(s)


def _losses(s):
    """The step record's losses: little-endian float32 bytes in base64, exact to the chip's float."""
    if len(s) % 4 or not _BASE64.fullmatch(s):
        raise ValueError(s)
    raw = base64.b64decode(s)
    if not raw or len(raw) % 4:
        raise ValueError(s)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def _value(s):
    """A field the parser does not need by name (start's config): its most natural type."""
    if s == "none":
        return None
    try:
        return _num(s)
    except ValueError:
        return s


def _shape(s):
    """The start's shape: n_embd,n_head,n_layer,block_size."""
    knobs = s.split(",")
    if len(knobs) != len(KNOBS) or not all(k.isdigit() for k in knobs):
        raise ValueError(s)
    try:
        return Shape(*map(int, knobs))
    except MicrogptError:
        raise ValueError(s) from None


# Required fields of each key=value record, with their types; other fields are kept as _value,
# but those of OPTIONAL, which have their own types.
FIELDS = {
    "start": {"params": _int, "steps": _int},
    "resume": {"step": _int},
    "ckpt-bad": {"reason": str},
    "step": {"n": _int, "loss": _losses, "ms": _num, "heap": _int},
    "ckpt": {"step": _int},
    "val": {"loss": _float, "names": _int, "tokens": _int},
    "end": {"steps": _int, "ms_train": _num, "ms_per_step": _num, "peak_heap": _int, "heap_total": _int},
}
OPTIONAL = {"start": {"shape": _shape}}  # a trainer before shapes sent none: microgpt.py's
TEXT_RECORDS = ("sample", "error", "tb")  # free text as the rest of the line


def _fields(kind, rest):
    required = FIELDS[kind]
    fields = {}
    for token in rest.split():
        key, eq, value = token.partition("=")
        if not key or not eq:
            raise ValueError(token)  # typically a line cut short
        fields[key] = (required.get(key) or OPTIONAL.get(kind, {}).get(key, _value))(value)
    if required.keys() - fields.keys():
        raise ValueError("missing fields")
    return fields


class UartParser:
    """Feed it UART lines as they arrive; ask for `report()` at any time.

    `expect_steps` and `log_every`: the run's, as its payload decided them (None: a log read
    alone). A chip running another number of steps (a stale image or filesystem) is an error,
    found at its start line; a step record of more than log_every losses (the start record's
    when none is given) is garbled.
    """

    def __init__(self, expect_steps=None, log_every=None):
        self.expect_steps, self.log_every = expect_steps, log_every
        self.bad_records = 0  # MGPT records malformed or out of place
        self.boots = 0  # start records
        self.config = {}  # fields of the last start record
        self.resumed_from = None
        self.checkpoints = []
        self.checkpoints_rejected = []
        self._losses = {}  # step -> loss, for the run the last boot continues
        self._keep = None  # after a start: steps kept when that boot's first step arrives
        self._high = 0  # highest step ever reached: passing it is progress
        self._stalled = 0  # boots since the last progress
        self._booted = False  # a boot began: ROM reset line or start record
        self._started = False  # the current boot printed its start
        self._ms_sum, self._ms_steps = 0.0, 0  # the chip's ms per step, summed over steps
        self._step_heap = None  # largest heap of step records
        self._new_outcome()

    def _boot(self):
        """A new boot: ROM reset line, or a start record after another start."""
        self._booted, self._started = True, False
        self._stalled += 1
        self._new_outcome()

    def _new_outcome(self):
        self._end = None
        self._error = None  # (text, traceback lines)
        self._error_done = False  # a line other than tb followed the error
        self._samples = {}
        self._val = None

    @property
    def finished(self):
        """Nothing more worth waiting for: the run ended, failed, or the chip keeps resetting."""
        return (self._end is not None or self._error_done or self._stalled >= RESET_LOOP_BOOTS
                or self._stale())

    def _stale(self):
        return bool(self.config) and self.expect_steps is not None and self.config["steps"] != self.expect_steps

    def feed(self, line):
        """Take one raw UART line (bytes or str); return the records it held as (kind, value)."""
        if not isinstance(line, str):
            line = bytes(line).decode("utf-8", "replace")
        records = []
        for piece in _LINE_BREAK.split(line):
            if TAG in piece:
                for text in piece.split(TAG)[1:]:  # garbage before a tag is dropped
                    record = self._record(text)
                    if record:
                        records.append(record)
            elif piece:
                self._noise(piece)
        return records

    def _noise(self, piece):
        if self._error:
            self._error_done = True
        if "rst:0x" in piece:  # the ROM's reset reason: every real boot prints one
            self._boot()

    def _record(self, text):
        kind, _, rest = text.partition(" ")
        if self._error and kind != "tb":
            self._error_done = True
        try:
            if kind not in FIELDS and kind not in TEXT_RECORDS:
                raise ValueError(kind)
            value = rest if kind in TEXT_RECORDS else _fields(kind, rest)
            getattr(self, "_on_" + kind.replace("-", "_"))(value)
        except ValueError:  # bad kind, number, field or place
            self.bad_records += 1
            return None
        return kind, value

    # One handler per record: validate first, then change state, so a bad record changes nothing.

    def _on_start(self, f):
        if not 0 <= f["steps"] <= MAX_STEPS:  # garbage: it would also make the loss list absurd
            raise ValueError("steps")
        if self._started or not self._booted:
            self._boot()  # no ROM reset line before it (VM, or the host missed it)
        self._started = True
        self.boots += 1
        self.config = f
        self._keep = 0

    def _on_resume(self, f):
        if not self._started or not 0 <= f["step"] <= self.config["steps"]:
            raise ValueError("resume")
        self._keep = self.resumed_from = f["step"]

    def _on_ckpt_bad(self, f):
        self.checkpoints_rejected.append(f["reason"])

    def _on_ckpt(self, f):
        self.checkpoints.append(f["step"])

    def _on_step(self, f):
        n, losses = f["n"], f["loss"]
        group = self.log_every or self.config.get("log_every")
        if (not self.config or not len(losses) <= n <= self.config["steps"]
                or isinstance(group, int) and 0 < group < len(losses)):
            raise ValueError("step")
        if self._keep is not None:  # this boot's first step: its run continues from _keep
            self._losses = {s: v for s, v in self._losses.items() if s <= self._keep}
            self._keep = None
        for s, loss in enumerate(losses, n - len(losses) + 1):
            self._losses[s] = loss
        if n > self._high:
            self._high, self._stalled = n, 0
        self._ms_sum += f["ms"] * len(losses)
        self._ms_steps += len(losses)
        self._step_heap = f["heap"] if self._step_heap is None else max(f["heap"], self._step_heap)

    def _on_val(self, f):
        if (not self._started or not 1 <= f["names"] <= self.config.get("val", f["names"])
                or f["tokens"] < f["names"]):
            raise ValueError("val")
        self._val = f

    def _on_sample(self, rest):
        index, _, name = rest.partition(" ")
        self._samples[_int(index)] = name

    def _on_end(self, f):
        if not self.config or not 0 <= f["steps"] <= self.config["steps"]:
            raise ValueError("end")
        self._end = f

    def _on_error(self, text):
        self._error = (text.strip(), [])
        self._error_done = False

    def _on_tb(self, line):
        if not self._error or self._error_done:
            raise ValueError("tb without error")
        self._error[1].append(line.strip())

    def state(self):
        """What the UART told so far, as a RunState."""
        end = self._end or {}
        steps = end.get("steps", max(self._losses, default=0))
        return RunState(
            config=dict(self.config),
            steps=steps,
            losses=[self._losses.get(s) for s in range(1, steps + 1)],
            samples=[self._samples[i] for i in sorted(self._samples)],
            val=dict(self._val) if self._val is not None else None,
            end=dict(self._end) if self._end is not None else None,
            error=self._error[0] if self._error else None,
            traceback=list(self._error[1]) if self._error else [],
            ms_per_step=end.get("ms_per_step", self._ms_sum / self._ms_steps if self._ms_steps else None),
            step_heap=self._step_heap,
            boots=self.boots,
            boots_without_progress=self._stalled,
            reset_loop=self._stalled >= RESET_LOOP_BOOTS,
            stale=self._stale(),
            expect_steps=self.expect_steps,
            resumed_from=self.resumed_from,
            checkpoints=list(self.checkpoints),
            checkpoints_rejected=list(self.checkpoints_rejected),
            bad_records=self.bad_records,
        )


@dataclasses.dataclass(frozen=True)
class RunState:
    """What the trainer's records said: the run the chip's last boot continued."""
    config: dict                  # fields of the last start record ({} before one)
    steps: int                    # steps done: the end record's, else the highest step seen
    losses: list                  # loss of steps 1..steps (None where a record was lost)
    samples: list
    val: dict | None              # fields of the val record (the held-out loss), None if none came
    end: dict | None              # fields of the end record, None if none came
    error: str | None             # the chip's MGPT error text
    traceback: list
    ms_per_step: float | None
    step_heap: int | None         # largest heap of the step records
    boots: int
    boots_without_progress: int
    reset_loop: bool              # RESET_LOOP_BOOTS boots without reaching a new step
    stale: bool                   # the chip runs another configuration than was asked
    expect_steps: int | None
    resumed_from: int | None
    checkpoints: list
    checkpoints_rejected: list
    bad_records: int

