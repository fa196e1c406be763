# microgpt's model (Karpathy's microgpt.py) as explicit forward and backward passes over flat
# float32 arrays: no autograd graph, so a training step needs a few KB instead of megabytes.
#
# The backward runs *while* the forward walks the name: everything after attention (Wo, the MLP,
# lm_head, the loss) belongs to one position, so its gradient is taken as soon as that position's
# loss is known. Only each position's key and value wait, because later queries still read them;
# they are finished in `finish_backward`. So per position we keep just 130 floats, not ~300.
import math
from array import array
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
    return array("f", bytes(4 * n))


def matvec(w, wo, nout, nin, x, xo, y, yo):
    # y[yo:yo+nout] = W x, for the [nout][nin] matrix at w[wo:].
    k = wo
    for i in range(yo, yo + nout):
        s = 0.0
        for j in range(xo, xo + nin):
            s += w[k] * x[j]
            k += 1
        y[i] = s


def linear_backward(w, g, wo, nout, nin, x, xo, dy, dyo, dx, dxo):
    # For y = W x: G += dy x^T and dx += W^T dy, in one pass over the matrix.
    k = wo
    shift = dxo - xo
    for i in range(dyo, dyo + nout):
        d = dy[i]
        if d == 0.0:  # ReLU leaves about half of fc1's rows without gradient
            k += nin
            continue
        for j in range(xo, xo + nin):
            g[k] += d * x[j]
            dx[j + shift] += w[k] * d
            k += 1


def rmsnorm(x, xo, y, yo):
    # y = x / rms(x); returns the scale 1/rms, which the backward needs.
    ss = 0.0
    for i in range(xo, xo + N_EMBD):
        ss += x[i] * x[i]
    s = (ss / N_EMBD + _EPS) ** -0.5
    for i in range(N_EMBD):
        y[yo + i] = x[xo + i] * s
    return s


def rmsnorm_backward(y, yo, s, dy, dyo, dx, dxo):
    # dx += s * (dy - y * (y . dy) / n), written with the output y = x * s.
    yd = 0.0
    for i in range(N_EMBD):
        yd += y[yo + i] * dy[dyo + i]
    yd /= N_EMBD
    for i in range(N_EMBD):
        dx[dxo + i] += s * (dy[dyo + i] - y[yo + i] * yd)


class GPT:
    def __init__(self):
        self.params = zeros(N_PARAMS)
        self.grads = zeros(N_PARAMS)
        # Kept per position until the name is done (rows of N_EMBD, position-major).
        self.x0 = zeros(BLOCK * N_EMBD)  # rmsnorm(token + position embedding): attention's residual
        self.x1 = zeros(BLOCK * N_EMBD)  # rmsnorm(x0): input of q, k, v
        self.s0 = zeros(BLOCK)  # their rmsnorm scales
        self.s1 = zeros(BLOCK)
        self.k = zeros(BLOCK * N_EMBD)
        self.v = zeros(BLOCK * N_EMBD)
        self.dk = zeros(BLOCK * N_EMBD)
        self.dv = zeros(BLOCK * N_EMBD)
        self.dx0 = zeros(BLOCK * N_EMBD)
        self.dx1 = zeros(BLOCK * N_EMBD)
        # Scratch for the position being worked on.
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
        self.de = zeros(N_EMBD)  # d(embedding sum)

    def forward(self, token, pos):
        # One position of microgpt's gpt(): fills self.logits and this position's k, v.
        p = self.params
        x0, x1, k, v, q, att, o = self.x0, self.x1, self.k, self.v, self.q, self.att, self.o
        r = pos * N_EMBD
        te = WTE + token * N_EMBD
        pe = WPE + r
        for i in range(N_EMBD):
            x1[r + i] = p[te + i] + p[pe + i]  # x1's row is free until the next line fills it
        self.s0[pos] = rmsnorm(x1, r, x0, r)
        self.s1[pos] = rmsnorm(x0, r, x1, r)
        matvec(p, WQ, N_EMBD, N_EMBD, x1, r, q, 0)
        matvec(p, WK, N_EMBD, N_EMBD, x1, r, k, r)
        matvec(p, WV, N_EMBD, N_EMBD, x1, r, v, r)
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
        matvec(p, WO, N_EMBD, N_EMBD, o, 0, x2, 0)
        for i in range(N_EMBD):
            x2[i] += x0[r + i]
        self.s3 = rmsnorm(x2, 0, x3, 0)
        matvec(p, FC1, N_HIDDEN, N_EMBD, x3, 0, hid, 0)
        for i in range(N_HIDDEN):
            if hid[i] < 0.0:
                hid[i] = 0.0
        matvec(p, FC2, N_EMBD, N_HIDDEN, hid, 0, x4, 0)
        for i in range(N_EMBD):
            x4[i] += x2[i]
        matvec(p, LM_HEAD, VOCAB, N_EMBD, x4, 0, self.logits, 0)

    def backward(self, pos, target, scale):
        # Cross-entropy of this position's logits against target, times `scale` (1/n for the
        # mean over the name); adds this position's gradients. Returns the unscaled loss.
        p, g = self.params, self.grads
        logits, dl = self.logits, self.dlogits
        top = logits[0]
        for i in range(1, VOCAB):
            if logits[i] > top:
                top = logits[i]
        total = 0.0
        for i in range(VOCAB):
            e = math.exp(logits[i] - top)
            dl[i] = e
            total += e
        loss = math.log(total) - (logits[target] - top)
        for i in range(VOCAB):
            dl[i] = dl[i] / total * scale
        dl[target] -= scale

        x4, dx4, hid, dh, x3, dx3, dx2 = self.x4, self.dx4, self.h, self.dh, self.x3, self.dx3, self.dx2
        o, do, q, dq, att = self.o, self.do, self.q, self.dq, self.att
        _clear(dx4, N_EMBD)
        linear_backward(p, g, LM_HEAD, VOCAB, N_EMBD, x4, 0, dl, 0, dx4, 0)
        _clear(dh, N_HIDDEN)
        linear_backward(p, g, FC2, N_EMBD, N_HIDDEN, hid, 0, dx4, 0, dh, 0)
        for i in range(N_HIDDEN):
            if hid[i] == 0.0:
                dh[i] = 0.0
        _clear(dx3, N_EMBD)
        linear_backward(p, g, FC1, N_HIDDEN, N_EMBD, x3, 0, dh, 0, dx3, 0)
        for i in range(N_EMBD):
            dx2[i] = dx4[i]
        rmsnorm_backward(x3, 0, self.s3, dx3, 0, dx2, 0)
        _clear(do, N_EMBD)
        linear_backward(p, g, WO, N_EMBD, N_EMBD, o, 0, dx2, 0, do, 0)

        r = pos * N_EMBD
        dx0, k, v, dk, dv = self.dx0, self.k, self.v, self.dk, self.dv
        for i in range(N_EMBD):
            dx0[r + i] = dx2[i]  # attention's residual
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
        for i in range(N_EMBD):
            dx1[r + i] = 0.0
        linear_backward(p, g, WQ, N_EMBD, N_EMBD, self.x1, r, dq, 0, dx1, r)
        return loss

    def finish_backward(self, tokens, n):
        # Keys and values have all their gradient now: take them back to the embeddings.
        p, g = self.params, self.grads
        x0, x1, dx0, dx1, dk, dv = self.x0, self.x1, self.dx0, self.dx1, self.dk, self.dv
        for pos in range(n):
            r = pos * N_EMBD
            linear_backward(p, g, WK, N_EMBD, N_EMBD, x1, r, dk, r, dx1, r)
            linear_backward(p, g, WV, N_EMBD, N_EMBD, x1, r, dv, r, dx1, r)
            rmsnorm_backward(x1, r, self.s1[pos], dx1, r, dx0, r)
            # x0's gradient, through the first rmsnorm, lands on both embedding rows.
            de = self.de
            _clear(de, N_EMBD)
            rmsnorm_backward(x0, r, self.s0[pos], dx0, r, de, 0)
            te = WTE + tokens[pos] * N_EMBD
            pe = WPE + r
            for i in range(N_EMBD):
                g[te + i] += de[i]
                g[pe + i] += de[i]

    def loss_and_grad(self, tokens, n):
        # microgpt's training loss for one name: mean cross-entropy over n positions.
        # Adds the gradient to self.grads (the caller zeroes it between steps).
        loss = 0.0
        scale = 1.0 / n
        for pos in range(n):
            self.forward(tokens[pos], pos)
            loss += self.backward(pos, tokens[pos + 1], scale)
        self.finish_backward(tokens, n)
        return loss / n


def _clear(a, n):
    for i in range(n):
        a[i] = 0.0
