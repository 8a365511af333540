# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Fused optimizer updates: one pass over memory, in place, no temporaries.

Every update follows ``fastopt.numpy_backend.NumpyBackend`` operation for operation (same order,
scalars rounded to the array's precision first, as NumPy does with Python floats), so float64
results agree with the reference to rounding (the AVX2+FMA build may fuse a multiply-add).

Each public function takes its buffers as C-contiguous 1-D typed memoryviews (inputs ``const``, so read-only
arrays are accepted; the Python wrapper passes flat views of arrays of any shape), every one as long as the
parameter (else a ValueError, before anything is written), and its hyperparameters as one
struct, converted by name from the mapping the caller passes (the fields of ``fastopt.kernel_table``'s entry:
a missing one is a ValueError naming it). The loops run over raw pointers: gcc vectorizes them (with
``-fno-math-errno`` for the square root), which it did not do for memoryview-indexed loops. The thread policy
(``_threads.pyx``) decides whether the array is cut into one contiguous chunk per OpenMP thread (static,
deterministic: every element gets the same operations whatever the thread count).
"""

from cython cimport floating
from cython.parallel cimport prange, threadid
from libc.math cimport sqrt

from fastopt._kernels._common cimport (
    FO_COMPILE_ARGS, FO_FLUSHES_SUBNORMALS, FO_ISA, SQUARE_BLOCKS, SquareSums, fabs_typed, fo_flush_subnormals_begin,
    fo_flush_subnormals_end, fo_omp_num_procs, fsqrt, square_block_size, square_blocks, square_sums_add,
    square_sums_start, square_sums_total, with_weight_decay,
)
from fastopt._kernels._threads cimport LIGHT_UPDATE, SCAN, UPDATE, Work, clock, report_region, threads_for


def build_info():
    """Flags this module was compiled with."""
    return {
        "flushes_subnormals": bool(FO_FLUSHES_SUBNORMALS),
        "isa": FO_ISA.decode(),
        "compile_args": FO_COMPILE_ARGS.decode().split(),
    }


# ----------------------------------------------------------------------------------------- hyperparameters
# One struct per optimizer kind, its fields named as in fastopt/kernel_table.py (scalars in double; each loop
# rounds them to the parameters' precision, as NumPy does with Python floats).
cdef struct SGDHyper:
    double lr, momentum, dampening, weight_decay
    bint nesterov, first_step

cdef struct AdaGradHyper:
    double lr, eps, weight_decay

cdef struct RMSPropHyper:
    double lr, alpha, eps, momentum, weight_decay

cdef struct AdamHyper:
    double lr, beta1, beta2, eps, weight_decay, bias_correction1, bias_correction2
    bint decoupled_weight_decay

cdef struct NAdamHyper:
    double lr, beta1, beta2, eps, weight_decay, bias_correction2, grad_step, momentum_step
    bint decoupled_weight_decay

cdef struct AdamaxHyper:
    double lr, beta1, beta2, eps, weight_decay, bias_correction1

cdef struct RAdamHyper:
    double lr, beta1, beta2, eps, weight_decay, bias_correction1, bias_correction2, rectification
    bint decoupled_weight_decay, rectified

cdef struct LionHyper:
    double lr, beta1, beta2, weight_decay


# ----------------------------------------------------------------------------------------- the scaffold
cdef enum Kind:
    SGD, ADAGRAD, RMSPROP, ADAM, NADAM, ADAMAX, RADAM, LION, STREAM


cdef struct Step:
    # One optimizer update: its kind, its hyperparameter struct, and its state buffers (of the parameter's
    # dtype; NULL when an option is off), in the order of the kernel table.
    Kind kind
    const void* hyper
    void* state[3]


cdef inline Py_ssize_t _chunk_size(Py_ssize_t n, int chunks) noexcept nogil:
    # Chunks start on a 64-element boundary so each thread's loop stays aligned like the serial one.
    cdef Py_ssize_t size = (n + chunks - 1) // chunks
    return (size + 63) // 64 * 64


cdef inline void* _at(void* buffer, Py_ssize_t start, floating* dtype) noexcept nogil:
    # element `start` of an optional state buffer of the parameter's dtype (NULL stays NULL)
    return NULL if buffer == NULL else <void*>(<floating*>buffer + start)


cdef void _update(const Step* u, floating* p, const floating* g, Py_ssize_t start, Py_ssize_t n,
                  SquareSums* sums) noexcept nogil:
    # The update of elements start:start+n; with ``sums`` (not NULL), the squares of those parameters before it are
    # added to them (_common.pxd's SquareSums), in pieces of _SQUARES_PIECE elements, each summed and then updated
    # while it is in the first-level cache. The squares are summed outside the updates' flushing of subnormal
    # numbers, so a subnormal parameter counts as in ``sum_of_squares``. A NULL step only sums.
    cdef Py_ssize_t lo = 0, length
    if sums == NULL:
        _update_flushing(u, p, g, start, n)
        return
    while lo < n:
        length = min(<Py_ssize_t>_SQUARES_PIECE, n - lo)
        square_sums_add(sums, p + start + lo, length)
        if u != NULL:
            _update_flushing(u, p, g, start + lo, length)
        lo += length


cdef void _update_flushing(const Step* u, floating* p, const floating* g, Py_ssize_t start,
                           Py_ssize_t n) noexcept nogil:
    # The update of elements start:start+n, subnormal numbers flushed to zero (but Lion's).
    # Lion keeps subnormal numbers: it takes the sign of its momentum, and a subnormal momentum flushed to zero
    # would step by 0 where the reference steps by a whole lr; it has no division or square root to slow down.
    cdef bint flushes = u.kind != LION
    cdef unsigned int saved_csr = fo_flush_subnormals_begin() if flushes else 0
    _update_elements(u, p, g, start, n)
    if flushes:
        fo_flush_subnormals_end(saved_csr)


cdef void _update_elements(const Step* u, floating* p, const floating* g, Py_ssize_t start,
                           Py_ssize_t n) noexcept nogil:
    # The update of elements start:start+n by the step's kind.
    cdef floating* s0 = <floating*>_at(u.state[0], start, p)
    cdef floating* s1 = <floating*>_at(u.state[1], start, p)
    cdef floating* s2 = <floating*>_at(u.state[2], start, p)
    p, g = p + start, g + start
    if u.kind == SGD:
        _sgd(p, g, s0, n, <const SGDHyper*>u.hyper)
    elif u.kind == ADAGRAD:
        _adagrad(p, g, s0, n, <const AdaGradHyper*>u.hyper)
    elif u.kind == RMSPROP:
        _rmsprop(p, g, s0, s1, s2, n, <const RMSPropHyper*>u.hyper)
    elif u.kind == ADAM:
        _adam(p, g, s0, s1, s2, n, <const AdamHyper*>u.hyper)
    elif u.kind == NADAM:
        _nadam(p, g, s0, s1, n, <const NAdamHyper*>u.hyper)
    elif u.kind == ADAMAX:
        _adamax(p, g, s0, s1, n, <const AdamaxHyper*>u.hyper)
    elif u.kind == RADAM:
        _radam(p, g, s0, s1, n, <const RAdamHyper*>u.hyper)
    elif u.kind == STREAM:
        _stream(p, g, s0, s1, n)
    else:
        _lion(p, g, s0, n, <const LionHyper*>u.hyper)


cdef void _run(const Step* u, floating* p, const floating* g, Py_ssize_t n, Work work) noexcept nogil:
    # The whole update, on the threads the policy gives a ``work``-kind update of n elements.
    _run_chunks(u, p, g, n, threads_for(work, <double>n, n))


cdef void _run_chunks(const Step* u, floating* p, const floating* g, Py_ssize_t n, int chunks) noexcept nogil:
    # The update serially, or in one contiguous chunk per thread.
    cdef int c
    cdef Py_ssize_t start, size
    cdef double started
    cdef double[1] own_done  # when the calling thread finished its chunk (for the stall guard)
    if chunks <= 1:
        _update(u, p, g, 0, n, NULL)
        return
    size = _chunk_size(n, chunks)
    started = clock()
    for c in prange(chunks, num_threads=chunks, schedule="static"):
        start = c * size
        if start < n:
            _update(u, p, g, start, min(size, n - start), NULL)
        if threadid() == 0:
            own_done[0] = clock()
    report_region(started, own_done[0])


cdef inline void* _state(floating[::1] param, floating[::1] buffer) except? NULL:
    # A state buffer's first element (NULL for None: an option's buffer left out), refused unless it holds as many
    # elements as its parameter: the loops read and write that many (a buffer swapped into a state dict by hand).
    if buffer is None:
        return NULL
    if buffer.shape[0] != param.shape[0]:
        raise ValueError(f"a state buffer holds {buffer.shape[0]} elements where its parameter holds {param.shape[0]}")
    return &buffer[0]


# An update asked for the sum of squares of its parameters (``with_squares``: fastopt.sklearn's L2 penalty, which
# scikit-learn takes of the weights before each update) takes it in ``sum_of_squares``'s blocks and order (the same
# bits), each piece of _SQUARES_PIECE elements summed just before its update, while it is in the first-level cache:
# no pass over memory, parallel region or Python call of its own. The additions (in sixteen lanes, bound by their
# latency) cost about what they did alone: on a 2-core AMD EPYC Zen 4 VM a 109k-weight float32 Adam step took 27.0
# instead of 21.4 us on two threads (48.4 instead of 38.8 on one), the separate sum 6.6 (10.6) us, and the
# Fashion-MNIST estimator's step of about 140 us gained 2.5 us. Summed inside Adam's own loop, sixteen elements at a
# time, or in pieces of 64-512 elements, the step took longer (gcc's vectorized loops did not take it well).
cdef enum:
    _SQUARES_PIECE = 2048
# the processors the sums' blocks are cut for
cdef Py_ssize_t _processors = max(1, fo_omp_num_procs())


cdef double _update_block_with_squares(const Step* u, floating* p, const floating* g, Py_ssize_t start,
                                       Py_ssize_t n) noexcept nogil:
    # The update of elements start:start+n, and the sum of squares of those parameters before it.
    cdef SquareSums sums
    square_sums_start(&sums)
    _update(u, p, g, start, n, &sums)
    return square_sums_total(&sums)


cdef double _run_with_squares(const Step* u, floating* p, const floating* g, Py_ssize_t n, Work work) noexcept nogil:
    # The whole update and the sum of squares of p before it (a NULL step: the sum alone), one block at a time on the
    # threads the policy gives a ``work``-kind update of n elements; the blocks' sums added in order.
    cdef Py_ssize_t blocks = square_blocks(n, _processors), size = square_block_size(n, blocks), block
    cdef int team = threads_for(work, <double>n, blocks)
    cdef double partial[SQUARE_BLOCKS]
    cdef double total = 0, started
    cdef double[1] own_done
    if team <= 1:
        for block in range(blocks):
            partial[block] = _update_block_with_squares(u, p, g, block * size, min(size, n - block * size))
    else:
        started = clock()
        for block in prange(blocks, num_threads=team, schedule="static", chunksize=1):
            partial[block] = _update_block_with_squares(u, p, g, block * size, min(size, n - block * size))
            if threadid() == 0:
                own_done[0] = clock()
        report_region(started, own_done[0])
    for block in range(blocks):
        total += partial[block]
    return total


cdef inline object _launch(Kind kind, const void* hyper, floating[::1] param, const floating[::1] grad, void* state0,
                           void* state1, void* state2, Work work, bint with_squares):
    # An entry point's update: its kind, its hyperparameter struct and state buffers (NULL: none), on the threads
    # the policy gives a ``work``-kind update of this size. Returns the sum of squares of the parameters before the
    # update (a float) if ``with_squares``, else None.
    cdef Step u
    cdef double squares = 0
    if grad.shape[0] != param.shape[0]:
        raise ValueError(f"grad holds {grad.shape[0]} elements where its parameter holds {param.shape[0]}")
    u.kind, u.hyper, u.state[0], u.state[1], u.state[2] = kind, hyper, state0, state1, state2
    with nogil:
        if with_squares:
            squares = _run_with_squares(&u, &param[0], &grad[0], param.shape[0], work)
        else:
            _run(&u, &param[0], &grad[0], param.shape[0], work)
    return squares if with_squares else None


def sum_of_squares(const floating[::1] x not None):
    """Sum of x**2 in double over a flat buffer (NaN or Inf propagate): the sum the updates take ``with_squares``, in
    the same blocks (cut by the buffer's size and the processor count alone, each summed on its own, their sums added
    in order: the same bits for any thread count)."""
    cdef Py_ssize_t n = x.shape[0]
    cdef double total
    if n == 0:
        return 0.0
    cdef Work work = UPDATE if square_blocks(n, _processors) <= _processors else SCAN
    with nogil:  # a NULL step only reads x
        total = _run_with_squares(NULL, <floating*>&x[0], NULL, n, work)
    return total


# ----------------------------------------------------------------------------------------- SGD
cdef void _sgd(floating* p, const floating* g, floating* b, Py_ssize_t n, const SGDHyper* h) noexcept nogil:
    cdef floating lr = <floating>h.lr, mu = <floating>h.momentum, wd = <floating>h.weight_decay
    cdef floating one_minus_damp = <floating>(1 - h.dampening)
    cdef Py_ssize_t i
    cdef floating gi
    # One loop per variant on purpose: a single loop with these (loop-invariant) tests inside measured 4x slower
    # for SGD and 7x for RMSProp, because gcc then neither unswitched nor vectorized it.
    if b == NULL:
        for i in range(n):
            gi = with_weight_decay(g[i], wd, p[i])
            p[i] = p[i] - lr * gi
    elif h.first_step and h.nesterov:
        for i in range(n):
            gi = with_weight_decay(g[i], wd, p[i])
            b[i] = gi
            p[i] = p[i] - lr * (gi + mu * gi)
    elif h.first_step:
        for i in range(n):
            gi = with_weight_decay(g[i], wd, p[i])
            b[i] = gi
            p[i] = p[i] - lr * gi
    elif h.nesterov:
        for i in range(n):
            gi = with_weight_decay(g[i], wd, p[i])
            b[i] = mu * b[i] + one_minus_damp * gi
            p[i] = p[i] - lr * (gi + mu * b[i])
    else:
        for i in range(n):
            gi = with_weight_decay(g[i], wd, p[i])
            b[i] = mu * b[i] + one_minus_damp * gi
            p[i] = p[i] - lr * b[i]


def sgd_step(floating[::1] param not None, const floating[::1] grad not None, floating[::1] momentum_buffer,
             bint with_squares, SGDHyper hyper):
    return _launch(SGD, &hyper, param, grad, _state(param, momentum_buffer), NULL, NULL, LIGHT_UPDATE, with_squares)


# ----------------------------------------------------------------------------------------- AdaGrad
cdef void _adagrad(floating* p, const floating* g, floating* s, Py_ssize_t n, const AdaGradHyper* h) noexcept nogil:
    cdef floating lr = <floating>h.lr, eps = <floating>h.eps, wd = <floating>h.weight_decay
    cdef Py_ssize_t i
    cdef floating gi, si
    for i in range(n):
        gi = with_weight_decay(g[i], wd, p[i])
        si = s[i] + gi * gi
        s[i] = si
        p[i] = p[i] - lr * gi / (fsqrt(si) + eps)


def adagrad_step(floating[::1] param not None, const floating[::1] grad not None, floating[::1] sum_squares not None,
                 bint with_squares, AdaGradHyper hyper):
    return _launch(ADAGRAD, &hyper, param, grad, _state(param, sum_squares), NULL, NULL, UPDATE, with_squares)


# ----------------------------------------------------------------------------------------- RMSProp
cdef void _rmsprop(floating* p, const floating* g, floating* v, floating* a, floating* b, Py_ssize_t n,
                   const RMSPropHyper* h) noexcept nogil:
    cdef floating lr = <floating>h.lr, alpha = <floating>h.alpha, one_minus_alpha = <floating>(1 - h.alpha)
    cdef floating eps = <floating>h.eps, mu = <floating>h.momentum, wd = <floating>h.weight_decay
    cdef Py_ssize_t i
    cdef floating gi, vi, ai, bi
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


def rmsprop_step(floating[::1] param not None, const floating[::1] grad not None, floating[::1] square_avg not None,
                 floating[::1] grad_avg, floating[::1] momentum_buffer, bint with_squares, RMSPropHyper hyper):
    return _launch(RMSPROP, &hyper, param, grad, _state(param, square_avg), _state(param, grad_avg),
                   _state(param, momentum_buffer), UPDATE, with_squares)


# ----------------------------------------------------------------------------------------- the Adam family
cdef enum:
    # The coefficients of the part Adam, NAdam and RAdam share, in a small array of the parameters' type
    SHRINK, DECAY, BETA1, ONE_MINUS_BETA1, BETA2, ONE_MINUS_BETA2, N_MOMENT_COEFFICIENTS


cdef inline void _moment_coefficients(floating* c, double lr, double weight_decay, bint decoupled, double beta1,
                                      double beta2) noexcept nogil:
    # Decoupled weight decay (AdamW's): shrink = 1 - lr wd and no wd on the gradient; else shrink = 1 (a
    # multiplication by 1 is exact) and g + wd p, so that one loop serves both variants.
    c[SHRINK] = <floating>(1 - lr * weight_decay) if decoupled else 1
    c[DECAY] = 0 if decoupled else <floating>weight_decay
    c[BETA1], c[ONE_MINUS_BETA1] = <floating>beta1, <floating>(1 - beta1)
    c[BETA2], c[ONE_MINUS_BETA2] = <floating>beta2, <floating>(1 - beta2)


cdef inline floating _moments(Py_ssize_t i, floating* p, const floating* g, floating* m, floating* v,
                              const floating* c, floating* gi) noexcept nogil:
    # The shared part for element i: the decayed parameter (returned), the gradient the update uses (gi), and the
    # moments m = b1 m + (1 - b1) g, v = b2 v + (1 - b2) g**2, written back.
    cdef floating pi = p[i] * c[SHRINK]
    gi[0] = with_weight_decay(g[i], c[DECAY], pi)
    m[i] = c[BETA1] * m[i] + c[ONE_MINUS_BETA1] * gi[0]
    v[i] = c[BETA2] * v[i] + c[ONE_MINUS_BETA2] * gi[0] * gi[0]
    return pi


# ----------------------------------------------------------------------------------------- Adam
cdef void _adam(floating* p, const floating* g, floating* m, floating* v, floating* vmax, Py_ssize_t n,
                const AdamHyper* h) noexcept nogil:
    # inv_sqrt_bc2 = 1 / sqrt(bc2), made once in double: a multiplication where PyTorch divides (the same math,
    # rounded once differently, as in the reference). The loop is bound by the divider, which also takes the square
    # roots: one division less per element made a 109k-element step 23 instead of 29.5 us (2-core AMD EPYC, AVX2).
    cdef floating c[N_MOMENT_COEFFICIENTS]
    cdef floating inv_sqrt_bc2 = <floating>(1 / sqrt(h.bias_correction2)), eps = <floating>h.eps
    cdef floating step_size = <floating>(h.lr / h.bias_correction1)
    cdef Py_ssize_t i
    cdef floating pi, gi, vi
    cdef bint amsgrad = vmax != NULL  # loop-invariant: gcc unswitches the loop on it
    _moment_coefficients(c, h.lr, h.weight_decay, h.decoupled_weight_decay, h.beta1, h.beta2)
    for i in range(n):
        pi = _moments(i, p, g, m, v, c, &gi)
        vi = v[i]
        if amsgrad:
            if not (vi > vmax[i] or vi != vi):  # the running maximum; a NaN v propagates, as NumPy's does
                vi = vmax[i]
            vmax[i] = vi
        p[i] = pi - step_size * m[i] / (fsqrt(vi) * inv_sqrt_bc2 + eps)


def adam_step(floating[::1] param not None, const floating[::1] grad not None, floating[::1] exp_avg not None,
              floating[::1] exp_avg_sq not None, floating[::1] max_exp_avg_sq, bint with_squares, AdamHyper hyper):
    return _launch(ADAM, &hyper, param, grad, _state(param, exp_avg), _state(param, exp_avg_sq),
                   _state(param, max_exp_avg_sq), UPDATE, with_squares)


# ----------------------------------------------------------------------------------------- NAdam
cdef void _nadam(floating* p, const floating* g, floating* m, floating* v, Py_ssize_t n,
                 const NAdamHyper* h) noexcept nogil:
    # The two parts of the step follow PyTorch's two addcdiv calls.
    cdef floating c[N_MOMENT_COEFFICIENTS]
    cdef floating bc2 = <floating>h.bias_correction2, eps = <floating>h.eps
    cdef floating grad_step = <floating>h.grad_step, momentum_step = <floating>h.momentum_step
    cdef Py_ssize_t i
    cdef floating pi, gi, d
    _moment_coefficients(c, h.lr, h.weight_decay, h.decoupled_weight_decay, h.beta1, h.beta2)
    for i in range(n):
        pi = _moments(i, p, g, m, v, c, &gi)
        d = fsqrt(v[i] / bc2) + eps
        pi = pi - grad_step * (gi / d)
        p[i] = pi - momentum_step * (m[i] / d)


def nadam_step(floating[::1] param not None, const floating[::1] grad not None, floating[::1] exp_avg not None,
               floating[::1] exp_avg_sq not None, bint with_squares, NAdamHyper hyper):
    return _launch(NADAM, &hyper, param, grad, _state(param, exp_avg), _state(param, exp_avg_sq), NULL, UPDATE,
                   with_squares)


# ----------------------------------------------------------------------------------------- Adamax
cdef void _adamax(floating* p, const floating* g, floating* m, floating* u, Py_ssize_t n,
                  const AdamaxHyper* h) noexcept nogil:
    cdef floating wd = <floating>h.weight_decay, eps = <floating>h.eps
    cdef floating beta1 = <floating>h.beta1, one_minus_beta1 = <floating>(1 - h.beta1), beta2 = <floating>h.beta2
    cdef floating step_size = <floating>(h.lr / h.bias_correction1)
    cdef Py_ssize_t i
    cdef floating gi, mi, decayed, fresh, ui
    for i in range(n):
        gi = with_weight_decay(g[i], wd, p[i])
        mi = beta1 * m[i] + one_minus_beta1 * gi
        decayed = beta2 * u[i]
        fresh = fabs_typed(gi) + eps
        ui = decayed if (decayed > fresh or decayed != decayed) else fresh  # NumPy's maximum: NaN propagates
        m[i] = mi
        u[i] = ui
        p[i] = p[i] - step_size * (mi / ui)


def adamax_step(floating[::1] param not None, const floating[::1] grad not None, floating[::1] exp_avg not None,
                floating[::1] exp_inf not None, bint with_squares, AdamaxHyper hyper):
    return _launch(ADAMAX, &hyper, param, grad, _state(param, exp_avg), _state(param, exp_inf), NULL, UPDATE,
                   with_squares)


# ----------------------------------------------------------------------------------------- RAdam
cdef void _radam(floating* p, const floating* g, floating* m, floating* v, Py_ssize_t n,
                 const RAdamHyper* h) noexcept nogil:
    # Rectified steps scale Adam's by r_t; the first steps (rho_t <= 5) are plain momentum steps.
    cdef floating c[N_MOMENT_COEFFICIENTS]
    cdef floating lr = <floating>h.lr, eps = <floating>h.eps, bc1 = <floating>h.bias_correction1
    cdef floating sqrt_bc2 = <floating>sqrt(h.bias_correction2), rect = <floating>h.rectification
    cdef Py_ssize_t i
    cdef floating pi, gi
    _moment_coefficients(c, h.lr, h.weight_decay, h.decoupled_weight_decay, h.beta1, h.beta2)
    if h.rectified:
        for i in range(n):
            pi = _moments(i, p, g, m, v, c, &gi)
            p[i] = pi - m[i] / bc1 * lr * (sqrt_bc2 / (fsqrt(v[i]) + eps)) * rect
    else:
        for i in range(n):
            pi = _moments(i, p, g, m, v, c, &gi)
            p[i] = pi - m[i] / bc1 * lr


def radam_step(floating[::1] param not None, const floating[::1] grad not None, floating[::1] exp_avg not None,
               floating[::1] exp_avg_sq not None, bint with_squares, RAdamHyper hyper):
    return _launch(RADAM, &hyper, param, grad, _state(param, exp_avg), _state(param, exp_avg_sq), NULL, UPDATE,
                   with_squares)


# ----------------------------------------------------------------------------------------- Lion
cdef inline floating _sign(floating x) noexcept nogil:
    # NumPy's sign: -1, 0 or 1, and NaN for NaN
    cdef floating one = 1, zero = 0
    return x if x != x else (one if x > 0 else (-one if x < 0 else zero))


cdef void _lion(floating* p, const floating* g, floating* m, Py_ssize_t n, const LionHyper* h) noexcept nogil:
    cdef floating lr = <floating>h.lr, wd = <floating>h.weight_decay
    cdef floating beta1 = <floating>h.beta1, one_minus_beta1 = <floating>(1 - h.beta1)
    cdef floating beta2 = <floating>h.beta2, one_minus_beta2 = <floating>(1 - h.beta2)
    cdef Py_ssize_t i
    cdef floating pi, gi, mi, direction
    for i in range(n):
        pi = p[i]
        gi = g[i]
        mi = m[i]
        direction = with_weight_decay(_sign(beta1 * mi + one_minus_beta1 * gi), wd, pi)
        p[i] = pi - lr * direction
        m[i] = beta2 * mi + one_minus_beta2 * gi


def lion_step(floating[::1] param not None, const floating[::1] grad not None, floating[::1] exp_avg not None,
              bint with_squares, LionHyper hyper):
    return _launch(LION, &hyper, param, grad, _state(param, exp_avg), NULL, NULL, LIGHT_UPDATE, with_squares)


# ----------------------------------------------------------------------------------------- the bandwidth probe
cdef void _stream(floating* p, const floating* g, floating* a, floating* b, Py_ssize_t n) noexcept nogil:
    # Adam's memory traffic (reads p, g, m, v; writes p, m, v) with one addition per written element, no divider.
    cdef Py_ssize_t i
    cdef floating gi
    for i in range(n):
        gi = g[i]
        a[i] = a[i] + gi
        b[i] = b[i] + gi
        p[i] = p[i] + gi


def stream_probe(floating[::1] param, const floating[::1] grad, floating[::1] a, floating[::1] b, int threads):
    """``a += grad; b += grad; param += grad`` in one pass: an Adam step's memory traffic (4 reads and 3 writes
    per element) without its arithmetic, cut into ``threads`` contiguous chunks exactly as the optimizer kernels
    cut theirs (``threads`` is not capped by the thread policy: ``fastopt bench`` tries each count up to the
    processors). The four buffers have one length. Its time is a lower bound for an Adam step over the same
    buffers on as many threads; ``fastopt bench`` derives its memory bandwidth from it."""
    cdef Step u
    cdef Py_ssize_t n = param.shape[0]
    if n == 0 or grad.shape[0] != n or a.shape[0] != n or b.shape[0] != n:
        raise ValueError("stream_probe needs four non-empty buffers of one length")
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    u.kind, u.hyper, u.state[0], u.state[1], u.state[2] = STREAM, NULL, &a[0], &b[0], NULL
    with nogil:
        _run_chunks(&u, &param[0], &grad[0], n, threads)
