"""The heap a training run needs on the chip, for any shape, before anything is built.

The trainer's peak (firmware/train.py's peak_heap, report.json's peak_heap_bytes) is its arrays,
which follow from the shape, plus what does not: the modules' bytecode, their objects, the
interpreter's own. The arrays are counted as the firmware allocates them: the weights, their
gradient and Adam's m and v (array('f') of n_params each, allocated first), the C module's work
(cmodel.c's work_t, cmodel.WORK floats) or the MicroPython model's buffers (model.GPT), the names'
read buffer and the losses not yet reported. The rest is one constant per platform and kernels,
the measured peak of the default shape less its arrays. A run fits when the heap holds its peak
and the headroom the garbage collector was measured to need above it (the VM's smallest heap that
trains 1,000 steps and samples 20 names, less its peak), and when its big arrays find room in the
heap's areas: the chip's GC heap is not one block but areas (measured below), and an array must
lie in one of them. The weights and their gradient are whole-model arrays; Adam's m and v are one
array per piece of the layout for a model of more than one layer (firmware/adam.py: wte to
layer 0, then each further layer), which spread over the areas.
"""
import dataclasses
import functools

from .chip import DEFAULT, ESP32_HEAP, KNOBS, NAMES_BUFFER, VOCAB, Shape
from .errors import PlanError

KERNELS = ("c", "python")
TRAINING_ARRAYS = 4  # the weights, their gradient, Adam's m and v: four floats of every parameter
MEASURED_LOG_EVERY = 25  # the measured runs' steps per UART record (their default): the losses' buffer


@dataclasses.dataclass(frozen=True)
class Platform:
    """How a MicroPython port's GC heap holds an array: a header, and items rounded up to whole
    blocks (measured: gc.mem_alloc() around array('f', range(n)) for n = 4 ... 4,192)."""
    name: str
    heap: int  # the GC heap the trainer runs in
    block: int  # GC block, bytes
    array_head: int  # bytes an array object takes beside its items
    # report.json's peak_heap_bytes of the default shape (50 steps, every other option its default),
    # by kernels; the constant part of every prediction comes from these.
    measured: dict
    headroom: int  # free heap the collector needs at the peak (temporaries, fragmentation)
    areas: tuple  # the heap's areas, as free where the trainer allocates its big arrays: each lies in one

    def array(self, items: int, item_size: int = 4) -> int:
        """Heap bytes of an array of `items` items (array('f'): 4 bytes each; bytearray: 1)."""
        return self.array_head + -(-items * item_size // self.block) * self.block


# The VM (x64) at the chip's heap, its MicroPython kernels native: report.json's peak_heap_bytes
# of the default shape (`microgpt sim run --engine host --heap 166592 --steps 50 [--kernels python]`),
# and the smallest heap that trains 1,000 steps and samples 20 names (`scripts/bench.py --min-heap`).
VM_PEAK = {"c": 91_968, "python": 97_408}
VM_MIN_HEAP = {"c": 96_641, "python": 102_470}
# The collector's headroom, on the chip as in the VM: the most of (smallest heap - peak) over the kernels.
HEADROOM = max(VM_MIN_HEAP[k] - VM_PEAK[k] for k in KERNELS)
# The chip: ESP32_GENERIC v1.25.0, measured in Espressif's QEMU
# (`microgpt sim run --engine qemu --firmware FW --steps 50 [--kernels python]`).
# Its areas: at boot the GC heap is 56,000 B (`micropython.mem_info()`: "max new split:
# 110592"), and it grows by an area from ESP-IDF's heap. Where train.main allocates its big arrays
# the largest bytearray is 107,851 B, the next 33,104 B (the first area, which the trainer's
# modules share; 46,141 B after boot): probed in QEMU by bisecting bytearray sizes there. Measured
# in QEMU: with m and v whole-model arrays, 4 x 24.8 KB (n_embd 20, 6,200 parameters) train,
# 4 x 34.4 KB (n_embd 24, 8,592) end in a MemoryError allocating m or v (the weights found no room
# in the first area), and so did 4 x 29.1 KB (n_embd 16 with 2 layers, 7,264) before m and v went
# by layer for more than one layer (firmware/adam.py); with them by layer, 7,264 train.
ESP32 = Platform("ESP32_GENERIC v1.25.0", ESP32_HEAP, block=16, array_head=32,
                 measured={"c": 88_080, "python": 95_216}, headroom=HEADROOM, areas=(33_104, 107_851))
VM = Platform("the MicroPython VM (x64)", ESP32_HEAP, block=32, array_head=32,
              measured=VM_PEAK, headroom=HEADROOM, areas=(ESP32_HEAP,))  # one piece


def vm(heap: int, headroom: int = HEADROOM) -> Platform:
    """The VM with a GC heap of `heap` bytes (its --heap): one piece, so its largest area is all of
    it, and it holds shapes the chip's areas do not. The collector's headroom is asked of it as of
    the chip (it was measured there); scripts/bench.py --min-heap, which measures it, asks none."""
    return dataclasses.replace(VM, name="the MicroPython VM (x64, --heap)", heap=heap, areas=(heap,), headroom=headroom)


@functools.cache
def most(knob: str, heap: int = ESP32_HEAP) -> int:
    """The largest value of `knob` (one of chip.KNOBS) for which the smallest model that has it
    (every other knob at its least) holds its training arrays, 4 bytes a parameter each, in `heap`:
    past it no shape can train, so a larger value is absurd (the chip's heap: 863 layers)."""
    def smallest(value):
        knobs = dict.fromkeys(KNOBS, 1) | {knob: value}
        knobs["n_embd"] = max(knobs["n_embd"], knobs["n_head"])  # n_embd a multiple of n_head
        return Shape(**knobs)
    low, high = 1, heap // (TRAINING_ARRAYS * 4)  # each step of a knob adds at least one parameter
    while low < high:
        middle = (low + high + 1) // 2
        if TRAINING_ARRAYS * 4 * smallest(middle).n_params <= heap:
            low = middle
        else:
            high = middle - 1
    return low


def pieces(shape: Shape) -> list[tuple[str, int]]:
    """firmware/adam.py's pieces, (what, floats): Adam's m and v are an array of each (one for
    one layer: train.py's whole arrays)."""
    layer = 12 * shape.n_embd ** 2  # wq, wk, wv, wo, fc1, fc2
    first = shape.n_params - (shape.n_layer - 1) * layer  # wte, wpe, lm_head and layer 0
    return [("wte to layer 0", first)] + [(f"layer {i}", layer) for i in range(1, shape.n_layer)]


def work_floats(shape: Shape) -> int:
    """cmodel.c's work array in floats (its work_layout; cmodel.shape() returns it): each layer's
    keys and values for every position, the layer inputs above the first, one layer's key, value
    (and input) gradients, the position in progress (23 vectors of n_embd, the MLP's hidden layer
    and its gradient counting 4 each; the attention weights of every head and one head's
    gradient), and the logits, probabilities and their gradient. 1,553 for the default shape."""
    e, rows, layers = shape.n_embd, shape.block_size * shape.n_embd, shape.n_layer
    keys_values = 2 * layers * rows + (layers - 1) * rows  # every layer's keys and values; the inputs above the first
    their_grads = 2 * rows + (rows if layers > 1 else 0)  # one layer's at a time, and its input's
    position = 23 * e + shape.n_head * shape.block_size + shape.block_size  # the position in progress
    return keys_values + their_grads + position + 3 * VOCAB


def model_buffers(shape: Shape) -> list[int]:
    """The arrays model.GPT allocates (floats each): every layer's keys and values, one layer's
    gradients at them, with more than one layer the inputs above the first and one layer's
    gradient at them; the position in progress (14 vectors of n_embd, the attention weights of
    every head and one head's gradient, the MLP's hidden layer and its gradient); the logits and
    their gradient."""
    e, b, layers = shape.n_embd, shape.block_size, shape.n_layer
    rows = b * e
    per_name = [layers * rows, layers * rows, rows, rows] + ([(layers - 1) * rows, rows] if layers > 1 else [])
    position = [e] * 14 + [shape.n_head * b, b, 4 * e, 4 * e]
    return [VOCAB, VOCAB] + per_name + position


@dataclasses.dataclass(frozen=True)
class Plan:
    shape: Shape
    kernels: str
    platform: Platform
    buffers: list  # (what, bytes), the arrays of the training loop
    overhead: int  # code, objects and the interpreter: measured, the same for every shape

    @property
    def peak(self) -> int:
        return sum(size for _, size in self.buffers) + self.overhead

    @property
    def heap_needed(self) -> int:
        """The smallest heap that trains it: its peak and the collector's headroom."""
        return self.peak + self.platform.headroom

    @property
    def spare(self) -> int:
        """Heap left beside the peak and the collector's headroom (negative: short by that much)."""
        return self.platform.heap - self.heap_needed

    @property
    def placement(self) -> list[list[str]] | None:
        """What goes into each of the heap's areas, in the trainer's order (train.main), first-fit:
        the weights and their gradient, then Adam's m and v by piece; None when an array finds no
        area with room. The rest of the run (modules, their objects, the small buffers) is many
        small objects that fill the gaps: the heap's total (spare) counts them. Measured: this
        gives the chip's verdicts for the shapes in tests/test_planner.py."""
        room, placed = list(self.platform.areas), [[] for _ in self.platform.areas]
        for what, size in self.buffers:
            if what.startswith(("weights", "gradients", "Adam")):
                area = next((i for i, free in enumerate(room) if size <= free), None)
                if area is None:
                    return None
                room[area] -= size
                placed[area].append(what)
        return placed

    @property
    def fits(self) -> bool:
        return self.spare >= 0 and self.placement is not None


def _buffers(shape: Shape, kernels: str, log_every: int, platform: Platform) -> list[tuple[str, int]]:
    weights = platform.array(shape.n_params)
    split = [(what, platform.array(floats)) for what, floats in pieces(shape)]
    arrays = [("weights", weights), ("gradients", weights)]
    arrays += [(f"Adam {mv}" + (f", {what}" if len(split) > 1 else ""), size) for mv in "mv" for what, size in split]
    arrays += [("names buffer", platform.array(NAMES_BUFFER, 1)), ("losses not yet reported", platform.array(log_every))]
    if kernels == "c":
        arrays += [(f"C work ({work_floats(shape):,} floats)", platform.array(work_floats(shape))),
                   ("logits, sampling's scratch", 2 * platform.array(VOCAB))]
    else:
        sizes = model_buffers(shape)
        arrays.append((f"model buffers ({len(sizes)} arrays, {sum(sizes):,} floats)", sum(map(platform.array, sizes))))
    return arrays


def plan(shape: Shape, kernels: str, log_every: int, platform: Platform = ESP32) -> Plan:
    """The heap a training run of `shape` with `kernels` needs on `platform` (log_every: the
    run's steps per UART record, min(--log-every, --steps))."""
    if kernels not in KERNELS:
        raise ValueError(f"kernels must be one of {', '.join(KERNELS)}, not {kernels!r}")
    measured_arrays = sum(size for _, size in _buffers(DEFAULT, kernels, MEASURED_LOG_EVERY, platform))
    overhead = platform.measured[kernels] - measured_arrays
    return Plan(shape, kernels, platform, _buffers(shape, kernels, log_every, platform), overhead)


def largest(kernels: str, log_every: int, n_head: int = DEFAULT.n_head, block_size: int = DEFAULT.block_size,
            layers: range = range(1, 5), platform: Platform = ESP32) -> list[Plan]:
    """For each number of layers, the widest model (n_embd a multiple of n_head) that fits, the
    most parameters first."""
    best = []
    for n_layer in layers:
        n_embd, fitting = n_head, None
        while (candidate := plan(Shape(n_embd, n_head, n_layer, block_size), kernels, log_every, platform)).fits:
            fitting, n_embd = candidate, n_embd + n_head
        if fitting:
            best.append(fitting)
    return sorted(best, key=lambda p: -p.shape.n_params)


def check(shape: Shape, kernels: str, log_every: int, platform: Platform = ESP32) -> Plan:
    """The plan of a run, or PlanError with its figures when the chip's heap cannot hold it."""
    p = plan(shape, kernels, log_every, platform)
    if p.spare < 0:
        raise PlanError(f"{shape} ({shape.n_params:,} parameters) needs about {p.peak:,} B of heap at its peak "
                        f"with the {kernels} kernels, and {platform.headroom:,} B free beside it: {-p.spare:,} B more "
                        f"than {platform.name}'s {platform.heap:,} B. Choose a smaller shape (`microgpt plan` "
                        "lists the largest that fit)")
    if p.placement is None:
        areas = " and ".join(f"{size:,} B" for size in platform.areas)
        raise PlanError(f"{shape} ({shape.n_params:,} parameters) needs its weights and gradients ({p.buffers[0][1]:,} B "
                        f"each) and Adam's m and v (by layer for more than one), and {platform.name}'s heap "
                        f"is areas of {areas} (an array lies in one): they find no room. Choose a smaller shape "
                        "(`microgpt plan` lists the largest that fit)")
    return p

