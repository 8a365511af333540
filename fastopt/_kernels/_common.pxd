# cython: language_level=3
"""Helpers shared by the kernel modules: build constants, OpenMP thread counts, typed math.

Everything here is ``inline`` and therefore compiled into each module that cimports it, with that
module's flags (the baseline and the AVX2+FMA builds get their own copies).
"""

from cython cimport floating
from libc.math cimport exp, expf, log, sqrt, sqrtf, tanh, tanhf

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #define FO_HAVE_OPENMP 1
    static int fo_omp_max_threads(void) { return omp_get_max_threads(); }
    static int fo_omp_num_procs(void) { return omp_get_num_procs(); }
    #else
    #define FO_HAVE_OPENMP 0
    static int fo_omp_max_threads(void) { return 1; }
    static int fo_omp_num_procs(void) { return 1; }
    #endif
    /* Optimizer state decays geometrically towards zero (the moments of a dead unit), into the
       subnormal range, where x86 arithmetic takes a slow microcode path (a 110k-element Adam step
       measured 167 instead of 56 us in training). The optimizer kernels therefore flush subnormal
       inputs and results to zero (MXCSR FTZ and DAZ) while they run, per thread, and restore the
       caller's mode after. */
    #if defined(__SSE2__) || defined(_M_X64)
    #include <xmmintrin.h>
    static unsigned int fo_flush_subnormals_begin(void) {
        unsigned int saved = _mm_getcsr();
        _mm_setcsr(saved | 0x8040u);  /* FTZ (bit 15) and DAZ (bit 6) */
        return saved;
    }
    static void fo_flush_subnormals_end(unsigned int saved) { _mm_setcsr(saved); }
    #define FO_FLUSHES_SUBNORMALS 1
    #else
    static unsigned int fo_flush_subnormals_begin(void) { return 0; }
    static void fo_flush_subnormals_end(unsigned int saved) { (void)saved; }
    #define FO_FLUSHES_SUBNORMALS 0
    #endif
    #ifndef FO_ISA
    #define FO_ISA "unknown"
    #endif
    #ifndef FO_COMPILE_ARGS
    #define FO_COMPILE_ARGS ""
    #endif
    """
    const int FO_HAVE_OPENMP
    const char* FO_ISA
    const char* FO_COMPILE_ARGS
    int fo_omp_max_threads() noexcept nogil
    int fo_omp_num_procs() noexcept nogil
    const int FO_FLUSHES_SUBNORMALS
    unsigned int fo_flush_subnormals_begin() noexcept nogil
    void fo_flush_subnormals_end(unsigned int saved) noexcept nogil


cdef inline floating fsqrt(floating x) noexcept nogil:
    if floating is float:
        return sqrtf(x)
    else:
        return sqrt(x)


cdef inline floating with_weight_decay(floating g, floating wd, floating p) noexcept nogil:
    # g + wd p, with the L2 term only when weight decay is on (as PyTorch): 0 * inf would make an infinite
    # parameter's gradient NaN. The test is loop-invariant, so gcc unswitches the loops around it.
    return g + wd * p if wd != 0 else g


cdef inline floating fexp(floating x) noexcept nogil:
    if floating is float:
        return expf(x)
    else:
        return exp(x)


cdef inline floating ftanh(floating x) noexcept nogil:
    if floating is float:
        return tanhf(x)
    else:
        return tanh(x)


cdef inline floating fsigmoid(floating x) noexcept nogil:
    # The overflow-free two-branch logistic of the reference, e = exp(-|x|): 1 / (1 + e) for x >= 0,
    # e / (1 + e) below. Written as one division with a selected numerator (bitwise the same results)
    # so that random signs cost no branch mispredictions.
    # (Literals are typed: a bare 1 would become the double 1.0 and promote float32 arithmetic.)
    cdef floating one = 1
    cdef floating e = fexp(-x if x >= 0 else x)
    cdef floating numerator = one if x >= 0 else e
    return numerator / (one + e)
