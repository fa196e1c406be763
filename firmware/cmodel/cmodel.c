// microgpt's training step in C, for the chip: the same forward, backward and Adam as
// firmware/model.py and firmware/train.py, over the same float32 arrays, as a MicroPython
// native module (.mpy). In MicroPython every float is a heap object; here they are registers.
//
// Built by scripts/build_cmodel.py (clang-22 for xtensawin and x64, linked into .mpy by
// microgpt/natmod.py). Freestanding: no libc, no libm. The ESP32's FPU has no divide or square
// root instruction, so on Xtensa those are Newton iterations on its fused multiply-add.
//
// The module reaches MicroPython only through its function table (obj_table[0] of the .mpy)
// and its qstr table, which the loader fills; the layouts below are MicroPython's
// (py/nativeglue.h mp_fun_table_t, py/obj.h, py/bc.h), identical in v1.25 and the VM's v1.29.

#include <stddef.h>
#include <stdint.h>

// ---- The model (firmware/model.py holds the same numbers; the module exports N_PARAMS so
// the trainer refuses a stale build) ----
#define VOCAB 27
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

// ---- MicroPython's side: objects, the function table, the module context ----
typedef void *obj_t;
typedef struct { void *buf; size_t len; int typecode; } buffer_t;
typedef obj_t (*fun_var_t)(size_t n_args, const obj_t *args);
typedef struct { const void *type; uint32_t sig; fun_var_t fun; } fun_builtin_var_t;

typedef struct {
    obj_t const_none;                                          // 0
    void *unused_1_4[4];
    void *(*swap_globals)(void *globals);                      // 5
    obj_t (*load_name)(unsigned qst);                          // 6
    obj_t (*load_global)(unsigned qst);                        // 7
    void *unused_8_12[5];
    void (*store_global)(unsigned qst, obj_t value);           // 13
    void *unused_14_33[20];
    void (*raise)(obj_t exc);                                  // 34
    void *unused_35_51[17];
    void *(*realloc_)(void *ptr, size_t n, int allow_move);    // 52
    void *unused_53_59[7];
    obj_t (*new_float_from_f)(float f);                        // 60
    void *unused_61;
    float (*get_float_to_f)(obj_t o);                          // 62
    void *unused_63_64[2];
    int (*get_buffer)(obj_t o, buffer_t *info, unsigned flags);  // 65
    void *unused_66_80[15];
    const void *type_fun_builtin_var;                          // 81
} fun_table_t;

typedef struct { const void *type; void *globals; uint16_t *qstr_table; obj_t *obj_table; } module_context_t;
typedef struct { const void *type; const module_context_t *context; } fun_bc_t;

#define BUFFER_RW 3
#define SMALL_INT(o) ((intptr_t)(o) >> 1)
#define IS_SMALL_INT(o) (((intptr_t)(o) & 1) != 0)
#define FUN_SIG(n) (((uint32_t)(n) << 17) | ((uint32_t)(n) << 1))

static const fun_table_t *mp;
static unsigned qstr_ValueError;

// The order of the names in the .mpy's qstr table (after the file name): scripts/build_cmodel.py.
enum { Q_FILE, Q_loss_and_grad, Q_forward, Q_adam, Q_N_PARAMS, Q_WORK, Q_ValueError };

// ---- float helpers: division, square root, exp and log without libm ----
typedef union { float f; uint32_t u; } bits_t;

#if defined(__xtensa__)
static inline float fma_(float a, float b, float c) { return __builtin_fmaf(a, b, c); }  // madd.s

static inline float recip(float b) {
    // 1/b for b > 0: a bit-level first guess, then Newton steps, each squaring the error.
    bits_t x = {b};
    x.u = 0x7EF311C3u - x.u;
    float r = x.f;
    for (int i = 0; i < 4; i++) r = fma_(r, fma_(-b, r, 1.0f), r);
    return r;
}

static inline float div_(float a, float b) {
    // a/b for b > 0: a * (1/b), then one residual correction (rounds as a true division almost always).
    float r = recip(b);
    float q = a * r;
    return fma_(fma_(-b, q, a), r, q);
}

static inline float rsqrt(float x) {
    // 1/sqrt(x) for x > 0, Newton's method from a bit-level first guess.
    bits_t y = {x};
    y.u = 0x5F3759DFu - (y.u >> 1);
    float r = y.f, h = 0.5f * x;
    for (int i = 0; i < 4; i++) r = r * fma_(-h * r, r, 1.5f);
    return r;
}

static inline float sqrt_(float x) {
    // sqrt(x) for x >= 0: x / sqrt(x), then one residual correction.
    if (x == 0.0f) return 0.0f;
    float r = rsqrt(x), s = x * r;
    return fma_(fma_(-s, s, x), 0.5f * r, s);
}
#else
static inline float div_(float a, float b) { return a / b; }
static inline float recip(float b) { return 1.0f / b; }
static inline float sqrt_(float x) { return __builtin_sqrtf(x); }
static inline float rsqrt(float x) { return 1.0f / __builtin_sqrtf(x); }
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
    bits_t scale = {.u = (uint32_t)(k + 127) << 23};
    return p * scale.f;
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

// ---- The model: one position at a time, as firmware/model.py (see its comments) ----
// Everything the step keeps between positions, in one float32 array the trainer allocates.
typedef struct {
    float k[BLOCK * N_EMBD], v[BLOCK * N_EMBD], dk[BLOCK * N_EMBD], dv[BLOCK * N_EMBD];
    float x0[N_EMBD], x1[N_EMBD], q[N_EMBD], att[N_HEAD * BLOCK], o[N_EMBD];
    float x2[N_EMBD], x3[N_EMBD], h[N_HIDDEN], x4[N_EMBD], logits[VOCAB];
    float dlogits[VOCAB], dx4[N_EMBD], dh[N_HIDDEN], dx3[N_EMBD], dx2[N_EMBD];
    float d_o[N_EMBD], dq[N_EMBD], datt[BLOCK], dx1[N_EMBD], de[N_EMBD];
    float s0, s1, s3;  // rmsnorm scales of x0, x1, x3
} work_t;

#define WORK_FLOATS (sizeof(work_t) / sizeof(float))

static void matvec(const float *w, int nout, int nin, const float *x, float *y) {
    // y = W x for the row-major [nout][nin] matrix w
    for (int i = 0; i < nout; i++, w += nin) {
        float s = w[0] * x[0];
        for (int j = 1; j < nin; j++) s += w[j] * x[j];
        y[i] = s;
    }
}

static void linear_backward(const float *w, float *g, int nout, int nin, const float *x,
                            const float *dy, float *dx) {
    // For y = W x: G += dy x^T and dx += W^T dy; rows with dy = 0 (ReLU's) add nothing.
    for (int i = 0; i < nout; i++, w += nin, g += nin) {
        float d = dy[i];
        if (d == 0.0f) continue;
        for (int j = 0; j < nin; j++) {
            g[j] += d * x[j];
            dx[j] += w[j] * d;
        }
    }
}

static void clear(float *a, int n) {
    for (int i = 0; i < n; i++) a[i] = 0.0f;
}

static float rmsnorm(const float *x, float *y) {
    // y = x / rms(x) (y may be x); returns the scale 1/rms.
    float ss = 0.0f;
    for (int i = 0; i < N_EMBD; i++) ss += x[i] * x[i];
    float s = rsqrt(ss * (1.0f / N_EMBD) + RMS_EPS);
    for (int i = 0; i < N_EMBD; i++) y[i] = x[i] * s;
    return s;
}

static void rmsnorm_backward(const float *y, float s, const float *dy, float *dx) {
    // dx += s * (dy - y * (y . dy) / n), written with the output y = x * s.
    float yd = 0.0f;
    for (int i = 0; i < N_EMBD; i++) yd += y[i] * dy[i];
    yd *= 1.0f / N_EMBD;
    for (int i = 0; i < N_EMBD; i++) dx[i] += s * (dy[i] - y[i] * yd);
}

static float exp_logits(const float *logits, float inv_temperature, float *out, float *top_out) {
    // out = exp((logits - max) / temperature); returns their sum, *top_out the max.
    float top = logits[0], total = 0.0f;
    for (int i = 1; i < VOCAB; i++)
        if (logits[i] > top) top = logits[i];
    for (int i = 0; i < VOCAB; i++) {
        float e = exp_neg((logits[i] - top) * inv_temperature);
        out[i] = e;
        total += e;
    }
    *top_out = top;
    return total;
}

static void embed(const float *p, work_t *w, int token, int pos) {
    // x0 = rmsnorm(wte[token] + wpe[pos]), x1 = rmsnorm(x0), with their scales.
    const float *te = p + WTE + token * N_EMBD, *pe = p + WPE + pos * N_EMBD;
    for (int i = 0; i < N_EMBD; i++) w->x0[i] = te[i] + pe[i];
    w->s0 = rmsnorm(w->x0, w->x0);
    w->s1 = rmsnorm(w->x0, w->x1);
}

static void forward(const float *p, work_t *w, int token, int pos) {
    // One position of microgpt's gpt(): fills w->logits and this position's key and value.
    float *k = w->k + pos * N_EMBD, *v = w->v + pos * N_EMBD;
    embed(p, w, token, pos);
    matvec(p + WQ, N_EMBD, N_EMBD, w->x1, w->q);
    matvec(p + WK, N_EMBD, N_EMBD, w->x1, k);
    matvec(p + WV, N_EMBD, N_EMBD, w->x1, v);
    for (int h = 0; h < N_HEAD; h++) {
        int hd = h * HEAD_DIM;
        float *att = w->att + h * BLOCK, top = -1e30f, total = 0.0f;
        for (int t = 0; t <= pos; t++) {
            const float *kt = w->k + t * N_EMBD + hd;
            float s = 0.0f;
            for (int j = 0; j < HEAD_DIM; j++) s += w->q[hd + j] * kt[j];
            s *= ATT_SCALE;
            att[t] = s;
            if (s > top) top = s;
        }
        for (int t = 0; t <= pos; t++) {
            float e = exp_neg(att[t] - top);
            att[t] = e;
            total += e;
        }
        for (int t = 0; t <= pos; t++) att[t] = div_(att[t], total);
        for (int j = 0; j < HEAD_DIM; j++) {
            float s = 0.0f;
            for (int t = 0; t <= pos; t++) s += att[t] * w->v[t * N_EMBD + hd + j];
            w->o[hd + j] = s;
        }
    }
    matvec(p + WO, N_EMBD, N_EMBD, w->o, w->x2);
    for (int i = 0; i < N_EMBD; i++) w->x2[i] += w->x0[i];
    w->s3 = rmsnorm(w->x2, w->x3);
    matvec(p + FC1, N_HIDDEN, N_EMBD, w->x3, w->h);
    for (int i = 0; i < N_HIDDEN; i++)
        if (w->h[i] < 0.0f) w->h[i] = 0.0f;
    // fc2 skips ReLU's zeros, adding the same nonzero terms in the same order as model.py.
    for (int i = 0; i < N_EMBD; i++) {
        const float *row = p + FC2 + i * N_HIDDEN;
        float s = 0.0f;
        for (int j = 0; j < N_HIDDEN; j++)
            if (w->h[j] != 0.0f) s += row[j] * w->h[j];
        w->x4[i] = s + w->x2[i];
    }
    matvec(p + LM_HEAD, VOCAB, N_EMBD, w->x4, w->logits);
}

static void to_embeddings(float *g, work_t *w, int token, int pos, float *dx0, const float *dx1) {
    // Gradients at x0 and at x1 = rmsnorm(x0), through both RMSNorms, onto the token's and
    // the position's embedding rows (w->x0, w->x1 hold this position's). Overwrites dx0.
    rmsnorm_backward(w->x1, w->s1, dx1, dx0);
    clear(w->de, N_EMBD);
    rmsnorm_backward(w->x0, w->s0, dx0, w->de);
    float *te = g + WTE + token * N_EMBD, *pe = g + WPE + pos * N_EMBD;
    for (int i = 0; i < N_EMBD; i++) {
        te[i] += w->de[i];
        pe[i] += w->de[i];
    }
}

static float backward(const float *p, float *g, work_t *w, int pos, int token, int target, float scale) {
    // Cross-entropy of this position's logits against target, times scale; adds this
    // position's gradients. Returns the unscaled loss.
    float top, total = exp_logits(w->logits, 1.0f, w->dlogits, &top);
    float loss = log_pos(total) - (w->logits[target] - top);
    for (int i = 0; i < VOCAB; i++) w->dlogits[i] = div_(w->dlogits[i], total) * scale;
    w->dlogits[target] -= scale;

    clear(w->dx4, N_EMBD);
    linear_backward(p + LM_HEAD, g + LM_HEAD, VOCAB, N_EMBD, w->x4, w->dlogits, w->dx4);
    // fc2, and ReLU's gradient: dh = W^T dx4 where h > 0, 0 elsewhere.
    for (int j = 0; j < N_HIDDEN; j++) {
        float hj = w->h[j], s = 0.0f;
        if (hj != 0.0f) {
            for (int i = 0; i < N_EMBD; i++) {
                g[FC2 + i * N_HIDDEN + j] += w->dx4[i] * hj;
                s += p[FC2 + i * N_HIDDEN + j] * w->dx4[i];
            }
        }
        w->dh[j] = s;
    }
    clear(w->dx3, N_EMBD);
    linear_backward(p + FC1, g + FC1, N_HIDDEN, N_EMBD, w->x3, w->dh, w->dx3);
    for (int i = 0; i < N_EMBD; i++) w->dx2[i] = w->dx4[i];
    rmsnorm_backward(w->x3, w->s3, w->dx3, w->dx2);
    clear(w->d_o, N_EMBD);
    linear_backward(p + WO, g + WO, N_EMBD, N_EMBD, w->o, w->dx2, w->d_o);

    clear(w->dk + pos * N_EMBD, N_EMBD);  // this position's key and value get their first gradient now
    clear(w->dv + pos * N_EMBD, N_EMBD);
    for (int h = 0; h < N_HEAD; h++) {
        int hd = h * HEAD_DIM;
        const float *att = w->att + h * BLOCK;
        // Through out = sum_t a_t v_t: dv_t += a_t do, and da_t = do . v_t.
        float dot = 0.0f;
        for (int t = 0; t <= pos; t++) {
            const float *vt = w->v + t * N_EMBD + hd;
            float *dvt = w->dv + t * N_EMBD + hd, s = 0.0f;
            for (int j = 0; j < HEAD_DIM; j++) {
                s += w->d_o[hd + j] * vt[j];
                dvt[j] += att[t] * w->d_o[hd + j];
            }
            w->datt[t] = s;
            dot += att[t] * s;
        }
        // Through the softmax and the 1/sqrt(head_dim) scale, into q and the keys.
        for (int j = 0; j < HEAD_DIM; j++) w->dq[hd + j] = 0.0f;
        for (int t = 0; t <= pos; t++) {
            const float *kt = w->k + t * N_EMBD + hd;
            float *dkt = w->dk + t * N_EMBD + hd;
            float dlog = att[t] * (w->datt[t] - dot) * ATT_SCALE;
            for (int j = 0; j < HEAD_DIM; j++) {
                w->dq[hd + j] += dlog * kt[j];
                dkt[j] += dlog * w->q[hd + j];
            }
        }
    }
    clear(w->dx1, N_EMBD);
    linear_backward(p + WQ, g + WQ, N_EMBD, N_EMBD, w->x1, w->dq, w->dx1);
    to_embeddings(g, w, token, pos, w->dx2, w->dx1);  // dx2 is also the gradient at x0 (residual)
    return loss;
}

static void finish_backward(const float *p, float *g, work_t *w, const uint8_t *tokens, int n) {
    // Keys and values have all their gradient now: take them back to the embeddings.
    for (int pos = 0; pos < n; pos++) {
        embed(p, w, tokens[pos], pos);
        clear(w->dx1, N_EMBD);
        linear_backward(p + WK, g + WK, N_EMBD, N_EMBD, w->x1, w->dk + pos * N_EMBD, w->dx1);
        linear_backward(p + WV, g + WV, N_EMBD, N_EMBD, w->x1, w->dv + pos * N_EMBD, w->dx1);
        clear(w->dx2, N_EMBD);
        to_embeddings(g, w, tokens[pos], pos, w->dx2, w->dx1);
    }
}

// ---- The Python-facing functions: arguments checked, then the work above ----
static void value_error(void) {
    mp->raise(mp->load_global(qstr_ValueError));
}

static float *floats(obj_t o, size_t n) {
    // The float32 array behind o, which must hold at least n floats.
    buffer_t b;
    if (!mp->get_buffer(o, &b, BUFFER_RW) || b.typecode != 'f' || b.len < n * sizeof(float)) value_error();
    return b.buf;
}

static int small_int(obj_t o, int lo, int hi) {
    if (!IS_SMALL_INT(o) || SMALL_INT(o) < lo || SMALL_INT(o) > hi) value_error();
    return (int)SMALL_INT(o);
}

static obj_t py_loss_and_grad(size_t n_args, const obj_t *args) {
    // loss_and_grad(params, grads, work, tokens, n): mean cross-entropy over the first n
    // positions of tokens (a bytes-like of ids, BOS first); adds its gradient to grads.
    const float *p = floats(args[0], N_PARAMS);
    float *g = floats(args[1], N_PARAMS);
    work_t *w = (work_t *)floats(args[2], WORK_FLOATS);
    buffer_t tb;
    if (!mp->get_buffer(args[3], &tb, 1)) value_error();
    int n = small_int(args[4], 1, BLOCK);
    const uint8_t *tokens = tb.buf;
    if (tb.len < (size_t)n + 1) value_error();
    for (int i = 0; i <= n; i++)
        if (tokens[i] >= VOCAB) value_error();
    float loss = 0.0f, scale = recip((float)n);
    for (int pos = 0; pos < n; pos++) {
        forward(p, w, tokens[pos], pos);
        loss += backward(p, g, w, pos, tokens[pos], tokens[pos + 1], scale);
    }
    finish_backward(p, g, w, tokens, n);
    return mp->new_float_from_f(div_(loss, (float)n));
}

static obj_t py_forward(size_t n_args, const obj_t *args) {
    // forward(params, work, token, pos, logits): one position of inference (positions 0..pos-1
    // went before, as in sampling); writes the 27 logits into the float array `logits`.
    const float *p = floats(args[0], N_PARAMS);
    work_t *w = (work_t *)floats(args[1], WORK_FLOATS);
    int token = small_int(args[2], 0, VOCAB - 1), pos = small_int(args[3], 0, BLOCK - 1);
    float *logits = floats(args[4], VOCAB);
    forward(p, w, token, pos);
    for (int i = 0; i < VOCAB; i++) logits[i] = w->logits[i];
    return mp->const_none;
}

static obj_t py_adam(size_t n_args, const obj_t *args) {
    // adam(params, grads, m, v, step, unbias): train.adam's update (m, v kept pre-divided by
    // 1 - beta; step and unbias fold in the bias corrections); zeroes grads.
    float *p = floats(args[0], N_PARAMS), *g = floats(args[1], N_PARAMS);
    float *m = floats(args[2], N_PARAMS), *v = floats(args[3], N_PARAMS);
    float step = mp->get_float_to_f(args[4]), unbias = mp->get_float_to_f(args[5]);
    for (int i = 0; i < N_PARAMS; i++) {
        float gi = g[i];
        float mi = BETA1 * m[i] + gi;
        float vi = BETA2 * v[i] + gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] -= div_(step * mi, sqrt_(vi * unbias) + ADAM_EPS);
        g[i] = 0.0f;
    }
    return mp->const_none;
}

static void define(const fun_bc_t *self, int name, fun_var_t fun, int n_args) {
    fun_builtin_var_t *f = mp->realloc_(NULL, sizeof(fun_builtin_var_t), 0);
    f->type = mp->type_fun_builtin_var;
    f->sig = FUN_SIG(n_args);
    f->fun = fun;
    mp->store_global(self->context->qstr_table[name], f);
}

// The module's body: the loader calls it at import as a viper function, (self, n_args, n_kw, args).
obj_t mpy_init(const fun_bc_t *self, size_t n_args, size_t n_kw, const obj_t *args) {
    mp = (const fun_table_t *)self->context->obj_table[0];
    const uint16_t *qstr = self->context->qstr_table;
    qstr_ValueError = qstr[Q_ValueError];
    void *globals = mp->swap_globals(self->context->globals);
    define(self, Q_loss_and_grad, py_loss_and_grad, 5);
    define(self, Q_forward, py_forward, 5);
    define(self, Q_adam, py_adam, 6);
    mp->store_global(qstr[Q_N_PARAMS], (obj_t)(intptr_t)(N_PARAMS * 2 + 1));
    mp->store_global(qstr[Q_WORK], (obj_t)(intptr_t)(WORK_FLOATS * 2 + 1));
    mp->swap_globals(globals);
    return mp->const_none;
}
