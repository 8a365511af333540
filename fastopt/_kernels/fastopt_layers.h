/* C helpers of the layer kernels (`_nn.pyx`): the normal distribution's density and cdf in float32 for GELU, and the
 * SplitMix64 words of the dropout masks.
 *
 * Stateless and inlined (always: see FO_FORCE_INLINE in `fastopt_kernels.h`, whose selects and exp they use),
 * compiled into each module that includes it with that module's flags.
 */
#ifndef FASTOPT_LAYERS_H
#define FASTOPT_LAYERS_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "fastopt_kernels.h"

/* ---------------------------------------------------------------------------------- float32 GELU */
/* The standard normal distribution's density and cdf in float32 for GELU, branch-free so that loops of them vectorize
   (glibc's erff is a call per element: 10 ns each on the 2-core AMD EPYC Zen 4 VM, more than the layer's GEMM), and
   accurate in relative terms in the negative tail, where PyTorch's 0.5 x (1 + erf(x / sqrt(2))) cancels (its float32
   GELU(-6) keeps no correct digit). Measured against the double functions over 5e6 arguments in [-14.5, 6]:
   GELU within 11 ulp (2 ulp for x >= 0), its derivative within 4e-7 of the size of its terms. */

/* exp(-a**2 / 2) for a >= 0 (or NaN), its argument exact: with hi the 12 leading bits of a, hi**2 / 2 is exact and
   exp(-a**2 / 2) = exp(-hi**2 / 2) exp(-(a - hi) (a + hi) / 2). (Rounding a**2 would err by a**2 2**-25, which exp
   turns into a relative error as large: 30 ulp at a = 8.) a is clamped at 16, beyond float32's range of exp (NaN
   becomes 16 too: the callers keep a NaN from x). */
FO_FORCE_INLINE float fo_exp_half_square(float a) {
    float clamped = fo_selectf(a < 16.0f, a, 16.0f), hi;
    uint32_t bits;
    memcpy(&bits, &clamped, sizeof bits);
    bits &= 0xFFFFF000u;
    memcpy(&hi, &bits, sizeof hi);
    return fo_expf_nonpositive(-0.5f * (hi * hi)) * fo_expf_nonpositive(-0.5f * ((clamped - hi) * (clamped + hi)));
}

/* Phi(x) = erfc(-x / sqrt(2)) / 2, given e = exp(-x**2 / 2). erfc(z) of z = |x| / sqrt(2) is 1 - z p(z**2) for
   z < 0.5 (erf(z) < 0.53: the subtraction loses at most a bit) and e q((z - 2.5) / (z + 2.5)) from 0.5 on, z clamped
   at 10.5 (where e is 0 in float32); Phi is 1 - erfc / 2 for x >= 0 and erfc / 2 below, without cancellation. p
   (degree 4, relative error 1.5e-9 in double) and q (degree 8, fitted to erfc(z) exp(z**2) on [0.5, 10.5], relative
   error 4e-8) were fitted for this file by least squares reweighted towards minimax against the double erf and
   erfc. */
FO_FORCE_INLINE float fo_normal_cdf(float x, float e) {
    float z = fabsf(x) * 0.70710678f;
    float t = z * z;
    float p = 4.719927906990051e-3f;
    p = p * t - 2.675815485417843e-2f;
    p = p * t + 1.1282838135957718e-1f;
    p = p * t - 3.7612608075141907e-1f;
    p = p * t + 1.1283791065216064f;
    float clamped = fo_selectf(z < 10.5f, z, 10.5f);
    float s = (clamped - 2.5f) / (clamped + 2.5f);
    float q = 1.7801724607124925e-4f;
    q = q * s + 7.691464270465076e-4f;
    q = q * s - 2.613211516290903e-3f;
    q = q * s - 3.96313052624464e-3f;
    q = q * s + 3.991568833589554e-2f;
    q = q * s - 1.2503620982170105e-1f;
    q = q * s + 2.5171375274658203e-1f;
    q = q * s - 3.7173664569854736e-1f;
    q = q * s + 2.1080635488033295e-1f;
    float erfc_z = fo_selectf(z < 0.5f, 1.0f - z * p, e * q);
    return fo_selectf(x >= 0.0f, 1.0f - 0.5f * erfc_z, 0.5f * erfc_z);
}

/* ---------------------------------------------------------------------------------- dropout masks */
/* Word j (from 0) of the SplitMix64 stream of `key`: the finalizer of Steele, Lea and Flood's SplitMix64 applied to
   key + (j + 1) * 0x9E3779B97F4A7C15 (mod 2**64). The same function as fastopt/_random.py's `word`. */
FO_FORCE_INLINE uint64_t fo_stream_word(uint64_t key, uint64_t j) {
    uint64_t z = key + (j + 1) * UINT64_C(0x9E3779B97F4A7C15);
    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    return z ^ (z >> 31);
}

#endif /* FASTOPT_LAYERS_H */
