# microgpt's model (Karpathy's microgpt.py) as explicit forward and backward passes over flat
# float32 arrays, in MicroPython: the same steps, in the same order, as the C kernels
# (firmware/cmodel/cmodel.c, which explains why the backward runs while the forward walks the
# name, what each position keeps, and how more than one layer goes), for targets the C module
# is not built for.
#
# The buffers have the names of cmodel.c's work_t (one position, one layer; d<name> is its
# gradient), microgpt.py's gpt() names in brackets:
#   emb          rmsnorm(tok_emb + pos_emb)  [x: layer 0's input]; emb_rstd its 1 / rms
#   x            a layer's input, at xo of its array (layer_input)  [x, the attention's x_residual]
#   attn_in      rmsnorm(x), the input of query, key and value; attn_in_rstd its 1 / rms
#   query        [q]
#   keys, values one row of N_EMBD per layer and position  [keys[li], values[li]]
#   att          per head, the weights of positions 0..pos, head-major rows of BLOCK  [attn_weights]
#   attn_out     the heads' outputs, concatenated  [x_attn]
#   after_attn   wo attn_out + x  [x; the MLP's x_residual]
#   mlp_in       rmsnorm(after_attn); mlp_in_rstd its 1 / rms
#   hidden       relu(fc1 mlp_in)
#   after_mlp    fc2 hidden + after_attn: a layer's output (below the top, also the next one's input, inputs)
#   logits       lm_head after_mlp  [logits]
#   demb_sum     the gradient at tok_emb + pos_emb
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
        self.keys = zeros(N_LAYER * rows)
        self.values = zeros(N_LAYER * rows)
        self.inputs = zeros((N_LAYER - 1) * rows) if N_LAYER > 1 else None  # the input x of layers 1..
        # One layer's gradients at its keys, values and (with more than one layer) outputs, then inputs.
        self.dkeys = zeros(rows)
        self.dvalues = zeros(rows)
        self.dinputs = zeros(rows) if N_LAYER > 1 else None
        # The position in progress, in the layer in progress.
        self.emb = zeros(N_EMBD)
        self.attn_in = zeros(N_EMBD)
        self.emb_rstd = self.attn_in_rstd = 0.0
        self.query = zeros(N_EMBD)
        self.att = zeros(N_HEAD * BLOCK)
        self.attn_out = zeros(N_EMBD)
        self.after_attn = zeros(N_EMBD)
        self.mlp_in = zeros(N_EMBD)
        self.hidden = zeros(N_HIDDEN)
        self.after_mlp = zeros(N_EMBD)
        self.logits = zeros(VOCAB)
        self.mlp_in_rstd = 0.0
        self.dlogits = zeros(VOCAB)  # also sampling's probabilities (sample.py)
        self.dafter_mlp = zeros(N_EMBD)
        self.dhidden = zeros(N_HIDDEN)
        self.dmlp_in = zeros(N_EMBD)
        # Also, from layer_backward's end, the gradient at the layer's input x (to_input): the
        # residual passes dafter_attn to x unchanged, and keys_values_backward gathers it there.
        self.dafter_attn = zeros(N_EMBD)
        self.dattn_out = zeros(N_EMBD)
        self.dquery = zeros(N_EMBD)
        self.datt = zeros(BLOCK)  # one head's
        self.dattn_in = zeros(N_EMBD)  # one part at a time
        self.demb_sum = zeros(N_EMBD)

    @micropython.native
    def layer_input(self, layer, token, pos):
        # Layer `layer`'s input x at pos, as (array, offset): layer 0's is emb = rmsnorm(wte[token] +
        # wpe[pos]), computed here with its emb_rstd; a higher one's is what the layer below left.
        if layer:
            return self.inputs, ((layer - 1) * BLOCK + pos) * N_EMBD
        p, emb = self.params, self.emb
        te = WTE + token * N_EMBD
        pe = WPE + pos * N_EMBD
        for i in range(N_EMBD):
            emb[i] = p[te + i] + p[pe + i]
        self.emb_rstd = rmsnorm(emb, 0, emb)
        return emb, 0

    @micropython.native
    def layer_forward(self, layer, pos, x, xo):
        # One position through a layer, from its input x[xo:]: its output into after_mlp (and below
        # the top into the next layer's input); keeps this position's key and value.
        p = self.params
        w = LAYER0 + layer * LAYER_SIZE
        attn_in, keys, values, query, att, attn_out = (
            self.attn_in, self.keys, self.values, self.query, self.att, self.attn_out)
        r = layer * BLOCK * N_EMBD  # this layer's keys and values
        self.attn_in_rstd = rmsnorm(x, xo, attn_in)
        matvec(p, w + WQ, N_EMBD, attn_in, 0, query, 0)
        matvec(p, w + WK, N_EMBD, attn_in, 0, keys, r + pos * N_EMBD)
        matvec(p, w + WV, N_EMBD, attn_in, 0, values, r + pos * N_EMBD)
        for h in range(N_HEAD):
            hd = h * HEAD_DIM
            a = h * BLOCK
            top = -1e30
            for t in range(pos + 1):
                kt = r + t * N_EMBD + hd
                s = 0.0
                for j in range(HEAD_DIM):
                    s += query[hd + j] * keys[kt + j]
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
                vj = r + hd + j  # values' column j of the head: values[vj + t * N_EMBD]
                for t in range(pos + 1):
                    s += att[a + t] * values[vj + t * N_EMBD]
                attn_out[hd + j] = s
        after_attn, mlp_in, hidden, after_mlp = self.after_attn, self.mlp_in, self.hidden, self.after_mlp
        matvec(p, w + WO, N_EMBD, attn_out, 0, after_attn, 0)
        for i in range(N_EMBD):
            after_attn[i] += x[xo + i]
        self.mlp_in_rstd = rmsnorm(after_attn, 0, mlp_in)
        matvec(p, w + FC1, N_HIDDEN, mlp_in, 0, hidden, 0)
        for i in range(N_HIDDEN):
            if hidden[i] < 0.0:
                hidden[i] = 0.0
        fc2_forward(p, w + FC2, hidden, after_mlp)
        for i in range(N_EMBD):
            after_mlp[i] += after_attn[i]
        if layer + 1 < N_LAYER:
            nxt = (layer * BLOCK + pos) * N_EMBD
            inputs = self.inputs
            for i in range(N_EMBD):
                inputs[nxt + i] = after_mlp[i]

    @micropython.native
    def forward(self, token, pos):
        # One position of microgpt's gpt(): fills self.logits and this position's key and value.
        x, xo = self.layer_input(0, token, pos)
        for layer in range(N_LAYER):
            self.layer_forward(layer, pos, x, xo)
            x, xo = self.inputs, (layer * BLOCK + pos) * N_EMBD
        matvec(self.params, LM_HEAD, VOCAB, self.after_mlp, 0, self.logits, 0)

    @micropython.native
    def loss_backward(self, target, scale):
        # Cross-entropy of this position's logits against target, times `scale` (1/n for the mean
        # over the name), back through lm_head into dafter_mlp (the top layer's output). Returns the
        # unscaled loss.
        p, g = self.params, self.grads
        logits, dlogits = self.logits, self.dlogits
        top, total = exp_logits(logits, 1.0, dlogits)
        loss = math.log(total) - (logits[target] - top)
        for i in range(VOCAB):
            dlogits[i] = dlogits[i] / total * scale
        dlogits[target] -= scale
        clear(self.dafter_mlp, N_EMBD)
        linear_backward(p, g, LM_HEAD, VOCAB, self.after_mlp, 0, dlogits, 0, self.dafter_mlp, 0)
        return loss

    @micropython.native
    def layer_backward(self, layer, token, pos):
        # From dafter_mlp, the gradient at the layer's output at pos, back through layer_forward (as
        # it left the buffers), adding into the gradients: all but wk and wv (keys_values_backward's).
        p, g = self.params, self.grads
        w = LAYER0 + layer * LAYER_SIZE
        dafter_mlp, hidden, dhidden, mlp_in, dmlp_in, dafter_attn = (
            self.dafter_mlp, self.hidden, self.dhidden, self.mlp_in, self.dmlp_in, self.dafter_attn)
        attn_out, dattn_out, query, dquery, att = self.attn_out, self.dattn_out, self.query, self.dquery, self.att
        fc2_backward(p, g, w + FC2, hidden, dafter_mlp, dhidden)
        clear(dmlp_in, N_EMBD)
        linear_backward(p, g, w + FC1, N_HIDDEN, mlp_in, 0, dhidden, 0, dmlp_in, 0)
        for i in range(N_EMBD):
            dafter_attn[i] = dafter_mlp[i]
        rmsnorm_backward(mlp_in, self.mlp_in_rstd, dmlp_in, dafter_attn)
        clear(dattn_out, N_EMBD)
        linear_backward(p, g, w + WO, N_EMBD, attn_out, 0, dafter_attn, 0, dattn_out, 0)

        r = layer * BLOCK * N_EMBD  # this layer's keys and values
        c = pos * N_EMBD
        keys, values, dkeys, dvalues = self.keys, self.values, self.dkeys, self.dvalues
        for i in range(N_EMBD):
            dkeys[c + i] = 0.0  # this position's key and value get their first gradient now
            dvalues[c + i] = 0.0
        datt = self.datt
        for h in range(N_HEAD):
            hd = h * HEAD_DIM
            a = h * BLOCK
            # Through attn_out = sum_t att_t values_t: dvalues_t += att_t dattn_out, datt_t = dattn_out . values_t.
            dot = 0.0
            for t in range(pos + 1):
                vt = t * N_EMBD + hd  # dvalues' row t, head h (dkeys and dvalues hold one layer: no r)
                rvt = r + vt
                wt = att[a + t]
                s = 0.0
                for j in range(HEAD_DIM):
                    s += dattn_out[hd + j] * values[rvt + j]
                    dvalues[vt + j] += wt * dattn_out[hd + j]
                datt[t] = s
                dot += wt * s
            # Through the softmax and the 1/sqrt(head_dim) scale, into query and the keys.
            for j in range(HEAD_DIM):
                dquery[hd + j] = 0.0
            for t in range(pos + 1):
                kt = t * N_EMBD + hd
                rkt = r + kt
                dlog = att[a + t] * (datt[t] - dot) * _ATT_SCALE
                for j in range(HEAD_DIM):
                    dquery[hd + j] += dlog * keys[rkt + j]
                    dkeys[kt + j] += dlog * query[hd + j]
        dattn_in = self.dattn_in
        clear(dattn_in, N_EMBD)
        linear_backward(p, g, w + WQ, N_EMBD, self.attn_in, 0, dquery, 0, dattn_in, 0)
        self.to_input(layer, token, pos, dafter_attn, dattn_in)  # the residual: dafter_attn is also at x

    @micropython.native
    def keys_values_backward(self, layer, tokens, n):
        # The layer's keys and values have all their gradient now: take them back to its inputs.
        p, g = self.params, self.grads
        w = LAYER0 + layer * LAYER_SIZE
        attn_in, dattn_in, dkeys, dvalues = self.attn_in, self.dattn_in, self.dkeys, self.dvalues
        dx = self.dafter_attn  # the gradient at x, in dafter_attn's array (see __init__)
        for pos in range(n):
            r = pos * N_EMBD
            x, xo = self.layer_input(layer, tokens[pos], pos)
            self.attn_in_rstd = rmsnorm(x, xo, attn_in)
            clear(dattn_in, N_EMBD)
            linear_backward(p, g, w + WK, N_EMBD, attn_in, 0, dkeys, r, dattn_in, 0)
            linear_backward(p, g, w + WV, N_EMBD, attn_in, 0, dvalues, r, dattn_in, 0)
            clear(dx, N_EMBD)
            self.to_input(layer, tokens[pos], pos, dx, dattn_in)

    @micropython.native
    def to_input(self, layer, token, pos, dx, dattn_in):
        # Gradients at the layer's input x (dx) and at attn_in = rmsnorm(x) (dattn_in), as one at x:
        # for layer 0 through its RMSNorm onto the token's and the position's embedding rows (self.emb
        # must hold this position's: see layer_input); above, added into dinputs. Overwrites dx.
        rmsnorm_backward(self.attn_in, self.attn_in_rstd, dattn_in, dx)
        if layer:
            dinputs = self.dinputs
            c = pos * N_EMBD
            for i in range(N_EMBD):
                dinputs[c + i] += dx[i]
            return
        demb_sum = self.demb_sum
        clear(demb_sum, N_EMBD)
        rmsnorm_backward(self.emb, self.emb_rstd, dx, demb_sum)
        g = self.grads
        te = WTE + token * N_EMBD
        pe = WPE + pos * N_EMBD
        for i in range(N_EMBD):
            g[te + i] += demb_sum[i]
            g[pe + i] += demb_sum[i]

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
            dinputs, dafter_mlp = self.dinputs, self.dafter_mlp
            for pos in range(n):
                x, xo = self.layer_input(layer, tokens[pos], pos)
                self.layer_forward(layer, pos, x, xo)
                c = pos * N_EMBD
                for i in range(N_EMBD):
                    dafter_mlp[i] = dinputs[c + i]
                    dinputs[c + i] = 0.0  # from here on it gathers the gradient at the layer's input
                self.layer_backward(layer, tokens[pos], pos)
            self.keys_values_backward(layer, tokens, n)
        return loss / n
