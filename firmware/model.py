# microgpt's model (Karpathy's microgpt.py) as explicit forward and backward passes over flat
# float32 arrays, in MicroPython: the same steps, in the same order, as the C kernels
# (firmware/cmodel/cmodel.c, which explains why the backward runs while the forward walks the
# name and what each position keeps), for targets the C module is not built for.
#
# microgpt.py's gpt() names -> the buffers here (one position; d<name> is its gradient):
#   rmsnorm(tok_emb + pos_emb)                 x0  (attention's x_residual)
#   rmsnorm(x), the input of q, k, v           x1
#   q; keys[li], values[li]                    q; k, v (one row of N_EMBD per position)
#   attn_logits -> attn_weights, per head      att (head-major rows of BLOCK, in place)
#   x_attn (the heads' outputs, concatenated)  o
#   linear(x_attn, wo) + x_residual            x2  (the MLP's x_residual)
#   rmsnorm(x), the MLP's input                x3
#   relu(linear(x, fc1))                       h
#   linear(x, fc2) + x_residual                x4
#   logits                                     logits
import math

import micropython
from base import (
    BLOCK,
    BOS,
    FC1,
    FC2,
    HEAD_DIM,
    LM_HEAD,
    N_EMBD,
    N_HEAD,
    N_HIDDEN,
    RMS_EPS,
    VOCAB,
    WK,
    WO,
    WPE,
    WQ,
    WTE,
    WV,
    clear,
    exp_logits,
    zeros,
)
from kernels import fc2_backward, fc2_forward, linear16_backward, matvec16

_ATT_SCALE = 0.5  # 1 / sqrt(HEAD_DIM)


@micropython.native
def rmsnorm(x, y):
    # y = x / rms(x) (y may be x); returns the scale 1/rms, which the backward needs.
    ss = 0.0
    for i in range(N_EMBD):
        ss += x[i] * x[i]
    s = (ss / N_EMBD + RMS_EPS) ** -0.5
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
    def __init__(self, params, grads):
        self.params, self.grads = params, grads  # N_PARAMS float32 each: the weights and their gradient
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
        self.dlogits = zeros(VOCAB)  # also sampling's probabilities (sample.py)
        self.dx4 = zeros(N_EMBD)
        self.dh = zeros(N_HIDDEN)
        self.dx3 = zeros(N_EMBD)
        self.dx2 = zeros(N_EMBD)  # in finish_backward, the gradient at x0 (reused: dx2 is free by then)
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
    def backward(self, token, pos, target, scale):
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
        clear(dx4, N_EMBD)
        linear16_backward(p, g, LM_HEAD, VOCAB, x4, 0, dl, 0, dx4, 0)
        fc2_backward(p, g, FC2, hid, dx4, dh)
        clear(dx3, N_EMBD)
        linear16_backward(p, g, FC1, N_HIDDEN, x3, 0, dh, 0, dx3, 0)
        for i in range(N_EMBD):
            dx2[i] = dx4[i]
        rmsnorm_backward(x3, self.s3, dx3, dx2)
        clear(do, N_EMBD)
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
        clear(dx1, N_EMBD)
        linear16_backward(p, g, WQ, N_EMBD, self.x1, 0, dq, 0, dx1, 0)
        self.to_embeddings(token, pos, dx2, dx1)  # dx2 is also the gradient at x0 (residual)
        return loss

    @micropython.native
    def finish_backward(self, tokens, n):
        # Keys and values have all their gradient now: take them back to the embeddings.
        p, g = self.params, self.grads
        x1, dx0, dx1, dk, dv = self.x1, self.dx2, self.dx1, self.dk, self.dv
        for pos in range(n):
            r = pos * N_EMBD
            self.embed(tokens[pos], pos)
            clear(dx1, N_EMBD)
            linear16_backward(p, g, WK, N_EMBD, x1, 0, dk, r, dx1, 0)
            linear16_backward(p, g, WV, N_EMBD, x1, 0, dv, r, dx1, 0)
            clear(dx0, N_EMBD)
            self.to_embeddings(tokens[pos], pos, dx0, dx1)

    @micropython.native
    def to_embeddings(self, token, pos, dx0, dx1):
        # Gradients at x0 (dx0) and at x1 = rmsnorm(x0) (dx1), through both RMSNorms, onto the
        # token's and the position's embedding rows; self.x0, self.x1 must hold this position's
        # (see embed). Overwrites dx0.
        rmsnorm_backward(self.x1, self.s1, dx1, dx0)
        de = self.de
        clear(de, N_EMBD)
        rmsnorm_backward(self.x0, self.s0, dx0, de)
        g = self.grads
        te = WTE + token * N_EMBD
        pe = WPE + pos * N_EMBD
        for i in range(N_EMBD):
            g[te + i] += de[i]
            g[pe + i] += de[i]

    @micropython.native
    def loss_and_grad(self, name):
        # microgpt's training loss for one name (bytes, a-z): the mean cross-entropy of its tokens
        # BOS, letters, BOS over the first BLOCK positions. Adds the gradient to self.grads (the
        # caller zeroes it between steps).
        tokens = [BOS]
        for c in name:
            if not 97 <= c <= 122:
                raise ValueError("name must be letters a-z")
            tokens.append(c - 97)
        tokens.append(BOS)
        n = min(BLOCK, len(tokens) - 1)
        loss = 0.0
        scale = 1.0 / n
        for pos in range(n):
            self.forward(tokens[pos], pos)
            loss += self.backward(tokens[pos], pos, tokens[pos + 1], scale)
        self.finish_backward(tokens, n)
        return loss / n
