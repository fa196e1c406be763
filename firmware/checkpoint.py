# Checkpoints: all a run needs to go on after a reset (step, data position, parameters, Adam's
# m and v, for the model's shape), written so that a reset at any moment leaves a usable file.
import binascii
import os
import struct

_MAGIC = b"MGC4"  # 4: the model's shape; 3: no PRNG state (sampling draws from a fresh PRNG); 2: m, v / (1 - beta)
_HEAD = "<4sIIIIHHHH"  # magic, run id, steps, step done, data position, n_embd, n_head, n_layer, block_size
_HEAD_SIZE = struct.calcsize(_HEAD)


class BadCheckpoint(Exception):
    pass


def _flat(arrays):
    # train.py's (params, m, v), m and v lists of pieces for a model of more than one layer
    # (adam.py): the arrays in order, the flat layout either way.
    out = []
    for a in arrays:
        out += a if type(a) is list else [a]
    return out


def save(path, run_id, steps, step, data_pos, shape, arrays):
    # Write a temp file, then rename: littlefs renames atomically, so a reset leaves the old
    # checkpoint or the new one, never half of one. A CRC over everything catches bad flash.
    tmp = path + ".tmp"
    head = struct.pack(_HEAD, _MAGIC, run_id, steps, step, data_pos, *shape)
    crc = binascii.crc32(head)
    with open(tmp, "wb") as f:
        f.write(head)
        for a in _flat(arrays):
            f.write(a)
            crc = binascii.crc32(a, crc)
        f.write(struct.pack("<I", crc))
    os.rename(tmp, path)


def load(path, run_id, steps, shape, arrays):
    # Fills `arrays` and returns (step, data position); None when there is no checkpoint; raises
    # BadCheckpoint(reason) when there is one that must not be used. The whole file is checked
    # before any array is written, so a rejected checkpoint leaves no trace in the run.
    arrays = _flat(arrays)
    try:
        f = open(path, "rb")
    except OSError:
        return None
    with f:
        head = f.read(_HEAD_SIZE)
        if len(head) < _HEAD_SIZE:
            raise BadCheckpoint("truncated")
        magic, rid, nsteps, step, pos, *knobs = struct.unpack(_HEAD, head)
        if magic != _MAGIC:
            raise BadCheckpoint("not-a-checkpoint")
        if tuple(knobs) != tuple(shape):
            raise BadCheckpoint("other-shape")
        if rid != run_id or nsteps != steps:
            raise BadCheckpoint("other-run")
        crc = binascii.crc32(head)
        chunk = bytearray(256)
        left = sum(len(a) for a in arrays) * 4
        while left:
            n = f.readinto(chunk if left >= len(chunk) else memoryview(chunk)[:left])
            if not n:
                raise BadCheckpoint("truncated")
            crc = binascii.crc32(memoryview(chunk)[:n], crc)
            left -= n
        tail = f.read(4)
        if len(tail) < 4 or struct.unpack("<I", tail)[0] != crc:
            raise BadCheckpoint("checksum")
        f.seek(_HEAD_SIZE)
        for a in arrays:
            f.readinto(a)
    return step, pos
