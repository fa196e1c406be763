"""What the board commands do on a board a run has left (`device pull`, `device sample`), over
the raw REPL: read a file back from its filesystem, say which weights it holds, and sample names
from them with the trainer's own sampler (firmware/infer.py). The serial engine reads a run's
files back the same way."""
import ast
from collections.abc import Iterator

from . import chip
from .engines import split_lines
from .errors import EngineError, MissingFile
from .rawrepl import RawRepl

# The largest file a run leaves on a board to be read back: its checkpoint, three of the four arrays
# of one size (weights, gradient, Adam's m and v) that share the heap. Reading it may take its line
# time on top of the command's.
LARGEST_RUN_FILE = 3 * chip.ESP32_HEAP // 4
# What one name may take on the board, beyond the command's own time: up to block_size letters,
# each a forward pass, ~10 M instructions with the MicroPython kernels for microgpt.py's shape
# (a third of a 200 M step over ~7 letters; docs/measurements.md, "Speed"), so ~0.7 s at 240 MHz for 16 letters;
# 5 s covers the larger shapes that train and a slow emulator; the C kernels take milliseconds.
NAME_S = 5.0


# What the board's sampler (firmware/infer.py) says the weights it holds are; "no-sampler" where the
# board lacks the trainer's modules (the trainer's upload or image brings them).
_HELD = f"""
try:
    from infer import held
except ImportError:
    held = lambda weights, config: 'no-sampler'
print(repr(held({chip.WEIGHTS!r}, {chip.CONFIG!r})))
"""


def board_weights(repl: RawRepl) -> chip.Shape:
    """The shape of the weights.bin on the board, which must be its last run's. The board is
    soft-reset first (a clean heap, as after a boot), its files mounted for quick imports."""
    repl.soft_reset()
    repl.fast_flash()
    held = ast.literal_eval(repl.exec(_HELD).decode())
    if held in (None, "no-sampler"):
        what = f"no {chip.WEIGHTS}" if held is None else "no microgpt trainer (its infer.mpy)"
        raise MissingFile(f"there is {what} on the board: run `microgpt device run` first")
    head, size, trained = held
    shape, _ = chip.weights_shape(head, size, f"{chip.WEIGHTS} on the board")
    if shape != chip.Shape(*trained):
        raise EngineError(f"{chip.WEIGHTS} on the board is a model of {shape}, but the board's last run trained "
                          f"{chip.Shape(*trained)}: run `microgpt device run` again, so that both come from one run")
    return shape


def board_names(repl: RawRepl, count: int, seed: int, temperature: float, prefix: str,
                silence_s: float = 120.0) -> Iterator[str]:
    """`count` names sampled on the board from its weights.bin (firmware/infer.py), as they come:
    the host's `microgpt sample` gives the same for the same weights, seed, temperature and prefix."""
    repl.start(f"from infer import names\nnames({chip.CONFIG!r}, {chip.WEIGHTS!r}, {count:d}, {seed:d}, "
               f"{float(temperature)!r}, {prefix!r})")
    made, said = 0, []
    for line in split_lines(repl.read, silence_s):
        text = line.decode(errors="replace").rstrip("\r")
        if text.startswith("MGPT sample "):
            made += 1
            yield text.removeprefix("MGPT sample ").partition(" ")[2]
        elif text.strip():
            said.append(text.strip())
    if made < count:
        raise EngineError(f"the board stopped after {made} of {count} names: {said[-1] if said else 'it said nothing'}")


def read_board_file(port: str, baud: int, name: str) -> bytes:
    """A file from the board's filesystem, over the raw REPL (MissingFile if it has none)."""
    repl = RawRepl(port, baud)
    try:
        with repl.within(f"reading {name}", repl.line_s(LARGEST_RUN_FILE)):
            return repl.read_file(name)
    finally:
        repl.close()
