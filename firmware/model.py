# microgpt's model (Karpathy's microgpt.py) as explicit forward and backward passes over flat
# float32 arrays: no autograd graph, so a training step needs a few KB instead of megabytes.
#
# The backward runs *while* the forward walks the name: everything after attention (Wo, the MLP,
# lm_head, the loss) belongs to one position, so its gradient is taken as soon as that position's
# loss is known. Only each position's key and value wait, because later queries still read them;
# they are finished in `finish_backward`. And as RMSNorm's backward is linear in the incoming
# gradient, each part of the gradient at x0 and x1 goes on to the embeddings as soon as it is
# known. And the two normalised embeddings x0 and x1 are recomputed (exactly: same weights,
# same operations) when the backward needs them again. So per position we keep just the key,
# the value and their gradients: 64 floats.
import math
from array import array
import micropython
from micropython import const

VOCAB = const(27)  # a-z are 0-25
BOS = const(26)  # begins and ends every name
N_EMBD = const(16)
N_HEAD = const(4)
HEAD_DIM = const(4)
BLOCK = const(16)
N_HIDDEN = const(64)

# Offsets into the flat parameter array: microgpt's state_dict order, each matrix [out][in].
WTE = const(0)
WPE = const(432)  # WTE + VOCAB * N_EMBD
LM_HEAD = const(688)  # WPE + BLOCK * N_EMBD
WQ = const(1120)  # LM_HEAD + VOCAB * N_EMBD
WK = const(1376)
WV = const(1632)
WO = const(1888)
FC1 = const(2144)
FC2 = const(3168)  # FC1 + N_HIDDEN * N_EMBD
N_PARAMS = const(4192)  # FC2 + N_EMBD * N_HIDDEN

_EPS = 1e-5
_ATT_SCALE = 0.5  # 1 / sqrt(HEAD_DIM)


def zeros(n):
    # array("f", bytes(4 * n)) would first need a temporary as large as the array; an
    # initializer with a length (a range) lets MicroPython allocate the array once, in place.
    a = array("f", range(n))
    _clear(a, n)
    return a


@micropython.native
def matvec16(w, k, nout, x, xo, y, yo):
    # y[yo:yo+nout] = W x for the [nout][16] matrix at w[k:]. The 16 inputs sit in locals, so a
    # product reads one float from an array, not two (every read of an array('f') allocates).
    x0, x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11, x12, x13, x14, x15 = (
        x[xo], x[xo + 1], x[xo + 2], x[xo + 3], x[xo + 4], x[xo + 5], x[xo + 6], x[xo + 7],
        x[xo + 8], x[xo + 9], x[xo + 10], x[xo + 11], x[xo + 12], x[xo + 13], x[xo + 14], x[xo + 15])
    for i in range(yo, yo + nout):
        y[i] = (w[k] * x0 + w[k + 1] * x1 + w[k + 2] * x2 + w[k + 3] * x3 + w[k + 4] * x4
                + w[k + 5] * x5 + w[k + 6] * x6 + w[k + 7] * x7 + w[k + 8] * x8 + w[k + 9] * x9
                + w[k + 10] * x10 + w[k + 11] * x11 + w[k + 12] * x12 + w[k + 13] * x13
                + w[k + 14] * x14 + w[k + 15] * x15)
        k += 16


@micropython.native
def linear16_backward(w, g, k, nout, x, xo, dy, dyo, dx, dxo):
    # For y = W x with 16 inputs: G += dy x^T and dx += W^T dy, in one pass over the matrix.
    x0, x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11, x12, x13, x14, x15 = (
        x[xo], x[xo + 1], x[xo + 2], x[xo + 3], x[xo + 4], x[xo + 5], x[xo + 6], x[xo + 7],
        x[xo + 8], x[xo + 9], x[xo + 10], x[xo + 11], x[xo + 12], x[xo + 13], x[xo + 14], x[xo + 15])
    d0 = d1 = d2 = d3 = d4 = d5 = d6 = d7 = d8 = d9 = d10 = d11 = d12 = d13 = d14 = d15 = 0.0
    for i in range(dyo, dyo + nout):
        d = dy[i]
        if d != 0.0:  # ReLU leaves about half of fc1's rows without gradient
            g[k] += d * x0
            g[k + 1] += d * x1
            g[k + 2] += d * x2
            g[k + 3] += d * x3
            g[k + 4] += d * x4
            g[k + 5] += d * x5
            g[k + 6] += d * x6
            g[k + 7] += d * x7
            g[k + 8] += d * x8
            g[k + 9] += d * x9
            g[k + 10] += d * x10
            g[k + 11] += d * x11
            g[k + 12] += d * x12
            g[k + 13] += d * x13
            g[k + 14] += d * x14
            g[k + 15] += d * x15
            d0 += w[k] * d
            d1 += w[k + 1] * d
            d2 += w[k + 2] * d
            d3 += w[k + 3] * d
            d4 += w[k + 4] * d
            d5 += w[k + 5] * d
            d6 += w[k + 6] * d
            d7 += w[k + 7] * d
            d8 += w[k + 8] * d
            d9 += w[k + 9] * d
            d10 += w[k + 10] * d
            d11 += w[k + 11] * d
            d12 += w[k + 12] * d
            d13 += w[k + 13] * d
            d14 += w[k + 14] * d
            d15 += w[k + 15] * d
        k += 16
    dx[dxo] += d0
    dx[dxo + 1] += d1
    dx[dxo + 2] += d2
    dx[dxo + 3] += d3
    dx[dxo + 4] += d4
    dx[dxo + 5] += d5
    dx[dxo + 6] += d6
    dx[dxo + 7] += d7
    dx[dxo + 8] += d8
    dx[dxo + 9] += d9
    dx[dxo + 10] += d10
    dx[dxo + 11] += d11
    dx[dxo + 12] += d12
    dx[dxo + 13] += d13
    dx[dxo + 14] += d14
    dx[dxo + 15] += d15


@micropython.native
def fc2_forward(w, k, h, y):
    # y = W h for the [16][64] matrix at w[k:], skipping ReLU's zeros (about half of h): each
    # sum still adds the same nonzero terms in the same order.
    y0 = y1 = y2 = y3 = y4 = y5 = y6 = y7 = y8 = y9 = y10 = y11 = y12 = y13 = y14 = y15 = 0.0
    for j in range(N_HIDDEN):
        hj = h[j]
        if hj != 0.0:
            c = k + j
            y0 += w[c] * hj
            y1 += w[c + 64] * hj
            y2 += w[c + 128] * hj
            y3 += w[c + 192] * hj
            y4 += w[c + 256] * hj
            y5 += w[c + 320] * hj
            y6 += w[c + 384] * hj
            y7 += w[c + 448] * hj
            y8 += w[c + 512] * hj
            y9 += w[c + 576] * hj
            y10 += w[c + 640] * hj
            y11 += w[c + 704] * hj
            y12 += w[c + 768] * hj
            y13 += w[c + 832] * hj
            y14 += w[c + 896] * hj
            y15 += w[c + 960] * hj
    y[0] = y0
    y[1] = y1
    y[2] = y2
    y[3] = y3
    y[4] = y4
    y[5] = y5
    y[6] = y6
    y[7] = y7
    y[8] = y8
    y[9] = y9
    y[10] = y10
    y[11] = y11
    y[12] = y12
    y[13] = y13
    y[14] = y14
    y[15] = y15


@micropython.native
def fc2_backward(w, g, k, h, dy, dh):
    # For y = W h with h = ReLU(.): G += dy h^T, and dh = W^T dy where h > 0 and 0 elsewhere
    # (ReLU's own gradient), never touching the columns of zeros.
    d0, d1, d2, d3, d4, d5, d6, d7, d8, d9, d10, d11, d12, d13, d14, d15 = (
        dy[0], dy[1], dy[2], dy[3], dy[4], dy[5], dy[6], dy[7],
        dy[8], dy[9], dy[10], dy[11], dy[12], dy[13], dy[14], dy[15])
    for j in range(N_HIDDEN):
        hj = h[j]
        if hj != 0.0:
            c = k + j
            g[c] += d0 * hj
            g[c + 64] += d1 * hj
            g[c + 128] += d2 * hj
            g[c + 192] += d3 * hj
            g[c + 256] += d4 * hj
            g[c + 320] += d5 * hj
            g[c + 384] += d6 * hj
            g[c + 448] += d7 * hj
            g[c + 512] += d8 * hj
            g[c + 576] += d9 * hj
            g[c + 640] += d10 * hj
            g[c + 704] += d11 * hj
            g[c + 768] += d12 * hj
            g[c + 832] += d13 * hj
            g[c + 896] += d14 * hj
            g[c + 960] += d15 * hj
            dh[j] = (w[c] * d0 + w[c + 64] * d1 + w[c + 128] * d2 + w[c + 192] * d3
                     + w[c + 256] * d4 + w[c + 320] * d5 + w[c + 384] * d6 + w[c + 448] * d7
                     + w[c + 512] * d8 + w[c + 576] * d9 + w[c + 640] * d10 + w[c + 704] * d11
                     + w[c + 768] * d12 + w[c + 832] * d13 + w[c + 896] * d14 + w[c + 960] * d15)
        else:
            dh[j] = 0.0


@micropython.native
def exp_logits(logits, temperature, out):
    # out = exp((logits - max) / temperature), the softmax before normalising (shifted by the max
    # so exp cannot overflow); returns (max, sum of out).
    top = logits[0]
    for i in range(1, VOCAB):
        if logits[i] > top:
            top = logits[i]
    total = 0.0
    for i in range(VOCAB):
        e = math.exp((logits[i] - top) / temperature)
        out[i] = e
        total += e
    return top, total


@micropython.native
def rmsnorm(x, y):
    # y = x / rms(x) (y may be x); returns the scale 1/rms, which the backward needs.
    ss = 0.0
    for i in range(N_EMBD):
        ss += x[i] * x[i]
    s = (ss / N_EMBD + _EPS) ** -0.5
    for i in range(N_EMBD):
        y[i] = x[i] * s
    return s


@micropython.native
def rmsnorm_backward(y, s, dy, dx):
    # dx += s * (dy - y * (y . dy) / n), written with the output y = x * s.
    yd = 0.0
    for i in range(N_EMBD):
        yd += y[i] * dy[i]
    yd /= N_EMBD
    for i in range(N_EMBD):
        dx[i] += s * (dy[i] - y[i] * yd)


class GPT:
    def __init__(self):
        self.params = zeros(N_PARAMS)
        self.grads = zeros(N_PARAMS)
        # Kept per position until the name is done (rows of N_EMBD, position-major).
        self.k = zeros(BLOCK * N_EMBD)
        self.v = zeros(BLOCK * N_EMBD)
        self.dk = zeros(BLOCK * N_EMBD)
        self.dv = zeros(BLOCK * N_EMBD)
        # Scratch for the position being worked on.
        self.x0 = zeros(N_EMBD)  # rmsnorm(token + position embedding): attention's residual
        self.x1 = zeros(N_EMBD)  # rmsnorm(x0): input of q, k, v
        self.s0 = self.s1 = 0.0  # their rmsnorm scales
        self.q = zeros(N_EMBD)
        self.att = zeros(N_HEAD * BLOCK)  # attention weights, head-major
        self.o = zeros(N_EMBD)  # attention output, heads concatenated
        self.x2 = zeros(N_EMBD)  # after attention + residual
        self.x3 = zeros(N_EMBD)  # rmsnorm(x2): MLP input
        self.h = zeros(N_HIDDEN)  # relu(fc1 x3)
        self.x4 = zeros(N_EMBD)  # after MLP + residual
        self.logits = zeros(VOCAB)
        self.s3 = 0.0
        self.dlogits = zeros(VOCAB)
        self.dx4 = zeros(N_EMBD)
        self.dh = zeros(N_HIDDEN)
        self.dx3 = zeros(N_EMBD)
        self.dx2 = zeros(N_EMBD)
        self.do = zeros(N_EMBD)
        self.dq = zeros(N_EMBD)
        self.datt = zeros(BLOCK)  # d(attention weight) of one head
        self.dx1 = zeros(N_EMBD)  # gradient at x1, one part at a time
        self.de = zeros(N_EMBD)  # gradient at the embedding sum

    @micropython.native
    def embed(self, token, pos):
        # self.x0 = rmsnorm(wte[token] + wpe[pos]) and self.x1 = rmsnorm(x0), with their scales.
        p, x0 = self.params, self.x0
        te = WTE + token * N_EMBD
        pe = WPE + pos * N_EMBD
        for i in range(N_EMBD):
            x0[i] = p[te + i] + p[pe + i]
        self.s0 = rmsnorm(x0, x0)
        self.s1 = rmsnorm(x0, self.x1)

    @micropython.native
    def forward(self, token, pos):
        # One position of microgpt's gpt(): fills self.logits and this position's k, v.
        p = self.params
        x0, x1, k, v, q, att, o = self.x0, self.x1, self.k, self.v, self.q, self.att, self.o
        r = pos * N_EMBD
        self.embed(token, pos)
        matvec16(p, WQ, N_EMBD, x1, 0, q, 0)
        matvec16(p, WK, N_EMBD, x1, 0, k, r)
        matvec16(p, WV, N_EMBD, x1, 0, v, r)
        for h in range(N_HEAD):
            hd = h * HEAD_DIM
            a = h * BLOCK
            top = -1e30
            for t in range(pos + 1):
                kt = t * N_EMBD + hd
                s = 0.0
                for j in range(HEAD_DIM):
                    s += q[hd + j] * k[kt + j]
                s *= _ATT_SCALE
                att[a + t] = s
                if s > top:
                    top = s
            total = 0.0
            for t in range(pos + 1):
                e = math.exp(att[a + t] - top)
                att[a + t] = e
                total += e
            for t in range(pos + 1):
                att[a + t] /= total
            for j in range(HEAD_DIM):
                s = 0.0
                for t in range(pos + 1):
                    s += att[a + t] * v[t * N_EMBD + hd + j]
                o[hd + j] = s
        x2, x3, hid, x4 = self.x2, self.x3, self.h, self.x4
        matvec16(p, WO, N_EMBD, o, 0, x2, 0)
        for i in range(N_EMBD):
            x2[i] += x0[i]
        self.s3 = rmsnorm(x2, x3)
        matvec16(p, FC1, N_HIDDEN, x3, 0, hid, 0)
        for i in range(N_HIDDEN):
            if hid[i] < 0.0:
                hid[i] = 0.0
        fc2_forward(p, FC2, hid, x4)
        for i in range(N_EMBD):
            x4[i] += x2[i]
        matvec16(p, LM_HEAD, VOCAB, x4, 0, self.logits, 0)

    @micropython.native
    def backward(self, pos, token, target, scale):
        # Cross-entropy of this position's logits against target, times `scale` (1/n for the
        # mean over the name); adds this position's gradients. Returns the unscaled loss.
        p, g = self.params, self.grads
        logits, dl = self.logits, self.dlogits
        top, total = exp_logits(logits, 1.0, dl)
        loss = math.log(total) - (logits[target] - top)
        for i in range(VOCAB):
            dl[i] = dl[i] / total * scale
        dl[target] -= scale

        x4, dx4, hid, dh, x3, dx3, dx2 = self.x4, self.dx4, self.h, self.dh, self.x3, self.dx3, self.dx2
        o, do, q, dq, att = self.o, self.do, self.q, self.dq, self.att
        _clear(dx4, N_EMBD)
        linear16_backward(p, g, LM_HEAD, VOCAB, x4, 0, dl, 0, dx4, 0)
        fc2_backward(p, g, FC2, hid, dx4, dh)
        _clear(dx3, N_EMBD)
        linear16_backward(p, g, FC1, N_HIDDEN, x3, 0, dh, 0, dx3, 0)
        for i in range(N_EMBD):
            dx2[i] = dx4[i]
        rmsnorm_backward(x3, self.s3, dx3, dx2)
        _clear(do, N_EMBD)
        linear16_backward(p, g, WO, N_EMBD, o, 0, dx2, 0, do, 0)

        r = pos * N_EMBD
        k, v, dk, dv = self.k, self.v, self.dk, self.dv
        for i in range(N_EMBD):
            dk[r + i] = 0.0  # this position's key and value get their first gradient now
            dv[r + i] = 0.0
        datt = self.datt
        for h in range(N_HEAD):
            hd = h * HEAD_DIM
            a = h * BLOCK
            # Through out = sum_t w_t v_t: dv_t += w_t do, and dw_t = do . v_t.
            dot = 0.0
            for t in range(pos + 1):
                vt = t * N_EMBD + hd
                w = att[a + t]
                s = 0.0
                for j in range(HEAD_DIM):
                    s += do[hd + j] * v[vt + j]
                    dv[vt + j] += w * do[hd + j]
                datt[t] = s
                dot += w * s
            # Through the softmax and the 1/sqrt(head_dim) scale, into q and the keys.
            for j in range(HEAD_DIM):
                dq[hd + j] = 0.0
            for t in range(pos + 1):
                kt = t * N_EMBD + hd
                dlog = att[a + t] * (datt[t] - dot) * _ATT_SCALE
                for j in range(HEAD_DIM):
                    dq[hd + j] += dlog * k[kt + j]
                    dk[kt + j] += dlog * q[hd + j]
        dx1 = self.dx1
        _clear(dx1, N_EMBD)
        linear16_backward(p, g, WQ, N_EMBD, self.x1, 0, dq, 0, dx1, 0)
        self.to_embeddings(pos, token, dx2, dx1)  # dx2 is also the gradient at x0 (residual)
        return loss

    @micropython.native
    def finish_backward(self, tokens, n):
        # Keys and values have all their gradient now: take them back to the embeddings.
        p, g = self.params, self.grads
        x1, dx0, dx1, dk, dv = self.x1, self.dx2, self.dx1, self.dk, self.dv
        for pos in range(n):
            r = pos * N_EMBD
            self.embed(tokens[pos], pos)
            _clear(dx1, N_EMBD)
            linear16_backward(p, g, WK, N_EMBD, x1, 0, dk, r, dx1, 0)
            linear16_backward(p, g, WV, N_EMBD, x1, 0, dv, r, dx1, 0)
            _clear(dx0, N_EMBD)
            self.to_embeddings(pos, tokens[pos], dx0, dx1)

    @micropython.native
    def to_embeddings(self, pos, token, dx0, dx1):
        # Gradients at x0 (dx0) and at x1 = rmsnorm(x0) (dx1), through both RMSNorms, onto the
        # token's and the position's embedding rows; self.x0, self.x1 must hold this position's
        # (see embed). Overwrites dx0.
        rmsnorm_backward(self.x1, self.s1, dx1, dx0)
        de = self.de
        _clear(de, N_EMBD)
        rmsnorm_backward(self.x0, self.s0, dx0, de)
        g = self.grads
        te = WTE + token * N_EMBD
        pe = WPE + pos * N_EMBD
        for i in range(N_EMBD):
            g[te + i] += de[i]
            g[pe + i] += de[i]

    @micropython.native
    def loss_and_grad(self, tokens, n):
        # microgpt's training loss for one name: mean cross-entropy over n positions.
        # Adds the gradient to self.grads (the caller zeroes it between steps).
        loss = 0.0
        scale = 1.0 / n
        for pos in range(n):
            self.forward(tokens[pos], pos)
            loss += self.backward(pos, tokens[pos], tokens[pos + 1], scale)
        self.finish_backward(tokens, n)
        return loss / n


@micropython.native
def _clear(a, n):
    for i in range(n):
        a[i] = 0.0
