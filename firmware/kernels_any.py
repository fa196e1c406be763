# The model's matrix kernels for any width (N_EMBD inputs, fc2's [N_EMBD][N_HIDDEN]) as rolled
# loops, with the arguments of kernels.py's unrolled ones for microgpt.py's width (matvec16,
# linear16_backward, fc2_forward16, fc2_backward16). A module of their own: the default width
# never loads them (every KB of heap counts on the chip).
import micropython
from base import N_EMBD, N_HIDDEN


@micropython.native
def matvec(w, k, nout, x, xo, y, yo):
    # y[yo:yo+nout] = W x for the [nout][N_EMBD] matrix at w[k:].
    n = N_EMBD
    for i in range(yo, yo + nout):
        s = 0.0
        for j in range(n):
            s += w[k + j] * x[xo + j]
        y[i] = s
        k += n


@micropython.native
def linear_backward(w, g, k, nout, x, xo, dy, dyo, dx, dxo):
    # For y = W x with N_EMBD inputs: G += dy x^T and dx += W^T dy, each dx[j] summed over the rows
    # in order, then added.
    n = N_EMBD
    for j in range(n):
        s = 0.0
        r = k + j
        for i in range(dyo, dyo + nout):
            s += w[r] * dy[i]
            r += n
        dx[dxo + j] += s
    for i in range(dyo, dyo + nout):
        d = dy[i]
        if d != 0.0:
            for j in range(n):
                g[k + j] += d * x[xo + j]
        k += n


@micropython.native
def fc2_forward(w, k, h, y):
    # y = W h for the [N_EMBD][N_HIDDEN] matrix at w[k:], skipping ReLU's zeros.
    n, nh = N_EMBD, N_HIDDEN
    for i in range(n):
        s = 0.0
        c = k + i * nh
        for j in range(nh):
            hj = h[j]
            if hj != 0.0:
                s += w[c + j] * hj
        y[i] = s


@micropython.native
def fc2_backward(w, g, k, h, dy, dh):
    # For y = W h with h = ReLU(.): G += dy h^T, and dh = W^T dy where h > 0, 0 elsewhere.
    n, nh = N_EMBD, N_HIDDEN
    for j in range(nh):
        hj = h[j]
        if hj != 0.0:
            s = 0.0
            c = k + j
            for i in range(n):
                g[c] += dy[i] * hj
                s += w[c] * dy[i]
                c += nh
            dh[j] = s
        else:
            dh[j] = 0.0

