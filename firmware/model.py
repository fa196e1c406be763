# microgpt's model (Karpathy's microgpt.py) as explicit forward and backward passes over flat
# float32 arrays, in MicroPython: the same steps, in the same order, as the C kernels
# (firmware/cmodel/cmodel.c, which explains why the backward runs while the forward walks the
# name, what each position keeps, and how more than one layer goes), for targets the C module
# is not built for.
#
# microgpt.py's gpt() names -> the buffers here (one position, one layer; d<name> is its gradient):
#   rmsnorm(tok_emb + pos_emb)                 x0  (layer 0's input x)
#   x (a layer's input), x_residual            x, at xo of its array (layer_input)
#   rmsnorm(x), the input of q, k, v           x1
#   q; keys[li], values[li]                    q; k, v (one row of N_EMBD per layer and position)
#   attn_logits -> attn_weights, per head      att (head-major rows of BLOCK, in place)
#   x_attn (the heads' outputs, concatenated)  o
#   linear(x_attn, wo) + x_residual            x2  (the MLP's x_residual)
#   rmsnorm(x), the MLP's input                x3
#   relu(linear(x, fc1))                       h
#   linear(x, fc2) + x_residual                x4  (a layer's output; below the top, also the next input)
#   logits                                     logits
import math

import micropython
from base import (
    ADAM_EPS,
    BETA1,
    BETA2,
    BLOCK,
    BOS,
    FC1,
    FC2,
    HEAD_DIM,
    LAYER0,
    LAYER_SIZE,
    LM_HEAD,
    N_EMBD,
    N_HEAD,
    N_HIDDEN,
    N_LAYER,
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

if N_EMBD == 16:  # microgpt.py's width: the unrolled kernels
    from kernels import fc2_backward16 as fc2_backward
    from kernels import fc2_forward16 as fc2_forward
    from kernels import linear16_backward as linear_backward
    from kernels import matvec16 as matvec
else:
    from kernels_any import fc2_backward, fc2_forward, linear_backward, matvec

_ATT_SCALE = HEAD_DIM ** -0.5


@micropython.native
def adam(p, g, m, v, step, unbias):
    # microgpt's Adam with train.adam_factors' constants (m and v kept divided by 1 - beta);
    # zeroes the gradient for the next step.
    b1, b2, eps, sqrt = BETA1, BETA2, ADAM_EPS, math.sqrt
    for i in range(len(p)):
        gi = g[i]
        mi = b1 * m[i] + gi
        vi = b2 * v[i] + gi * gi
        m[i] = mi
        v[i] = vi
        p[i] -= step * mi / (sqrt(vi * unbias) + eps)
        g[i] = 0.0


@micropython.native
def rmsnorm(x, xo, y):
    # y = x[xo:xo+N_EMBD] / rms(x) (y may be x); returns the scale 1/rms, which the backward needs.
    ss = 0.0
    for i in range(N_EMBD):
        xi = x[xo + i]
        ss += xi * xi
    s = (ss / N_EMBD + RMS_EPS) ** -0.5
    for i in range(N_EMBD):
        y[i] = x[xo + i] * s
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
        rows = BLOCK * N_EMBD
        # Kept per layer and position until the name is done (rows of N_EMBD, position-major).
        self.k = zeros(N_LAYER * rows)
        self.v = zeros(N_LAYER * rows)
        self.inputs = zeros((N_LAYER - 1) * rows) if N_LAYER > 1 else None  # the input x of layers 1..
        # One layer's gradients at its keys, values and (with more than one layer) outputs, then inputs.
        self.dk = zeros(rows)
        self.dv = zeros(rows)
        self.dinputs = zeros(rows) if N_LAYER > 1 else None
        # Scratch for the position being worked on.
        self.x0 = zeros(N_EMBD)  # rmsnorm(token + position embedding): layer 0's input
        self.x1 = zeros(N_EMBD)  # rmsnorm(x): input of q, k, v
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
        self.dx2 = zeros(N_EMBD)  # in keys_values_backward, the gradient at x (reused: dx2 is free by then)
        self.do = zeros(N_EMBD)
        self.dq = zeros(N_EMBD)
        self.datt = zeros(BLOCK)  # d(attention weight) of one head
        self.dx1 = zeros(N_EMBD)  # gradient at x1, one part at a time
        self.de = zeros(N_EMBD)  # gradient at the embedding sum

    @micropython.native
    def layer_input(self, layer, token, pos):
        # Layer `layer`'s input x at pos, as (array, offset): layer 0's is x0 = rmsnorm(wte[token] +
        # wpe[pos]), computed here with its scale s0; a higher one's is what the layer below left.
        if layer:
            return self.inputs, ((layer - 1) * BLOCK + pos) * N_EMBD
        p, x0 = self.params, self.x0
        te = WTE + token * N_EMBD
        pe = WPE + pos * N_EMBD
        for i in range(N_EMBD):
            x0[i] = p[te + i] + p[pe + i]
        self.s0 = rmsnorm(x0, 0, x0)
        return x0, 0

    @micropython.native
    def layer_forward(self, layer, pos, x, xo):
        # One position through a layer, from its input x[xo:]: its output into x4 (and below the
        # top into the next layer's input); keeps this position's k and v.
        p = self.params
        w = LAYER0 + layer * LAYER_SIZE
        x1, k, v, q, att, o = self.x1, self.k, self.v, self.q, self.att, self.o
        r = layer * BLOCK * N_EMBD  # this layer's keys and values
        self.s1 = rmsnorm(x, xo, x1)
        matvec(p, w + WQ, N_EMBD, x1, 0, q, 0)
        matvec(p, w + WK, N_EMBD, x1, 0, k, r + pos * N_EMBD)
        matvec(p, w + WV, N_EMBD, x1, 0, v, r + pos * N_EMBD)
        for h in range(N_HEAD):
            hd = h * HEAD_DIM
            a = h * BLOCK
            top = -1e30
            for t in range(pos + 1):
                kt = r + t * N_EMBD + hd
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
                vj = r + hd + j  # values' column j of the head: v[vj + t * N_EMBD]
                for t in range(pos + 1):
                    s += att[a + t] * v[vj + t * N_EMBD]
                o[hd + j] = s
        x2, x3, hid, x4 = self.x2, self.x3, self.h, self.x4
        matvec(p, w + WO, N_EMBD, o, 0, x2, 0)
        for i in range(N_EMBD):
            x2[i] += x[xo + i]
        self.s3 = rmsnorm(x2, 0, x3)
        matvec(p, w + FC1, N_HIDDEN, x3, 0, hid, 0)
        for i in range(N_HIDDEN):
            if hid[i] < 0.0:
                hid[i] = 0.0
        fc2_forward(p, w + FC2, hid, x4)
        for i in range(N_EMBD):
            x4[i] += x2[i]
        if layer + 1 < N_LAYER:
            nxt = (layer * BLOCK + pos) * N_EMBD
            inputs = self.inputs
            for i in range(N_EMBD):
                inputs[nxt + i] = x4[i]

    @micropython.native
    def forward(self, token, pos):
        # One position of microgpt's gpt(): fills self.logits and this position's k, v.
        x, xo = self.layer_input(0, token, pos)
        for layer in range(N_LAYER):
            self.layer_forward(layer, pos, x, xo)
            x, xo = self.inputs, (layer * BLOCK + pos) * N_EMBD
        matvec(self.params, LM_HEAD, VOCAB, self.x4, 0, self.logits, 0)

    @micropython.native
    def loss_backward(self, target, scale):
        # Cross-entropy of this position's logits against target, times `scale` (1/n for the mean
        # over the name), back through lm_head into dx4 (the top layer's output). Returns the
        # unscaled loss.
        p, g = self.params, self.grads
        logits, dl = self.logits, self.dlogits
        top, total = exp_logits(logits, 1.0, dl)
        loss = math.log(total) - (logits[target] - top)
        for i in range(VOCAB):
            dl[i] = dl[i] / total * scale
        dl[target] -= scale
        clear(self.dx4, N_EMBD)
        linear_backward(p, g, LM_HEAD, VOCAB, self.x4, 0, dl, 0, self.dx4, 0)
        return loss

    @micropython.native
    def layer_backward(self, layer, token, pos):
        # From dx4, the gradient at the layer's output at pos, back through layer_forward (as it
        # left the buffers), adding into the gradients: all but wk and wv (keys_values_backward's).
        p, g = self.params, self.grads
        w = LAYER0 + layer * LAYER_SIZE
        dx4, hid, dh, x3, dx3, dx2 = self.dx4, self.h, self.dh, self.x3, self.dx3, self.dx2
        o, do, q, dq, att = self.o, self.do, self.q, self.dq, self.att
        fc2_backward(p, g, w + FC2, hid, dx4, dh)
        clear(dx3, N_EMBD)
        linear_backward(p, g, w + FC1, N_HIDDEN, x3, 0, dh, 0, dx3, 0)
        for i in range(N_EMBD):
            dx2[i] = dx4[i]
        rmsnorm_backward(x3, self.s3, dx3, dx2)
        clear(do, N_EMBD)
        linear_backward(p, g, w + WO, N_EMBD, o, 0, dx2, 0, do, 0)

        r = layer * BLOCK * N_EMBD  # this layer's keys and values
        c = pos * N_EMBD
        k, v, dk, dv = self.k, self.v, self.dk, self.dv
        for i in range(N_EMBD):
            dk[c + i] = 0.0  # this position's key and value get their first gradient now
            dv[c + i] = 0.0
        datt = self.datt
        for h in range(N_HEAD):
            hd = h * HEAD_DIM
            a = h * BLOCK
            # Through out = sum_t w_t v_t: dv_t += w_t do, and dw_t = do . v_t.
            dot = 0.0
            for t in range(pos + 1):
                vt = t * N_EMBD + hd  # dv's row t, head h (dk and dv hold one layer: no r)
                rvt = r + vt
                wt = att[a + t]
                s = 0.0
                for j in range(HEAD_DIM):
                    s += do[hd + j] * v[rvt + j]
                    dv[vt + j] += wt * do[hd + j]
                datt[t] = s
                dot += wt * s
            # Through the softmax and the 1/sqrt(head_dim) scale, into q and the keys.
            for j in range(HEAD_DIM):
                dq[hd + j] = 0.0
            for t in range(pos + 1):
                kt = t * N_EMBD + hd
                rkt = r + kt
                dlog = att[a + t] * (datt[t] - dot) * _ATT_SCALE
                for j in range(HEAD_DIM):
                    dq[hd + j] += dlog * k[rkt + j]
                    dk[kt + j] += dlog * q[hd + j]
        dx1 = self.dx1
        clear(dx1, N_EMBD)
        linear_backward(p, g, w + WQ, N_EMBD, self.x1, 0, dq, 0, dx1, 0)
        self.to_input(layer, token, pos, dx2, dx1)  # dx2 is also the gradient at x (residual)

    @micropython.native
    def keys_values_backward(self, layer, tokens, n):
        # The layer's keys and values have all their gradient now: take them back to its inputs.
        p, g = self.params, self.grads
        w = LAYER0 + layer * LAYER_SIZE
        x1, dx, dx1, dk, dv = self.x1, self.dx2, self.dx1, self.dk, self.dv
        for pos in range(n):
            r = pos * N_EMBD
            x, xo = self.layer_input(layer, tokens[pos], pos)
            self.s1 = rmsnorm(x, xo, x1)
            clear(dx1, N_EMBD)
            linear_backward(p, g, w + WK, N_EMBD, x1, 0, dk, r, dx1, 0)
            linear_backward(p, g, w + WV, N_EMBD, x1, 0, dv, r, dx1, 0)
            clear(dx, N_EMBD)
            self.to_input(layer, tokens[pos], pos, dx, dx1)

    @micropython.native
    def to_input(self, layer, token, pos, dx, dx1):
        # Gradients at the layer's input x (dx) and at x1 = rmsnorm(x) (dx1), as one at x: for
        # layer 0 through its RMSNorm onto the token's and the position's embedding rows (self.x0
        # must hold this position's: see layer_input); above, added into dinputs. Overwrites dx.
        rmsnorm_backward(self.x1, self.s1, dx1, dx)
        if layer:
            di = self.dinputs
            c = pos * N_EMBD
            for i in range(N_EMBD):
                di[c + i] += dx[i]
            return
        de = self.de
        clear(de, N_EMBD)
        rmsnorm_backward(self.x0, self.s0, dx, de)
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
        top = N_LAYER - 1
        for pos in range(n):
            self.forward(tokens[pos], pos)
            loss += self.loss_backward(tokens[pos + 1], scale)
            self.layer_backward(top, tokens[pos], pos)
        self.keys_values_backward(top, tokens, n)
        for layer in range(top - 1, -1, -1):  # its outputs' gradient is complete: walk the name again
            di, dx4 = self.dinputs, self.dx4
            for pos in range(n):
                x, xo = self.layer_input(layer, tokens[pos], pos)
                self.layer_forward(layer, pos, x, xo)
                c = pos * N_EMBD
                for i in range(N_EMBD):
                    dx4[i] = di[c + i]
                    di[c + i] = 0.0  # from here on it gathers the gradient at the layer's input
                self.layer_backward(layer, tokens[pos], pos)
            self.keys_values_backward(layer, tokens, n)
        return loss / n
