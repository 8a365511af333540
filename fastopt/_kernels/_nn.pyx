# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Layer and loss kernels: dense layers (GEMMs and the passes around them), activations, softmax, losses.

Dense layers, two ways (``fastopt/cython_backend.py`` chooses):

- ``dense_forward`` / ``dense_backward``: the whole layer, its GEMMs made by the CBLAS ``sgemm``/``dgemm``
  of NumPy's own OpenBLAS (addresses installed by ``set_blas``), called single-threaded on fixed blocks of
  the output, the blocks shared among fastopt's OpenMP threads. The blocks depend on the shapes and the
  machine's processor count only, never on the thread count, so results are bit-identical for any
  number of threads (OpenBLAS's own threading gives other float32 bits on 1 and 2 threads). The thread
  that computes a block of ``x @ weight`` applies the bias and activation to it while it is in cache.
- ``dense_epilogue`` / ``dense_backward_prologue``: only the passes around GEMMs that the caller makes
  with ``numpy.matmul`` (when NumPy's BLAS is not an OpenBLAS these functions can call):
  ``out = f(out + bias)``; ``grad_out *= f'(out)`` with ``grad_bias = grad_out.sum(0)``.

Bias gradients are column sums taken row after row: deterministic, and the order NumPy uses. Each
kernel follows the NumPy reference operation for operation (float32 GELU excepted: ``_gelu``; float32 exp and the
binary cross-entropy's log1p are fastopt_kernels.h's, within 1 ulp). Activation codes: 0 identity, 1 relu, 2 sigmoid,
3 tanh, 4 leaky_relu, 5 gelu, 6 gelu_tanh (dense layers take 0-4). Inputs are ``const`` memoryviews (read-only
arrays are accepted); the loops run over raw pointers so gcc can vectorize them. Shapes are trusted:
``fastopt.backend`` checks them.
"""

cimport cython
from cython cimport floating
from cython.parallel cimport parallel, prange, threadid
from libc.math cimport NAN, ceil, erfc, exp, ldexp, log
from libc.stdint cimport INT32_MAX, int32_t, int64_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

from fastopt._kernels._common cimport (
    FO_COMPILE_ARGS, FO_ISA, fabs_typed, fexp_nonpositive, flog1p_unit_interval, fo_log1pf_unit_interval,
    fo_omp_num_procs, fo_selectf, fsigmoid, ftanh,
)
from fastopt._kernels._threads cimport GATHER, GEMM, SCAN, UPDATE, clock, report_region, threads_for

cdef extern from "fastopt_layers.h":
    float fo_exp_half_square(float a) noexcept nogil
    float fo_normal_cdf(float x, float density) noexcept nogil
    uint64_t fo_stream_word(uint64_t key, uint64_t j) noexcept nogil

# CBLAS gemm, row-major, in its two integer widths (OpenBLAS built with 64-bit integers or not).
ctypedef void (*sgemm64_t)(int, int, int, int64_t, int64_t, int64_t, float, const float*, int64_t,
                           const float*, int64_t, float, float*, int64_t) noexcept nogil
ctypedef void (*dgemm64_t)(int, int, int, int64_t, int64_t, int64_t, double, const double*, int64_t,
                           const double*, int64_t, double, double*, int64_t) noexcept nogil
ctypedef void (*sgemm32_t)(int, int, int, int32_t, int32_t, int32_t, float, const float*, int32_t,
                           const float*, int32_t, float, float*, int32_t) noexcept nogil
ctypedef void (*dgemm32_t)(int, int, int, int32_t, int32_t, int32_t, double, const double*, int32_t,
                           const double*, int32_t, double, double*, int32_t) noexcept nogil
ctypedef int (*get_threads_t)() noexcept nogil
ctypedef void (*set_threads_t)(int) noexcept nogil

cdef enum:
    CBLAS_ROW_MAJOR = 101
    CBLAS_NO_TRANS = 111
    CBLAS_TRANS = 112

cdef void* _sgemm = NULL
cdef void* _dgemm = NULL
cdef bint _blas_ilp64 = False
cdef get_threads_t _blas_get_threads = NULL
cdef set_threads_t _blas_set_threads = NULL

# GEMM blocks: the work is cut into at most one block per processor of the machine (fixed at import,
# so the cut never depends on the thread count) and into blocks of at least _MIN_BLOCK_FLOPS
# multiply-adds times two (smaller BLAS calls pay their packing and call overhead for little work;
# 2**18 measured best at batch 32 and no worse at 512) and at least 16 rows or columns. Whether the blocks then run
# on several threads is the thread policy's choice (_threads.pyx); the blocks, hence the bits, do not change.
cdef Py_ssize_t _max_blocks = max(1, fo_omp_num_procs())
# A backward pass's two products (grad_weight and grad_x) share the processors: each is cut into at most half
# of them. Whole products on separate threads pack their operands once, not once per block (batch 128, the
# 128 x 64 layer: 45 instead of 61 us on two threads).
cdef Py_ssize_t _shared_blocks = max(1, _max_blocks // 2)
cdef double _MIN_BLOCK_FLOPS = 262144.0
# Counts the changes of the BLAS and of the tiles: a compiled training step made before one is out of date.
cdef Py_ssize_t _gemm_setup = 0
cdef Py_ssize_t _MIN_BLOCK_WIDTH = 16


def build_info():
    """Flags this module was compiled with, and how its GEMMs are split."""
    return {
        "isa": FO_ISA.decode(),
        "compile_args": FO_COMPILE_ARGS.decode().split(),
        "gemm_max_blocks": _max_blocks,
        "gemm_tile_multiply_adds": _tile_mnk,
        "blas_installed": _sgemm != NULL,
    }


def set_blas(size_t sgemm, size_t dgemm, bint ilp64, size_t get_threads, size_t set_threads):
    """Install the addresses of ``cblas_sgemm`` and ``cblas_dgemm`` (64-bit integers if ``ilp64``) and of
    OpenBLAS's ``openblas_get_num_threads``/``openblas_set_num_threads``; all zero uninstalls them."""
    global _sgemm, _dgemm, _blas_ilp64, _blas_get_threads, _blas_set_threads, _gemm_setup
    if (sgemm == 0) != (dgemm == 0) or (sgemm == 0) != (get_threads == 0) or (sgemm == 0) != (set_threads == 0):
        raise ValueError("set_blas needs all four addresses, or none")
    _sgemm, _dgemm, _blas_ilp64 = <void*>sgemm, <void*>dgemm, ilp64
    _blas_get_threads, _blas_set_threads = <get_threads_t>get_threads, <set_threads_t>set_threads
    _gemm_setup += 1


# ------------------------------------------------------------------------------- pointer loops
cdef enum:
    # Activation codes (fastopt/cython_backend.py's _ACTIVATION_CODES)
    _IDENTITY = 0
    _RELU = 1
    _SIGMOID = 2
    _TANH = 3
    _LEAKY_RELU = 4
    _GELU = 5
    _GELU_TANH = 6

# GELU's constants: 1 / sqrt(2), 1 / sqrt(2 pi), 2 sqrt(2 / pi) (twice the tanh form's beta), its kappa
cdef double _SQRT_HALF = 0.70710678118654752440
cdef double _INV_SQRT_2PI = 0.39894228040143267794
cdef double _TWO_BETA = 1.59576912160573071176
cdef double _KAPPA = 0.044715


cdef inline floating _select(bint c, floating a, floating b) noexcept nogil:
    # c ? a : b, for float32 on the bits (see fastopt_layers.h: the selects that gcc would not vectorize otherwise)
    if floating is float:
        return fo_selectf(c, a, b)
    else:
        return a if c else b


cdef inline floating _gelu(floating x) noexcept nogil:
    # x Phi(x) = 0.5 x erfc(-x / sqrt(2)): float32 by fastopt_layers.h's vectorizable cdf, float64 by the C library's
    # erfc, in the reference's order
    cdef floating half = 0.5, sqrt_half = <floating>_SQRT_HALF
    if floating is float:
        return x * fo_normal_cdf(x, fo_exp_half_square(fabs_typed(x)))
    else:
        return x * half * erfc(-x * sqrt_half)


cdef inline floating _gelu_derivative(floating x) noexcept nogil:
    # Phi(x) + x phi(x), phi(x) = exp(-x**2 / 2) / sqrt(2 pi)
    cdef floating half = 0.5, sqrt_half = <floating>_SQRT_HALF, inv_sqrt_2pi = <floating>_INV_SQRT_2PI, density
    if floating is float:
        density = fo_exp_half_square(fabs_typed(x))
        return fo_normal_cdf(x, density) + x * (inv_sqrt_2pi * density)
    else:
        return half * erfc(-x * sqrt_half) + x * (inv_sqrt_2pi * exp(x * x * -half))


cdef inline floating _gelu_tanh_inner(floating x) noexcept nogil:
    # v = 2 u = 2 sqrt(2 / pi) (x + kappa x**3): the tanh form's 0.5 (1 + tanh(u)) is sigmoid(v), taken as
    # fsigmoid does (exp(-|v|), a selected numerator) without the cancellation of 1 + tanh(u) for u << 0
    cdef floating two_beta = <floating>_TWO_BETA, kappa = <floating>_KAPPA
    return two_beta * (x + kappa * (x * x * x))


cdef inline floating _gelu_tanh(floating x) noexcept nogil:
    cdef floating one = 1, v = _gelu_tanh_inner(x)
    cdef floating e = fexp_nonpositive(-fabs_typed(v))
    return x * (_select(v >= 0, one, e) / (one + e))


cdef inline floating _gelu_tanh_derivative(floating x) noexcept nogil:
    # s + x s (1 - s) 2 sqrt(2 / pi) (1 + 3 kappa x**2), s = sigmoid(v): PyTorch's 0.5 (1 + t) + 0.5 x (1 - t**2) u'
    # with 1 + t = 2 s and 1 - t**2 = 4 s (1 - s); 1 - s = sigmoid(-v) is taken with its own numerator. Where
    # exp(-|v|) is 0 the second term is too (it would be 0 * inf for a huge x).
    cdef floating one = 1, zero = 0, two_beta = <floating>_TWO_BETA, three_kappa = <floating>(3 * _KAPPA)
    cdef floating v = _gelu_tanh_inner(x)
    cdef floating e = fexp_nonpositive(-fabs_typed(v))
    cdef floating d = one + e
    cdef floating s = _select(v >= 0, one, e) / d, rest = _select(v >= 0, e, one) / d
    return s + _select(e > 0, (x * (s * rest)) * (two_beta * (one + three_kappa * (x * x))), zero)



cdef inline void _act_forward(int act, const floating* x, floating* out, Py_ssize_t n, floating slope) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating z, zero = 0
    if act == _RELU:
        for i in range(n):
            z = x[i]
            out[i] = zero if z < 0 else z
    elif act == _SIGMOID:
        for i in range(n):
            out[i] = fsigmoid(x[i])
    elif act == _TANH:
        for i in range(n):
            out[i] = ftanh(x[i])
    elif act == _LEAKY_RELU:
        for i in range(n):
            z = x[i]
            out[i] = _select(z > zero, z, z * slope)
    else:
        for i in range(n):
            out[i] = x[i]


cdef void _gelu_forward(int act, const floating* x, floating* out, Py_ssize_t n) noexcept nogil:
    # GELU's loops apart from _act_forward's: that one stays small enough for gcc to inline into the dense kernels
    cdef Py_ssize_t i
    if act == _GELU:
        for i in range(n):
            out[i] = _gelu(x[i])
    else:
        for i in range(n):
            out[i] = _gelu_tanh(x[i])


cdef inline void _bias_act(int act, floating* out, const floating* bias, Py_ssize_t n, floating slope) noexcept nogil:
    # out = f(out + bias) for one row (the dense activations)
    cdef Py_ssize_t j
    cdef floating z, zero = 0
    if act == _RELU:
        for j in range(n):
            z = out[j] + bias[j]
            out[j] = zero if z < 0 else z
    elif act == _SIGMOID:
        for j in range(n):
            out[j] = fsigmoid(out[j] + bias[j])
    elif act == _TANH:
        for j in range(n):
            out[j] = ftanh(out[j] + bias[j])
    elif act == _LEAKY_RELU:
        for j in range(n):
            z = out[j] + bias[j]
            out[j] = _select(z > zero, z, z * slope)
    else:
        for j in range(n):
            out[j] = out[j] + bias[j]


cdef inline void _act_backward(int act, const floating* x, const floating* out, const floating* grad_out,
                               floating* grad_x, Py_ssize_t n, floating slope) noexcept nogil:
    # grad_x = grad_out * f' (GELU's: _gelu_backward); from out (relu, sigmoid, tanh) or from the input x (leaky_relu,
    # unless x is NULL: the dense backward's, whose slope is >= 0, reads the sign from out). grad_x may be grad_out
    # itself (in-place use by the dense backward).
    cdef Py_ssize_t i
    cdef floating y, g, one = 1, zero = 0
    cdef const floating* sign_of = x if x != NULL else out
    if act == _RELU:
        for i in range(n):
            grad_x[i] = grad_out[i] if out[i] > 0 else zero
    elif act == _SIGMOID:
        for i in range(n):
            y = out[i]
            grad_x[i] = grad_out[i] * (y * (one - y))
    elif act == _TANH:
        for i in range(n):
            y = out[i]
            grad_x[i] = grad_out[i] * (one - y * y)
    elif act == _LEAKY_RELU:
        for i in range(n):
            g = grad_out[i]
            grad_x[i] = _select(sign_of[i] > zero, g, g * slope)
    elif grad_x != grad_out:
        for i in range(n):
            grad_x[i] = grad_out[i]


cdef void _gelu_backward(int act, const floating* x, const floating* grad_out, floating* grad_x,
                         Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    if act == _GELU:
        for i in range(n):
            grad_x[i] = grad_out[i] * _gelu_derivative(x[i])
    else:
        for i in range(n):
            grad_x[i] = grad_out[i] * _gelu_tanh_derivative(x[i])


cdef inline void _dropout_words(const floating* x, floating* out, floating* mask, Py_ssize_t first, Py_ssize_t last,
                                uint64_t key, uint64_t threshold, floating scale) noexcept nogil:
    # Words first:last of the key's stream, each deciding two elements: 2 j by its low 32 bits, 2 j + 1 by its high
    # ones (the element is kept when they are >= threshold). A product with the multiplier, not a select, so that
    # NaN and Inf stay visible in dropped elements as in PyTorch (x * 0).
    cdef Py_ssize_t j
    cdef uint64_t word
    cdef floating zero = 0
    for j in range(first, last):
        word = fo_stream_word(key, j)
        mask[2 * j] = scale if <uint32_t>word >= threshold else zero
        mask[2 * j + 1] = scale if (word >> 32) >= threshold else zero
        out[2 * j] = x[2 * j] * mask[2 * j]
        out[2 * j + 1] = x[2 * j + 1] * mask[2 * j + 1]


cdef inline void _add_row(floating* acc, const floating* row, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t j
    for j in range(n):
        acc[j] = acc[j] + row[j]


# ------------------------------------------------------------------------------- dense layer
cdef inline void _blas_gemm(bint trans_a, bint trans_b, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                            const floating* a, Py_ssize_t lda, const floating* b, Py_ssize_t ldb,
                            floating* c, Py_ssize_t ldc) noexcept nogil:
    # One CBLAS call: c (m x n, row stride ldc) = op(a) @ op(b), op(a) m x k, op(b) k x n (m, n, k > 0).
    cdef int ta = CBLAS_TRANS if trans_a else CBLAS_NO_TRANS
    cdef int tb = CBLAS_TRANS if trans_b else CBLAS_NO_TRANS
    if floating is float:
        if _blas_ilp64:
            (<sgemm64_t>_sgemm)(CBLAS_ROW_MAJOR, ta, tb, m, n, k, 1, a, lda, b, ldb, 0, c, ldc)
        else:
            (<sgemm32_t>_sgemm)(CBLAS_ROW_MAJOR, ta, tb, <int32_t>m, <int32_t>n, <int32_t>k, 1, a, <int32_t>lda,
                                b, <int32_t>ldb, 0, c, <int32_t>ldc)
    else:
        if _blas_ilp64:
            (<dgemm64_t>_dgemm)(CBLAS_ROW_MAJOR, ta, tb, m, n, k, 1, a, lda, b, ldb, 0, c, ldc)
        else:
            (<dgemm32_t>_dgemm)(CBLAS_ROW_MAJOR, ta, tb, <int32_t>m, <int32_t>n, <int32_t>k, 1, a, <int32_t>lda,
                                b, <int32_t>ldb, 0, c, <int32_t>ldc)


# Small-product tiles. OpenBLAS's SkylakeX kernels (its choice on AVX-512 CPUs) multiply a product of at most 1e6
# multiply-adds without packing its operands, unless the product's left operand is transposed in OpenBLAS's
# column-major terms (our row-major op(b) transposed): on a 2-core AMD EPYC Zen 4 VM that ran at 100-107 GFLOP/s
# against 83-85 for packed products just above the limit (float32, one thread). A GEMM call of up to
# _TILES_AT_MOST times the limit is therefore made as that many calls of at most the limit each, cut along its
# longer output side: 32 x 400 x 128 (a depth block of the 784 x 128 layer at batch 32) 39.2 -> 31.5 us, the
# 400 x 32 x 128 block of its grad_weight 37.6 -> 33.1 us, 32 x 256 x 256 49.9 -> 44.0 us; float64 alike (77.6 ->
# 60.6 us). Larger products lose from it (128 x 784 x 128: 260 -> 577 us in 13 tiles), and so do the Haswell
# kernels (OpenBLAS's choice on AVX2 CPUs: 35.7 -> 39.2 us): ``set_gemm_tiles`` enables the tiles for the SkylakeX
# kernels only. Each output element is still one dot product made by one call, and the tiles depend on the shapes
# and the BLAS's kernels only, so the bits do not depend on the thread count.
cdef double _tile_mnk = 0  # multiply-adds per tile; 0: no tiles
cdef double _TILES_AT_MOST = 4


def outdate_training_steps():
    """Make every TrainingStep made so far out of date (its ``run`` returns None): the caller changed how dense
    layers are computed (``fastopt.cython_backend.set_gemm_path``)."""
    global _gemm_setup
    _gemm_setup += 1


def set_gemm_tiles(double max_multiply_adds):
    """Make each GEMM call of up to 4 times ``max_multiply_adds`` multiply-adds (whose right operand is not
    transposed) as calls of at most ``max_multiply_adds`` each; 0 turns the tiles off."""
    global _tile_mnk, _gemm_setup
    if not max_multiply_adds >= 0:
        raise ValueError(f"max_multiply_adds must be >= 0, got {max_multiply_adds}")
    _tile_mnk = max_multiply_adds
    _gemm_setup += 1


cdef inline bint _unpacked_path(bint trans_a, bint trans_b, Py_ssize_t k) noexcept nogil:
    # Whether OpenBLAS's small-product path takes a row-major op(a) @ op(b) of at most 1e6 multiply-adds: in its
    # column-major terms (op(b) first), not with only the left operand transposed, and with both only from k >= 4.
    return not trans_b or (trans_a and k >= 4)


cdef inline Py_ssize_t _tiles(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, bint trans_a, bint trans_b) noexcept nogil:
    # How many tiles a call is made in (1: one call): the fewest whose pieces stay within _tile_mnk.
    cdef double mnk = <double>m * n * k
    cdef Py_ssize_t length = max(m, n), pieces
    if _tile_mnk <= 0 or not _unpacked_path(trans_a, trans_b, k) or mnk <= _tile_mnk:
        return 1
    if mnk > _TILES_AT_MOST * _tile_mnk:
        return 1
    pieces = <Py_ssize_t>ceil(mnk / _tile_mnk)
    while pieces < length and <double>((length + pieces - 1) // pieces) * (mnk / length) > _tile_mnk:
        pieces += 1
    return pieces


cdef inline void _gemm(bint trans_a, bint trans_b, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                       const floating* a, Py_ssize_t lda, const floating* b, Py_ssize_t ldb,
                       floating* c, Py_ssize_t ldc) noexcept nogil:
    # c (m x n, row stride ldc) = op(a) @ op(b), op(a) m x k, op(b) k x n; op transposes a row-major matrix.
    cdef Py_ssize_t i, pieces, size, lo
    if m == 0 or n == 0:
        return
    if k == 0:  # an empty sum; BLAS would also reject the leading dimensions of empty operands
        for i in range(m):
            memset(c + i * ldc, 0, n * sizeof(floating))
        return
    pieces = _tiles(m, n, k, trans_a, trans_b)
    if pieces == 1:
        _blas_gemm(trans_a, trans_b, m, n, k, a, lda, b, ldb, c, ldc)
        return
    size = (max(m, n) + pieces - 1) // pieces
    for i in range(pieces):
        lo = i * size
        if lo >= max(m, n):
            break
        if n >= m:  # columns lo:lo+size of op(b) and c
            _blas_gemm(trans_a, trans_b, m, min(size, n - lo), k, a, lda, b + (lo * ldb if trans_b else lo), ldb,
                       c + lo, ldc)
        else:  # rows lo:lo+size of op(a) and c
            _blas_gemm(trans_a, trans_b, min(size, m - lo), n, k, a + (lo if trans_a else lo * lda), lda, b, ldb,
                       c + lo * ldc, ldc)


cdef inline Py_ssize_t _gemm_blocks(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, Py_ssize_t max_blocks) noexcept nogil:
    # How many blocks (at most max_blocks) an m x n x k GEMM is cut into: a function of the shape and of the
    # machine's processor count, never of the thread count.
    cdef Py_ssize_t by_work = <Py_ssize_t>(2.0 * m * n * k / _MIN_BLOCK_FLOPS)
    cdef Py_ssize_t by_width = max(m, n) // _MIN_BLOCK_WIDTH
    return max(1, min(by_work, by_width, max_blocks))


cdef inline void _block_bounds(Py_ssize_t block, Py_ssize_t blocks, Py_ssize_t m, Py_ssize_t n,
                               Py_ssize_t* bounds) noexcept nogil:
    # bounds = (r0, r1, c0, c1): the rows r0:r1 and columns c0:c1 of block number `block` of an m x n output.
    # The longer side is cut at the multiples of 16 elements (cache-line aligned for float32 rows) nearest to its
    # equal shares, so each block is within 16 elements of an equal share. (Cut at multiples of a share rounded up,
    # 100 columns were cut 64 + 36 and 200 rows 112 + 88: scikit-learn's digits network, 64-100-10 at batch 200, on
    # two threads of a 2-core AMD EPYC Zen 4 VM took 16.0 us for its first forward product and 22.2 us for its
    # grad_weight; cut 48 + 52 and 96 + 104, 15.0 and 18.7 us.)
    cdef Py_ssize_t length = n if n >= m else m
    cdef Py_ssize_t lo = min(length, _nearest_cut(block, blocks, length))
    cdef Py_ssize_t hi = length if block == blocks - 1 else min(length, _nearest_cut(block + 1, blocks, length))
    if n >= m:
        bounds[0], bounds[1], bounds[2], bounds[3] = 0, m, lo, hi
    else:
        bounds[0], bounds[1], bounds[2], bounds[3] = lo, hi, 0, n


cdef inline Py_ssize_t _nearest_cut(Py_ssize_t cut, Py_ssize_t blocks, Py_ssize_t length) noexcept nogil:
    # The multiple of _MIN_BLOCK_WIDTH nearest to cut * length / blocks.
    cdef Py_ssize_t unit = blocks * _MIN_BLOCK_WIDTH
    return (cut * length + unit // 2) // unit * _MIN_BLOCK_WIDTH


cdef inline void _gemm_block(Py_ssize_t block, Py_ssize_t blocks, bint trans_a, bint trans_b, Py_ssize_t m,
                             Py_ssize_t n, Py_ssize_t k, const floating* a, Py_ssize_t lda, const floating* b,
                             Py_ssize_t ldb, floating* c, Py_ssize_t ldc, Py_ssize_t* bounds) noexcept nogil:
    # Block number `block` of c = op(a) @ op(b): rows r0:r1 of op(a) times columns c0:c1 of op(b); the bounds
    # (r0, r1, c0, c1) are left in `bounds` for the pass that follows on the same block.
    _block_bounds(block, blocks, m, n, bounds)
    cdef Py_ssize_t r0 = bounds[0], r1 = bounds[1], c0 = bounds[2], c1 = bounds[3]
    _gemm(trans_a, trans_b, r1 - r0, c1 - c0, k, a + (r0 if trans_a else r0 * lda), lda,
          b + (c0 * ldb if trans_b else c0), ldb, c + r0 * ldc + c0, ldc)


# Direct calls in progress, and the BLAS thread count before the first of them. Changed only with the GIL
# held, which orders overlapping calls from several Python threads: the first sets BLAS to one thread before
# any of them calls it, the last restores the count after all of them are done.
cdef Py_ssize_t _blas_users = 0
cdef int _blas_threads_before = 1


cdef inline void _blas_serial_begin():
    # Each BLAS call is one block on one of fastopt's threads: BLAS must not start threads of its own.
    global _blas_users, _blas_threads_before
    if _blas_users == 0:
        _blas_threads_before = _blas_get_threads()
        if _blas_threads_before != 1:
            _blas_set_threads(1)
    _blas_users += 1


cdef inline void _blas_serial_end():
    global _blas_users
    _blas_users -= 1
    if _blas_users == 0 and _blas_threads_before != 1:
        _blas_set_threads(_blas_threads_before)


cdef inline void _check_blas(Py_ssize_t batch, Py_ssize_t n_in, Py_ssize_t n_out) except *:
    if _sgemm == NULL:
        raise RuntimeError("no BLAS installed: call set_blas first")
    if not _blas_ilp64 and max(batch, n_in, n_out) > INT32_MAX:
        raise ValueError(f"a dimension of {max(batch, n_in, n_out)} exceeds this BLAS's 32-bit integers")


cdef inline void _forward_block(Py_ssize_t block, Py_ssize_t blocks, const floating* x, const floating* w,
                                const floating* bias, floating* out, Py_ssize_t batch, Py_ssize_t n_in,
                                Py_ssize_t n_out, int act, floating slope) noexcept nogil:
    cdef Py_ssize_t bounds[4]
    cdef Py_ssize_t i
    _gemm_block(block, blocks, False, False, batch, n_out, n_in, x, n_in, w, n_out, out, n_out, bounds)
    for i in range(bounds[0], bounds[1]):
        _bias_act(act, out + i * n_out + bounds[2], bias + bounds[2], bounds[3] - bounds[2], slope)


# A layer whose weight has at least as many rows as the batch has (784 x 128 at batch 32 to 784) is cut along the inner
# dimension instead: block j multiplies columns K_j of x by rows K_j of the weight, the same rows as the backward
# pass's block j of grad_weight and nearly the same as the optimizer's contiguous chunk j (within 28 rows of 784 for
# the 784-128-64-10 network), so a step's weight rows are read, differentiated and updated on one core. Cut by
# output columns, each core read half of every weight row the other core's optimizer chunk had just written: on a
# 2-core AMD EPYC Zen 4 VM an Adam step over 109k parameters followed by a batch-32 forward pass of the 784 x 128
# layer over them took 116 us, against 25 + 41 us for the two alone. The partial products are summed in block
# order, row by row, so the bits do not depend on the thread count either. The cut applies from an input as wide as
# the batch: inside fit, the seed network's step at batch 256 took 1195 instead of 1304 us with it, at batch 512
# 2344 instead of 2552 us, at batch 128 648 instead of 666 us; 32-256-256-1 at batch 128 and 256 and 784-1024-1024-10
# at batch 256 moved by less than their noise (medians of 5-11 interleaved fits, same VM).
cdef Py_ssize_t _DEPTH_SPLIT_ROWS_PER_BATCH_ROW = 1


cdef inline Py_ssize_t _depth_blocks(Py_ssize_t batch, Py_ssize_t n_in, Py_ssize_t n_out) noexcept nogil:
    # How many inner-dimension blocks a forward pass is cut into (1: it is cut by output rows or columns instead).
    if n_in < _DEPTH_SPLIT_ROWS_PER_BATCH_ROW * batch:
        return 1
    return _gemm_blocks(n_in, n_out, batch, _max_blocks)


cdef inline void _depth_block(Py_ssize_t block, Py_ssize_t blocks, const floating* x, const floating* w,
                              floating* out, floating* partials, Py_ssize_t batch, Py_ssize_t n_in,
                              Py_ssize_t n_out) noexcept nogil:
    # x[:, k0:k1] @ weight[k0:k1, :] into out (block 0) or partial product number block - 1; k0:k1 are the rows
    # of block `block` of grad_weight in the backward pass (_block_bounds of an n_in-row product).
    cdef Py_ssize_t bounds[4]
    _block_bounds(block, blocks, n_in, 0, bounds)
    _gemm(False, False, batch, n_out, bounds[1] - bounds[0], x + bounds[0], n_in, w + bounds[0] * n_out, n_out,
          out if block == 0 else partials + (block - 1) * batch * n_out, n_out)


cdef inline void _depth_sum(Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t blocks, floating* out, const floating* partials,
                            const floating* bias, Py_ssize_t batch, Py_ssize_t n_out, int act,
                            floating slope) noexcept nogil:
    # Rows r0:r1 of out = f(out + partial 1 + ... + partial blocks-1 + bias), added in that order.
    cdef Py_ssize_t i, j
    for i in range(r0, r1):
        for j in range(1, blocks):
            _add_row(out + i * n_out, partials + ((j - 1) * batch + i) * n_out, n_out)
        _bias_act(act, out + i * n_out, bias, n_out, slope)


cdef void _forward_by_depth(Py_ssize_t blocks, int team, const floating* x, const floating* w, const floating* bias,
                            floating* out, floating* partials, Py_ssize_t batch, Py_ssize_t n_in, Py_ssize_t n_out,
                            int act, floating slope) noexcept nogil:
    cdef Py_ssize_t block, piece, rows = (batch + team - 1) // team
    cdef double started
    cdef double[1] own_done
    if team == 1:
        for block in range(blocks):
            _depth_block(block, blocks, x, w, out, partials, batch, n_in, n_out)
        _depth_sum(0, batch, blocks, out, partials, bias, batch, n_out, act, slope)
        return
    started = clock()
    own_done[0] = started
    with parallel(num_threads=team):
        for block in prange(blocks, schedule="static", chunksize=1):
            _depth_block(block, blocks, x, w, out, partials, batch, n_in, n_out)
        for piece in prange(team, schedule="static", chunksize=1):
            _depth_sum(min(batch, piece * rows), min(batch, (piece + 1) * rows), blocks, out, partials, bias, batch,
                       n_out, act, slope)
            if threadid() == 0:
                own_done[0] = clock()
    report_region(started, own_done[0])


# A batch of one row is multiplied by fastopt's own loop, not by BLAS: its cost is reading the weight once from the
# cache, and the loop does without sgemm's call and setup (on a 2-core AMD EPYC Zen 4 VM: 256 x 256 3.66 against
# 4.39 us, 128 x 64 1.20 against 1.34, 784 x 128 5.89 against 5.90, the cache's rate). Each output is summed over
# the inputs in order, four at a time in a register. Two rows took longer than one sgemm call (10.8 against 6.7 us
# for 784 x 128).
cdef Py_ssize_t _OWN_LOOP_ROWS = 1


cdef inline void _row_times_matrix(const floating* x, const floating* w, floating* out, Py_ssize_t n_in,
                                   Py_ssize_t n_out) noexcept nogil:
    # out (n_out) = x (n_in) @ w (n_in x n_out): the rows of w, scaled by x's elements, added in order.
    cdef Py_ssize_t k, j, k4 = n_in - n_in % 4
    cdef floating x0, x1, x2, x3, total
    cdef const floating* w0
    memset(out, 0, n_out * sizeof(floating))
    for k in range(0, k4, 4):
        x0, x1, x2, x3 = x[k], x[k + 1], x[k + 2], x[k + 3]
        w0 = w + k * n_out
        for j in range(n_out):
            total = out[j] + x0 * w0[j]
            total = total + x1 * w0[n_out + j]
            total = total + x2 * w0[2 * n_out + j]
            out[j] = total + x3 * w0[3 * n_out + j]
    for k in range(k4, n_in):
        x0 = x[k]
        w0 = w + k * n_out
        for j in range(n_out):
            out[j] = out[j] + x0 * w0[j]


cdef inline Py_ssize_t _forward_scratch(Py_ssize_t batch, Py_ssize_t n_in, Py_ssize_t n_out) noexcept nogil:
    # Elements of the partial products a forward pass cut along the inner dimension needs (0: it is not cut).
    if batch <= _OWN_LOOP_ROWS:
        return 0
    return (_depth_blocks(batch, n_in, n_out) - 1) * batch * n_out


cdef void _dense_forward_on(const floating* xp, const floating* wp, const floating* bp, floating* op,
                            floating* partials, Py_ssize_t batch, Py_ssize_t n_in, Py_ssize_t n_out, int act,
                            floating slope) noexcept nogil:
    # dense_forward on pointers (batch and n_out > 0), partials holding _forward_scratch elements; BLAS held at one
    # thread by the caller (_blas_serial_begin, under the GIL).
    cdef Py_ssize_t block, blocks, depth
    cdef int team
    cdef double started
    cdef double[1] own_done  # when the calling thread finished its share (for the stall guard)
    if batch <= _OWN_LOOP_ROWS:
        for block in range(batch):
            _row_times_matrix(xp + block * n_in, wp, op + block * n_out, n_in, n_out)
            _bias_act(act, op + block * n_out, bp, n_out, slope)
        return
    depth = _depth_blocks(batch, n_in, n_out)
    blocks = depth if depth > 1 else _gemm_blocks(batch, n_out, n_in, _max_blocks)
    team = threads_for(GEMM, 2.0 * batch * n_in * n_out, blocks)
    if depth > 1:
        _forward_by_depth(depth, team, xp, wp, bp, op, partials, batch, n_in, n_out, act, slope)
    elif team == 1:
        for block in range(blocks):
            _forward_block(block, blocks, xp, wp, bp, op, batch, n_in, n_out, act, slope)
    else:
        started = clock()
        for block in prange(blocks, num_threads=team, schedule="static", chunksize=1):
            _forward_block(block, blocks, xp, wp, bp, op, batch, n_in, n_out, act, slope)
            if threadid() == 0:
                own_done[0] = clock()
        report_region(started, own_done[0])


def dense_forward(const floating[:, ::1] x, const floating[:, ::1] weight, const floating[::1] bias,
                  floating[:, ::1] out, int act, double negative_slope):
    """``out = f(x @ weight + bias)``: x (B, I), weight (I, O), bias (O,), out (B, O). Needs ``set_blas``."""
    cdef Py_ssize_t batch = x.shape[0], n_in = x.shape[1], n_out = out.shape[1]
    cdef Py_ssize_t scratch = _forward_scratch(batch, n_in, n_out)
    cdef floating* partials = NULL
    _check_blas(batch, n_in, n_out)
    if batch == 0 or n_out == 0:
        return
    cdef const floating* xp = &x[0, 0] if n_in else NULL
    cdef const floating* wp = &weight[0, 0] if n_in else NULL
    if scratch:
        partials = <floating*>malloc(scratch * sizeof(floating))
        if partials == NULL:
            raise MemoryError(f"no memory for the partial products of a {batch} x {n_in} x {n_out} forward pass")
    _blas_serial_begin()
    with nogil:
        _dense_forward_on(xp, wp, &bias[0], &out[0, 0], partials, batch, n_in, n_out, act, <floating>negative_slope)
    _blas_serial_end()
    free(partials)


cdef inline void _prologue_columns(int act, floating slope, floating* d, const floating* y, floating* gb,
                                   floating* dt, Py_ssize_t rows, Py_ssize_t cols, Py_ssize_t c0,
                                   Py_ssize_t c1) noexcept nogil:
    # Columns c0:c1 of: d *= f'(y) in place, gb = d.sum(0), rows in order; and, unless dt is NULL, dt = d.T
    # (cols x rows).
    cdef Py_ssize_t i, j, width = c1 - c0
    if width <= 0:
        return
    for i in range(rows):
        _act_backward(act, NULL, y + i * cols + c0, d + i * cols + c0, d + i * cols + c0, width, slope)
        if i == 0:
            memcpy(gb + c0, d + c0, width * sizeof(floating))
        else:
            _add_row(gb + c0, d + i * cols + c0, width)
    if dt != NULL:
        for j in range(c0, c1):
            for i in range(rows):
                dt[j * rows + i] = d[i * cols + j]


cdef inline void _act_backward_chunk(int act, floating slope, floating* d, const floating* y, Py_ssize_t start,
                                     Py_ssize_t end) noexcept nogil:
    # Elements start:end of d *= f'(y), in place (a dense stage's activation: its sign read from y).
    _act_backward(act, NULL, y + start, d + start, d + start, end - start, slope)


# grad_x = dz @ weight.T has its right operand transposed, which OpenBLAS's small-product path never takes; written
# as dz.T.T @ weight.T, both operands transposed, it does (see _tiles): with the SkylakeX kernels on a 2-core AMD
# EPYC Zen 4 VM, 32 x 64 x 128 took 6.1 instead of 10.6 us, 32 x 256 x 256 42 instead of 73 us (in 3 tiles), for a
# copy of dz.T of 1-3.5 us. Used where the product is tiled or made whole by that path.
cdef inline bint _grad_x_from_transpose(Py_ssize_t batch, Py_ssize_t n_in, Py_ssize_t n_out) noexcept nogil:
    return _tile_mnk > 0 and _unpacked_path(True, True, n_out) and (
        <double>batch * n_in * n_out <= _TILES_AT_MOST * _tile_mnk)


cdef inline int _backward_block(Py_ssize_t block, Py_ssize_t blocks_w, Py_ssize_t blocks_x, const floating* x,
                                const floating* w, const floating* d, const floating* dt, floating* gw,
                                floating* gx, Py_ssize_t batch, Py_ssize_t n_in, Py_ssize_t n_out) noexcept nogil:
    # Blocks 0..blocks_w-1: grad_weight = x.T @ dz (I x O, sum over the batch); the next blocks_x:
    # grad_x = dz @ weight.T (B x I), from dt = dz.T unless it is NULL. The two products are independent and
    # share one pool of blocks. Returns 1 when
    # a grad_weight block holds NaN or Inf, checked by the thread that made it while it is in its cache: the
    # training step's guard against non-finite gradients costs no second pass over memory.
    cdef Py_ssize_t bounds[4]
    cdef Py_ssize_t i
    cdef int bad = 0
    if block < blocks_w:
        _gemm_block(block, blocks_w, True, False, n_in, n_out, batch, x, n_in, d, n_out, gw, n_out, bounds)
        for i in range(bounds[0], bounds[1]):
            bad |= _any_nonfinite(gw + i * n_out + bounds[2], bounds[3] - bounds[2])
    elif dt != NULL:
        _gemm_block(block - blocks_w, blocks_x, True, True, batch, n_in, n_out, dt, batch, w, n_out, gx, n_in, bounds)
    else:
        _gemm_block(block - blocks_w, blocks_x, False, True, batch, n_in, n_out, d, n_out, w, n_out, gx, n_in, bounds)
    return bad


cdef bint _backward_of_nothing(floating[:, ::1] grad_weight, floating[::1] grad_bias, floating[:, ::1] grad_x,
                               Py_ssize_t batch, Py_ssize_t n_in, Py_ssize_t n_out):
    # No outputs or no rows: every gradient is an empty sum, written as zeros. Returns whether that was the case.
    if n_out == 0:
        if grad_x is not None and batch and n_in:
            memset(&grad_x[0, 0], 0, batch * n_in * sizeof(floating))
        return True
    if batch == 0:
        memset(&grad_bias[0], 0, n_out * sizeof(floating))
        if n_in:
            memset(&grad_weight[0, 0], 0, n_in * n_out * sizeof(floating))
        return True
    return False


cdef inline Py_ssize_t _backward_scratch(Py_ssize_t batch, Py_ssize_t n_in, Py_ssize_t n_out,
                                         bint with_grad_x) noexcept nogil:
    # Elements of the copy of dz.T a backward pass makes grad_x from (0: none).
    if with_grad_x and n_in and _grad_x_from_transpose(batch, n_in, n_out):
        return n_out * batch
    return 0


cdef bint _dense_backward_on(const floating* xp, const floating* wp, const floating* yp, floating* dp, floating* gw,
                             floating* gb, floating* gx, floating* dt, Py_ssize_t batch, Py_ssize_t n_in,
                             Py_ssize_t n_out, int act, floating slope) noexcept nogil:
    # dense_backward on pointers (batch and n_out > 0; gx NULL: no grad_x), dt holding _backward_scratch elements
    # (NULL when that is 0); BLAS held at one thread by the caller. Returns whether a gradient is not finite.
    cdef Py_ssize_t block, blocks_w, blocks_x = 0, column_blocks, column_pieces, size, chunk
    cdef Py_ssize_t total = batch * n_out
    cdef int team, bad = 0
    cdef double started, flops
    cdef double[1] own_done
    if gx != NULL:
        blocks_x = _gemm_blocks(batch, n_in, n_out, _shared_blocks)
    blocks_w = _gemm_blocks(n_in, n_out, batch, _shared_blocks if gx != NULL else _max_blocks) if n_in else 0
    # Each column's sum runs over the rows in order, so the column split never changes its bits: one block a thread.
    column_pieces = (n_out + _MIN_BLOCK_WIDTH - 1) // _MIN_BLOCK_WIDTH
    flops = 2.0 * batch * n_in * n_out * (2 if gx != NULL else 1)
    team = threads_for(GEMM, flops, max(column_pieces, blocks_w + blocks_x))
    column_blocks = min(team, column_pieces)
    size = (n_out + column_blocks - 1) // column_blocks
    chunk = ((total + team - 1) // team + 15) // 16 * 16  # 16 elements: whole cache lines of float32 and float64
    if team == 1:
        _prologue_columns(act, slope, dp, yp, gb, dt, batch, n_out, 0, n_out)
        for block in range(blocks_w + blocks_x):
            bad |= _backward_block(block, blocks_w, blocks_x, xp, wp, dp, dt, gw, gx, batch, n_in, n_out)
    else:
        started = clock()
        own_done[0] = started
        with parallel(num_threads=team):
            # f' in place over contiguous chunks first, then the column sums: cut by columns, each thread would
            # write part of every row of dz, and rows whose length is not a whole number of cache lines share a
            # line with the other thread (the 200 x 100 dz of scikit-learn's digits network, on a 2-core AMD EPYC
            # Zen 4 VM: its 2-thread backward pass took 29.0 us so, 26.0 us this way, 27.1 us on one thread)
            for block in prange(team, schedule="static", chunksize=1):
                _act_backward_chunk(act, slope, dp, yp, min(total, block * chunk), min(total, (block + 1) * chunk))
            for block in prange(column_blocks, schedule="static", chunksize=1):
                _prologue_columns(_IDENTITY, slope, dp, yp, gb, dt, batch, n_out, min(n_out, block * size),
                                  min(n_out, (block + 1) * size))
            for block in prange(blocks_w + blocks_x, schedule="static", chunksize=1):
                bad |= _backward_block(block, blocks_w, blocks_x, xp, wp, dp, dt, gw, gx, batch, n_in, n_out)
                if threadid() == 0:
                    own_done[0] = clock()
        report_region(started, own_done[0])
    return bad | _any_nonfinite(gb, n_out)


def dense_backward(const floating[:, ::1] x, const floating[:, ::1] weight, const floating[:, ::1] out,
                   floating[:, ::1] grad_out, floating[:, ::1] grad_weight, floating[::1] grad_bias,
                   floating[:, ::1] grad_x, int act, double negative_slope):
    """Backward of ``out = f(x @ weight + bias)``: ``grad_out *= f'(out)`` (now dz), ``grad_bias = dz.sum(0)``,
    ``grad_weight = x.T @ dz`` and, unless ``grad_x`` is None, ``grad_x = dz @ weight.T``. Returns whether
    grad_weight and grad_bias are finite. Needs ``set_blas``."""
    cdef Py_ssize_t batch = x.shape[0], n_in = x.shape[1], n_out = grad_out.shape[1]
    cdef Py_ssize_t scratch = _backward_scratch(batch, n_in, n_out, grad_x is not None)
    cdef bint bad
    _check_blas(batch, n_in, n_out)
    if _backward_of_nothing(grad_weight, grad_bias, grad_x, batch, n_in, n_out):
        return True
    cdef floating* gx = &grad_x[0, 0] if grad_x is not None and n_in else NULL
    cdef floating* dt = NULL
    if scratch:
        dt = <floating*>malloc(scratch * sizeof(floating))
        if dt == NULL:
            raise MemoryError(f"no memory for the transposed gradient of a {batch} x {n_out} layer output")
    _blas_serial_begin()
    with nogil:
        bad = _dense_backward_on(&x[0, 0] if n_in else NULL, &weight[0, 0] if n_in else NULL, &out[0, 0],
                                 &grad_out[0, 0], &grad_weight[0, 0] if n_in else NULL, &grad_bias[0], gx, dt,
                                 batch, n_in, n_out, act, <floating>negative_slope)
    _blas_serial_end()
    free(dt)
    return not bad


def dense_epilogue(floating[:, ::1] out, const floating[::1] bias, int act, double negative_slope):
    """``out = f(out + bias)`` row by row, in place (out is the GEMM result ``x @ weight``)."""
    cdef Py_ssize_t rows = out.shape[0], cols = out.shape[1], i
    if rows == 0 or cols == 0:
        return
    cdef floating* o = &out[0, 0]
    cdef const floating* b = &bias[0]
    with nogil:
        for i in range(rows):
            _bias_act(act, o + i * cols, b, cols, <floating>negative_slope)


def dense_backward_prologue(floating[:, ::1] grad_out, const floating[:, ::1] out, floating[::1] grad_bias, int act,
                            double negative_slope):
    """``grad_out *= f'(out)`` in place and ``grad_bias = grad_out.sum(axis=0)``, one pass, rows in order."""
    cdef Py_ssize_t rows = grad_out.shape[0], cols = grad_out.shape[1], i, j
    if cols == 0:
        return
    cdef floating* d = &grad_out[0, 0]
    cdef const floating* y = &out[0, 0]
    cdef floating* gb = &grad_bias[0]
    if rows == 0:
        for j in range(cols):
            gb[j] = 0
        return
    with nogil:
        for i in range(rows):
            _act_backward(act, NULL, y + i * cols, d + i * cols, d + i * cols, cols, <floating>negative_slope)
            if i == 0:
                memcpy(gb, d, cols * sizeof(floating))
            else:
                _add_row(gb, d + i * cols, cols)


# ------------------------------------------------------------------------------- activations
def activation_forward(int act, const floating[::1] x, floating[::1] out, double negative_slope):
    """``out = f(x)`` elementwise over flat buffers (``negative_slope``: leaky_relu's)."""
    if x.shape[0] == 0:
        return
    with nogil:
        _activation_forward_on(act, &x[0], &out[0], x.shape[0], <floating>negative_slope)


cdef inline void _activation_forward_on(int act, const floating* xp, floating* op, Py_ssize_t n,
                                        floating slope) noexcept nogil:
    if act >= _GELU:
        _gelu_forward(act, xp, op, n)
    else:
        _act_forward(act, xp, op, n, slope)


def activation_backward(int act, const floating[::1] x, const floating[::1] out, const floating[::1] grad_out,
                        floating[::1] grad_x, double negative_slope):
    """``grad_x = grad_out * f'`` elementwise over flat buffers, f' from the input x or the output out = f(x)."""
    if out.shape[0] == 0:
        return
    with nogil:
        _activation_backward_on(act, &x[0], &out[0], &grad_out[0], &grad_x[0], out.shape[0], <floating>negative_slope)


cdef inline void _activation_backward_on(int act, const floating* xp, const floating* yp, const floating* gp,
                                         floating* dp, Py_ssize_t n, floating slope) noexcept nogil:
    if act >= _GELU:
        _gelu_backward(act, xp, gp, dp, n)
    else:
        _act_backward(act, xp, yp, gp, dp, n, slope)


# ------------------------------------------------------------------------------- softmax
cdef inline floating _row_max(const floating* x, Py_ssize_t n, bint* has_nan) noexcept nogil:
    # The largest entry of a row, and whether the row holds a NaN. Selects, not branches: where a row's
    # largest entry lies is random, and mispredicted branches cost more than the comparisons.
    cdef floating m = x[0]
    cdef bint nan = x[0] != x[0]
    cdef Py_ssize_t j
    for j in range(1, n):
        m = x[j] if x[j] > m else m
        nan = nan | (x[j] != x[j])
    has_nan[0] = nan
    return m


cdef inline floating _row_max_nan(const floating* x, Py_ssize_t n) noexcept nogil:
    # NumPy's max of a row: NaN if the row holds one.
    cdef bint nan
    cdef floating m = _row_max(x, n, &nan)
    return <floating>NAN if nan else m


cdef inline Py_ssize_t _row_argmax(const floating* x, Py_ssize_t n) noexcept nogil:
    # NumPy's argmax of a row: its first largest entry, or its first NaN, which counts as largest.
    cdef bint nan
    cdef floating m = _row_max(x, n, &nan)
    cdef Py_ssize_t j, best = 0
    if nan:
        for j in range(n):
            if x[j] != x[j]:
                return j
    for j in range(n - 1, -1, -1):
        best = j if x[j] == m else best
    return best


cdef inline double _exp_shifted(const floating* x, floating* e, Py_ssize_t n, floating m) noexcept nogil:
    # e = exp(x - m); returns the sum of e accumulated in double
    cdef Py_ssize_t j
    cdef double s = 0
    cdef floating v
    for j in range(n):
        v = fexp_nonpositive(x[j] - m)
        e[j] = v
        s += v
    return s


def softmax_forward(const floating[:, ::1] x, floating[:, ::1] out):
    """``out[i] = exp(x[i] - max x[i]) / sum exp(x[i] - max x[i])`` row by row."""
    if x.shape[0] == 0 or x.shape[1] == 0:
        return
    with nogil:
        _softmax_forward_on(&x[0, 0], &out[0, 0], x.shape[0], x.shape[1])


cdef inline void _softmax_forward_on(const floating* xp, floating* op, Py_ssize_t rows, Py_ssize_t cols) noexcept nogil:
    cdef Py_ssize_t i, j
    cdef floating* o
    cdef floating s
    for i in range(rows):
        o = op + i * cols
        s = <floating>_exp_shifted(xp + i * cols, o, cols, _row_max_nan(xp + i * cols, cols))
        for j in range(cols):
            o[j] = o[j] / s


def softmax_backward(const floating[:, ::1] out, const floating[:, ::1] grad_out, floating[:, ::1] grad_x):
    """``grad_x[i] = out[i] * (grad_out[i] - <grad_out[i], out[i]>)`` row by row."""
    if out.shape[0] == 0 or out.shape[1] == 0:
        return
    with nogil:
        _softmax_backward_on(&out[0, 0], &grad_out[0, 0], &grad_x[0, 0], out.shape[0], out.shape[1])


cdef inline void _softmax_backward_on(const floating* yp, const floating* gp, floating* dp, Py_ssize_t rows,
                                      Py_ssize_t cols) noexcept nogil:
    cdef Py_ssize_t i, j
    cdef const floating* y
    cdef const floating* g
    cdef floating dot, zero = 0
    for i in range(rows):
        y = yp + i * cols
        g = gp + i * cols
        dot = zero
        for j in range(cols):
            dot = dot + g[j] * y[j]
        for j in range(cols):
            dp[i * cols + j] = y[j] * (g[j] - dot)


def dropout(const floating[::1] x, floating[::1] out, floating[::1] mask, double p, uint64_t key):
    """``mask = 1 / (1 - p) if kept else 0``, ``out = x * mask`` over flat buffers: element i is kept when half i % 2
    (the low 32 bits first) of word i // 2 of the key's SplitMix64 stream is at least ceil(p 2**32). Every element's
    fate depends on the key and its index only, so the work is split over the threads from the optimizer updates'
    threshold (the hash costs about what an Adam update does per element) in blocks of words, with the same bits for
    any split. The backward pass multiplies by the stored mask: at the seed MLP's sizes that product cost a sixth of
    remaking the mask (2-core AMD EPYC Zen 4 VM, float32, AVX2: 32 x 128, 0.9 against 5.8 us)."""
    cdef Py_ssize_t n = x.shape[0], words = x.shape[0] // 2, size, block, blocks
    cdef uint64_t threshold = <uint64_t>ceil(ldexp(p, 32))
    cdef floating scale = <floating>(1.0 / (1.0 - p)), zero = 0
    cdef double started
    cdef double[1] own_done
    if n == 0:
        return
    cdef const floating* xp = &x[0]
    cdef floating* op = &out[0]
    cdef floating* mp = &mask[0]
    blocks = threads_for(UPDATE, <double>n, words // 2048)
    size = (words + blocks - 1) // blocks
    with nogil:
        if blocks == 1:
            _dropout_words(xp, op, mp, 0, words, key, threshold, scale)
        else:
            started = clock()
            for block in prange(blocks, num_threads=blocks, schedule="static", chunksize=1):
                _dropout_words(xp, op, mp, block * size, min(words, (block + 1) * size), key, threshold, scale)
                if threadid() == 0:
                    own_done[0] = clock()
            report_region(started, own_done[0])
        if n % 2:  # the last element alone: the low half of word n // 2
            mp[n - 1] = scale if <uint32_t>fo_stream_word(key, words) >= threshold else zero
            op[n - 1] = xp[n - 1] * mp[n - 1]


# ------------------------------------------------------------------------------- losses
cdef enum:
    _LOSS_BLOCK_ROWS = 64  # rows whose maxima softmax_cross_entropy keeps (on the stack) between its passes


cdef inline double _weight_sum(const floating* weights, Py_ssize_t rows) noexcept nogil:
    # sum_i w_i in double, in row order; the number of rows without weights (every w_i is 1)
    cdef Py_ssize_t i
    cdef double total = 0
    if weights == NULL:
        return <double>rows
    for i in range(rows):
        total += weights[i]
    return total


cdef inline double _row_weight(const floating* weights, Py_ssize_t i) noexcept nogil:
    return 1.0 if weights == NULL else <double>weights[i]


cdef inline double _row_factor(double numerator, double weight, double total, Py_ssize_t cols) noexcept nogil:
    # A row's gradient factor numerator w_i / (W cols), in double (the caller rounds it once); 0 when W is 0
    return 0.0 if total == 0 else numerator * weight / (total * cols)


cdef inline double _weighted_value(double weighted_sum, double total, Py_ssize_t cols) noexcept nogil:
    # sum_i w_i l_i / (W cols), from sum_i w_i (sum_j l_ij); 0 when W is 0
    return 0.0 if total == 0 else weighted_sum / (total * cols)


def softmax_cross_entropy(const floating[:, ::1] logits, const int64_t[::1] labels, floating[:, ::1] grad_logits,
                          const floating[::1] weights, double label_smoothing):
    """Mean of ``logsumexp(logits[i]) - <t[i], logits[i]>`` with ``t[i] = (1 - eps) onehot(labels[i]) + eps / C``
    (stable: max-shifted, summed in double), weighted by ``weights`` when given (``sum w_i l_i / sum w_i``); if
    ``grad_logits`` is not None it receives ``(softmax(logits) - t) / batch`` (weighted: ``* w_i / sum w``), same call.

    With ``grad_logits`` the exponentials are taken in one loop over a block of rows, in grad_logits (a row
    is only ``classes`` long: too short a loop to vectorize well; at batch 512 and 10 classes, float32, the
    call went from 39 to 20 us). Each block's row maxima are kept for the passes after it (taken once per row)."""
    cdef const floating* wp = NULL if weights is None else &weights[0]
    cdef floating* gp = NULL if grad_logits is None else &grad_logits[0, 0]
    cdef double result
    with nogil:
        result = _softmax_xent_on(&logits[0, 0], &labels[0], gp, wp, logits.shape[0], logits.shape[1], label_smoothing)
    return result


cdef double _softmax_xent_on(const floating* xp, const int64_t* lp, floating* gp, const floating* wp, Py_ssize_t rows,
                             Py_ssize_t cols, double label_smoothing) noexcept nogil:
    # softmax_cross_entropy on pointers (gp, wp: NULL for none)
    cdef Py_ssize_t i, j, block, first, last
    cdef const floating* x
    cdef floating* gr
    cdef floating maxima[_LOSS_BLOCK_ROWS]
    cdef floating m, n_f = <floating>rows, scale
    cdef floating off_target = <floating>(label_smoothing / cols), on_target = <floating>(1 - label_smoothing)
    cdef double s, row_loss, total = 0, weight_total = _weight_sum(wp, rows)
    for block in range((rows + _LOSS_BLOCK_ROWS - 1) // _LOSS_BLOCK_ROWS):
        first = block * _LOSS_BLOCK_ROWS
        last = min(rows, first + _LOSS_BLOCK_ROWS)
        for i in range(first, last):
            maxima[i - first] = _row_max_nan(xp + i * cols, cols)
        if gp != NULL:
            for i in range(first, last):
                for j in range(i * cols, (i + 1) * cols):
                    gp[j] = xp[j] - maxima[i - first]
            for j in range(first * cols, last * cols):
                gp[j] = fexp_nonpositive(gp[j])
        for i in range(first, last):
            x = xp + i * cols
            m = maxima[i - first]
            s = 0
            if gp == NULL:
                for j in range(cols):
                    s += fexp_nonpositive(x[j] - m)
            else:
                gr = gp + i * cols
                for j in range(cols):
                    s += gr[j]
                _softmax_minus_target(gr, cols, <floating>s, lp[i], label_smoothing != 0, off_target, on_target)
            row_loss = _smoothed_row_loss(x, cols, lp[i], m, s, label_smoothing)
            total += row_loss if wp == NULL else wp[i] * row_loss
        if gp != NULL and wp == NULL:
            for j in range(first * cols, last * cols):
                gp[j] = gp[j] / n_f
        elif gp != NULL:
            for i in range(first, last):
                scale = <floating>_row_factor(1.0, wp[i], weight_total, 1)
                for j in range(i * cols, (i + 1) * cols):
                    gp[j] = gp[j] * scale
    return total / rows if wp == NULL else _weighted_value(total, weight_total, 1)


cdef inline void _softmax_minus_target(floating* gr, Py_ssize_t cols, floating s, int64_t label, bint smoothed,
                                       floating off_target, floating on_target) noexcept nogil:
    # a row of exponentials (summing to s) becomes softmax - t: t = eps / C off the label, (1 - eps) + eps / C on it
    cdef Py_ssize_t j
    for j in range(cols):
        gr[j] = gr[j] / s
    if smoothed:
        for j in range(cols):
            gr[j] = gr[j] - off_target
    gr[label] = gr[label] - on_target


cdef inline double _smoothed_row_loss(const floating* x, Py_ssize_t cols, int64_t label, floating m, double s,
                                      double label_smoothing) noexcept nogil:
    # logsumexp(x) - <t, x> = (m + log s) - (1 - eps) x[label] - (eps / C) sum(x); without smoothing no sum is taken
    # (0 * -inf would be NaN)
    cdef Py_ssize_t j
    cdef double row_sum = 0
    if label_smoothing == 0:
        return (m + log(s)) - x[label]
    for j in range(cols):
        row_sum += x[j]
    return (m + log(s)) - (1 - label_smoothing) * x[label] - (label_smoothing / cols) * row_sum


def mse(const floating[:, ::1] pred, const floating[:, ::1] target, floating[:, ::1] grad_pred,
        const floating[::1] weights):
    """Mean of ``(pred - target)**2``, summed in double; ``grad_pred = 2 (pred - target) / pred.size``. With
    ``weights``: each row's mean weighted, ``sum w_i l_i / sum w_i``, and ``grad_pred[i] = 2 d[i] w_i / (O sum w)``."""
    cdef floating* gp = NULL if grad_pred is None else &grad_pred[0, 0]
    cdef const floating* wp = NULL if weights is None else &weights[0]
    cdef double result
    with nogil:
        result = _mse_on(&pred[0, 0], &target[0, 0], gp, wp, pred.shape[0], pred.shape[1])
    return result


cdef double _mse_on(const floating* pp, const floating* tp, floating* gp, const floating* wp, Py_ssize_t rows,
                    Py_ssize_t cols) noexcept nogil:
    # mse on pointers (gp, wp: NULL for none)
    cdef Py_ssize_t n = rows * cols, i
    cdef floating d, n_f = <floating>n
    cdef double dd, total = 0
    if wp != NULL:
        return _pointwise_loss_on(_MSE, pp, tp, gp, wp, rows, cols, 0.0)
    for i in range(n):
        d = pp[i] - tp[i]
        dd = d
        total += dd * dd
    if gp != NULL:
        for i in range(n):
            gp[i] = <floating>2 * (pp[i] - tp[i]) / n_f
    return total / n


def huber(const floating[:, ::1] pred, const floating[:, ::1] target, floating[:, ::1] grad_pred,
          const floating[::1] weights, double delta):
    """Huber loss (PyTorch's HuberLoss): ``d**2 / 2`` where ``|d| < delta``, else ``delta (|d| - delta / 2)``, each
    row's mean weighted by ``weights`` (None: all 1); ``grad_pred[i] = clip(d[i], -delta, delta) w_i / (O sum w)``."""
    return _pointwise_loss(_HUBER, pred, target, grad_pred, weights, delta)


def mae(const floating[:, ::1] pred, const floating[:, ::1] target, floating[:, ::1] grad_pred,
        const floating[::1] weights):
    """Mean absolute error (PyTorch's L1Loss), each row's mean weighted by ``weights`` (None: all 1);
    ``grad_pred[i] = sign(d[i]) w_i / (O sum w)`` with sign(0) = 0."""
    return _pointwise_loss(_MAE, pred, target, grad_pred, weights, 0.0)


cdef enum:
    _MSE = 0
    _HUBER = 1
    _MAE = 2


cdef inline double _pointwise_element(int kind, double d, double delta) noexcept nogil:
    # the loss of one element of d = pred - target (in double: the caller sums it there)
    cdef double magnitude = d if d >= 0 else -d
    if kind == _MSE:
        return d * d
    if kind == _MAE:
        return magnitude
    return 0.5 * d * d if magnitude < delta else delta * (magnitude - 0.5 * delta)


cdef inline floating _pointwise_slope(int kind, floating d, floating delta) noexcept nogil:
    # the derivative of an element's loss, before the row factor: d (MSE's 2 is in its factor), clip(d, -delta,
    # delta), or sign(d) (0 at 0, NaN at NaN, as numpy.sign)
    cdef floating one = 1, zero = 0
    if kind == _MSE:
        return d
    if kind == _HUBER:
        return -delta if d < -delta else (delta if d > delta else d)
    return one if d > 0 else (-one if d < 0 else (zero if d == 0 else d))


cdef double _pointwise_loss(int kind, const floating[:, ::1] pred, const floating[:, ::1] target,
                            floating[:, ::1] grad_pred, const floating[::1] weights, double delta):
    """``sum_i w_i mean_j l(d[i, j]) / sum_i w_i`` for an elementwise loss of ``d = pred - target`` (``kind``: MSE,
    Huber, MAE); ``grad_pred[i, j] = l'(d[i, j]) w_i / (cols sum w)`` (MSE: times 2). The shapes are trusted."""
    cdef floating* gp = NULL if grad_pred is None else &grad_pred[0, 0]
    cdef const floating* wp = NULL if weights is None else &weights[0]
    cdef double result
    with nogil:
        result = _pointwise_loss_on(kind, &pred[0, 0], &target[0, 0], gp, wp, pred.shape[0], pred.shape[1], delta)
    return result


cdef double _pointwise_loss_on(int kind, const floating* pp, const floating* tp, floating* gp, const floating* wp,
                               Py_ssize_t rows, Py_ssize_t cols, double delta) noexcept nogil:
    # _pointwise_loss on pointers (gp, wp: NULL for none)
    cdef Py_ssize_t i, j
    cdef floating d, scale, delta_f = <floating>delta
    cdef double numerator = 2.0 if kind == _MSE else 1.0, row_sum, total = 0, weight_total = _weight_sum(wp, rows)
    for i in range(rows):
        row_sum = 0
        for j in range(i * cols, (i + 1) * cols):
            row_sum += _pointwise_element(kind, pp[j] - tp[j], delta)
        total += _row_weight(wp, i) * row_sum
        if gp != NULL:
            scale = <floating>_row_factor(numerator, _row_weight(wp, i), weight_total, cols)
            for j in range(i * cols, (i + 1) * cols):
                d = pp[j] - tp[j]
                gp[j] = _pointwise_slope(kind, d, delta_f) * scale
    return _weighted_value(total, weight_total, cols)


cdef enum:
    _BCE_BLOCK = 512  # elements per pass of binary_cross_entropy (its per-element buffers are on the stack)


cdef inline void _bce_elements(const floating* x, const floating* y, const floating* pos_weight, floating* terms,
                               floating* grad, floating scale, Py_ssize_t n) noexcept nogil:
    # n elements' loss terms into terms and their gradients times scale into grad; pos_weight[k] is element k's. No
    # branch (selects; exp and log1p inlined), so the float32 loop vectorizes: gcc does not unswitch a loop this large,
    # hence a pos_weight of ones rather than none, and gradients always written.
    cdef Py_ssize_t k
    cdef floating positive, e, log_term, denominator, one = 1, zero = 0
    for k in range(n):
        positive = pos_weight[k] * y[k]
        e = fexp_nonpositive(-fabs_typed(x[k]))
        log_term = flog1p_unit_interval(e)
        terms[k] = positive * (_select(-x[k] > zero, -x[k], zero) + log_term) + (one - y[k]) * (
            _select(x[k] > zero, x[k], zero) + log_term)
        denominator = one + e
        grad[k] = ((one - y[k]) * (_select(x[k] >= zero, one, e) / denominator)
                   - positive * (_select(x[k] >= zero, e, one) / denominator)) * scale


cdef inline void _add_row_sums(const floating* terms, Py_ssize_t rows, Py_ssize_t width, double* row_sums) noexcept nogil:
    # row_sums[r] += the terms of row r of a rows x width block, in double, in order
    cdef Py_ssize_t r, j
    for r in range(rows):
        for j in range(width):
            row_sums[r] += terms[r * width + j]


def binary_cross_entropy(const floating[:, ::1] logits, const floating[:, ::1] targets, floating[:, ::1] grad_logits,
                         const floating[::1] weights, const floating[::1] pos_weight):
    """Binary cross-entropy on logits (PyTorch's BCEWithLogitsLoss): with ``e = exp(-|x|)``, ``l = p y (max(-x, 0) +
    log1p(e)) + (1 - y) (max(x, 0) + log1p(e))`` (p = pos_weight of the column, 1 without it); each row's mean
    weighted by ``weights`` (None: all 1); ``grad_logits[i] = ((1 - y) s(x) - p y s(-x)) w_i / (C sum w)``, where
    s(x) and s(-x) = 1 - s(x) each come from e without cancellation. Elements in the arrays' dtype, sums in double.

    The elements go through one flat loop per pass of whole rows (or piece of a row longer than a pass), so that rows
    of a few columns still fill the vectors; each row's terms are then summed in order. Without ``grad_logits`` the
    gradients of a pass go to a scratch block. (float32 200 x 5 with the gradient, on the 2-core AMD EPYC Zen 4 VM,
    AVX2 build: 3.5 us, from 19.3 us with libm's log1pf and branches per element.)"""
    cdef floating* gp = NULL if grad_logits is None else &grad_logits[0, 0]
    cdef const floating* wp = NULL if weights is None else &weights[0]
    cdef const floating* pw = NULL if pos_weight is None else &pos_weight[0]
    cdef double result
    with nogil:
        result = _bce_on(&logits[0, 0], &targets[0, 0], gp, wp, pw, logits.shape[0], logits.shape[1])
    return result


cdef double _bce_on(const floating* xp, const floating* tp, floating* gp, const floating* wp, const floating* pw,
                    Py_ssize_t rows, Py_ssize_t cols) noexcept nogil:
    # binary_cross_entropy on pointers (gp, wp, pw: NULL for none)
    cdef Py_ssize_t i, k, c, block, first, last, width, offset
    cdef Py_ssize_t group = max(1, min(rows, _BCE_BLOCK // cols)), piece = min(cols, _BCE_BLOCK)
    cdef const floating* piece_pw
    cdef floating* piece_grad
    cdef floating terms[_BCE_BLOCK]
    cdef floating scratch[_BCE_BLOCK]
    cdef floating tiled[_BCE_BLOCK]  # the pos_weight of each element of a pass that starts a row (1 without it)
    cdef double row_sums[_BCE_BLOCK]
    cdef floating scale, pass_scale, one = 1
    cdef double total = 0, weight_total
    weight_total = _weight_sum(wp, rows)
    for i in range(min(group * cols, _BCE_BLOCK)):
        tiled[i] = one if pw == NULL else pw[i % cols]
    # without weights every row has the same factor, applied in the pass; with them, each row's after it
    pass_scale = <floating>_row_factor(1.0, 1.0, weight_total, cols) if wp == NULL else one
    for block in range((rows + group - 1) // group):
        first, last = block * group, min(rows, (block + 1) * group)
        memset(row_sums, 0, (last - first) * sizeof(double))
        for c in range((cols + piece - 1) // piece):  # one piece unless a row is longer than a pass
            width = min(piece, cols - c * piece)
            offset = first * cols + c * piece
            piece_pw = &tiled[0]
            if pw != NULL and c > 0:
                piece_pw = pw + c * piece
            piece_grad = &scratch[0] if gp == NULL else gp + offset
            _bce_elements(xp + offset, tp + offset, piece_pw, terms, piece_grad, pass_scale, (last - first) * width)
            _add_row_sums(terms, last - first, width, row_sums)
        for i in range(first, last):
            total += _row_weight(wp, i) * row_sums[i - first]
            if gp != NULL and wp != NULL:
                scale = <floating>_row_factor(1.0, wp[i], weight_total, cols)
                for k in range(i * cols, (i + 1) * cols):
                    gp[k] = gp[k] * scale
    return _weighted_value(total, weight_total, cols)


def log1p_unit_interval_for_tests(const float[::1] e, float[::1] out):
    """For the tests only: ``out = log1p(e)`` by the float32 function binary_cross_entropy uses (e in [0, 1])."""
    cdef Py_ssize_t k
    if out.shape[0] != e.shape[0]:
        raise ValueError(f"out has {out.shape[0]} elements, e {e.shape[0]}")
    for k in range(e.shape[0]):
        out[k] = fo_log1pf_unit_interval(e[k])


def count_binary_correct(const floating[:, ::1] logits, const floating[:, ::1] targets):
    """Elements whose prediction ``logits > 0`` is their target ``targets > 0.5`` (a NaN logit predicts 0)."""
    if logits.shape[0] == 0 or logits.shape[1] == 0:
        return 0
    cdef Py_ssize_t result
    with nogil:
        result = _count_binary_on(&logits[0, 0], &targets[0, 0], logits.shape[0] * logits.shape[1])
    return result


cdef inline Py_ssize_t _count_binary_on(const floating* xp, const floating* tp, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t k, correct = 0
    for k in range(n):
        correct += (xp[k] > 0) == (tp[k] > 0.5)
    return correct


cdef inline void _copy_rows(const char* src, const int64_t* rows, char* out, Py_ssize_t n_rows,
                            Py_ssize_t row_bytes) noexcept nogil:
    # out's row i = src's row rows[i], rows of row_bytes bytes (any dtype)
    cdef Py_ssize_t i
    for i in range(n_rows):
        memcpy(out + i * row_bytes, src + rows[i] * row_bytes, row_bytes)


def gather_rows(const floating[:, ::1] source, const int64_t[::1] rows, floating[:, ::1] out):
    """``out[i] = source[rows[i]]``: a mini-batch's rows, read from random places of the data set (memory
    latency bound: split over the threads from 2**14 elements)."""
    if rows.shape[0] == 0 or source.shape[1] == 0:
        return
    with nogil:
        _gather_on(&source[0, 0], &rows[0], &out[0, 0], rows.shape[0], source.shape[1])


cdef void _gather_on(const floating* sp, const int64_t* rp, floating* op, Py_ssize_t n_rows,
                     Py_ssize_t width) noexcept nogil:
    cdef Py_ssize_t size, block, blocks, row_bytes = width * sizeof(floating)
    cdef double started
    cdef double[1] own_done
    blocks = threads_for(GATHER, <double>(n_rows * width), n_rows // 8)
    size = (n_rows + blocks - 1) // blocks
    if blocks == 1:
        _copy_rows(<const char*>sp, rp, <char*>op, n_rows, row_bytes)
    else:
        started = clock()
        for block in prange(blocks, num_threads=blocks, schedule="static", chunksize=1):
            _copy_rows(<const char*>sp, rp + block * size, <char*>(op + block * size * width),
                       min(size, n_rows - block * size), row_bytes)
            if threadid() == 0:
                own_done[0] = clock()
        report_region(started, own_done[0])


cdef inline bint _any_nonfinite(const floating* x, Py_ssize_t n) noexcept nogil:
    # x - x is 0 for a finite x and NaN for NaN or Inf; OR-ing the comparisons vectorizes (a float sum would not).
    cdef Py_ssize_t i
    cdef floating d
    cdef int bad = 0
    for i in range(n):
        d = x[i] - x[i]
        bad |= d != d
    return bad != 0


def all_finite(const floating[::1] x):
    """Whether the flat buffer x holds no NaN or Inf: one pass, split over the threads from 2**18 elements."""
    cdef Py_ssize_t n = x.shape[0], size, block, blocks = 1
    cdef int bad = 0
    cdef double started
    cdef double[1] own_done
    if n == 0:
        return True
    cdef const floating* xp = &x[0]
    blocks = threads_for(SCAN, <double>n, n // 131072)
    size = (n + blocks - 1) // blocks
    with nogil:
        if blocks == 1:
            bad = _any_nonfinite(xp, n)
        else:
            started = clock()
            for block in prange(blocks, num_threads=blocks, schedule="static", chunksize=1):
                bad |= _any_nonfinite(xp + block * size, min(size, n - block * size))
                if threadid() == 0:
                    own_done[0] = clock()
            report_region(started, own_done[0])
    return not bad


def weighted_sum_into(floating[::1] a, const floating[::1] b, double a_weight, double b_weight):
    """``a = a_weight a + b_weight b``, elementwise over two flat buffers of one length (the two halves' gradients of
    a batch, ``Sequential._pair_gradients``); split over the threads from 2**15 elements (the same bits: each
    element is computed alone)."""
    cdef Py_ssize_t n = a.shape[0], size, block, blocks
    cdef floating wa = <floating>a_weight, wb = <floating>b_weight
    cdef double started
    cdef double[1] own_done
    if b.shape[0] != n:
        raise ValueError(f"weighted_sum_into needs buffers of one length, got {n} and {b.shape[0]}")
    if n == 0:
        return
    cdef floating* ap = &a[0]
    cdef const floating* bp = &b[0]
    if bp < ap + n and ap < bp + n:
        raise ValueError("weighted_sum_into's buffers overlap")
    blocks = threads_for(UPDATE, <double>n, n // 8192)
    size = ((n + blocks - 1) // blocks + 15) // 16 * 16
    with nogil:
        if blocks == 1:
            _weighted_sum(ap, bp, wa, wb, n)
        else:
            started = clock()
            for block in prange(blocks, num_threads=blocks, schedule="static", chunksize=1):
                if block * size < n:
                    _weighted_sum(ap + block * size, bp + block * size, wa, wb, min(size, n - block * size))
                if threadid() == 0:
                    own_done[0] = clock()
            report_region(started, own_done[0])


cdef inline void _weighted_sum(floating* a, const floating* b, floating wa, floating wb, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        a[i] = wa * a[i] + wb * b[i]


def count_correct(const floating[:, ::1] scores, const int64_t[::1] labels):
    """Rows whose first maximal score (NumPy's argmax: first max wins, NaN counts as maximal) is the label."""
    if scores.shape[0] == 0 or scores.shape[1] == 0:
        return 0
    cdef Py_ssize_t result
    with nogil:
        result = _count_correct_on(&scores[0, 0], &labels[0], scores.shape[0], scores.shape[1])
    return result


cdef inline Py_ssize_t _count_correct_on(const floating* sp, const int64_t* lp, Py_ssize_t rows,
                                         Py_ssize_t cols) noexcept nogil:
    cdef Py_ssize_t i, correct = 0
    for i in range(rows):
        correct += _row_argmax(sp + i * cols, cols) == lp[i]
    return correct


# ------------------------------------------------------------------------------- the compiled training step
cdef enum:
    # a step's stages, losses and counts of correct predictions (fastopt/cython_backend.py's codes)
    _STAGE_DENSE = 0
    _STAGE_ACTIVATION = 1
    _STAGE_SOFTMAX = 2
    _STEP_CROSS_ENTROPY = 0  # the targets are int64 labels
    _STEP_BINARY_CROSS_ENTROPY = 1
    _STEP_POINTWISE = 2  # MSE, Huber or MAE (_MSE, _HUBER, _MAE)
    _COUNT_NOTHING = 0
    _COUNT_TARGET_LABELS = 1  # count_correct against the gathered int64 targets
    _COUNT_OWN_LABELS = 2  # count_correct against int64 labels gathered for it
    _COUNT_BINARY = 3  # count_binary_correct against the gathered 0/1 targets


cdef struct _StepStage:
    int kind, act
    double slope
    Py_ssize_t n_in, n_out
    char* out
    char* grad_out
    char* weight
    char* bias
    char* grad_weight
    char* grad_bias
    char* forward_scratch  # the partial products of a forward pass cut along the inner dimension (or NULL)
    char* backward_scratch  # the copy of dz.T a backward pass makes grad_x from (or NULL)


cdef struct _Step:
    Py_ssize_t batch, n_stages, source_rows, width
    _StepStage* stages
    char* source  # the data set's inputs (source_rows, width)
    char* inputs  # the batch's rows of it
    char* target_source
    char* targets
    Py_ssize_t target_row_bytes
    char* weight_source  # sample weights (or NULL)
    char* weights
    char* label_source  # class labels for the count (or NULL)
    char* labels
    int loss, pointwise_kind, count
    double loss_option, value_scale, grad_scale
    char* pos_weight  # binary cross-entropy's (or NULL)


cdef char* _step_buffer(list spans, object array, str name, str kind, Py_ssize_t itemsize, tuple shape,
                        bint written) except NULL:
    # The address of a buffer of the step, checked: a C-contiguous array of that kind, item size and shape; its bytes
    # are added to spans for _check_disjoint.
    if (not hasattr(array, "__array_interface__") or array.dtype.kind != kind or array.dtype.itemsize != itemsize
            or array.shape != shape or not array.flags.c_contiguous):
        raise ValueError(f"{name} must be a C-contiguous array of kind {kind!r}, {itemsize}-byte items and shape "
                         f"{shape}, got {array!r:.80}")
    if written and not array.flags.writeable:
        raise ValueError(f"{name} is read-only; a training step writes it")
    cdef size_t start = array.__array_interface__["data"][0]
    spans.append((start, start + array.nbytes, written, name))
    return <char*>start


cdef _check_disjoint(list spans, str rule="a training step writes one of them: every buffer it writes must be its own"):
    # Refuse a buffer the stages write that shares bytes with any other of their buffers (the kernels they call take
    # distinct buffers; an overlap would be a silent wrong answer), saying ``rule``. Sorted by start, a span overlaps
    # an earlier one exactly when it starts before the furthest end among them.
    cdef size_t end_of_any = 0, end_of_written = 0
    cdef str owner_of_any = "", owner_of_written = ""
    for start, end, written, name in sorted(spans):
        if start < end_of_written or (written and start < end_of_any):
            raise ValueError(f"{name} overlaps {owner_of_written if start < end_of_written else owner_of_any}; "
                             f"{rule}")
        if end > end_of_any:
            end_of_any, owner_of_any = end, name
        if written and end > end_of_written:
            end_of_written, owner_of_written = end, name


cdef class CompiledStages:
    """A model's stages over one batch size's buffers, run in one call: ``forward(inputs)`` runs every stage, as
    ``Sequential._forward`` calls the kernels outside training (the same bits), the outputs in the last stage's
    ``out``. The base of ``TrainingStep``; for ``predict`` and ``evaluate`` it saves the Python of each stage's call
    (on a 2-core AMD EPYC Zen 4 VM, about 1.8 us of a batch-1 ``predict`` of the 784-128-64-10 network).

    ``stages``: a tuple (kind, activation, negative_slope, n_in, n_out, out, grad_out, weight, bias, grad_weight,
    grad_bias) per stage (the last four None but for dense stages) over ``batch`` rows of ``width`` features of
    ``itemsize``-byte floats; every array is checked here, the gradients only for ``training`` (a read-only model
    predicts)."""

    cdef _Step step
    cdef bint double_precision, made  # made: __init__ completed (forward and run refuse stages that were not)
    cdef Py_ssize_t gemm_setup  # _gemm_setup when the stages were made
    cdef list arrays  # every array addressed, kept alive as long as the stages
    cdef list spans  # each buffer's bytes: (start, end, written, name) (_check_disjoint, StepPair)

    def __cinit__(self):
        self.step.stages = NULL
        self.step.n_stages = 0

    def __init__(self, tuple stages, Py_ssize_t batch, Py_ssize_t width, Py_ssize_t itemsize, bint training=False):
        if self.arrays is not None:  # a second call would free the arrays the first one's stages point into
            raise TypeError("compiled stages are made once: make new ones")
        self.arrays, self.spans = [], []
        if not stages or batch <= 0 or width <= 0 or itemsize not in (4, 8):
            raise ValueError("compiled stages need stages, rows, features and float32 or float64 buffers")
        self.double_precision = itemsize == 8
        self.step.batch, self.step.width = batch, width
        self._set_stages(stages, itemsize, width, training)
        if type(self) is CompiledStages:
            self._made()

    cdef _made(self):
        # The end of __init__: every buffer checked, none written sharing bytes with another.
        _check_disjoint(self.spans)
        self.gemm_setup = _gemm_setup
        self.made = True

    cdef _set_stages(self, tuple stages, Py_ssize_t itemsize, Py_ssize_t width, bint training):
        cdef Py_ssize_t index, batch = self.step.batch, n_in = width
        cdef _StepStage* stage
        self.step.stages = <_StepStage*>malloc(len(stages) * sizeof(_StepStage))
        if self.step.stages == NULL:
            raise MemoryError("no memory for a training step's stages")
        memset(self.step.stages, 0, len(stages) * sizeof(_StepStage))
        self.step.n_stages = len(stages)
        for index, (kind, act, slope, stage_in, n_out, out, grad_out, weight, bias, grad_weight, grad_bias) in \
                enumerate(stages):
            stage = &self.step.stages[index]
            if kind not in (_STAGE_DENSE, _STAGE_ACTIVATION, _STAGE_SOFTMAX) or (index == 0 and kind != _STAGE_DENSE):
                raise ValueError(f"stage {index}: kind {kind} is not a stage a training step can begin with or run")
            if stage_in != n_in or n_out <= 0 or (kind != _STAGE_DENSE and n_out != n_in):
                raise ValueError(f"stage {index} takes {stage_in} features to {n_out}; the stage before gives {n_in}")
            if not _IDENTITY <= act <= _GELU_TANH or (kind == _STAGE_DENSE and (
                    act >= _GELU or (act == _LEAKY_RELU and slope < 0))):
                # (a dense stage's backward pass reads the sign of leaky_relu's input from its output)
                raise ValueError(f"stage {index}: no activation {act} (negative slope {slope}) for a stage of kind "
                                 f"{kind}")
            stage.kind, stage.act, stage.slope, stage.n_in, stage.n_out = kind, act, slope, n_in, n_out
            stage.out = self._stage_array(out, index, "out", itemsize, (batch, n_out), True)
            if training:
                stage.grad_out = self._stage_array(grad_out, index, "grad_out", itemsize, (batch, n_out), True)
            if kind == _STAGE_DENSE:
                _check_blas(batch, n_in, n_out)
                stage.weight = self._stage_array(weight, index, "weight", itemsize, (n_in, n_out), False)
                stage.bias = self._stage_array(bias, index, "bias", itemsize, (n_out,), False)
                stage.forward_scratch = self._scratch(_forward_scratch(batch, n_in, n_out) * itemsize)
                if training:
                    self._set_gradients(stage, index, grad_weight, grad_bias, itemsize)
            n_in = n_out

    cdef _set_gradients(self, _StepStage* stage, Py_ssize_t index, object grad_weight, object grad_bias,
                        Py_ssize_t itemsize):
        # A dense stage's gradient buffers and backward scratch (training only).
        cdef Py_ssize_t batch = self.step.batch, n_in = stage.n_in, n_out = stage.n_out
        stage.grad_weight = self._stage_array(grad_weight, index, "grad_weight", itemsize, (n_in, n_out), True)
        stage.grad_bias = self._stage_array(grad_bias, index, "grad_bias", itemsize, (n_out,), True)
        stage.backward_scratch = self._scratch(_backward_scratch(batch, n_in, n_out, index > 0) * itemsize)

    cdef char* _stage_array(self, object array, Py_ssize_t index, str name, Py_ssize_t itemsize, tuple shape,
                            bint written) except NULL:
        # A stage's float buffer, checked (_step_buffer) and kept alive as long as the stages.
        self.arrays.append(array)
        return _step_buffer(self.spans, array, f"stage {index}'s {name}", "f", itemsize, shape, written)

    cdef char* _scratch(self, Py_ssize_t size) except? NULL:
        cdef char* memory
        if size == 0:
            return NULL
        memory = <char*>malloc(size)
        if memory == NULL:
            raise MemoryError(f"no memory for {size} bytes of a training step's scratch")
        return memory

    def __dealloc__(self):
        cdef Py_ssize_t index
        if self.step.stages != NULL:
            for index in range(self.step.n_stages):
                free(self.step.stages[index].forward_scratch)
                free(self.step.stages[index].backward_scratch)
            free(self.step.stages)

    def forward(self, inputs):
        """Run every stage on ``inputs`` (a C-contiguous (batch, width) array of the stages' dtype), the outputs in
        the last stage's ``out``; returns False, doing nothing, when the BLAS or the tiles changed since the stages
        were made (make them again), else True."""
        cdef const float[:, ::1] single
        cdef const double[:, ::1] double_
        cdef const void* x
        cdef Py_ssize_t rows, cols
        if not self.made:
            raise ValueError("these stages were not made (their __init__ did not complete)")
        if self.gemm_setup != _gemm_setup:
            return False
        if self.double_precision:
            double_ = inputs
            x, rows, cols = &double_[0, 0], double_.shape[0], double_.shape[1]
        else:
            single = inputs
            x, rows, cols = &single[0, 0], single.shape[0], single.shape[1]
        if rows != self.step.batch or cols != self.step.width:
            raise ValueError(f"these stages take ({self.step.batch}, {self.step.width}) inputs, got ({rows}, {cols})")
        _blas_serial_begin()
        with nogil:
            if self.double_precision:
                _forward_stages(&self.step, <const double*>x)
            else:
                _forward_stages(&self.step, <const float*>x)
        _blas_serial_end()
        return True


cdef class TrainingStep(CompiledStages):
    """A model's training step for one batch size, in one call: gather the batch's rows (inputs, targets, weights,
    labels), the forward stages, the loss and its gradient, the count of correct predictions and, when the loss is
    finite, the backward stages into the gradient buffers. Each part is the kernel the Python step calls with the
    same buffers (the same bits); the call saves that step's Python, about 8 us a step for a two-layer network on a
    2-core AMD EPYC Zen 4 VM.

    ``stages`` as ``CompiledStages``'s; ``data``: (source, inputs, target_source, targets, weight_source, weights,
    label_source, labels), the data set's arrays and the batch's buffers (the last four None without sample weights
    or separate labels); ``loss``: (loss code, pointwise kind, option, pos_weight or None, value scale, gradient
    scale, count code). Every array is checked here (float32 or float64 throughout, its shape, and no buffer the
    step writes sharing bytes with another); the data set's row count bounds the rows ``run`` takes, and its class
    labels the labels. A step is made once (a second ``__init__`` is refused)."""

    # run's rows, copied before they are checked: rows that view a buffer the step (or its pair's other step) writes
    # are read as they were when checked
    cdef int64_t* checked_rows

    def __init__(self, tuple stages, tuple data, tuple loss):
        source, inputs, target_source, targets, weight_source, weights, label_source, labels = data
        if source.ndim != 2 or inputs.ndim != 2 or target_source.ndim == 0:
            raise ValueError("a training step needs 2-D inputs and targets")
        if inputs.dtype.kind != "f" or inputs.dtype.itemsize not in (4, 8):
            raise ValueError(f"a training step runs in float32 or float64, got inputs of {inputs.dtype}")
        cdef Py_ssize_t itemsize = inputs.dtype.itemsize, batch = inputs.shape[0], width = inputs.shape[1]
        cdef Py_ssize_t rows = source.shape[0]
        super().__init__(stages, batch, width, itemsize, True)
        self.arrays += [array for array in data if array is not None]
        self.step.source_rows = rows
        self.step.source = _step_buffer(self.spans, source, "source", "f", itemsize, (rows, width), False)
        self.step.inputs = _step_buffer(self.spans, inputs, "inputs", "f", itemsize, (batch, width), True)
        self.step.target_source = _step_buffer(self.spans, target_source, "target_source", target_source.dtype.kind,
                                               target_source.dtype.itemsize, (rows, *target_source.shape[1:]), False)
        self.step.targets = _step_buffer(self.spans, targets, "targets", target_source.dtype.kind,
                                         target_source.dtype.itemsize, (batch, *target_source.shape[1:]), True)
        self.step.target_row_bytes = targets.nbytes // batch
        self.step.weight_source = self.step.weights = self.step.label_source = self.step.labels = NULL
        if weights is not None:
            self.step.weight_source = _step_buffer(self.spans, weight_source, "weight_source", "f", itemsize, (rows,),
                                                   False)
            self.step.weights = _step_buffer(self.spans, weights, "weights", "f", itemsize, (batch,), True)
        if labels is not None:
            self.step.label_source = _step_buffer(self.spans, label_source, "label_source", "i", 8, (rows,), False)
            self.step.labels = _step_buffer(self.spans, labels, "labels", "i", 8, (batch,), True)
        self._set_loss(loss, itemsize, targets)
        self.checked_rows = <int64_t*>malloc(batch * sizeof(int64_t))
        if self.checked_rows == NULL:
            raise MemoryError(f"no memory for a training step's {batch} rows")
        self._made()

    def __dealloc__(self):
        free(self.checked_rows)

    cdef _set_loss(self, tuple loss, Py_ssize_t itemsize, object targets):
        cdef Py_ssize_t batch = self.step.batch, cols = self.step.stages[self.step.n_stages - 1].n_out
        code, pointwise_kind, option, pos_weight, value_scale, grad_scale, count = loss
        if code not in (_STEP_CROSS_ENTROPY, _STEP_BINARY_CROSS_ENTROPY, _STEP_POINTWISE) or pointwise_kind not in (
                _MSE, _HUBER, _MAE):
            raise ValueError(f"no training step for the loss {loss}")
        # (the targets' buffer is in spans already: these checks add nothing to them)
        if code == _STEP_CROSS_ENTROPY:
            _step_buffer([], targets, "the cross-entropy's targets", "i", 8, (batch,), True)
        else:
            _step_buffer([], targets, "the loss's targets", "f", itemsize, (batch, cols), True)
        if count not in (_COUNT_NOTHING, _COUNT_TARGET_LABELS, _COUNT_OWN_LABELS, _COUNT_BINARY) or (
                count == _COUNT_OWN_LABELS and self.step.labels == NULL) or (
                count == _COUNT_TARGET_LABELS and code != _STEP_CROSS_ENTROPY) or (
                count == _COUNT_BINARY and code == _STEP_CROSS_ENTROPY):
            raise ValueError(f"no count {count} of correct predictions for these targets")
        self.step.loss, self.step.pointwise_kind, self.step.count = code, pointwise_kind, count
        self.step.loss_option, self.step.value_scale, self.step.grad_scale = option, value_scale, grad_scale
        self.step.pos_weight = NULL
        if pos_weight is not None:
            self.step.pos_weight = _step_buffer(self.spans, pos_weight, "pos_weight", "f", itemsize, (cols,), False)
            self.arrays.append(pos_weight)

    def run(self, const int64_t[::1] rows):
        """Train on the data set's ``rows`` (int64, the step's batch size of them): returns (loss, correct
        predictions, whether every gradient is finite); a loss that is not finite leaves the gradients unwritten.
        Returns None, doing nothing, when the BLAS or the tiles changed since the step was made (make it again).
        A row outside the data set, or a cross-entropy label outside the classes, is refused before anything is
        written (the labels are read at each call: the data set's arrays may have changed since)."""
        cdef Py_ssize_t correct = 0
        cdef double value = 0
        cdef bint finite
        if not self._ready(rows):
            return None
        _blas_serial_begin()
        with nogil:
            finite = self._run(&value, &correct)
        _blas_serial_end()
        return value, correct, finite

    cdef bint _ready(self, const int64_t[::1] rows) except -1:
        # Whether the step can run on rows (False: out of date), which it copies into checked_rows; raises for rows
        # it must refuse.
        cdef Py_ssize_t i, row
        cdef Py_ssize_t classes = self.step.stages[self.step.n_stages - 1].n_out if self.made else 0
        cdef const int64_t* labels = NULL
        if not self.made:
            raise ValueError("this training step was not made (its __init__ did not complete)")
        if self.gemm_setup != _gemm_setup:
            return False
        if rows.shape[0] != self.step.batch:
            raise ValueError(f"this training step takes {self.step.batch} rows, got {rows.shape[0]}")
        memcpy(self.checked_rows, &rows[0], self.step.batch * sizeof(int64_t))
        if self.step.loss == _STEP_CROSS_ENTROPY:
            labels = <const int64_t*>self.step.target_source
        for i in range(self.step.batch):
            row = self.checked_rows[i]
            if row < 0 or row >= self.step.source_rows:
                raise IndexError(f"row {row} is outside the data set's {self.step.source_rows} rows")
            if labels != NULL and not 0 <= labels[row] < classes:
                raise ValueError(f"row {row}'s label {labels[row]} is not one of the {classes} classes")
        return True

    cdef bint _run(self, double* value, Py_ssize_t* correct) noexcept nogil:
        # The step on the rows _ready checked, in its dtype.
        if self.double_precision:
            return _train_step(&self.step, self.checked_rows, value, correct, <double>0)
        return _train_step(&self.step, self.checked_rows, value, correct, <float>0)


@cython.auto_pickle(False)  # (a pickle's state would skip __init__'s checks)
cdef class StepPair:
    """Two training steps run at once, each on its own thread when the thread policy gives two (else one after the
    other): ``run(first_rows, second_rows)`` returns each step's ``TrainingStep.run`` result, or None, doing
    nothing, when either is out of date. A batch split in two halves, each half's step over its own buffers and
    gradients (a second model sharing the weights, ``Sequential._pair_gradients``), keeps each core's rows and
    activations in its own cache: for scikit-learn's digits network (64-100-10, batch 200) on a 2-core AMD EPYC
    Zen 4 VM, a pair of 100-row steps on two threads ran in 48-62 us (one of them alone 39-44 us), its 200-row step
    in 72-78 us, whose kernels split each product between the threads. Each step runs as alone (its kernels serial
    inside the pair's threads), so its bits are those of its own ``run``. Made once, checked: neither step writes a
    buffer that the other reads or writes."""

    cdef TrainingStep first, second
    cdef double flops  # both steps' multiply-adds times two: the thread policy's measure of the pair's work

    def __init__(self, TrainingStep first not None, TrainingStep second not None):
        if self.first is not None:
            raise TypeError("a step pair is made once: make a new one")
        if not (first.made and second.made):
            raise ValueError("a step pair needs two made training steps")
        if first is second or first.double_precision != second.double_precision:
            raise ValueError("a step pair needs two distinct training steps of one float width")
        # (each step's own spans are disjoint already: what this refuses is a write of one step on the other's bytes)
        _check_disjoint([(start, end, written, f"the {which} step's {name}")
                         for which, step in (("first", first), ("second", second))
                         for start, end, written, name in step.spans],
                        "a step of a pair must write only buffers of its own")  # fmt: skip
        self.first, self.second = first, second
        self.flops = _step_flops(&first.step) + _step_flops(&second.step)

    def run(self, const int64_t[::1] first_rows, const int64_t[::1] second_rows):
        cdef Py_ssize_t correct[2]
        cdef double value[2]
        cdef bint finite[2]
        cdef int team, half
        cdef double started
        cdef double[1] own_done
        if self.first is None or self.second is None:
            raise ValueError("this step pair was not made (its __init__ did not complete)")
        # (each step copies its rows as it checks them: neither step's writes can change the other's rows)
        if not (self.first._ready(first_rows) and self.second._ready(second_rows)):
            return None
        correct[0] = correct[1] = 0
        value[0] = value[1] = 0
        team = threads_for(GEMM, self.flops, 2)
        _blas_serial_begin()
        with nogil:
            if team == 1:
                finite[0] = self.first._run(&value[0], &correct[0])
                finite[1] = self.second._run(&value[1], &correct[1])
            else:
                started = clock()
                for half in prange(2, num_threads=2, schedule="static", chunksize=1):
                    if half == 0:
                        finite[0] = self.first._run(&value[0], &correct[0])
                        own_done[0] = clock()
                    else:
                        finite[1] = self.second._run(&value[1], &correct[1])
                report_region(started, own_done[0])
        _blas_serial_end()
        return (value[0], correct[0], finite[0]), (value[1], correct[1], finite[1])


cdef double _step_flops(_Step* step) noexcept nogil:
    # A step's dense products (forward, grad_weight and grad_x), multiply-adds times two.
    cdef double total = 0
    cdef Py_ssize_t index
    cdef _StepStage* stage
    for index in range(step.n_stages):
        stage = &step.stages[index]
        if stage.kind == _STAGE_DENSE:
            total += (6.0 if index else 4.0) * step.batch * stage.n_in * stage.n_out
    return total


cdef bint _train_step(_Step* step, const int64_t* rows, double* value, Py_ssize_t* correct,
                      floating zero) noexcept nogil:
    # TrainingStep.run for one dtype (zero selects it); returns whether the loss and every gradient are finite.
    cdef Py_ssize_t index, batch = step.batch
    cdef const floating* x = <const floating*>step.inputs
    cdef bint bad = False
    _gather_on(<const floating*>step.source, rows, <floating*>step.inputs, batch, step.width)
    _copy_rows(step.target_source, rows, step.targets, batch, step.target_row_bytes)
    if step.weights != NULL:
        _copy_rows(step.weight_source, rows, step.weights, batch, sizeof(floating))
    x = _forward_stages(step, x)
    value[0] = _step_loss(step, x)
    if value[0] - value[0] != 0:
        return False
    correct[0] = _step_count(step, x, rows)
    for index in range(step.n_stages - 1, -1, -1):
        bad |= _stage_backward(&step.stages[index], <const floating*>(
            step.stages[index - 1].out if index else step.inputs), <floating*>(
            step.stages[index - 1].grad_out if index else NULL), batch)
    return not bad


cdef const floating* _forward_stages(_Step* step, const floating* x) noexcept nogil:
    # Every stage on inputs x; returns the last stage's outputs.
    cdef Py_ssize_t index
    for index in range(step.n_stages):
        _stage_forward(&step.stages[index], x, step.batch)
        x = <const floating*>step.stages[index].out
    return x


cdef inline void _stage_forward(_StepStage* stage, const floating* x, Py_ssize_t batch) noexcept nogil:
    cdef floating* out = <floating*>stage.out
    if stage.kind == _STAGE_DENSE:
        _dense_forward_on(x, <const floating*>stage.weight, <const floating*>stage.bias, out,
                          <floating*>stage.forward_scratch, batch, stage.n_in, stage.n_out, stage.act,
                          <floating>stage.slope)
    elif stage.kind == _STAGE_ACTIVATION:
        _activation_forward_on(stage.act, x, out, batch * stage.n_out, <floating>stage.slope)
    else:
        _softmax_forward_on(x, out, batch, stage.n_out)


cdef inline bint _stage_backward(_StepStage* stage, const floating* x, floating* grad_x,
                                 Py_ssize_t batch) noexcept nogil:
    # A stage's backward pass from its grad_out into grad_x (NULL: the first stage's input needs none); returns
    # whether a dense stage's gradients are not finite.
    cdef const floating* out = <const floating*>stage.out
    cdef floating* grad_out = <floating*>stage.grad_out
    if stage.kind == _STAGE_DENSE:
        return _dense_backward_on(x, <const floating*>stage.weight, out, grad_out, <floating*>stage.grad_weight,
                                  <floating*>stage.grad_bias, grad_x, <floating*>stage.backward_scratch, batch,
                                  stage.n_in, stage.n_out, stage.act, <floating>stage.slope)
    if stage.kind == _STAGE_ACTIVATION:
        _activation_backward_on(stage.act, x, out, grad_out, grad_x, batch * stage.n_out, <floating>stage.slope)
    else:
        _softmax_backward_on(out, grad_out, grad_x, batch, stage.n_out)
    return False


cdef inline double _step_loss(_Step* step, const floating* out) noexcept nogil:
    # The loss of the last stage's outputs (times the value scale); its gradient (times the gradient scale) into
    # that stage's grad_out.
    cdef _StepStage* last = &step.stages[step.n_stages - 1]
    cdef floating* grad = <floating*>last.grad_out
    cdef const floating* weights = <const floating*>step.weights
    cdef Py_ssize_t rows = step.batch, cols = last.n_out, j
    cdef double value
    if step.loss == _STEP_CROSS_ENTROPY:
        value = _softmax_xent_on(out, <const int64_t*>step.targets, grad, weights, rows, cols, step.loss_option)
    elif step.loss == _STEP_BINARY_CROSS_ENTROPY:
        value = _bce_on(out, <const floating*>step.targets, grad, weights, <const floating*>step.pos_weight, rows, cols)
    elif step.pointwise_kind == _MSE:
        value = _mse_on(out, <const floating*>step.targets, grad, weights, rows, cols)
    else:
        value = _pointwise_loss_on(step.pointwise_kind, out, <const floating*>step.targets, grad, weights, rows, cols,
                                   step.loss_option)
    if step.grad_scale != 1:
        for j in range(rows * cols):
            grad[j] = grad[j] * <floating>step.grad_scale
    return value * step.value_scale


cdef inline Py_ssize_t _step_count(_Step* step, const floating* out, const int64_t* rows) noexcept nogil:
    cdef Py_ssize_t batch = step.batch, cols = step.stages[step.n_stages - 1].n_out
    if step.count == _COUNT_TARGET_LABELS:
        return _count_correct_on(out, <const int64_t*>step.targets, batch, cols)
    if step.count == _COUNT_OWN_LABELS:
        _copy_rows(step.label_source, rows, step.labels, batch, sizeof(int64_t))
        return _count_correct_on(out, <const int64_t*>step.labels, batch, cols)
    if step.count == _COUNT_BINARY:
        return _count_binary_on(out, <const floating*>step.targets, batch * cols)
    return 0


# ------------------------------------------------------------------------------- the GEMM probe
cdef inline void _probe_block(Py_ssize_t block, Py_ssize_t blocks, bint trans_a, bint trans_b, Py_ssize_t m,
                              Py_ssize_t n, Py_ssize_t k, const floating* a, Py_ssize_t lda, const floating* b,
                              Py_ssize_t ldb, floating* c, Py_ssize_t ldc) noexcept nogil:
    cdef Py_ssize_t bounds[4]
    _gemm_block(block, blocks, trans_a, trans_b, m, n, k, a, lda, b, ldb, c, ldc, bounds)


def gemm_probe(const floating[:, ::1] a, const floating[:, ::1] b, floating[:, ::1] c, bint trans_a, bint trans_b,
               int threads, Py_ssize_t repeats):
    """``c = op(a) @ op(b)``, ``repeats`` times in a row with no Python call between them, cut into ``threads``
    blocks of c on as many OpenMP threads with one BLAS thread each, as the dense kernels cut their products
    (op transposes when its flag is set). ``fastopt bench`` times it for its GEMM rate of each product shape.
    Needs ``set_blas``."""
    cdef Py_ssize_t m = c.shape[0], n = c.shape[1], k = a.shape[0] if trans_a else a.shape[1]
    cdef Py_ssize_t repeat, block
    if (a.shape[1] if trans_a else a.shape[0]) != m or (b.shape[1] if trans_b else b.shape[0]) != k or (
        b.shape[0] if trans_b else b.shape[1]
    ) != n or min(m, n, k) == 0:
        raise ValueError("gemm_probe: op(a) (m, k), op(b) (k, n) and c (m, n) must agree and be non-empty")
    if threads < 1 or repeats < 1:
        raise ValueError("gemm_probe needs threads >= 1 and repeats >= 1")
    _check_blas(m, k, n)
    _blas_serial_begin()
    with nogil:
        for repeat in range(repeats):
            if threads == 1:
                _gemm(trans_a, trans_b, m, n, k, &a[0, 0], a.shape[1], &b[0, 0], b.shape[1], &c[0, 0], n)
            else:
                for block in prange(threads, num_threads=threads, schedule="static", chunksize=1):
                    _probe_block(block, threads, trans_a, trans_b, m, n, k, &a[0, 0], a.shape[1], &b[0, 0],
                                 b.shape[1], &c[0, 0], n)
    _blas_serial_end()
