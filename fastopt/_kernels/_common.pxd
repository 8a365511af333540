# cython: language_level=3
"""Helpers shared by the kernel modules: the C helpers of ``fastopt_kernels.h`` and typed math.

Everything here is ``inline`` and therefore compiled into each module that cimports it, with that
module's flags (the baseline and the AVX2+FMA builds get their own copies). Thread counts, thresholds and
the stall guard are the thread policy's, in ``_threads.pyx``.
"""

from cython cimport floating
from libc.math cimport exp, expf, fabs, fabsf, log, log1p, sqrt, sqrtf, tanh, tanhf

cdef extern from "fastopt_kernels.h":
    const int FO_HAVE_OPENMP
    const int FO_PROBES_CPU_SHARE
    const int FO_FLUSHES_SUBNORMALS
    const char* FO_ISA
    const char* FO_COMPILE_ARGS
    int fo_omp_max_threads() noexcept nogil
    int fo_omp_num_procs() noexcept nogil
    int fo_omp_in_parallel() noexcept nogil
    double fo_wall_seconds() noexcept nogil
    double fo_thread_cpu_seconds() noexcept nogil
    unsigned int fo_flush_subnormals_begin() noexcept nogil
    void fo_flush_subnormals_end(unsigned int saved) noexcept nogil
    float fo_selectf(int c, float a, float b) noexcept nogil
    float fo_expf_nonpositive(float d) noexcept nogil
    float fo_log1pf_unit_interval(float e) noexcept nogil


cdef inline floating fsqrt(floating x) noexcept nogil:
    return sqrtf(x) if floating is float else sqrt(x)


cdef inline floating fabs_typed(floating x) noexcept nogil:
    return fabsf(x) if floating is float else fabs(x)


cdef inline floating with_weight_decay(floating g, floating wd, floating p) noexcept nogil:
    # g + wd p, with the L2 term only when weight decay is on (as PyTorch): 0 * inf would make an infinite
    # parameter's gradient NaN. The test is loop-invariant, so gcc unswitches the loops around it.
    return g + wd * p if wd != 0 else g


cdef inline floating fexp(floating x) noexcept nogil:
    return expf(x) if floating is float else exp(x)


cdef inline floating fexp_nonpositive(floating x) noexcept nogil:
    # exp(x) for x <= 0 or NaN: float32 by the vectorizable fo_expf_nonpositive above, float64 by libm's exp.
    return fo_expf_nonpositive(x) if floating is float else exp(x)


cdef inline floating flog1p_unit_interval(floating e) noexcept nogil:
    # log1p(e) for 0 <= e <= 1 or NaN: float32 by the vectorizable fo_log1pf_unit_interval, float64 by libm's log1p.
    return fo_log1pf_unit_interval(e) if floating is float else log1p(e)


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
