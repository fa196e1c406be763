# The training run: read the configuration the host wrote, stream names from flash one per step,
# train with Adam, sample, save the weights, and report every step on the UART
# (record format: docs/uart-protocol.md).
import binascii
import gc
import json
import os
import struct
import sys
import time

import base
import micropython
from base import BETA1, BETA2, zeros
from micropython import const

CONFIG = "config.json"
DATA = "names.txt"  # the host writes it in training order, one name per line
VAL = "val.txt"  # the names held out of training, one per line: their loss is evaluated after it
INIT = "init.bin"  # with init "microgpt": the shape's float32 initial weights from the host
WEIGHTS = "weights.bin"
CKPT = "ckpt.bin"
# Names reads the data file in chunks of this many bytes: a name and its newline must fit in one
# (the host refuses a longer line). Underscored: a constant only, no global on the chip's heap.
_NAMES_BUFFER = const(1024)

INIT_STD = 0.08


def adam_factors(lr, beta1_t, beta2_t):
    # microgpt's Adam with bias correction at step t = 1, 2, ..., given BETA1**t and BETA2**t: the
    # arrays hold m / (1 - beta1) and v / (1 - beta2) (every float operation allocates on the
    # chip), so those factors and the bias corrections fold into two constants. Float rounding
    # aside, the kernels' adam() is then p -= lr * (m / c1) / (sqrt(v / c2) + eps).
    return lr * (1.0 - BETA1) / (1.0 - beta1_t), (1.0 - BETA2) / (1.0 - beta2_t)


class Names:
    # The data file, one name per line, read from byte `pos` on into a fixed buffer a chunk at a time
    # (a flash read costs about as much for a line as for a chunk; a fixed buffer allocates nothing)
    # and wrapped at the end: step s sees name s % count.
    def __init__(self, path, pos, buf):
        self.f = open(path, "rb")
        self.f.seek(pos)
        self.buf = buf
        self.view = memoryview(buf)
        self.pos = self.end = 0  # buf[pos:end] is read, not yet used

    def next(self):
        # The next name, as a view of the buffer (letters a-z; the model checks them), valid until
        # the next call.
        nl = self.buf.find(b"\n", self.pos, self.end)
        while nl < 0:
            rest = self.end - self.pos
            self.view[:rest] = self.view[self.pos:self.end]
            got = self.f.readinto(self.view[rest:])
            if not got:
                self.f.seek(0)
                got = self.f.readinto(self.view[rest:])
            self.pos, self.end = 0, rest + got
            nl = self.buf.find(b"\n", 0, self.end)
        name = self.view[self.pos:nl]
        self.pos = nl + 1
        return name

    def tell(self):
        # The file offset of the next name.
        return self.f.tell() - (self.end - self.pos)

    def close(self):
        self.f.close()


def clock():
    # (MHz at boot, MHz now), as text for the start record: ESP32_GENERIC boots at 160 MHz; train at 240 where the chip allows.
    try:
        import machine

        boot = machine.freq()
    except (ImportError, AttributeError):  # the VM has no clock to set
        return "none", "none"
    if sys.platform == "esp32" and boot < 240000000:
        try:
            machine.freq(240000000)
        except ValueError:  # e.g. ESP32-C3 tops out at 160 MHz
            pass
    return str(boot // 1000000), str(machine.freq() // 1000000)


def exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def report_steps(n, losses, k, ms, heap):
    # One step record for the last k steps: their losses as the float32 bytes they are, in base64
    # (exact, and 5.3 characters a step), written in pieces: no string of them all is built.
    write = sys.stdout.write
    write("MGPT step n=%d ms=%.2f heap=%d loss=" % (n, ms, heap))
    raw = memoryview(losses)  # sliced by loss, not by byte
    for i in range(0, k, 12):  # 12 losses a piece: 64 characters, no padding but at the end
        write(binascii.b2a_base64(raw[i:min(i + 12, k)], newline=False))
    write("\n")


def heap_now():
    gc.collect()
    return gc.mem_alloc()


def bytes_allocated():
    # Bytes ever allocated on the GC heap, where the port keeps memory statistics (the unix VM
    # does, ESP32_GENERIC does not): float temporaries are most of it, so it measures speed work.
    return micropython.mem_total() if hasattr(micropython, "mem_total") else None


def main(mount_flash=lambda fast: None):
    # mount_flash(fast): the boot entry's choice of flash caches (main.py); it mounted them fast.
    with open(CONFIG) as f:
        cfg = json.load(f)
    steps, seed = cfg["steps"], cfg["seed"]
    log_every, ckpt_every = cfg["log_every"], cfg["ckpt_every"]
    freq_boot, freq = clock()
    knobs = base.knobs(cfg.pop("shape"))  # kept as the knobs alone: every KB of heap counts
    base.set_shape(*knobs)  # before the model's modules import its names
    n_params = base.N_PARAMS

    # The big arrays go first, into a heap that importing the model has not yet fragmented,
    # nor the fast flash caches: they come back for the loading that follows. Adam's m and v
    # too for one layer (microgpt.py's shape: whole arrays, one Adam call a step); with more
    # layers they go by layer (adam.py), after the import.
    mount_flash(False)
    gc.collect()
    params, grads = zeros(n_params), zeros(n_params)
    if base.N_LAYER == 1:
        m, v = zeros(n_params), zeros(n_params)
    names_buf = bytearray(_NAMES_BUFFER)  # Names' chunks
    mount_flash(True)
    if cfg["kernels"] == "c":  # the arithmetic in C (cmodel.mpy), where the build shipped it
        from cgpt import GPT, adam
    else:
        from model import GPT, adam
    gc.collect()
    gpt = GPT(params, grads)
    if base.N_LAYER > 1:  # after the import, whose C code needs 14 KB in one piece for a moment
        # __import__: no new local in main, whose frame stays on the heap all run
        m, v, adam = __import__("adam").split(adam, mount_flash)
    heap_total = gc.mem_alloc() + gc.mem_free()
    print(
        "MGPT start v=2 params=%d steps=%d seed=%d init=%s docs=%d log_every=%d ckpt_every=%d samples=%d "
        "temp=%s lr=%s platform=%s impl=%s emit=%s kernels=%s freq_mhz=%s freq_boot_mhz=%s heap_total=%d "
        "shape=%d,%d,%d,%d val=%d"
        % ((n_params, steps, seed, cfg["init"], cfg["docs"], log_every, ckpt_every, cfg["samples"],
           cfg["temperature"], cfg["lr"], sys.platform, "%d.%d.%d" % sys.implementation.version[:3],
           cfg["emit"], cfg["kernels"], freq, freq_boot, heap_total) + knobs + (cfg["val"],))
    )

    # Modules load only when used: every KB of heap counts on the chip.
    resumed = None
    if ckpt_every or exists(CKPT):
        import checkpoint

        try:
            resumed = checkpoint.load(CKPT, cfg["run_id"], steps, knobs, (params, m, v))
        except checkpoint.BadCheckpoint as e:
            print("MGPT ckpt-bad reason=%s" % e)
    start, pos = resumed or (0, 0)
    if resumed:
        print("MGPT resume step=%d" % start)
    elif cfg["init"] == "microgpt":
        with open(INIT, "rb") as f:
            if f.readinto(params) != n_params * 4:
                raise ValueError("%s is short: rebuild the run files with the host tool" % INIT)
    else:
        from rng import Rng

        rng = Rng(seed)
        for i in range(n_params):
            params[i] = rng.gauss(0.0, INIT_STD)
    # After a reset, m and v came from the checkpoint; otherwise the arrays are still zero.
    mount_flash(False)  # training is the heap's peak: the smallest caches, as the board mounts them
    names = Names(DATA, pos, names_buf)

    peak = heap_now()
    allocated = bytes_allocated()
    train_us = 0
    group = zeros(log_every)  # losses not yet reported: a fixed buffer, nothing grows
    size, k = len(group), 0
    beta1_t = beta2_t = 1.0  # Adam's powers, as running products; a resumed run rounds them the same
    for _ in range(start):
        beta1_t *= BETA1
        beta2_t *= BETA2
    lr = cfg["lr"]
    t0 = time.ticks_us()
    for step in range(start, steps):
        group[k] = gpt.loss_and_grad(names.next())
        k += 1
        beta1_t *= BETA1
        beta2_t *= BETA2
        step_size, unbias = adam_factors(lr * (1.0 - step / steps), beta1_t, beta2_t)
        adam(params, grads, m, v, step_size, unbias)
        done = step + 1
        save_now = ckpt_every and done % ckpt_every == 0
        # Report before checkpointing: a reset then never skips a step the host has not seen.
        if k == size or done == steps or save_now:
            dt = time.ticks_diff(time.ticks_us(), t0)  # the group's steps, without reports and checkpoints
            train_us += dt
            heap = heap_now()
            peak = max(peak, heap)
            report_steps(done, group, k, dt / 1000 / k, heap)
            k = 0
            if save_now:  # with the fast caches (no file may be open while they are mounted)
                pos = names.tell()
                names.close()
                mount_flash(True)
                checkpoint.save(CKPT, cfg["run_id"], steps, done, pos, knobs, (params, m, v))
                mount_flash(False)
                names = Names(DATA, pos, names_buf)
                print("MGPT ckpt step=%d" % done)
            t0 = time.ticks_us()

    if allocated is not None:
        allocated = (bytes_allocated() - allocated) // max(steps - start, 1)
    names.close()
    m = v = grads = gpt.grads = None  # from here on only the weights are needed
    gc.collect()
    mount_flash(True)
    with open(WEIGHTS + ".tmp", "wb") as f:
        f.write(struct.pack(base.WEIGHTS_HEAD, base.WEIGHTS_MAGIC, *knobs))
        f.write(params)
    os.rename(WEIGHTS + ".tmp", WEIGHTS)
    if cfg["val"]:  # the held-out names, streamed from flash as the training names were
        import val

        val.report(gpt, Names(VAL, 0, names_buf), cfg["val"])
    from rng import Rng
    from sample import sample

    rng = Rng(seed)  # sampling draws from the seed alone, whatever came before: the host replays it
    for i in range(cfg["samples"]):
        print("MGPT sample %d %s" % (i + 1, sample(gpt, rng, cfg["temperature"])))
    peak = max(peak, heap_now())
    trained = steps - start
    print("MGPT end steps=%d ms_train=%d ms_per_step=%.2f peak_heap=%d alloc_per_step=%s heap_total=%d"
          % (steps, train_us // 1000, train_us / 1000 / max(trained, 1), peak, allocated, heap_total))
