// Float arithmetic for cmodel.c without libm: multiply-add, division, square root, exp and log.
//
// The ESP32's FPU has no divide or square root instruction, so on Xtensa those are Newton
// iterations on its fused multiply-add (madd.s), from first guesses made of the bits: its estimate
// instructions (recip0.s, rsqrt0.s) read an implementation-defined table, and clang has no
// inline-asm constraint for FP registers anyway. Sums of products are madd.s on Xtensa (MADD); the
// x64 build for the VM rounds them as the MicroPython kernels do. exp and log are short series.
// Included once, by cmodel.c (one translation unit: everything static).

#include <stdint.h>

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
