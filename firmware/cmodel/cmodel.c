// microgpt's training step in C, for the chip: the same forward, backward and Adam as
// firmware/model.py and firmware/train.py, over the same float32 arrays, as a MicroPython
// native module (.mpy). In MicroPython every float is a heap object; here they are registers.
//
// Built by scripts/build_cmodel.py (clang-22 for xtensawin and x64, linked into .mpy by
// microgpt/natmod.py). Freestanding: no libc, no libm. The ESP32's FPU has no divide or square
// root instruction, so on Xtensa those are Newton iterations on its fused multiply-add (madd.s),
// from first guesses made of the bits: its estimate instructions (recip0.s, rsqrt0.s) read an
// implementation-defined table, and clang has no inline-asm constraint for FP registers anyway.
// Sums of products are madd.s on Xtensa (MADD); the x64 build for the VM rounds them as the
// MicroPython kernels do.
//
// Laid out as llm.c's train_gpt2.c: each layer a *_forward / *_backward pair, outputs first,
// shapes in brackets; a backward adds (+=) into the gradients it is given, which the caller
// clears where a gradient starts, and its comments quote the forward lines it differentiates.
// Sizes are compile-time constants today; the loops take them as arguments where that costs
// nothing, and matrix rows go four at a time (inner sizes multiples of 4).

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

// ---- The model (firmware/base.py holds the same numbers; the module exports N_PARAMS so
// the trainer refuses a stale build) ----
#define VOCAB 27
#define BOS 26  // begins and ends every name; a-z are 0-25
#define N_EMBD 16
#define N_HEAD 4
#define HEAD_DIM 4
#define BLOCK 16
#define N_HIDDEN 64
#define WTE 0
#define WPE (WTE + VOCAB * N_EMBD)
#define LM_HEAD (WPE + BLOCK * N_EMBD)
#define WQ (LM_HEAD + VOCAB * N_EMBD)
#define WK (WQ + N_EMBD * N_EMBD)
#define WV (WK + N_EMBD * N_EMBD)
#define WO (WV + N_EMBD * N_EMBD)
#define FC1 (WO + N_EMBD * N_EMBD)
#define FC2 (FC1 + N_HIDDEN * N_EMBD)
#define N_PARAMS (FC2 + N_EMBD * N_HIDDEN)
#define RMS_EPS 1e-5f
#define ATT_SCALE 0.5f  // 1 / sqrt(HEAD_DIM)
#define BETA1 0.85f
#define BETA2 0.99f
#define ADAM_EPS 1e-8f

// ---- float helpers: multiply-add, division, square root, exp and log without libm ----
typedef union { float f; uint32_t u; } bits_t;

#if defined(__xtensa__)
// acc += a * b as the FPU's madd.s: one rounding, and a load, a madd per term of a dot product.
#define MADD(acc, a, b) ((acc) = __builtin_fmaf((a), (b), (acc)))
static inline float fma_(float a, float b, float c) { return __builtin_fmaf(a, b, c); }

static inline float recip(float b) {
    // 1/b for b > 0: a bit-level first guess (within 5.1%), then Newton steps, each squaring the
    // error: 2.6e-3, 6.6e-6, then float rounding (a fourth step gains nothing).
    bits_t x = {b};
    x.u = 0x7EF311C3u - x.u;
    float r = x.f;
    for (int i = 0; i < 3; i++) r = fma_(r, fma_(-b, r, 1.0f), r);
    return r;
}

static inline float div_(float a, float b) {
    // a/b for b > 0: a * (1/b), then one residual correction (rounds as a true division almost always).
    float r = recip(b);
    float q = a * r;
    return fma_(fma_(-b, q, a), r, q);
}

static inline float rsqrt_guess(float x) {
    // 1/sqrt(x) within 3.4% for x > 0, from the bits.
    bits_t y = {x};
    y.u = 0x5F3759DFu - (y.u >> 1);
    return y.f;
}

static inline float rsqrt(float x) {
    // 1/sqrt(x) for x > 0: Newton steps from rsqrt_guess, 1.8e-3, 4.7e-6, then float rounding (1.3e-7).
    float r = rsqrt_guess(x), h = 0.5f * x;
    for (int i = 0; i < 3; i++) r = r * fma_(-h * r, r, 1.5f);
    return r;
}

static inline float sqrt_(float x) {
    // sqrt(x) for x >= 0: x / sqrt(x), then one residual correction.
    if (x == 0.0f) return 0.0f;
    float r = rsqrt(x), s = x * r;
    return fma_(fma_(-s, s, x), 0.5f * r, s);
}

static void scale(float *a, int n, float total) {
    // a [n] /= total (total > 0), as products with one reciprocal: within an ulp of the quotients.
    float r = recip(total);
    for (int i = 0; i < n; i++) a[i] *= r;
}
#else
// The VM's build rounds products and sums apart, as the MicroPython kernels do (x86-64's baseline
// has no fused multiply-add either).
#define MADD(acc, a, b) ((acc) += (a) * (b))
static inline float div_(float a, float b) { return a / b; }
static inline float recip(float b) { return 1.0f / b; }
static inline float rsqrt(float x) { return 1.0f / __builtin_sqrtf(x); }
static void scale(float *a, int n, float total) {
    for (int i = 0; i < n; i++) a[i] /= total;
}
#endif

#define LN2_HI 0.693145751953125f  // ln 2 split so k * LN2_HI is exact for |k| < 2^11
#define LN2_LO 1.428606765330187e-06f

static float exp_neg(float x) {
    // e^x for x <= 0 (softmax after subtracting the maximum): x = k ln2 + r with |r| <= ln2/2,
    // e^r from its Taylor series to r^7 (error < 1e-8), 2^k into the exponent bits.
    if (x < -87.0f) return 0.0f;
    int k = (int)(x * 1.44269504f - 0.5f);
    float r = (x - (float)k * LN2_HI) - (float)k * LN2_LO;
    float p = 1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120
              + r * (1.0f / 720 + r * (1.0f / 5040)))))));
    bits_t pow2k = {.u = (uint32_t)(k + 127) << 23};
    return p * pow2k.f;
}

static float log_pos(float x) {
    // ln x for normal x > 0: x = m 2^e with m in [sqrt(1/2), sqrt(2)), ln m = 2 atanh(f) with
    // f = (m-1)/(m+1), |f| < 0.172, from its series to f^9.
    bits_t b = {x};
    int e = (int)(b.u >> 23) - 127;
    b.u = (b.u & 0x007FFFFFu) | 0x3F800000u;
    float m = b.f;
    if (m > 1.41421356f) {
        m *= 0.5f;
        e += 1;
    }
    float f = div_(m - 1.0f, m + 1.0f), f2 = f * f;
    float s = f2 * (1.0f / 3 + f2 * (1.0f / 5 + f2 * (1.0f / 7 + f2 * (1.0f / 9))));
    return (float)e * LN2_HI + ((float)e * LN2_LO + 2.0f * f + 2.0f * f * s);
}

static void clear(float *a, int n) {
    for (int i = 0; i < n; i++) a[i] = 0.0f;
}

// ---- The layers ----
// A matrix's rows go four at a time, so each input is loaded once per four multiply-adds; its
// inner size (nin) must be a multiple of 4.

static void embed_forward(float *out, const float *wte, const float *wpe, int token, int pos) {
    // out [N_EMBD] = wte [VOCAB][N_EMBD] row token + wpe [BLOCK][N_EMBD] row pos
    const float *te = wte + token * N_EMBD, *pe = wpe + pos * N_EMBD;
    for (int i = 0; i < N_EMBD; i++) out[i] = te[i] + pe[i];
}

static void embed_backward(float *dwte, float *dwpe, const float *dout, int token, int pos) {
    float *te = dwte + token * N_EMBD, *pe = dwpe + pos * N_EMBD;
    for (int i = 0; i < N_EMBD; i++) {
        // out[i] = te[i] + pe[i]
        te[i] += dout[i];
        pe[i] += dout[i];
    }
}

static void rmsnorm_forward(float *out, float *rstd, const float *inp) {
    // out [N_EMBD] = inp [N_EMBD] * rstd, rstd = 1 / sqrt(mean(inp^2) + eps); out may be inp.
    float ss = 0.0f;
    for (int i = 0; i < N_EMBD; i++) MADD(ss, inp[i], inp[i]);
    float s = rsqrt(ss * (1.0f / N_EMBD) + RMS_EPS);
    for (int i = 0; i < N_EMBD; i++) out[i] = inp[i] * s;
    *rstd = s;
}

static void rmsnorm_backward(float *dinp, const float *dout, const float *out, float rstd) {
    // out[i] = inp[i] * s, with s = rstd a function of all of inp => written with the output,
    // dinp += rstd * (dout - out * mean(out * dout))
    float yd = 0.0f;
    for (int i = 0; i < N_EMBD; i++) MADD(yd, out[i], dout[i]);
    yd *= 1.0f / N_EMBD;
    for (int i = 0; i < N_EMBD; i += 4)  // four at a time: LLVM unrolls it (not the plain loop)
        for (int k = i; k < i + 4; k++) dinp[k] += rstd * (dout[k] - out[k] * yd);
}

static void linear_forward(float *out, const float *inp, const float *w, int nout, int nin) {
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

static void linear_backward(float *dinp, float *dw, const float *dout, const float *inp, const float *w,
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

static void attention_forward(float *out, float (*att)[BLOCK], const float *q, const float (*keys)[N_EMBD],
                              const float (*values)[N_EMBD], int pos) {
    // out [N_EMBD]: per head h, sum over t <= pos of att[h][t] * values[t], the heads concatenated;
    // att [N_HEAD][BLOCK]: per head, softmax over t <= pos of q . keys[t] / sqrt(HEAD_DIM);
    // q [N_EMBD]; keys, values [BLOCK][N_EMBD], rows 0..pos. Heads are HEAD_DIM-wide slices,
    // their query and output in locals (registers) while t runs.
    for (int h = 0; h < N_HEAD; h++) {
        int hd = h * HEAD_DIM;
        float *a = att[h], max, sum, qh[HEAD_DIM], o[HEAD_DIM];
        for (int j = 0; j < HEAD_DIM; j++) qh[j] = q[hd + j];
        for (int t = 0; t <= pos; t++) {
            float s = 0.0f;
            for (int j = 0; j < HEAD_DIM; j++) MADD(s, qh[j], keys[t][hd + j]);
            a[t] = s * ATT_SCALE;
        }
        softmax_forward(a, &max, &sum, a, pos + 1);
        for (int j = 0; j < HEAD_DIM; j++) o[j] = 0.0f;
        for (int t = 0; t <= pos; t++)
            for (int j = 0; j < HEAD_DIM; j++) MADD(o[j], a[t], values[t][hd + j]);
        for (int j = 0; j < HEAD_DIM; j++) out[hd + j] = o[j];
    }
}

static void attention_backward(float *dq, float (*dkeys)[N_EMBD], float (*dvalues)[N_EMBD], float *datt,
                               const float *dout, const float *q, const float (*keys)[N_EMBD],
                               const float (*values)[N_EMBD], const float (*att)[BLOCK], int pos) {
    // datt [BLOCK]: scratch, one head's gradient at its weights. Writes dq.
    for (int h = 0; h < N_HEAD; h++) {
        int hd = h * HEAD_DIM;
        const float *a = att[h];
        float d[HEAD_DIM], qh[HEAD_DIM], dqh[HEAD_DIM];
        for (int j = 0; j < HEAD_DIM; j++) {
            d[j] = dout[hd + j];
            qh[j] = q[hd + j];
            dqh[j] = 0.0f;
        }
        // MADD(o[j], a[t], values[t][hd + j]); out[hd + j] = o[j]
        // => dvalues[t] += a[t] dout, datt[t] = dout . values[t]
        float dot = 0.0f;  // sum_t a[t] * datt[t]
        for (int t = 0; t <= pos; t++) {
            float s = 0.0f;
            for (int j = 0; j < HEAD_DIM; j++) {
                MADD(s, d[j], values[t][hd + j]);
                MADD(dvalues[t][hd + j], a[t], d[j]);
            }
            datt[t] = s;
            MADD(dot, a[t], s);
        }
        // softmax_forward(a, &max, &sum, a, pos + 1) => d(score t) = a[t] (datt[t] - dot);
        // MADD(s, qh[j], keys[t][hd + j]); a[t] = s * ATT_SCALE => on to q and keys[t], times ATT_SCALE
        for (int t = 0; t <= pos; t++) {
            float ds = a[t] * (datt[t] - dot) * ATT_SCALE;
            for (int j = 0; j < HEAD_DIM; j++) {
                MADD(dqh[j], ds, keys[t][hd + j]);
                MADD(dkeys[t][hd + j], ds, qh[j]);
            }
        }
        for (int j = 0; j < HEAD_DIM; j++) dq[hd + j] = dqh[j];
    }
}

static int relu_forward(float *h, uint8_t *active, int n) {
    // h [n] = relu(h), kept as its nonzero values only: h[k] = the k-th positive entry, active[k]
    // its index; returns how many. The zeros (about half) take no part in fc2 or in fc1's backward.
    int m = 0;
    for (int i = 0; i < n; i++) {
        float v = h[i];
        if (v > 0.0f) {
            h[m] = v;
            active[m++] = (uint8_t)i;
        }
    }
    return m;
}

static void mlp_forward(float *out, float *h, uint8_t *active, int *nactive, const float *inp, const float *fc1,
                        const float *fc2) {
    // h = relu(fc1 [N_HIDDEN][N_EMBD] inp [N_EMBD]), kept as relu_forward leaves it (active [nactive]);
    // out [N_EMBD] = fc2 [N_EMBD][N_HIDDEN] h, over the active columns in order.
    linear_forward(h, inp, fc1, N_HIDDEN, N_EMBD);
    int m = *nactive = relu_forward(h, active, N_HIDDEN);
    for (int i = 0; i < N_EMBD; i += 4) {
        const float *w = fc2 + i * N_HIDDEN;
        float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
        for (int k = 0; k < m; k++) {
            const float *c = w + active[k];
            float x = h[k];
            MADD(s0, c[0], x);
            MADD(s1, c[N_HIDDEN], x);
            MADD(s2, c[2 * N_HIDDEN], x);
            MADD(s3, c[3 * N_HIDDEN], x);
        }
        out[i] = s0;
        out[i + 1] = s1;
        out[i + 2] = s2;
        out[i + 3] = s3;
    }
}

static void mlp_backward(float *dinp, float *dfc1, float *dfc2, float *dh, const float *dout, const float *inp,
                         const float *h, const uint8_t *active, int nactive, const float *fc1, const float *fc2) {
    // dh [nactive]: scratch, the gradient at the active h.
    // MADD(s0, c[0], x) ... over the active columns => dfc2[:, j] += dout h[k], dh[k] = fc2[:, j] . dout
    // (j = active[k]), four rows of fc2 at a time; relu keeps the gradient of the positive entries
    // only, which are the active ones.
    clear(dh, nactive);
    for (int i = 0; i < N_EMBD; i += 4) {
        const float *c = fc2 + i * N_HIDDEN;
        float *g = dfc2 + i * N_HIDDEN;
        float d0 = dout[i], d1 = dout[i + 1], d2 = dout[i + 2], d3 = dout[i + 3];
        for (int k = 0; k < nactive; k++) {
            const float *cj = c + active[k];
            float *gj = g + active[k], s = dh[k], hk = h[k];
            MADD(s, cj[0], d0);
            MADD(s, cj[N_HIDDEN], d1);
            MADD(s, cj[2 * N_HIDDEN], d2);
            MADD(s, cj[3 * N_HIDDEN], d3);
            dh[k] = s;
            MADD(gj[0], d0, hk);
            MADD(gj[N_HIDDEN], d1, hk);
            MADD(gj[2 * N_HIDDEN], d2, hk);
            MADD(gj[3 * N_HIDDEN], d3, hk);
        }
    }
    // linear_forward(h, inp, fc1, N_HIDDEN, N_EMBD), its active rows
    linear_backward(dinp, dfc1, dh, inp, fc1, active, nactive, N_EMBD);
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

#if defined(__xtensa__)
#define ADAM_X_FAST 0x1p-27f  // v * unbias above it: sqrt >= 2^13.5 eps, adam_ratio's short way holds

static float adam_ratio_slow(float num, float x) { return div_(num, sqrt_(x) + ADAM_EPS); }

static inline float adam_ratio(float num, float x) {
    // num / (sqrt(x) + eps) for x >= 0. With r = 1/sqrt(x) and e = eps r, 1/(sqrt(x) + eps) =
    // r (1 - e + e^2 ...); above ADAM_X_FAST, e < 2^-13.5, so r - eps r^2 is exact to float
    // rounding. It folds into rsqrt's last Newton step: r (1.5 + r (-x/2 r - eps)), within 1.3e-7.
    if (__builtin_expect(x > ADAM_X_FAST, 1)) {
        float r = rsqrt_guess(x), nh = -0.5f * x;
        for (int i = 0; i < 2; i++) r = r * fma_(nh * r, r, 1.5f);
        return num * (r * fma_(fma_(nh, r, -ADAM_EPS), r, 1.5f));
    }
    return adam_ratio_slow(num, x);
}
#else
static inline float adam_ratio(float num, float x) { return num / (__builtin_sqrtf(x) + ADAM_EPS); }
#endif

static void adam_update(float *params, float *m, float *v, float *grads, float step, float unbias, int n) {
    // [n] each. train.adam's update: microgpt.py's Adam with m and v kept divided by
    // (1 - beta), so step and unbias fold in the learning rate and the bias corrections
    // (train.adam_factors): p -= step m / (sqrt(v unbias) + eps). Zeroes grads for the next step.
    for (float *end = params + n; params < end; params++, m++, v++, grads++) {
        float gi = *grads, mi = gi, vi = gi * gi;
        MADD(mi, BETA1, *m);
        MADD(vi, BETA2, *v);
        *m = mi;
        *v = vi;
        *params -= adam_ratio(step * mi, vi * unbias);
        *grads = 0.0f;
    }
}

// ---- The model: one name, one position at a time ----
//
// The backward runs *while* the forward walks the name: everything after attention (wo, the MLP,
// lm_head, the loss) belongs to one position, so its gradient is taken as soon as that position's
// loss is known (gpt_backward). Only each position's key and value wait, because later queries
// still read them; keys_values_backward finishes them once the name is done. As RMSNorm's
// backward is linear in the incoming gradient, each part of the gradient at emb and attn_in goes
// on to the embeddings as soon as it is known, and emb and attn_in are recomputed (exactly: same
// weights, same operations) when keys_values_backward needs them again. So per position the work
// keeps just the key, the value and their gradients: 64 floats.

// One name's work, a float32 array of WORK floats that the trainer allocates; microgpt.py's gpt()
// names in brackets.
typedef struct {
    // Every position's so far:
    float keys[BLOCK][N_EMBD];    // [keys[li]]
    float values[BLOCK][N_EMBD];  // [values[li]]
    float dkeys[BLOCK][N_EMBD];   // their gradients, complete when the name is
    float dvalues[BLOCK][N_EMBD];
    // The position in progress:
    float emb[N_EMBD];            // rmsnorm(wte[token] + wpe[pos])  [x; attention's x_residual]
    float attn_in[N_EMBD];        // rmsnorm(emb): the input of query, key and value
    float query[N_EMBD];          // [q]
    float att[N_HEAD][BLOCK];     // per head, the weights of positions 0..pos  [attn_weights]
    float attn_out[N_EMBD];       // the heads' outputs, concatenated  [x_attn]
    float after_attn[N_EMBD];     // wo attn_out + emb  [x; the MLP's x_residual]
    float mlp_in[N_EMBD];         // rmsnorm(after_attn)
    float hidden[N_HIDDEN];       // relu(fc1 mlp_in), its nonzero entries (relu_forward)
    float after_mlp[N_EMBD];      // fc2 hidden + after_attn
    float logits[VOCAB];          // lm_head after_mlp  [logits]
    float probs[VOCAB];           // softmax(logits)
    float emb_rstd, attn_in_rstd, mlp_in_rstd;  // each rmsnorm's 1 / rms
    // The loss's gradients at the above (d<name>):
    float dlogits[VOCAB], dafter_mlp[N_EMBD], dhidden[N_HIDDEN], dmlp_in[N_EMBD], dafter_attn[N_EMBD];
    float dattn_out[N_EMBD], dquery[N_EMBD], dattn_in[N_EMBD], demb[N_EMBD];
    float datt[BLOCK];            // one head's, at a time
    float dsum[N_EMBD];           // at wte[token] + wpe[pos]
    int nactive;                  // how many of hidden are nonzero
    uint8_t active[N_HIDDEN];     // their indices
} work_t;

#define WORK_FLOATS (sizeof(work_t) / sizeof(float))

static void inputs_forward(work_t *w, const float *p, int token, int pos) {
    // The attention block's inputs, emb and attn_in, with their rmsnorm scales.
    embed_forward(w->emb, p + WTE, p + WPE, token, pos);
    rmsnorm_forward(w->emb, &w->emb_rstd, w->emb);
    rmsnorm_forward(w->attn_in, &w->attn_in_rstd, w->emb);
}

static void inputs_backward(float *g, work_t *w, int token, int pos) {
    // From demb and dattn_in on to the embeddings (emb, attn_in as inputs_forward left them).
    // Adds its part into demb.
    // rmsnorm_forward(w->attn_in, &w->attn_in_rstd, w->emb)
    rmsnorm_backward(w->demb, w->dattn_in, w->attn_in, w->attn_in_rstd);
    // rmsnorm_forward(w->emb, &w->emb_rstd, w->emb)
    clear(w->dsum, N_EMBD);
    rmsnorm_backward(w->dsum, w->demb, w->emb, w->emb_rstd);
    // embed_forward(w->emb, p + WTE, p + WPE, token, pos)
    embed_backward(g + WTE, g + WPE, w->dsum, token, pos);
}

static void gpt_forward(work_t *w, const float *p, int token, int pos) {
    // One position of microgpt.py's gpt(): w->logits, and this position's key and value.
    inputs_forward(w, p, token, pos);
    linear_forward(w->query, w->attn_in, p + WQ, N_EMBD, N_EMBD);
    linear_forward(w->keys[pos], w->attn_in, p + WK, N_EMBD, N_EMBD);
    linear_forward(w->values[pos], w->attn_in, p + WV, N_EMBD, N_EMBD);
    attention_forward(w->attn_out, w->att, w->query, w->keys, w->values, pos);
    linear_forward(w->after_attn, w->attn_out, p + WO, N_EMBD, N_EMBD);
    for (int i = 0; i < N_EMBD; i++) w->after_attn[i] += w->emb[i];
    rmsnorm_forward(w->mlp_in, &w->mlp_in_rstd, w->after_attn);
    mlp_forward(w->after_mlp, w->hidden, w->active, &w->nactive, w->mlp_in, p + FC1, p + FC2);
    for (int i = 0; i < N_EMBD; i++) w->after_mlp[i] += w->after_attn[i];
    linear_forward(w->logits, w->after_mlp, p + LM_HEAD, VOCAB, N_EMBD);
}

static void gpt_backward(float *g, work_t *w, const float *p, int token, int pos) {
    // From w->dlogits back through gpt_forward, adding into g, all but the key and value
    // projections (keys_values_backward's); this position's dkeys and dvalues rows start here.
    // linear_forward(w->logits, w->after_mlp, p + LM_HEAD, VOCAB, N_EMBD)
    clear(w->dafter_mlp, N_EMBD);
    linear_backward(w->dafter_mlp, g + LM_HEAD, w->dlogits, w->after_mlp, p + LM_HEAD, NULL, VOCAB, N_EMBD);
    // mlp_forward(w->after_mlp, w->hidden, w->active, &w->nactive, w->mlp_in, p + FC1, p + FC2)
    clear(w->dmlp_in, N_EMBD);
    mlp_backward(w->dmlp_in, g + FC1, g + FC2, w->dhidden, w->dafter_mlp, w->mlp_in, w->hidden, w->active,
                 w->nactive, p + FC1, p + FC2);
    // w->after_mlp[i] += w->after_attn[i]
    for (int i = 0; i < N_EMBD; i++) w->dafter_attn[i] = w->dafter_mlp[i];
    // rmsnorm_forward(w->mlp_in, &w->mlp_in_rstd, w->after_attn)
    rmsnorm_backward(w->dafter_attn, w->dmlp_in, w->mlp_in, w->mlp_in_rstd);
    // linear_forward(w->after_attn, w->attn_out, p + WO, N_EMBD, N_EMBD)
    clear(w->dattn_out, N_EMBD);
    linear_backward(w->dattn_out, g + WO, w->dafter_attn, w->attn_out, p + WO, NULL, N_EMBD, N_EMBD);
    // attention_forward(w->attn_out, w->att, w->query, w->keys, w->values, pos)
    clear(w->dkeys[pos], N_EMBD);
    clear(w->dvalues[pos], N_EMBD);
    attention_backward(w->dquery, w->dkeys, w->dvalues, w->datt, w->dattn_out, w->query, w->keys, w->values,
                       w->att, pos);
    // linear_forward(w->query, w->attn_in, p + WQ, N_EMBD, N_EMBD)
    clear(w->dattn_in, N_EMBD);
    linear_backward(w->dattn_in, g + WQ, w->dquery, w->attn_in, p + WQ, NULL, N_EMBD, N_EMBD);
    // w->after_attn[i] += w->emb[i]
    for (int i = 0; i < N_EMBD; i++) w->demb[i] = w->dafter_attn[i];
    inputs_backward(g, w, token, pos);
}

static void keys_values_backward(float *g, work_t *w, const float *p, const uint8_t *tokens, int n) {
    // Every query has read the keys and values now: their gradients go back through wk and wv to
    // the embeddings, each position's inputs recomputed.
    for (int pos = 0; pos < n; pos++) {
        inputs_forward(w, p, tokens[pos], pos);
        // linear_forward(w->keys[pos], w->attn_in, p + WK, N_EMBD, N_EMBD)
        clear(w->dattn_in, N_EMBD);
        linear_backward(w->dattn_in, g + WK, w->dkeys[pos], w->attn_in, p + WK, NULL, N_EMBD, N_EMBD);
        // linear_forward(w->values[pos], w->attn_in, p + WV, N_EMBD, N_EMBD)
        linear_backward(w->dattn_in, g + WV, w->dvalues[pos], w->attn_in, p + WV, NULL, N_EMBD, N_EMBD);
        clear(w->demb, N_EMBD);  // emb's other uses went back in gpt_backward
        inputs_backward(g, w, tokens[pos], pos);
    }
}

static float loss_and_grad(float *g, work_t *w, const float *p, const uint8_t *tokens, int n) {
    // microgpt's loss for one name: the mean cross-entropy of its n next tokens; adds its gradient to g.
    float loss = 0.0f, dloss = recip((float)n);
    for (int pos = 0; pos < n; pos++) {
        gpt_forward(w, p, tokens[pos], pos);
        loss += crossentropy_forward(w->probs, w->logits, tokens[pos + 1]);
        crossentropy_backward(w->dlogits, w->probs, tokens[pos + 1], dloss);
        gpt_backward(g, w, p, tokens[pos], pos);
    }
    keys_values_backward(g, w, p, tokens, n);
    return div_(loss, (float)n);
}

// ---- MicroPython's side: the module's functions, their argument checks, its entry ----
// Layouts from py/obj.h, py/bc.h, py/nativeglue.h (identical in v1.25 and the VM's v1.29).
typedef void *obj_t;
typedef struct { void *buf; size_t len; int typecode; } buffer_t;  // mp_buffer_info_t
typedef obj_t (*fun_var_t)(size_t n_args, const obj_t *args);
typedef struct { const void *type; uint32_t sig; fun_var_t fun; } fun_builtin_var_t;
typedef struct { const void *type; void *globals; const uint16_t *qstr_table; obj_t *obj_table; } module_context_t;
typedef struct { const void *type; const module_context_t *context; } fun_bc_t;

// The function-table entries this file uses as mp->name, typed; mp_glue.h (generated) puts each at its index.
typedef obj_t mp_const_none_t;
typedef void *(*mp_swap_globals_t)(void *globals);
typedef obj_t (*mp_load_global_t)(size_t qst);
typedef void (*mp_store_global_t)(size_t qst, obj_t value);
typedef void *(*mp_realloc__t)(void *ptr, size_t n, bool allow_move);
typedef __attribute__((noreturn)) void (*mp_raise_msg_t)(const void *exc_type, const char *msg);
typedef obj_t (*mp_obj_new_float_from_f_t)(float f);
typedef float (*mp_obj_get_float_to_f_t)(obj_t o);
typedef bool (*mp_get_buffer_t)(obj_t o, buffer_t *info, unsigned flags);
typedef const void *mp_type_fun_builtin_var_t;
#include "mp_glue.h"

static const mp_fun_table_t *mp;
static const uint16_t *qstrs;  // the .mpy's qstr table, interned by the loader
#define QSTR(name) (qstrs[Q_##name])

#define BUFFER_READ 1
#define BUFFER_RW 3
#define SMALL_INT(o) ((intptr_t)(o) >> 1)
#define IS_SMALL_INT(o) (((intptr_t)(o) & 1) != 0)
#define SMALL_INT_OBJ(n) ((obj_t)(((intptr_t)(n) << 1) | 1))
#define FUN_SIG(n) (((uint32_t)(n) << 17) | ((uint32_t)(n) << 1))  // n positional arguments, no keywords
#define STR_(x) #x
#define STR(x) STR_(x)

static _Noreturn void value_error(const char *msg) {
    mp->raise_msg(mp->load_global(QSTR(ValueError)), msg);
}

static float *floats_len(obj_t o, size_t n, size_t *len, const char *msg) {
    // The float32 array behind o, which must hold at least n floats; *len its length.
    buffer_t b;
    if (!mp->get_buffer(o, &b, BUFFER_RW) || b.typecode != 'f' || b.len < n * sizeof(float)) value_error(msg);
    *len = b.len / sizeof(float);
    return b.buf;
}

static float *floats(obj_t o, size_t n, const char *msg) {
    size_t len;
    return floats_len(o, n, &len, msg);
}

static int small_int(obj_t o, int lo, int hi, const char *msg) {
    if (!IS_SMALL_INT(o) || SMALL_INT(o) < lo || SMALL_INT(o) > hi) value_error(msg);
    return (int)SMALL_INT(o);
}

static obj_t py_loss_and_grad(size_t n_args, const obj_t *args) {
    // loss_and_grad(params, grads, work, name): microgpt's loss for one name (bytes-like, a-z),
    // the mean cross-entropy of its tokens BOS, letters, BOS over the first BLOCK positions; adds
    // its gradient to grads.
    const float *p = floats(args[0], N_PARAMS, "params must be an array('f') of cmodel.N_PARAMS floats");
    float *g = floats(args[1], N_PARAMS, "grads must be an array('f') of cmodel.N_PARAMS floats");
    work_t *w = (work_t *)floats(args[2], WORK_FLOATS, "work must be an array('f') of cmodel.WORK floats");
    buffer_t nb;
    if (!mp->get_buffer(args[3], &nb, BUFFER_READ)) value_error("name must be bytes-like");
    const uint8_t *name = nb.buf;
    int n = nb.len < BLOCK ? (int)nb.len + 1 : BLOCK;
    uint8_t tokens[BLOCK + 1];
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
    return mp->obj_new_float_from_f(loss_and_grad(g, w, p, tokens, n));
}

static obj_t py_forward(size_t n_args, const obj_t *args) {
    // forward(params, work, token, pos, logits): one position of inference (positions 0..pos-1
    // went before, as in sampling); writes the 27 logits into the float array `logits`.
    const float *p = floats(args[0], N_PARAMS, "params must be an array('f') of cmodel.N_PARAMS floats");
    work_t *w = (work_t *)floats(args[1], WORK_FLOATS, "work must be an array('f') of cmodel.WORK floats");
    int token = small_int(args[2], 0, VOCAB - 1, "token must be an int below " STR(VOCAB));
    int pos = small_int(args[3], 0, BLOCK - 1, "pos must be an int below " STR(BLOCK));
    float *logits = floats(args[4], VOCAB, "logits must be an array('f') of " STR(VOCAB) " floats");
    gpt_forward(w, p, token, pos);
    for (int i = 0; i < VOCAB; i++) logits[i] = w->logits[i];
    return mp->const_none;
}

static obj_t py_adam(size_t n_args, const obj_t *args) {
    // adam(params, grads, m, v, step, unbias): train.adam, in C, over the arrays' common length
    // (N_PARAMS in the trainer): a count known at run time keeps the loop walking four pointers.
    size_t n[4];
    float *p = floats_len(args[0], N_PARAMS, &n[0], "params must be an array('f') of cmodel.N_PARAMS floats");
    float *g = floats_len(args[1], N_PARAMS, &n[1], "grads must be an array('f') of cmodel.N_PARAMS floats");
    float *m = floats_len(args[2], N_PARAMS, &n[2], "m must be an array('f') of cmodel.N_PARAMS floats");
    float *v = floats_len(args[3], N_PARAMS, &n[3], "v must be an array('f') of cmodel.N_PARAMS floats");
    for (int i = 1; i < 4; i++)
        if (n[i] < n[0]) n[0] = n[i];
    adam_update(p, m, v, g, mp->obj_get_float_to_f(args[4]), mp->obj_get_float_to_f(args[5]), (int)n[0]);
    return mp->const_none;
}

static void define(size_t name, fun_var_t fun, int n_args) {
    fun_builtin_var_t *f = mp->realloc_(NULL, sizeof(fun_builtin_var_t), false);
    f->type = mp->type_fun_builtin_var;
    f->sig = FUN_SIG(n_args);
    f->fun = fun;
    mp->store_global(name, f);
}

// The module's body: the loader calls it at import as a viper function, (self, n_args, n_kw, args).
obj_t mpy_init(const fun_bc_t *self, size_t n_args, size_t n_kw, const obj_t *args) {
    mp = (const mp_fun_table_t *)self->context->obj_table[0];
    qstrs = self->context->qstr_table;
    void *globals = mp->swap_globals(self->context->globals);
    define(QSTR(loss_and_grad), py_loss_and_grad, 4);
    define(QSTR(forward), py_forward, 5);
    define(QSTR(adam), py_adam, 6);
    mp->store_global(QSTR(N_PARAMS), SMALL_INT_OBJ(N_PARAMS));
    mp->store_global(QSTR(WORK), SMALL_INT_OBJ(WORK_FLOATS));
    mp->swap_globals(globals);
    return mp->const_none;
}
