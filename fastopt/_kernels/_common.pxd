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


# ----------------------------------------------------------------------------- sums of squares
# A sum of squares in double (``_optim.pyx``'s ``sum_of_squares``, and the optimizer updates that report one) is cut
# into blocks by the buffer's size and the processor count alone, each block summed on its own and the blocks'
# sums added in order, so its bits depend on neither the thread count nor the caller. A buffer of less than a block
# per processor is cut into one contiguous block per processor, at the 64-element boundaries of the optimizer
# updates' chunks, and summed from the updates' threshold: in a training step each core then reads the part of the
# weights (or gradients) it just updated (or differentiated). Read whole by one core, a 109k-weight buffer
# (fastopt.sklearn's L2 penalty, before each Adam step) made the Adam step that followed take 50-80 instead of 24 us
# on a 2-core AMD EPYC Zen 4 VM: each line the other core updated was first taken back from this core's cache.
cdef enum:
    SQUARE_BLOCKS = 64  # at most this many partial sums (on the stack)
    SQUARE_BLOCK_SIZE = 131072  # and blocks of at least this many elements
    SQUARE_SHARE = 16384  # or, for a buffer of less than a block per processor, one block per processor of this many


cdef inline Py_ssize_t square_blocks(Py_ssize_t n, Py_ssize_t processors) noexcept nogil:
    # How many blocks a sum of squares of n elements is cut into.
    cdef Py_ssize_t blocks = min(<Py_ssize_t>SQUARE_BLOCKS, (n + SQUARE_BLOCK_SIZE - 1) // SQUARE_BLOCK_SIZE)
    if blocks < processors:
        return max(1, min(processors, n // SQUARE_SHARE))
    return blocks


cdef inline Py_ssize_t square_block_size(Py_ssize_t n, Py_ssize_t blocks) noexcept nogil:
    # Each block's length but the last's: an equal share rounded up to 64 elements.
    return ((n + blocks - 1) // blocks + 63) // 64 * 64


# One block's sum: sixteen running sums in double (element i into sum i % 16; the last n % 16 elements into a
# seventeenth), added pairwise at the end: every access to the sums has a constant index once gcc unrolls the loops
# over k, so the sums live in vector registers and the additions overlap instead of each waiting for the previous
# one (a 109k-element float32 buffer, AVX2 build, 2-core AMD EPYC Zen 4: 10.5 us a call, 21 us with four scalar
# sums; the conversions to double then bound it). A block may be added in pieces, each but the last a multiple of
# 16 elements long: the same bits as in one piece. The order is fixed by the block's length alone.
cdef struct SquareSums:
    double lanes[16]
    double rest


cdef inline void square_sums_start(SquareSums* sums) noexcept nogil:
    cdef Py_ssize_t k
    for k in range(16):
        sums.lanes[k] = 0
    sums.rest = 0


cdef inline void square_sums_add(SquareSums* sums, const floating* x, Py_ssize_t n) noexcept nogil:
    # The lanes are copied to a local array for the loop (kept in registers there), and back after it.
    cdef double lanes[16]
    cdef double rest = sums.rest
    cdef Py_ssize_t i, k, end = n - n % 16
    for k in range(16):
        lanes[k] = sums.lanes[k]
    for i in range(0, end, 16):
        for k in range(16):
            lanes[k] += <double>x[i + k] * x[i + k]
    for i in range(end, n):
        rest += <double>x[i] * x[i]
    for k in range(16):
        sums.lanes[k] = lanes[k]
    sums.rest = rest


cdef inline double square_sums_total(SquareSums* sums) noexcept nogil:
    cdef double* lanes = sums.lanes
    cdef Py_ssize_t k
    for k in range(8):
        lanes[k] += lanes[k + 8]
    for k in range(4):
        lanes[k] += lanes[k + 4]
    return ((lanes[0] + lanes[2]) + (lanes[1] + lanes[3])) + sums.rest
