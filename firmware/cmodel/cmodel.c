// microgpt's training step in C, for the chip: the same forward, backward and Adam as
// firmware/model.py, over the same float32 arrays, as a MicroPython
// native module (.mpy). In MicroPython every float is a heap object; here they are registers.
//
// Built by scripts/build_cmodel.py (clang-22 for xtensawin and x64, linked into .mpy by
// microgpt/natmod.py). Freestanding: no libc, no libm; its float arithmetic (Newton steps for
// division and square root, series for exp and log) is float_math.h's, and MicroPython's ABI
// (the module's objects, its function table, the argument checks) mp_abi.h's.
//
// Laid out as llm.c's train_gpt2.c: the constants, the layers, the model, the entry points. Each
// layer a *_forward / *_backward pair, outputs first, shapes in brackets; a backward adds (+=)
// into the gradients it is given, which the caller clears where a gradient starts, and its
// comments quote the forward lines it differentiates. The model's shape (microgpt.py's n_embd,
// n_head, n_layer, block_size) is given at run time (shape()); matrix rows go four at a time
// (inner sizes multiples of 4).

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "float_math.h"

#define INLINE static inline __attribute__((always_inline))
#define NOINLINE static __attribute__((noinline))  // one copy of code LLVM would repeat at each call

// ---- The model: its shape, given at run time, and its fixed vocabulary ----
#define VOCAB 27
#define BOS 26  // begins and ends every name; a-z are 0-25
#define MAX_EMBD 64  // hidden units are listed in bytes (mlp_forward's active): 4 n_embd <= 256
#define MAX_HEAD_DIM 16  // a head's vectors sit in locals
#define MAX_BLOCK 255  // a name's tokens sit in a local
#define RMS_EPS 1e-5f
#define BETA1 0.85f
#define BETA2 0.99f
#define ADAM_EPS 1e-8f

typedef struct {
    int n_embd, n_head, n_layer, block_size;  // microgpt.py's knobs (firmware/base.py has the same)
    int head_dim, n_hidden;                   // n_embd / n_head, 4 n_embd
    float inv_embd, att_scale;                // 1 / n_embd, 1 / sqrt(head_dim)
    // Offsets into the flat parameters, in microgpt.py's state_dict order, each matrix [out][in]:
    // wte at 0, wpe, lm_head, then n_layer layers of layer_size floats from layer0.
    int wpe, lm_head, layer0, layer_size, n_params;
    int work;  // floats of the work array (work_layout)
} shape_t;

// A layer's matrices, at these multiples of n_embd^2 from its start: wq, wk, wv, wo [n_embd][n_embd],
// fc1 [n_hidden][n_embd], fc2 [n_embd][n_hidden].
#define WQ 0
#define WK 1
#define WV 2
#define WO 3
#define FC1 4
#define FC2 8
#define LAYER_MATRICES 12

static shape_t S;  // set by shape(); microgpt.py's (16, 4, 1, 16) from the import on

// for i from 0 to n - 1, n a multiple of 4 (as is every size n_embd bounds), four at a time:
// LLVM unrolls the inner loop, where a plain loop with a size known only at run time pays its
// step and branch on every element.
#define FOR4(i, n) for (int i##4 = 0; i##4 < (n); i##4 += 4) for (int i = i##4; i < i##4 + 4; i++)

static void clear(float *a, int n) {  // n a multiple of 4
    FOR4(i, n) a[i] = 0.0f;
}

// ---- The layers ----
// A matrix's rows go four at a time, so each input is loaded once per four multiply-adds; its
// inner size (nin) must be a multiple of 4.

static void embed_forward(float *out, const float *wte, const float *wpe, int token, int pos) {
    // out [n_embd] = wte [VOCAB][n_embd] row token + wpe [block_size][n_embd] row pos
    int n = S.n_embd;
    const float *te = wte + token * n, *pe = wpe + pos * n;
    FOR4(i, n) out[i] = te[i] + pe[i];
}

static void embed_backward(float *dwte, float *dwpe, const float *dout, int token, int pos) {
    int n = S.n_embd;
    float *te = dwte + token * n, *pe = dwpe + pos * n;
    FOR4(i, n) {
        // out[i] = te[i] + pe[i]
        te[i] += dout[i];
        pe[i] += dout[i];
    }
}

// Each size of the default shape (n_embd 16, head_dim 4) goes into the loops it bounds as a
// constant (DEFAULT_OR), so that LLVM lays them out as when the shape was fixed; any other
// shape runs the same code with its sizes. Each copy costs code, and the ESP32's executable RAM
// is nearly full (v1.25 leaves 14,336 bytes in one piece, 14,332 for this module's code): the copies
// kept are those that pay (measured: a step without the attention's costs 4% more, without
// the MLP's about 2%, without RMSNorm's 1.2%).
#define DEFAULT_OR(size, value, call) ((size) == (value) ? call(value) : call(size))

INLINE void rmsnorm_forward_n(float *out, float *rstd, const float *inp, int n) {
    float ss = 0.0f;
    for (int i = 0; i < n; i++) MADD(ss, inp[i], inp[i]);
    float s = rsqrt(ss * S.inv_embd + RMS_EPS);
    for (int i = 0; i < n; i++) out[i] = inp[i] * s;
    *rstd = s;
}

static void rmsnorm_forward(float *out, float *rstd, const float *inp) {
    // out [n_embd] = inp [n_embd] * rstd, rstd = 1 / sqrt(mean(inp^2) + eps); out may be inp.
#define CALL(n) rmsnorm_forward_n(out, rstd, inp, n)
    DEFAULT_OR(S.n_embd, 16, CALL);
#undef CALL
}

INLINE void rmsnorm_backward_n(float *dinp, const float *dout, const float *out, float rstd, int n) {
    float yd = 0.0f;
    for (int i = 0; i < n; i++) MADD(yd, out[i], dout[i]);
    yd *= S.inv_embd;
    for (int i = 0; i < n; i += 4)  // four at a time: LLVM unrolls it (not the plain loop)
        for (int k = i; k < i + 4; k++) dinp[k] += rstd * (dout[k] - out[k] * yd);
}

static void rmsnorm_backward(float *dinp, const float *dout, const float *out, float rstd) {
    // out[i] = inp[i] * s, with s = rstd a function of all of inp => written with the output,
    // dinp += rstd * (dout - out * mean(out * dout))
#define CALL(n) rmsnorm_backward_n(dinp, dout, out, rstd, n)
    DEFAULT_OR(S.n_embd, 16, CALL);
#undef CALL
}

INLINE void linear_forward_n(float *out, const float *inp, const float *w, int nout, int nin) {
    // out [nout] = w [nout][nin] inp [nin]; each out[i] summed over j in order, as a dot product.
    int i = 0;
    for (; i + 4 <= nout; i += 4, w += 4 * nin) {
        const float *w0 = w, *w1 = w0 + nin, *w2 = w1 + nin, *w3 = w2 + nin, *x = inp, *end = inp + nin;
        float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
        for (; x < end; x += 4, w0 += 4, w1 += 4, w2 += 4, w3 += 4)
            for (int k = 0; k < 4; k++) {
                MADD(s0, w0[k], x[k]);
                MADD(s1, w1[k], x[k]);
                MADD(s2, w2[k], x[k]);
                MADD(s3, w3[k], x[k]);
            }
        out[i] = s0;
        out[i + 1] = s1;
        out[i + 2] = s2;
        out[i + 3] = s3;
    }
    for (; i < nout; i++, w += nin) {
        float s = 0.0f;
        for (int j = 0; j < nin; j++) MADD(s, w[j], inp[j]);
        out[i] = s;
    }
}

static void linear_forward(float *out, const float *inp, const float *w, int nout, int nin) {
#define CALL(n) linear_forward_n(out, inp, w, nout, n)
    DEFAULT_OR(nin, 16, CALL);
#undef CALL
}

static void rows_backward(float *dinp, float *g0, float *g1, float *g2, float *g3, const float *w0,
                          const float *w1, const float *w2, const float *w3, const float *d, const float *inp,
                          int nin) {
    // Four rows of linear_backward: dinp [nin] += w0 d[0] + ... + w3 d[3], each dinp[j] in that
    // order; g0 [nin] += d[0] inp, ..., g3 += d[3] inp. Two passes, so each keeps few pointers.
    float d0 = d[0], d1 = d[1], d2 = d[2], d3 = d[3];
    const float *end = inp + nin;
    for (float *dx = dinp; dx < dinp + nin; dx += 4, w0 += 4, w1 += 4, w2 += 4, w3 += 4)
        for (int k = 0; k < 4; k++) {
            float s = dx[k];
            MADD(s, w0[k], d0);
            MADD(s, w1[k], d1);
            MADD(s, w2[k], d2);
            MADD(s, w3[k], d3);
            dx[k] = s;
        }
    for (const float *x = inp; x < end; x += 4, g0 += 4, g1 += 4, g2 += 4, g3 += 4)
        for (int k = 0; k < 4; k++) {
            MADD(g0[k], d0, x[k]);
            MADD(g1[k], d1, x[k]);
            MADD(g2[k], d2, x[k]);
            MADD(g3[k], d3, x[k]);
        }
}

INLINE void linear_backward_n(float *dinp, float *dw, const float *dout, const float *inp, const float *w,
                              const uint8_t *rows, int nrows, int nin) {
    // MADD(s, w[j], inp[j]); out[i] = s => dw += dout inp^T, dinp += w^T dout, over the rows of
    // w [.][nin] listed in rows [nrows] (0..nrows-1 when rows is NULL), dout [nrows] one per row
    // listed; each dinp[j] gathers its rows in order.
    int i = 0;
    for (; i + 4 <= nrows; i += 4) {
        int r0 = rows ? rows[i] : i, r1 = rows ? rows[i + 1] : i + 1;
        int r2 = rows ? rows[i + 2] : i + 2, r3 = rows ? rows[i + 3] : i + 3;
        rows_backward(dinp, dw + r0 * nin, dw + r1 * nin, dw + r2 * nin, dw + r3 * nin, w + r0 * nin, w + r1 * nin,
                      w + r2 * nin, w + r3 * nin, dout + i, inp, nin);
    }
    for (; i < nrows; i++) {
        int r = (rows ? rows[i] : i) * nin;
        float d = dout[i];
        for (int j = 0; j < nin; j++) {
            MADD(dinp[j], w[r + j], d);
            MADD(dw[r + j], d, inp[j]);
        }
    }
}

static void linear_backward(float *dinp, float *dw, const float *dout, const float *inp, const float *w,
                            const uint8_t *rows, int nrows, int nin) {
#define CALL(n) linear_backward_n(dinp, dw, dout, inp, w, rows, nrows, n)
    DEFAULT_OR(nin, 16, CALL);
#undef CALL
}

static void softmax_forward(float *probs, float *max, float *sum, const float *logits, int n) {
    // probs [n] = exp(logits - max) / sum, shifted by the max so exp cannot overflow; probs may
    // be logits. Its backward is in its users': crossentropy_backward, attention_backward.
    float top = logits[0], total = 0.0f;
    for (int i = 1; i < n; i++)
        if (logits[i] > top) top = logits[i];
    for (int i = 0; i < n; i++) {
        float e = exp_neg(logits[i] - top);
        probs[i] = e;
        total += e;
    }
    scale(probs, n, total);
    *max = top;
    *sum = total;
}

INLINE void attention_forward_hs(float *out, float *att, const float *query, const float *keys, const float *values,
                                 int pos, int hs) {
    // out [n_embd]: per head h, sum over t <= pos of att[h][t] * values[t], the heads concatenated;
    // att [n_head][block_size]: per head, softmax over t <= pos of query . keys[t] / sqrt(head_dim);
    // query [n_embd]; keys, values [block_size][n_embd], rows 0..pos. Heads are head_dim-wide slices,
    // their query and output in locals while t runs.
    int n = S.n_embd;
    for (int h = 0; h < S.n_head; h++) {
        int hd = h * hs;
        float *a = att + h * S.block_size, max, sum, qh[MAX_HEAD_DIM], o[MAX_HEAD_DIM];
        for (int j = 0; j < hs; j++) qh[j] = query[hd + j];
        for (int t = 0; t <= pos; t++) {
            const float *k = keys + t * n + hd;
            float s = 0.0f;
            for (int j = 0; j < hs; j++) MADD(s, qh[j], k[j]);
            a[t] = s * S.att_scale;
        }
        softmax_forward(a, &max, &sum, a, pos + 1);
        for (int j = 0; j < hs; j++) o[j] = 0.0f;
        for (int t = 0; t <= pos; t++) {
            const float *v = values + t * n + hd;
            for (int j = 0; j < hs; j++) MADD(o[j], a[t], v[j]);
        }
        for (int j = 0; j < hs; j++) out[hd + j] = o[j];
    }
}

INLINE void attention_backward_hs(float *dquery, float *dkeys, float *dvalues, float *datt, const float *dout,
                                  const float *query, const float *keys, const float *values, const float *att, int pos,
                                  int hs) {
    // dkeys, dvalues [block_size][n_embd] as keys, values; datt [block_size]: scratch, one head's
    // gradient at its weights. Writes dquery.
    int n = S.n_embd;
    for (int h = 0; h < S.n_head; h++) {
        int hd = h * hs;
        const float *a = att + h * S.block_size;
        float d[MAX_HEAD_DIM], qh[MAX_HEAD_DIM], dqh[MAX_HEAD_DIM];
        for (int j = 0; j < hs; j++) {
            d[j] = dout[hd + j];
            qh[j] = query[hd + j];
            dqh[j] = 0.0f;
        }
        // MADD(o[j], a[t], v[j]); out[hd + j] = o[j]
        // => dvalues[t] += a[t] dout, datt[t] = dout . values[t]
        float dot = 0.0f;  // sum_t a[t] * datt[t]
        for (int t = 0; t <= pos; t++) {
            const float *v = values + t * n + hd;
            float *dv = dvalues + t * n + hd, s = 0.0f;
            for (int j = 0; j < hs; j++) {
                MADD(s, d[j], v[j]);
                MADD(dv[j], a[t], d[j]);
            }
            datt[t] = s;
            MADD(dot, a[t], s);
        }
        // softmax_forward(a, &max, &sum, a, pos + 1) => d(score t) = a[t] (datt[t] - dot);
        // MADD(s, qh[j], k[j]); a[t] = s * att_scale => on to query and keys[t], times att_scale
        for (int t = 0; t <= pos; t++) {
            const float *k = keys + t * n + hd;
            float *dk = dkeys + t * n + hd, ds = a[t] * (datt[t] - dot) * S.att_scale;
            for (int j = 0; j < hs; j++) {
                MADD(dqh[j], ds, k[j]);
                MADD(dk[j], ds, qh[j]);
            }
        }
        for (int j = 0; j < hs; j++) dquery[hd + j] = dqh[j];
    }
}

static void attention_forward(float *out, float *att, const float *query, const float *keys, const float *values,
                              int pos) {
#define CALL(hs) attention_forward_hs(out, att, query, keys, values, pos, hs)
    DEFAULT_OR(S.head_dim, 4, CALL);
#undef CALL
}

static void attention_backward(float *dquery, float *dkeys, float *dvalues, float *datt, const float *dout,
                               const float *query, const float *keys, const float *values, const float *att, int pos) {
#define CALL(hs) attention_backward_hs(dquery, dkeys, dvalues, datt, dout, query, keys, values, att, pos, hs)
    DEFAULT_OR(S.head_dim, 4, CALL);
#undef CALL
}

static int relu_forward(float *hidden, uint8_t *active, int n) {
    // hidden [n] = relu(hidden), kept as its nonzero values only: hidden[k] = the k-th positive entry,
    // active[k] its index; returns how many. The zeros (about half) take no part in fc2 or in fc1's backward.
    int m = 0;
    for (int i = 0; i < n; i++) {
        float v = hidden[i];
        if (v > 0.0f) {
            hidden[m] = v;
            active[m++] = (uint8_t)i;
        }
    }
    return m;
}

INLINE void mlp_forward_n(float *out, float *hidden, uint8_t *active, int *nactive, const float *inp, const float *fc1,
                          const float *fc2, int n) {
    // hidden = relu(fc1 [n_hidden][n_embd] inp [n_embd]), kept as relu_forward leaves it (active [nactive]);
    // out [n_embd] = fc2 [n_embd][n_hidden] hidden, over the active columns in order.
    int nh = 4 * n;
    linear_forward(hidden, inp, fc1, nh, n);
    int m = *nactive = relu_forward(hidden, active, nh);
    for (int i = 0; i < n; i += 4) {
        const float *w = fc2 + i * nh;
        float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
        for (int k = 0; k < m; k++) {
            const float *c = w + active[k];
            float x = hidden[k];
            MADD(s0, c[0], x);
            MADD(s1, c[nh], x);
            MADD(s2, c[2 * nh], x);
            MADD(s3, c[3 * nh], x);
        }
        out[i] = s0;
        out[i + 1] = s1;
        out[i + 2] = s2;
        out[i + 3] = s3;
    }
}

INLINE void mlp_backward_n(float *dinp, float *dfc1, float *dfc2, float *dhidden, const float *dout, const float *inp,
                           const float *hidden, const uint8_t *active, int nactive, const float *fc1, const float *fc2,
                           int n) {
    // dhidden [nactive]: scratch, the gradient at the active hidden.
    int nh = 4 * n;
    // MADD(s0, c[0], x) ... over the active columns => dfc2[:, j] += dout hidden[k], dhidden[k] = fc2[:, j] . dout
    // (j = active[k]), four rows of fc2 at a time; relu keeps the gradient of the positive entries
    // only, which are the active ones.
    for (int k = 0; k < nactive; k++) dhidden[k] = 0.0f;
    for (int i = 0; i < n; i += 4) {
        const float *c = fc2 + i * nh;
        float *g = dfc2 + i * nh;
        float d0 = dout[i], d1 = dout[i + 1], d2 = dout[i + 2], d3 = dout[i + 3];
        for (int k = 0; k < nactive; k++) {
            const float *cj = c + active[k];
            float *gj = g + active[k], s = dhidden[k], hk = hidden[k];
            MADD(s, cj[0], d0);
            MADD(s, cj[nh], d1);
            MADD(s, cj[2 * nh], d2);
            MADD(s, cj[3 * nh], d3);
            dhidden[k] = s;
            MADD(gj[0], d0, hk);
            MADD(gj[nh], d1, hk);
            MADD(gj[2 * nh], d2, hk);
            MADD(gj[3 * nh], d3, hk);
        }
    }
    // linear_forward(hidden, inp, fc1, n_hidden, n_embd), its active rows
    linear_backward(dinp, dfc1, dhidden, inp, fc1, active, nactive, n);
}

static void mlp_forward(float *out, float *hidden, uint8_t *active, int *nactive, const float *inp, const float *fc1,
                        const float *fc2) {
#define CALL(n) mlp_forward_n(out, hidden, active, nactive, inp, fc1, fc2, n)
    DEFAULT_OR(S.n_embd, 16, CALL);
#undef CALL
}

static void mlp_backward(float *dinp, float *dfc1, float *dfc2, float *dhidden, const float *dout, const float *inp,
                         const float *hidden, const uint8_t *active, int nactive, const float *fc1, const float *fc2) {
#define CALL(n) mlp_backward_n(dinp, dfc1, dfc2, dhidden, dout, inp, hidden, active, nactive, fc1, fc2, n)
    DEFAULT_OR(S.n_embd, 16, CALL);
#undef CALL
}

static float crossentropy_forward(float *probs, const float *logits, int target) {
    // probs [VOCAB] = softmax(logits [VOCAB]); returns -log probs[target], as log(sum) - (logits[target] - max).
    float max, sum;
    softmax_forward(probs, &max, &sum, logits, VOCAB);
    return log_pos(sum) - (logits[target] - max);
}

static void crossentropy_backward(float *dlogits, const float *probs, int target, float dloss) {
    // softmax_forward(probs, &max, &sum, logits, VOCAB); return log_pos(sum) - (logits[target] - max)
    // => dlogits = (probs - onehot(target)) * dloss. Writes dlogits.
    for (int i = 0; i < VOCAB; i++) dlogits[i] = probs[i] * dloss;
    dlogits[target] -= dloss;
}

// Adam's step for one weight: p + num / (sqrt(x) + eps), x = v * unbias >= 0, num = -step m.
#if defined(__xtensa__)
static inline bool adam_short_holds(float x) {
    // x > 2^-27, so sqrt(x) > 2^13 eps: read from x's bits (in order as the values, x >= 0),
    // which keeps an FPU register free for adam_short_run's constants.
    bits_t b = {x};
    return b.u > 0x32000000u;
}

INLINE float adam_short(float p, float num, float x) {
    // adam_short_holds(x). With r = 1/sqrt(x) and e = eps r, 1/(sqrt(x) + eps) = r (1 - e + e^2 ...);
    // e < 2^-13, so r - eps r^2 is exact to a quarter of float rounding. It folds into rsqrt's last Newton
    // step: r (1.5 + r (-x/2 r - eps)), within 1.3e-7; its product with num lands on p in one
    // rounding (madd.s).
    float r = rsqrt_guess(x), nh = -0.5f * x;
    for (int i = 0; i < 2; i++) r = r * fma_(nh * r, r, 1.5f);
    return fma_(num, r * fma_(fma_(nh, r, -ADAM_EPS), r, 1.5f), p);
}

static float adam_long(float p, float num, float x) { return p - div_(-num, sqrt_(x) + ADAM_EPS); }
#else
static inline bool adam_short_holds(float x) { return x > 0.0f; }
static inline float adam_short(float p, float num, float x) { return p + num / (__builtin_sqrtf(x) + ADAM_EPS); }
static float adam_long(float p, float num, float x) { return adam_short(p, num, x); }
#endif

NOINLINE int adam_short_run(float *params, float *m, float *v, float *grads, float nstep, float unbias, int i, int n) {
    // Weights i, i + 1, ... of adam_update, up to the first that adam_short cannot take (its m, v
    // and grad done, returned) or n. Its own function, without calls: its constants stay in the
    // FPU's registers (in a loop with adam_long's path, LLVM reloads some at every weight).
    float *p = params + i, *end = params + n;
    for (m += i, v += i, grads += i; p < end; p++, m++, v++, grads++) {
        float gi = *grads, mi = gi, vi = gi * gi;
        MADD(mi, BETA1, *m);
        MADD(vi, BETA2, *v);
        *m = mi;
        *v = vi;
        *grads = 0.0f;
        float x = vi * unbias;
        if (!adam_short_holds(x)) {
            if (x == 0.0f && mi == 0.0f) continue;  // no gradient yet (a wpe row of a long name): p stays
            break;
        }
        *p = adam_short(*p, nstep * mi, x);
    }
    return (int)(p - params);
}

static void adam_update(float *params, float *m, float *v, float *grads, float step, float unbias, int n) {
    // [n] each. model.adam's update: microgpt.py's Adam with m and v kept divided by
    // (1 - beta), so step and unbias fold in the learning rate and the bias corrections
    // (train.adam_factors): p -= step m / (sqrt(v unbias) + eps). Zeroes grads for the next step.
    for (int i = 0; (i = adam_short_run(params, m, v, grads, -step, unbias, i, n)) < n; i++)
        params[i] = adam_long(params[i], -step * m[i], v[i] * unbias);
}

// ---- The model: one name, one position at a time ----
//
// The backward runs *while* the forward walks the name, as far as it can: everything after the
// top layer's attention (its wo and MLP, lm_head, the loss) belongs to one position, so its
// gradient is taken as soon as that position's loss is known (layer_backward). Each position's
// key and value wait, because later queries still read them; keys_values_backward finishes a
// layer's once the name is done. As RMSNorm's backward is linear in the incoming gradient, each
// part of the gradient at a layer's input goes on as soon as it is known. With one layer
// (microgpt.py's), that is straight to the embeddings, and layer 0's input is recomputed
// (exactly: same weights, same operations) when keys_values_backward needs it again: per
// position the work keeps just the key, the value and their gradients. With more, a lower
// layer's output gradient is complete only once the layer above is done: the layers above 0
// keep their input at every position, and each layer below the top walks the name again, its
// forward recomputed, once the gradient at its output is complete (dinputs).

// One name's work: pointers into the float32 array of S.work floats that the trainer allocates
// (work_layout); microgpt.py's gpt() names in brackets.
typedef struct {
    // Every position's so far:
    float *keys, *values;    // [n_layer][block_size][n_embd]  [keys[li], values[li]]
    float *inputs;           // [n_layer - 1][block_size][n_embd]: the input x of layers 1.. (layer_input)
    float *dkeys, *dvalues;  // [block_size][n_embd]: one layer's key and value gradients, complete with the name
    float *dinputs;          // [block_size][n_embd] (n_layer > 1): the gradient at a layer's output, then input
    // The position in progress, in the layer in progress:
    float *emb;              // [n_embd] rmsnorm(emb_sum), emb_sum = wte[token] + wpe[pos]  [x: layer 0's input]
    float *attn_in;          // [n_embd] rmsnorm(x): the input of query, key and value
    float *query;            // [n_embd]  [q]
    float *att;              // [n_head][block_size]: per head, the weights of positions 0..pos  [attn_weights]
    float *attn_out;         // [n_embd] the heads' outputs, concatenated  [x_attn]
    float *after_attn;       // [n_embd] wo attn_out + x  [x; the MLP's x_residual]
    float *mlp_in;           // [n_embd] rmsnorm(after_attn)
    float *hidden;           // [n_hidden] relu(fc1 mlp_in), its nonzero entries (relu_forward)
    float *after_mlp;        // [n_embd] the top layer's fc2 hidden + after_attn (a lower one's: inputs)
    float *logits, *probs;   // [VOCAB] lm_head after_mlp  [logits]; softmax(logits)
    // The loss's gradients at the above (d<name>): [n_embd], but dlogits [VOCAB], dhidden [n_hidden]
    float *dlogits, *dafter_mlp, *dhidden, *dmlp_in, *dafter_attn, *dattn_out, *dquery, *dattn_in, *demb;
    float *datt;             // [block_size] one head's, at a time
    float *demb_sum;         // [n_embd] at emb_sum, which emb holds before its rmsnorm  [tok_emb + pos_emb]
    // Kept in the call, not in the array:
    float emb_rstd, attn_in_rstd, mlp_in_rstd;  // each rmsnorm's 1 / rms
    int nactive;                                // how many of hidden are nonzero
    uint8_t active[4 * MAX_EMBD];               // their indices
} work_t;

NOINLINE int work_layout(work_t *w, uintptr_t at) {
    // w's arrays one after the other from address `at` (0: only their size counts); returns their floats.
    int n = S.n_embd, rows = S.block_size * n, layers = S.n_layer;
    uintptr_t start = at;
#define TAKE(name, count) (w->name = (float *)at, at += (uintptr_t)(count) * sizeof(float))
    TAKE(keys, layers * rows);
    TAKE(values, layers * rows);
    TAKE(inputs, (layers - 1) * rows);
    TAKE(dkeys, rows);
    TAKE(dvalues, rows);
    TAKE(dinputs, layers > 1 ? rows : 0);
    TAKE(emb, n);
    TAKE(attn_in, n);
    TAKE(query, n);
    TAKE(att, S.n_head * S.block_size);
    TAKE(attn_out, n);
    TAKE(after_attn, n);
    TAKE(mlp_in, n);
    TAKE(hidden, S.n_hidden);
    TAKE(after_mlp, n);
    TAKE(logits, VOCAB);
    TAKE(probs, VOCAB);
    TAKE(dlogits, VOCAB);
    TAKE(dafter_mlp, n);
    TAKE(dhidden, S.n_hidden);
    TAKE(dmlp_in, n);
    TAKE(dafter_attn, n);
    TAKE(dattn_out, n);
    TAKE(dquery, n);
    TAKE(dattn_in, n);
    TAKE(demb, n);
    TAKE(datt, S.block_size);
    TAKE(demb_sum, n);
#undef TAKE
    return (int)((at - start) / sizeof(float));
}

static const char *set_shape(int n_embd, int n_head, int n_layer, int block_size) {
    // S for microgpt.py's four knobs, or why the C kernels cannot take them (S unchanged).
    if (n_embd < 4 || n_embd > MAX_EMBD || n_embd % 4) return "n_embd must be a multiple of 4 from 4 to 64";
    if (n_head < 1 || n_embd % n_head || n_embd / n_head > MAX_HEAD_DIM)
        return "n_head must divide n_embd into heads of at most 16";
    if (n_layer < 1 || n_layer > 64) return "n_layer must be from 1 to 64";
    if (block_size < 1 || block_size > MAX_BLOCK) return "block_size must be from 1 to 255";
    S.n_embd = n_embd;
    S.n_head = n_head;
    S.n_layer = n_layer;
    S.block_size = block_size;
    S.head_dim = n_embd / n_head;
    S.n_hidden = 4 * n_embd;
    S.inv_embd = recip((float)n_embd);
    S.att_scale = rsqrt((float)S.head_dim);
    S.wpe = VOCAB * n_embd;
    S.lm_head = S.wpe + block_size * n_embd;
    S.layer0 = S.lm_head + VOCAB * n_embd;
    S.layer_size = LAYER_MATRICES * n_embd * n_embd;
    S.n_params = S.layer0 + n_layer * S.layer_size;
    work_t w;
    S.work = work_layout(&w, 0);
    return NULL;
}

static float *layer_input(work_t *w, const float *p, int l, int token, int pos) {
    // Layer l's input x at pos: layer 0's is rmsnorm(wte[token] + wpe[pos]), computed here (emb);
    // a higher one's is what the layer below left in inputs.
    if (l > 0) return w->inputs + ((l - 1) * S.block_size + pos) * S.n_embd;
    embed_forward(w->emb, p, p + S.wpe, token, pos);
    rmsnorm_forward(w->emb, &w->emb_rstd, w->emb);
    return w->emb;
}

static float *layer_output(work_t *w, int l, int pos) {
    // Where layer l's output at pos goes: the next layer's input, or the top's after_mlp.
    return l + 1 < S.n_layer ? w->inputs + (l * S.block_size + pos) * S.n_embd : w->after_mlp;
}

static void layer_forward(float *out, work_t *w, const float *p, int l, int pos, const float *x) {
    // One position through layer l: out [n_embd] from its input x [n_embd]; keeps this position's
    // key and value, and the rest in w for layer_backward.
    int n = S.n_embd, nn = n * n;
    const float *lp = p + S.layer0 + l * S.layer_size;
    float *keys = w->keys + l * S.block_size * n, *values = w->values + l * S.block_size * n;
    rmsnorm_forward(w->attn_in, &w->attn_in_rstd, x);
    linear_forward(w->query, w->attn_in, lp + WQ * nn, n, n);
    linear_forward(keys + pos * n, w->attn_in, lp + WK * nn, n, n);
    linear_forward(values + pos * n, w->attn_in, lp + WV * nn, n, n);
    attention_forward(w->attn_out, w->att, w->query, keys, values, pos);
    linear_forward(w->after_attn, w->attn_out, lp + WO * nn, n, n);
    FOR4(i, n) w->after_attn[i] += x[i];
    rmsnorm_forward(w->mlp_in, &w->mlp_in_rstd, w->after_attn);
    mlp_forward(out, w->hidden, w->active, &w->nactive, w->mlp_in, lp + FC1 * nn, lp + FC2 * nn);
    FOR4(i, n) out[i] += w->after_attn[i];
}

static void inputs_backward(float *g, work_t *w, int token, int pos) {
    // From demb, the gradient at layer 0's input, on to the embeddings (emb as layer_input left it).
    // rmsnorm_forward(w->emb, &w->emb_rstd, w->emb)
    clear(w->demb_sum, S.n_embd);
    rmsnorm_backward(w->demb_sum, w->demb, w->emb, w->emb_rstd);
    // embed_forward(w->emb, p, p + S.wpe, token, pos)
    embed_backward(g, g + S.wpe, w->demb_sum, token, pos);
}

static float *input_gradient(work_t *w, int l, int pos) {
    // Where the gradient at layer l's input at pos goes: demb, on to the embeddings
    // (inputs_backward), for layer 0; dinputs' row for the others.
    return l > 0 ? w->dinputs + pos * S.n_embd : w->demb;
}

static void layer_backward(float *g, work_t *w, const float *p, int l, int token, int pos, const float *dout) {
    // From dout [n_embd], the gradient at layer l's output at pos, back through layer_forward (as
    // it left w), adding into g: all but the key and value projections (keys_values_backward's);
    // this position's dkeys and dvalues rows start here. Writes the gradient at the layer's input
    // as far as it is known (through the residual and the query) into input_gradient, which may be dout.
    int n = S.n_embd, nn = n * n;
    const float *lp = p + S.layer0 + l * S.layer_size;
    float *lg = g + S.layer0 + l * S.layer_size;
    const float *keys = w->keys + l * S.block_size * n, *values = w->values + l * S.block_size * n;
    // mlp_forward(out, w->hidden, w->active, &w->nactive, w->mlp_in, lp + FC1 * nn, lp + FC2 * nn)
    clear(w->dmlp_in, n);
    mlp_backward(w->dmlp_in, lg + FC1 * nn, lg + FC2 * nn, w->dhidden, dout, w->mlp_in, w->hidden, w->active,
                 w->nactive, lp + FC1 * nn, lp + FC2 * nn);
    // out[i] += w->after_attn[i]
    FOR4(i, n) w->dafter_attn[i] = dout[i];
    // rmsnorm_forward(w->mlp_in, &w->mlp_in_rstd, w->after_attn)
    rmsnorm_backward(w->dafter_attn, w->dmlp_in, w->mlp_in, w->mlp_in_rstd);
    // linear_forward(w->after_attn, w->attn_out, lp + WO * nn, n, n)
    clear(w->dattn_out, n);
    linear_backward(w->dattn_out, lg + WO * nn, w->dafter_attn, w->attn_out, lp + WO * nn, NULL, n, n);
    // attention_forward(w->attn_out, w->att, w->query, keys, values, pos)
    clear(w->dkeys + pos * n, n);
    clear(w->dvalues + pos * n, n);
    attention_backward(w->dquery, w->dkeys, w->dvalues, w->datt, w->dattn_out, w->query, keys, values, w->att, pos);
    // linear_forward(w->query, w->attn_in, lp + WQ * nn, n, n)
    clear(w->dattn_in, n);
    linear_backward(w->dattn_in, lg + WQ * nn, w->dquery, w->attn_in, lp + WQ * nn, NULL, n, n);
    // w->after_attn[i] += x[i]; rmsnorm_forward(w->attn_in, &w->attn_in_rstd, x)
    float *dx = input_gradient(w, l, pos);
    FOR4(i, n) dx[i] = w->dafter_attn[i];
    rmsnorm_backward(dx, w->dattn_in, w->attn_in, w->attn_in_rstd);
    if (l == 0) inputs_backward(g, w, token, pos);
}

static void keys_values_backward(float *g, work_t *w, const float *p, int l, const uint8_t *tokens, int n) {
    // Every query of layer l has read its keys and values now: their gradients go back through wk
    // and wv to the layer's input, each position's attn_in recomputed.
    int e = S.n_embd, nn = e * e;
    const float *lp = p + S.layer0 + l * S.layer_size;
    float *lg = g + S.layer0 + l * S.layer_size;
    for (int pos = 0; pos < n; pos++) {
        rmsnorm_forward(w->attn_in, &w->attn_in_rstd, layer_input(w, p, l, tokens[pos], pos));
        // linear_forward(keys + pos * n, w->attn_in, lp + WK * nn, n, n)
        clear(w->dattn_in, e);
        linear_backward(w->dattn_in, lg + WK * nn, w->dkeys + pos * e, w->attn_in, lp + WK * nn, NULL, e, e);
        // linear_forward(values + pos * n, w->attn_in, lp + WV * nn, n, n)
        linear_backward(w->dattn_in, lg + WV * nn, w->dvalues + pos * e, w->attn_in, lp + WV * nn, NULL, e, e);
        // rmsnorm_forward(w->attn_in, &w->attn_in_rstd, x): the rest of the gradient at x
        float *dx = input_gradient(w, l, pos);
        if (l == 0) clear(dx, e);  // layer 0's first part went on in layer_backward
        rmsnorm_backward(dx, w->dattn_in, w->attn_in, w->attn_in_rstd);
        if (l == 0) inputs_backward(g, w, tokens[pos], pos);
    }
}

static void gpt_forward(work_t *w, const float *p, int token, int pos) {
    // One position of microgpt.py's gpt(): w->logits, and this position's keys and values.
    const float *x = layer_input(w, p, 0, token, pos);
    for (int l = 0; l < S.n_layer; l++) {
        layer_forward(layer_output(w, l, pos), w, p, l, pos, x);
        x = layer_output(w, l, pos);
    }
    linear_forward(w->logits, w->after_mlp, p + S.lm_head, VOCAB, S.n_embd);
}

static float loss_and_grad(float *g, work_t *w, const float *p, const uint8_t *tokens, int n) {
    // microgpt's loss for one name: the mean cross-entropy of its n next tokens; adds its gradient to
    // g, or with g NULL is forward only (the held-out loss: no gradient, nothing kept).
    int top = S.n_layer - 1;
    // n as a float once, from unsigned: the step's one ufloat.s, by which microgpt/chip_speed.py counts steps.
    float count = (float)(unsigned)n, loss = 0.0f, dloss = recip(count);
    for (int pos = 0; pos < n; pos++) {
        gpt_forward(w, p, tokens[pos], pos);
        loss += crossentropy_forward(w->probs, w->logits, tokens[pos + 1]);
        if (!g) continue;
        crossentropy_backward(w->dlogits, w->probs, tokens[pos + 1], dloss);
        // linear_forward(w->logits, w->after_mlp, p + S.lm_head, VOCAB, n_embd)
        clear(w->dafter_mlp, S.n_embd);
        linear_backward(w->dafter_mlp, g + S.lm_head, w->dlogits, w->after_mlp, p + S.lm_head, NULL, VOCAB,
                        S.n_embd);
        layer_backward(g, w, p, top, tokens[pos], pos, w->dafter_mlp);
    }
    if (!g) return div_(loss, count);
    keys_values_backward(g, w, p, top, tokens, n);
    for (int l = top - 1; l >= 0; l--) {  // the gradient at layer l's output is complete: walk the name again
        for (int pos = 0; pos < n; pos++) {
            layer_forward(layer_output(w, l, pos), w, p, l, pos, layer_input(w, p, l, tokens[pos], pos));
            layer_backward(g, w, p, l, tokens[pos], pos, w->dinputs + pos * S.n_embd);
        }
        keys_values_backward(g, w, p, l, tokens, n);
    }
    return div_(loss, count);
}

// ---- Entry points: the module's functions, their argument checks, its entry ----
#include "mp_abi.h"

static float *params_of(obj_t o, const char *msg) {
    // The float32 array behind o, which must hold the shape's parameters (or more).
    return floats(o, (size_t)S.n_params, msg);
}

NOINLINE void work_of(work_t *w, obj_t o) {
    // w's arrays in the float32 array behind o.
    work_layout(w, (uintptr_t)floats(o, (size_t)S.work, "work must be an array('f') of the floats shape() returned"));
}

static obj_t py_shape(size_t n_args, const obj_t *args) {
    // shape(n_embd, n_head, n_layer, block_size): the model's shape (microgpt.py's knobs) from now
    // on; returns how many floats the work array must hold.
    int knobs[4];
    for (int i = 0; i < 4; i++) knobs[i] = small_int(args[i], 1, 1 << 16, "the shape's knobs must be ints >= 1");
    const char *error = set_shape(knobs[0], knobs[1], knobs[2], knobs[3]);
    if (error) value_error(error);
    return SMALL_INT_OBJ(S.work);
}

static obj_t py_loss_and_grad(size_t n_args, const obj_t *args) {
    // loss_and_grad(params, grads, work, name): microgpt's loss for one name (bytes-like, a-z),
    // the mean cross-entropy of its tokens BOS, letters, BOS over the first block_size positions;
    // adds its gradient to grads, or with grads None computes the loss alone (val.py's).
    const float *p = params_of(args[0], "params must be an array('f') of the shape's parameters");
    float *g = args[1] == mp->const_none
                   ? NULL
                   : params_of(args[1], "grads must be an array('f') of the shape's parameters");
    work_t w;
    work_of(&w, args[2]);
    buffer_t nb;
    if (!mp->get_buffer(args[3], &nb, BUFFER_READ)) value_error("name must be bytes-like");
    const uint8_t *name = nb.buf;
    int n = nb.len < (size_t)S.block_size ? (int)nb.len + 1 : S.block_size;
    uint8_t tokens[MAX_BLOCK + 1];
    tokens[0] = BOS;
    for (int i = 1; i <= n; i++) {
        if (i > (int)nb.len) {
            tokens[i] = BOS;
        } else if (name[i - 1] < 'a' || name[i - 1] > 'z') {
            value_error("name must be letters a-z");
        } else {
            tokens[i] = name[i - 1] - 'a';
        }
    }
    return mp->obj_new_float_from_f(loss_and_grad(g, &w, p, tokens, n));
}

static obj_t py_forward(size_t n_args, const obj_t *args) {
    // forward(params, work, token, pos, logits): one position of inference (positions 0..pos-1
    // went before, as in sampling); writes the 27 logits into the float array `logits`.
    const float *p = params_of(args[0], "params must be an array('f') of the shape's parameters");
    work_t w;
    work_of(&w, args[1]);
    int token = small_int(args[2], 0, VOCAB - 1, "token must be an int below 27");
    int pos = small_int(args[3], 0, S.block_size - 1, "pos must be an int below block_size");
    float *logits = floats(args[4], VOCAB, "logits must be an array('f') of 27 floats");
    gpt_forward(&w, p, token, pos);
    for (int i = 0; i < VOCAB; i++) logits[i] = w.logits[i];
    return mp->const_none;
}

static obj_t py_adam(size_t n_args, const obj_t *args) {
    // adam(params, grads, m, v, step, unbias): model.adam, in C, over the arrays' common length
    // (the shape's parameters in the trainer): a count known at run time keeps the loop walking four pointers.
    size_t n[4];
    float *p = floats_len(args[0], 1, &n[0], "params must be an array('f')");
    float *g = floats_len(args[1], 1, &n[1], "grads must be an array('f')");
    float *m = floats_len(args[2], 1, &n[2], "m must be an array('f')");
    float *v = floats_len(args[3], 1, &n[3], "v must be an array('f')");
    for (int i = 1; i < 4; i++)
        if (n[i] < n[0]) n[0] = n[i];
    adam_update(p, m, v, g, mp->obj_get_float_to_f(args[4]), mp->obj_get_float_to_f(args[5]), (int)n[0]);
    return mp->const_none;
}

// The module's body: the loader calls it at import as a viper function, (self, n_args, n_kw, args).
obj_t mpy_init(const fun_bc_t *self, size_t n_args, size_t n_kw, const obj_t *args) {
    mp = (const mp_fun_table_t *)self->context->obj_table[0];
    qstrs = self->context->qstr_table;
    void *globals = mp->swap_globals(self->context->globals);
    define(QSTR(shape), py_shape, 4);
    define(QSTR(loss_and_grad), py_loss_and_grad, 4);
    define(QSTR(forward), py_forward, 5);
    define(QSTR(adam), py_adam, 6);
    mp->swap_globals(globals);
    set_shape(16, 4, 1, 16);  // microgpt.py's
    return mp->const_none;
}
