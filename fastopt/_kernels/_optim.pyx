# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Fused optimizer updates: one pass over memory, in place, no temporaries.

Every update follows ``fastopt.numpy_backend.NumpyBackend`` operation for operation (same order,
scalars rounded to the array's precision first, as NumPy does with Python floats), so float64
results agree with the reference to rounding (the AVX2+FMA build may fuse a multiply-add).

The public functions take C-contiguous 1-D typed memoryviews (inputs ``const``, so read-only arrays
are accepted); the Python wrapper passes flat views of arrays of any shape. The loops themselves
run over raw pointers: gcc vectorizes them (with ``-fno-math-errno`` for the square root), which it
did not do for the memoryview-indexed loops. Above ``parallel_threshold`` elements the array is cut
into one contiguous chunk per OpenMP thread (static, deterministic: every element gets the same
operations whatever the thread count).
"""

from cython cimport floating
from cython.parallel cimport prange, threadid
from libc.math cimport sqrt

from fastopt._kernels._common cimport (
    FO_COMPILE_ARGS, FO_FLUSHES_SUBNORMALS, FO_HAVE_OPENMP, FO_ISA, fo_flush_subnormals_begin, fo_flush_subnormals_end,
    fo_now, fo_omp_max_threads, fo_parallel_ok, fo_parallel_report, fo_serial_spells, fo_stalls_at_barriers,
    fo_stalls_by_cpu_share, fsqrt, with_weight_decay,
)

cdef int _num_threads = fo_omp_max_threads()
# Elements per update above which the work is split over threads. On an idle 2-core machine two
# threads pay from about 16-32k float32 elements for AdaGrad/RMSProp/Adam (square root and divisions)
# and 64-128k for SGD (pure streaming). But a parallel region ends in a barrier: when the other core is
# busy (BLAS threads still spinning after a GEMM, other processes) the step waits for a scheduler time
# slice, measured at 1-20 ms instead of 50 us for a 110k-parameter Adam step. So the default threshold
# is 2**18 elements (a serial Adam step takes ~100 us there, so an unlucky region costs proportionally
# less, and a typical small model's step stays serial); SGD uses four times it. Sequential.fit, whose
# GEMMs leave BLAS's threads asleep, lowers it to 2**15 while it trains (fastopt/cython_backend.py), and
# the stall guard (_common.pxd) turns threads off while another process makes them wait.
cdef Py_ssize_t _parallel_threshold = 262144
cdef Py_ssize_t _LIGHT_FACTOR = 4


def build_info():
    """Flags this module was compiled with."""
    return {
        "openmp": bool(FO_HAVE_OPENMP),
        "flushes_subnormals": bool(FO_FLUSHES_SUBNORMALS),
        "isa": FO_ISA.decode(),
        "compile_args": FO_COMPILE_ARGS.decode().split(),
        "num_threads": _num_threads,
        "parallel_threshold": _parallel_threshold,
        "parallel_threshold_sgd": _parallel_threshold * _LIGHT_FACTOR,
        "serial_spells": fo_serial_spells(),
        "stalls_at_barriers": fo_stalls_at_barriers(),
        "stalls_by_cpu_share": fo_stalls_by_cpu_share(),
    }


def set_num_threads(int n):
    """Threads used by the parallel kernels of this module (1 = serial)."""
    global _num_threads
    _num_threads = max(1, n)


def set_parallel_threshold(Py_ssize_t n):
    """Smallest update (elements) split over threads: AdaGrad/RMSProp/Adam; SGD uses four times it."""
    global _parallel_threshold
    _parallel_threshold = max(1, n)


cdef inline int _n_chunks(Py_ssize_t n, Py_ssize_t threshold) noexcept nogil:
    # 1 (serial) below the threshold and during a spell of the stall guard (_common.pxd)
    if not FO_HAVE_OPENMP or _num_threads <= 1 or n < threshold or not fo_parallel_ok():
        return 1
    return _num_threads


cdef inline Py_ssize_t _chunk_size(Py_ssize_t n, int chunks) noexcept nogil:
    # Chunks start on a 64-element boundary so each thread's loop stays aligned like the serial one.
    cdef Py_ssize_t size = (n + chunks - 1) // chunks
    return (size + 63) // 64 * 64


cdef enum Kind:
    SGD, ADAGRAD, RMSPROP, ADAM


cdef struct Step:
    # One optimizer update: its kind, its state buffers (of the parameter's dtype; NULL when an option is
    # off) and its scalars in double, rounded to the parameter's precision where the loop is called.
    Kind kind
    void* state[3]
    double scalar[9]
    bint flag[2]


cdef inline void* _at(void* buffer, Py_ssize_t start, floating* dtype) noexcept nogil:
    # element `start` of an optional state buffer of the parameter's dtype (NULL stays NULL)
    return NULL if buffer == NULL else <void*>(<floating*>buffer + start)


cdef void _update(const Step* u, floating* p, const floating* g, Py_ssize_t start, Py_ssize_t n) noexcept nogil:
    # The update of elements start:start+n.
    cdef const double* x = u.scalar
    cdef void* s0 = _at(u.state[0], start, p)
    cdef void* s1 = _at(u.state[1], start, p)
    cdef void* s2 = _at(u.state[2], start, p)
    p, g = p + start, g + start
    if u.kind == SGD:
        _sgd(p, g, <floating*>s0, n, <floating>x[0], <floating>x[1], <floating>x[2], <floating>x[3], u.flag[0],
             u.flag[1])
    elif u.kind == ADAGRAD:
        _adagrad(p, g, <floating*>s0, n, <floating>x[0], <floating>x[1], <floating>x[2])
    elif u.kind == RMSPROP:
        _rmsprop(p, g, <floating*>s0, <floating*>s1, <floating*>s2, n, <floating>x[0], <floating>x[1],
                 <floating>x[2], <floating>x[3], <floating>x[4], <floating>x[5])
    else:
        _adam(p, g, <floating*>s0, <floating*>s1, <floating*>s2, n, <floating>x[0], <floating>x[1], <floating>x[2],
              <floating>x[3], <floating>x[4], <floating>x[5], <floating>x[6], <floating>x[7], <floating>x[8])


cdef void _run(const Step* u, floating* p, const floating* g, Py_ssize_t n, Py_ssize_t threshold) noexcept nogil:
    # The whole update: serially, or from `threshold` elements in one contiguous chunk per thread.
    cdef int c, chunks = _n_chunks(n, threshold)
    cdef Py_ssize_t start, size
    cdef double started
    cdef double[1] own_done  # when the calling thread finished its chunk (for the stall guard)
    if chunks == 1:
        _update(u, p, g, 0, n)
        return
    size = _chunk_size(n, chunks)
    started = fo_now()
    for c in prange(chunks, num_threads=chunks, schedule="static"):
        start = c * size
        if start < n:
            _update(u, p, g, start, min(size, n - start))
        if threadid() == 0:
            own_done[0] = fo_now()
    fo_parallel_report(own_done[0] - started, fo_now() - own_done[0])


# ----------------------------------------------------------------------------------------- SGD
cdef void _sgd(floating* p, const floating* g, floating* b, Py_ssize_t n, floating lr, floating mu,
               floating one_minus_damp, floating wd, bint nesterov, bint first) noexcept nogil:
    cdef unsigned int saved_csr = fo_flush_subnormals_begin()
    cdef Py_ssize_t i
    cdef floating gi
    # One loop per variant on purpose: a single loop with these (loop-invariant) tests inside measured 4x slower
    # for SGD and 7x for RMSProp, because gcc then neither unswitched nor vectorized it.
    if b == NULL:
        for i in range(n):
            gi = with_weight_decay(g[i], wd, p[i])
            p[i] = p[i] - lr * gi
    elif first and nesterov:
        for i in range(n):
            gi = with_weight_decay(g[i], wd, p[i])
            b[i] = gi
            p[i] = p[i] - lr * (gi + mu * gi)
    elif first:
        for i in range(n):
            gi = with_weight_decay(g[i], wd, p[i])
            b[i] = gi
            p[i] = p[i] - lr * gi
    elif nesterov:
        for i in range(n):
            gi = with_weight_decay(g[i], wd, p[i])
            b[i] = mu * b[i] + one_minus_damp * gi
            p[i] = p[i] - lr * (gi + mu * b[i])
    else:
        for i in range(n):
            gi = with_weight_decay(g[i], wd, p[i])
            b[i] = mu * b[i] + one_minus_damp * gi
            p[i] = p[i] - lr * b[i]
    fo_flush_subnormals_end(saved_csr)


def sgd_step(floating[::1] param, const floating[::1] grad, floating[::1] momentum_buffer, double lr,
             double momentum, double dampening, bint nesterov, double weight_decay, bint first_step):
    cdef Step u
    u.kind, u.flag[0], u.flag[1] = SGD, nesterov, first_step
    u.state[0] = NULL if momentum_buffer is None else <void*>&momentum_buffer[0]
    u.scalar[0], u.scalar[1], u.scalar[2], u.scalar[3] = lr, momentum, 1 - dampening, weight_decay
    with nogil:
        _run(&u, &param[0], &grad[0], param.shape[0], _parallel_threshold * _LIGHT_FACTOR)


# ----------------------------------------------------------------------------------------- AdaGrad
cdef void _adagrad(floating* p, const floating* g, floating* s, Py_ssize_t n, floating lr, floating eps,
                   floating wd) noexcept nogil:
    cdef unsigned int saved_csr = fo_flush_subnormals_begin()
    cdef Py_ssize_t i
    cdef floating gi, si
    for i in range(n):
        gi = with_weight_decay(g[i], wd, p[i])
        si = s[i] + gi * gi
        s[i] = si
        p[i] = p[i] - lr * gi / (fsqrt(si) + eps)
    fo_flush_subnormals_end(saved_csr)


def adagrad_step(floating[::1] param, const floating[::1] grad, floating[::1] sum_squares, double lr, double eps,
                 double weight_decay):
    cdef Step u
    u.kind, u.state[0] = ADAGRAD, <void*>&sum_squares[0]
    u.scalar[0], u.scalar[1], u.scalar[2] = lr, eps, weight_decay
    with nogil:
        _run(&u, &param[0], &grad[0], param.shape[0], _parallel_threshold)


# ----------------------------------------------------------------------------------------- RMSProp
cdef void _rmsprop(floating* p, const floating* g, floating* v, floating* a, floating* b, Py_ssize_t n,
                   floating lr, floating alpha, floating one_minus_alpha, floating eps, floating mu,
                   floating wd) noexcept nogil:
    cdef unsigned int saved_csr = fo_flush_subnormals_begin()
    cdef Py_ssize_t i
    cdef floating gi, vi, ai, d, bi
    # One loop per variant, as in _sgd: merged, the loop ran 7x slower (not vectorized).
    if a == NULL and b == NULL:
        for i in range(n):
            gi = with_weight_decay(g[i], wd, p[i])
            vi = alpha * v[i] + one_minus_alpha * gi * gi
            v[i] = vi
            p[i] = p[i] - lr * gi / (fsqrt(vi) + eps)
    elif a == NULL:
        for i in range(n):
            gi = with_weight_decay(g[i], wd, p[i])
            vi = alpha * v[i] + one_minus_alpha * gi * gi
            v[i] = vi
            bi = mu * b[i] + gi / (fsqrt(vi) + eps)
            b[i] = bi
            p[i] = p[i] - lr * bi
    elif b == NULL:
        for i in range(n):
            gi = with_weight_decay(g[i], wd, p[i])
            vi = alpha * v[i] + one_minus_alpha * gi * gi
            v[i] = vi
            ai = alpha * a[i] + one_minus_alpha * gi
            a[i] = ai
            p[i] = p[i] - lr * gi / (fsqrt(vi - ai * ai) + eps)
    else:
        for i in range(n):
            gi = with_weight_decay(g[i], wd, p[i])
            vi = alpha * v[i] + one_minus_alpha * gi * gi
            v[i] = vi
            ai = alpha * a[i] + one_minus_alpha * gi
            a[i] = ai
            bi = mu * b[i] + gi / (fsqrt(vi - ai * ai) + eps)
            b[i] = bi
            p[i] = p[i] - lr * bi
    fo_flush_subnormals_end(saved_csr)


def rmsprop_step(floating[::1] param, const floating[::1] grad, floating[::1] square_avg, floating[::1] grad_avg,
                 floating[::1] momentum_buffer, double lr, double alpha, double eps, double momentum,
                 double weight_decay):
    cdef Step u
    u.kind, u.state[0] = RMSPROP, <void*>&square_avg[0]
    u.state[1] = NULL if grad_avg is None else <void*>&grad_avg[0]
    u.state[2] = NULL if momentum_buffer is None else <void*>&momentum_buffer[0]
    u.scalar[0], u.scalar[1], u.scalar[2], u.scalar[3] = lr, alpha, 1 - alpha, eps
    u.scalar[4], u.scalar[5] = momentum, weight_decay
    with nogil:
        _run(&u, &param[0], &grad[0], param.shape[0], _parallel_threshold)


# ----------------------------------------------------------------------------------------- Adam
cdef void _adam(floating* p, const floating* g, floating* m, floating* v, floating* vmax, Py_ssize_t n,
                floating shrink, floating wd, floating beta1, floating one_minus_beta1, floating beta2,
                floating one_minus_beta2, floating inv_sqrt_bc2, floating eps, floating step_size) noexcept nogil:
    # shrink = 1 - lr wd with decoupled weight decay (AdamW) and wd = 0; shrink = 1 otherwise (a multiplication
    # by 1 is exact), so one loop serves both variants.
    cdef unsigned int saved_csr = fo_flush_subnormals_begin()
    cdef Py_ssize_t i
    cdef floating pi, gi, mi, vi
    cdef bint amsgrad = vmax != NULL  # loop-invariant: gcc unswitches the loop on it
    # inv_sqrt_bc2 = 1 / sqrt(bc2), made once in double: a multiplication where PyTorch divides (the same math,
    # rounded once differently, as in the reference). The loop is bound by the divider, which also takes the
    # square roots: one division less per element made a 109k-element step 23 instead of 29.5 us.
    for i in range(n):
        pi = p[i] * shrink
        gi = with_weight_decay(g[i], wd, pi)
        mi = beta1 * m[i] + one_minus_beta1 * gi
        vi = beta2 * v[i] + one_minus_beta2 * gi * gi
        m[i] = mi
        v[i] = vi
        if amsgrad:
            if not (vi > vmax[i] or vi != vi):  # the running maximum; a NaN v propagates, as NumPy's does
                vi = vmax[i]
            vmax[i] = vi
        p[i] = pi - step_size * mi / (fsqrt(vi) * inv_sqrt_bc2 + eps)
    fo_flush_subnormals_end(saved_csr)


def adam_step(floating[::1] param, const floating[::1] grad, floating[::1] exp_avg, floating[::1] exp_avg_sq,
              floating[::1] max_exp_avg_sq, double lr, double beta1, double beta2, double eps, double weight_decay,
              bint decoupled_weight_decay, double bias_correction1, double bias_correction2):
    cdef Step u
    u.kind, u.state[0], u.state[1] = ADAM, <void*>&exp_avg[0], <void*>&exp_avg_sq[0]
    u.state[2] = NULL if max_exp_avg_sq is None else <void*>&max_exp_avg_sq[0]
    # shrink = 1 - lr wd and no weight decay on the gradient for AdamW (decoupled); shrink = 1 for Adam
    u.scalar[0] = 1 - lr * weight_decay if decoupled_weight_decay else 1
    u.scalar[1] = 0 if decoupled_weight_decay else weight_decay
    u.scalar[2], u.scalar[3], u.scalar[4], u.scalar[5] = beta1, 1 - beta1, beta2, 1 - beta2
    u.scalar[6], u.scalar[7], u.scalar[8] = 1 / sqrt(bias_correction2), eps, lr / bias_correction1
    with nogil:
        _run(&u, &param[0], &grad[0], param.shape[0], _parallel_threshold)
