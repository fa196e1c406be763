# Checkpoints: all a run needs to go on after a reset (step, data position, PRNG state,
# parameters, Adam's m and v), written so that a reset at any moment leaves a usable file.
import binascii
import os
import struct

_MAGIC = b"MGC2"  # 2: Adam's m and v stored divided by (1 - beta), as train.adam keeps them
_HEAD = "<4sIIIII"  # magic, run id, steps, step done, data position, PRNG state
_HEAD_SIZE = struct.calcsize(_HEAD)


class BadCheckpoint(Exception):
    pass


def save(path, run_id, steps, step, data_pos, rng_state, arrays):
    # Write a temp file, then rename: littlefs renames atomically, so a reset leaves the old
    # checkpoint or the new one, never half of one. A CRC over everything catches bad flash.
    tmp = path + ".tmp"
    head = struct.pack(_HEAD, _MAGIC, run_id, steps, step, data_pos, rng_state)
    crc = binascii.crc32(head)
    with open(tmp, "wb") as f:
        f.write(head)
        for a in arrays:
            f.write(a)
            crc = binascii.crc32(a, crc)
        f.write(struct.pack("<I", crc))
    os.rename(tmp, path)


def load(path, run_id, steps, arrays):
    # Fills `arrays` and returns (step, data position, PRNG state); None when there is no
    # checkpoint; raises BadCheckpoint(reason) when there is one that must not be used.
    try:
        f = open(path, "rb")
    except OSError:
        return None
    with f:
        head = f.read(_HEAD_SIZE)
        if len(head) < _HEAD_SIZE:
            raise BadCheckpoint("truncated")
        magic, rid, nsteps, step, pos, state = struct.unpack(_HEAD, head)
        if magic != _MAGIC:
            raise BadCheckpoint("not-a-checkpoint")
        if rid != run_id or nsteps != steps:
            raise BadCheckpoint("other-run")
        crc = binascii.crc32(head)
        for a in arrays:
            if f.readinto(a) != len(a) * 4:
                raise BadCheckpoint("truncated")
            crc = binascii.crc32(a, crc)
        tail = f.read(4)
        if len(tail) < 4 or struct.unpack("<I", tail)[0] != crc:
            raise BadCheckpoint("checksum")
    return step, pos, state
