/* C helpers of fastopt's kernels: OpenMP and clock wrappers, subnormal flushing, bitwise selects, vectorizable float32
 * exp and log1p.
 *
 * Everything here is stateless and `static inline`, compiled into each module that includes it (through
 * `_common.pxd`) with that module's flags, so the baseline and the AVX2+FMA builds get their own copies. The
 * state of the thread policy (thread counts, thresholds, the stall guard) lives in one module, `_threads.pyx`.
 */
#ifndef FASTOPT_KERNELS_H
#define FASTOPT_KERNELS_H

#include <stdint.h>
#include <string.h>

/* ---------------------------------------------------------------------------------- OpenMP and clocks */
#ifdef _OPENMP
#include <omp.h>
#define FO_HAVE_OPENMP 1
static inline int fo_omp_max_threads(void) { return omp_get_max_threads(); }
static inline int fo_omp_num_procs(void) { return omp_get_num_procs(); }
static inline double fo_wall_seconds(void) { return omp_get_wtime(); }
static inline int fo_omp_in_parallel(void) { return omp_in_parallel(); }
#else
#define FO_HAVE_OPENMP 0
static inline int fo_omp_max_threads(void) { return 1; }
static inline int fo_omp_num_procs(void) { return 1; }
static inline double fo_wall_seconds(void) { return 0.0; }
static inline int fo_omp_in_parallel(void) { return 0; }
#endif

/* CPU time of the calling thread: the stall guard compares it with the wall time to see a starved thread. */
#if FO_HAVE_OPENMP && (defined(__linux__) || defined(__APPLE__))
#include <time.h>
#define FO_PROBES_CPU_SHARE 1
static inline double fo_thread_cpu_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
#else
#define FO_PROBES_CPU_SHARE 0
static inline double fo_thread_cpu_seconds(void) { return 0.0; }
#endif

/* ---------------------------------------------------------------------------------- subnormal numbers */
/* Optimizer state decays geometrically towards zero (the moments of a dead unit), into the subnormal range,
   where x86 arithmetic takes a slow microcode path (a 110k-element Adam step measured 167 instead of 56 us in
   training on a 2-core AMD EPYC). The optimizer kernels therefore flush subnormal inputs and results to zero
   (MXCSR FTZ and DAZ) while they run, per thread, and restore the caller's mode after. */
#if defined(__SSE2__) || defined(_M_X64)
#include <xmmintrin.h>
#define FO_FLUSHES_SUBNORMALS 1
static inline unsigned int fo_flush_subnormals_begin(void) {
    unsigned int saved = _mm_getcsr();
    _mm_setcsr(saved | 0x8040u); /* FTZ (bit 15) and DAZ (bit 6) */
    return saved;
}
static inline void fo_flush_subnormals_end(unsigned int saved) { _mm_setcsr(saved); }
#else
#define FO_FLUSHES_SUBNORMALS 0
static inline unsigned int fo_flush_subnormals_begin(void) { return 0; }
static inline void fo_flush_subnormals_end(unsigned int saved) { (void)saved; }
#endif

/* ---------------------------------------------------------------------------------- inlining, selects */
/* The loops of the elementwise helpers below (and of fastopt_layers.h's) vectorize only once the helpers are inlined
   into them. In _nn.c, a large translation unit, gcc's inliner ran out of its unit-growth budget before reaching the
   GELU loops and left fo_expf_nonpositive a call there; always_inline makes the choice not depend on the size of the
   rest of the file. */
#if defined(__GNUC__)
#define FO_FORCE_INLINE static inline __attribute__((always_inline))
#else
#define FO_FORCE_INLINE static inline
#endif

/* c ? a : b, chosen on the bits. Under gcc's default -ftrapping-math a loop whose select has a computed value on
   each side (leaky_relu's `z > 0 ? z : z * slope`) is not vectorized: gcc moves the product into the branch that
   uses it, and then will not execute it unconditionally. A select of bits leaves nothing to move. (float32 only:
   the float64 kernels are not the fast path, and use a plain select.) */
FO_FORCE_INLINE float fo_selectf(int c, float a, float b) {
    uint32_t bits_a, bits_b, mask = (uint32_t)0 - (uint32_t)(c != 0);
    memcpy(&bits_a, &a, sizeof bits_a);
    memcpy(&bits_b, &b, sizeof bits_b);
    bits_a = (bits_a & mask) | (bits_b & ~mask);
    memcpy(&a, &bits_a, sizeof a);
    return a;
}

/* ---------------------------------------------------------------------------------- float32 exp */
/* exp(d) for d <= 0 (a max-shifted logit) or NaN, in float32, branch-free so that a loop of it vectorizes
   (libm's expf is a call per element). d = k ln2 + r with k = round(d / ln2), |r| <= ln2 / 2, split
   Cody-Waite style (k * FO_LN2_HI is exact for |k| < 2**9); exp(r) = 1 + r + r**2 q(r), q a degree-4
   polynomial fitted for this file (least squares on the relative error, reweighted towards minimax:
   3e-9 relative in double); the result is scaled by 2**k as two powers of two, each a normal float,
   so that results down to the subnormal range round once. Measured within 0.97 ulp of the double
   exp rounded to float over 2.2e7 arguments in [-104, 0] (numpy's float32 exp: 2.5 ulp); exp(d) is
   0 below -104 (under half the smallest subnormal), and NaN stays NaN. */
#define FO_LOG2E 1.44269504088896341f
#define FO_LN2_HI 0.693145751953125f
#define FO_LN2_LO 1.42860682030941723e-6f
#define FO_ROUND_MAGIC 12582912.0f /* 1.5 * 2**23: adding and subtracting it rounds to an integer */

static inline float fo_pow2f(int32_t k) { /* 2**k for -126 <= k <= 127 */
    uint32_t bits = (uint32_t)(k + 127) << 23;
    float result;
    memcpy(&result, &bits, sizeof result);
    return result;
}

FO_FORCE_INLINE float fo_expf_nonpositive(float d) {
    /* clamped = max(d, -104), NaN kept: on the bits, because gcc does not vectorize a float select */
    uint32_t bits, magnitude, limited;
    float clamped;
    memcpy(&bits, &d, sizeof bits);
    magnitude = bits & 0x7FFFFFFFu;
    limited = magnitude < 0x42D00000u ? magnitude : 0x42D00000u; /* 104.0f */
    bits = (bits & 0x80000000u) | (magnitude > 0x7F800000u ? magnitude : limited);
    memcpy(&clamped, &bits, sizeof clamped);
    float shifted = clamped * FO_LOG2E + FO_ROUND_MAGIC;
    float k = shifted - FO_ROUND_MAGIC;
    float r = (clamped - k * FO_LN2_HI) - k * FO_LN2_LO;
    float q = 1.3814596459269524e-3f;
    int32_t shifted_bits, exponent, half;
    q = q * r + 8.368711918592453e-3f;
    q = q * r + 4.166838899254799e-2f;
    q = q * r + 1.666652113199234e-1f;
    q = q * r + 4.999999403953552e-1f;
    /* k as an integer, from the low bits of shifted's mantissa (no float-to-int conversion, which NaN
       would make undefined; for NaN the bits are garbage and the result NaN all the same) */
    memcpy(&shifted_bits, &shifted, sizeof shifted_bits);
    exponent = shifted_bits - 0x4B400000;
    half = exponent / 2;
    return ((r * r) * q + r + 1.0f) * fo_pow2f(half) * fo_pow2f(exponent - half);
}

/* ---------------------------------------------------------------------------------- float32 log1p */
/* log1p(e) for 0 <= e <= 1 (e = exp(-|x|) in the binary cross-entropy) or NaN, in float32, branch-free so that a loop
   of it vectorizes (libm's log1pf is a call per element). The argument is reduced without rounding: f = e below 1/2,
   else f = (e - 1) / 2 (exact: e - 1 by Sterbenz's lemma) and log1p(e) = ln2 + log1p(f), so -1/4 <= f < 1/2. Then
   log1p(f) = 2 atanh(s), s = f / (2 + f), |s| <= 1/5, written as f - (h - s (h + R)) with h = f**2 / 2 (the
   correction to f is at most a quarter of it, so the rounding of s and R hardly shows) and R = 2 atanh(s) / s - 2
   = z p(z), z = s**2 <= 1/25, p a degree-3 polynomial fitted for this file (least squares on the relative error,
   reweighted towards minimax: 6e-9 relative in double); ln2 is split as for exp. Measured over all 1.07e9 floats in
   [0, 1] (subnormals, 0 and 1 included), in the baseline and the AVX2+FMA builds alike: within 0.90 ulp of the
   double log1p; 0.25% of the results are not that value rounded to float, and none is 2 ulp from it (glibc 2.36's
   log1pf: 1.29 ulp; numpy's float32 log1p: 1.95). Tiny e gives e exactly, and NaN stays NaN. */
FO_FORCE_INLINE float fo_log1pf_unit_interval(float e) {
    int upper = e >= 0.5f;
    float f = fo_selectf(upper, (e - 1.0f) * 0.5f, e);
    float k = fo_selectf(upper, 1.0f, 0.0f);
    float s = f / (2.0f + f), z = s * s, h = 0.5f * f * f;
    float p = 2.374834567308426e-1f;
    p = p * z + 2.853268384933472e-1f;
    p = p * z + 4.000031352043152e-1f;
    p = p * z + 6.666666865348816e-1f;
    return k * FO_LN2_HI + (((s * (h + z * p) + k * FO_LN2_LO) - h) + f);
}

/* ---------------------------------------------------------------------------------- build description */
#ifndef FO_ISA
#define FO_ISA "unknown"
#endif
#ifndef FO_COMPILE_ARGS
#define FO_COMPILE_ARGS ""
#endif

#endif /* FASTOPT_KERNELS_H */
