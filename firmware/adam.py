# Adam's m and v for a model of more than one layer, an array per piece of base.py's flat layout
# (wte to layer 0's end, then each further layer): whole-model arrays need one free block of
# their size, pieces spread over the chip's heap areas (microgpt/planner.py). A module of its
# own, imported by such shapes only: microgpt.py's one-layer shape keeps its code off the heap.
import base
from base import zeros


def bounds():
    # (start, end) of each piece in the flat layout.
    first = base.LAYER0 + base.LAYER_SIZE
    out = [(0, first)]
    for start in range(first, base.N_PARAMS, base.LAYER_SIZE):  # a loop: less bytecode than a comprehension
        out.append((start, start + base.LAYER_SIZE))
    return out


def split(adam, mount_flash):
    # (m, v, adam by piece): m's and v's pieces, zero, in lists (checkpoint.py writes them in
    # order: the flat layout), allocated with the small flash caches as train.py's other arrays,
    # and `adam` with train.py's arguments, applied piece by piece.
    pieces = bounds()
    m, v = [], []
    mount_flash(False)
    for start, end in pieces:
        m.append(zeros(end - start))
        v.append(zeros(end - start))
    mount_flash(True)

    def by_piece(params, grads, m, v, step, unbias):
        params, grads = memoryview(params), memoryview(grads)
        for i in range(len(m)):
            start, end = pieces[i]
            adam(params[start:end], grads[start:end], m[i], v[i], step, unbias)

    return m, v, by_piece
