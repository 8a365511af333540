# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Layer and loss kernels: the parts of a dense layer around its GEMMs, activations, softmax, losses.

The GEMMs themselves go to NumPy's BLAS (``numpy.matmul`` measured fastest at the batch sizes used;
see ``fastopt/cython_backend.py``); these kernels are the single passes over the GEMM output:

- ``dense_epilogue``: ``out = f(out + bias)`` (bias add and activation in one pass);
- ``dense_backward_prologue``: ``grad_out *= f'(out)`` and ``grad_bias = grad_out.sum(0)`` in one
  pass, rows in order, so the column sums are deterministic and equal NumPy's (row after row).

Each follows the NumPy reference operation for operation. Activation codes: 0 identity, 1 relu,
2 sigmoid, 3 tanh. Inputs are ``const`` memoryviews (read-only arrays are accepted); the loops run
over raw pointers so gcc can vectorize them.
"""

from cython cimport floating
from libc.math cimport log
from libc.stdint cimport int64_t
from libc.string cimport memcpy

from fastopt._kernels._common cimport FO_COMPILE_ARGS, FO_HAVE_OPENMP, FO_ISA, fexp, fsigmoid, ftanh

def build_info():
    """Flags this module was compiled with."""
    return {"openmp": bool(FO_HAVE_OPENMP), "isa": FO_ISA.decode(), "compile_args": FO_COMPILE_ARGS.decode().split()}


# ------------------------------------------------------------------------------- pointer loops
cdef inline void _act_forward(int act, const floating* x, floating* out, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating z, zero = 0
    if act == 1:
        for i in range(n):
            z = x[i]
            out[i] = zero if z < 0 else z
    elif act == 2:
        for i in range(n):
            out[i] = fsigmoid(x[i])
    elif act == 3:
        for i in range(n):
            out[i] = ftanh(x[i])
    else:
        for i in range(n):
            out[i] = x[i]


cdef inline void _bias_act(int act, floating* out, const floating* bias, Py_ssize_t n) noexcept nogil:
    # out = f(out + bias) for one row
    cdef Py_ssize_t j
    cdef floating z, zero = 0
    if act == 1:
        for j in range(n):
            z = out[j] + bias[j]
            out[j] = zero if z < 0 else z
    elif act == 2:
        for j in range(n):
            out[j] = fsigmoid(out[j] + bias[j])
    elif act == 3:
        for j in range(n):
            out[j] = ftanh(out[j] + bias[j])
    else:
        for j in range(n):
            out[j] = out[j] + bias[j]


cdef inline void _act_backward(int act, const floating* out, const floating* grad_out, floating* grad_x,
                               Py_ssize_t n) noexcept nogil:
    # grad_x = grad_out * f'(out); grad_x may be grad_out itself (in-place use by the dense backward).
    cdef Py_ssize_t i
    cdef floating y, one = 1, zero = 0
    if act == 1:
        for i in range(n):
            grad_x[i] = grad_out[i] if out[i] > 0 else zero
    elif act == 2:
        for i in range(n):
            y = out[i]
            grad_x[i] = grad_out[i] * (y * (one - y))
    elif act == 3:
        for i in range(n):
            y = out[i]
            grad_x[i] = grad_out[i] * (one - y * y)
    elif grad_x != grad_out:
        for i in range(n):
            grad_x[i] = grad_out[i]


cdef inline void _add_row(floating* acc, const floating* row, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t j
    for j in range(n):
        acc[j] = acc[j] + row[j]


# ------------------------------------------------------------------------------- dense layer
def dense_epilogue(floating[:, ::1] out, const floating[::1] bias, int act):
    """``out = f(out + bias)`` row by row, in place (out is the GEMM result ``x @ weight``)."""
    cdef Py_ssize_t rows = out.shape[0], cols = out.shape[1], i
    if rows == 0 or cols == 0:
        return
    cdef floating* o = &out[0, 0]
    cdef const floating* b = &bias[0]
    with nogil:
        for i in range(rows):
            _bias_act(act, o + i * cols, b, cols)


def dense_backward_prologue(floating[:, ::1] grad_out, const floating[:, ::1] out, floating[::1] grad_bias, int act):
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
            _act_backward(act, y + i * cols, d + i * cols, d + i * cols, cols)
            if i == 0:
                memcpy(gb, d, cols * sizeof(floating))
            else:
                _add_row(gb, d + i * cols, cols)


# ------------------------------------------------------------------------------- activations
def activation_forward(int act, const floating[::1] x, floating[::1] out):
    """``out = f(x)`` elementwise over flat buffers."""
    cdef Py_ssize_t n = x.shape[0]
    if n == 0:
        return
    cdef const floating* xp = &x[0]
    cdef floating* op = &out[0]
    with nogil:
        _act_forward(act, xp, op, n)


def activation_backward(int act, const floating[::1] out, const floating[::1] grad_out, floating[::1] grad_x):
    """``grad_x = grad_out * f'(out)`` elementwise over flat buffers."""
    cdef Py_ssize_t n = out.shape[0]
    if n == 0:
        return
    cdef const floating* yp = &out[0]
    cdef const floating* gp = &grad_out[0]
    cdef floating* dp = &grad_x[0]
    with nogil:
        _act_backward(act, yp, gp, dp, n)


# ------------------------------------------------------------------------------- softmax
cdef inline floating _row_max(const floating* x, Py_ssize_t n) noexcept nogil:
    cdef floating m = x[0]
    cdef Py_ssize_t j
    for j in range(1, n):
        if x[j] > m or x[j] != x[j]:
            m = x[j]
            if m != m:
                break
    return m


cdef inline double _exp_shifted(const floating* x, floating* e, Py_ssize_t n, floating m) noexcept nogil:
    # e = exp(x - m); returns the sum of e accumulated in double
    cdef Py_ssize_t j
    cdef double s = 0
    cdef floating v
    for j in range(n):
        v = fexp(x[j] - m)
        e[j] = v
        s += v
    return s


def softmax_forward(const floating[:, ::1] x, floating[:, ::1] out):
    """``out[i] = exp(x[i] - max x[i]) / sum exp(x[i] - max x[i])`` row by row."""
    cdef Py_ssize_t rows = x.shape[0], cols = x.shape[1], i, j
    if rows == 0 or cols == 0:
        return
    cdef const floating* xp = &x[0, 0]
    cdef floating* op = &out[0, 0]
    cdef floating* o
    cdef floating s
    with nogil:
        for i in range(rows):
            o = op + i * cols
            s = <floating>_exp_shifted(xp + i * cols, o, cols, _row_max(xp + i * cols, cols))
            for j in range(cols):
                o[j] = o[j] / s


def softmax_backward(const floating[:, ::1] out, const floating[:, ::1] grad_out, floating[:, ::1] grad_x):
    """``grad_x[i] = out[i] * (grad_out[i] - <grad_out[i], out[i]>)`` row by row."""
    cdef Py_ssize_t rows = out.shape[0], cols = out.shape[1], i, j
    if rows == 0 or cols == 0:
        return
    cdef const floating* yp = &out[0, 0]
    cdef const floating* gp = &grad_out[0, 0]
    cdef floating* dp = &grad_x[0, 0]
    cdef const floating* y
    cdef const floating* g
    cdef floating dot, zero = 0
    with nogil:
        for i in range(rows):
            y = yp + i * cols
            g = gp + i * cols
            dot = zero
            for j in range(cols):
                dot = dot + g[j] * y[j]
            for j in range(cols):
                dp[i * cols + j] = y[j] * (g[j] - dot)


# ------------------------------------------------------------------------------- losses
def softmax_cross_entropy(const floating[:, ::1] logits, const int64_t[::1] labels, floating[:, ::1] grad_logits):
    """Mean of ``logsumexp(logits[i]) - logits[i, labels[i]]`` (stable: max-shifted, summed in double);
    if ``grad_logits`` is not None it receives ``(softmax(logits) - onehot(labels)) / batch``, same pass."""
    cdef Py_ssize_t rows = logits.shape[0], cols = logits.shape[1], i, j
    cdef const floating* xp = &logits[0, 0]
    cdef const int64_t* lp = &labels[0]
    cdef floating* gp = NULL if grad_logits is None else &grad_logits[0, 0]
    cdef const floating* x
    cdef floating* gr
    cdef floating m, s_f, n_f = <floating>rows
    cdef double s, total = 0
    cdef Py_ssize_t label
    with nogil:
        for i in range(rows):
            x = xp + i * cols
            m = _row_max(x, cols)
            label = lp[i]
            if gp == NULL:
                s = 0
                for j in range(cols):
                    s += fexp(x[j] - m)
            else:
                gr = gp + i * cols
                s = _exp_shifted(x, gr, cols, m)
                s_f = <floating>s
                for j in range(cols):
                    gr[j] = gr[j] / s_f
                gr[label] = gr[label] - <floating>1
                for j in range(cols):
                    gr[j] = gr[j] / n_f
            total += (m + log(s)) - x[label]
    return total / rows


def mse(const floating[::1] pred, const floating[::1] target, floating[::1] grad_pred):
    """Mean of ``(pred - target)**2`` over flat buffers, summed in double; ``grad_pred = 2 (pred - target) / n``."""
    cdef Py_ssize_t n = pred.shape[0], i
    cdef const floating* pp = &pred[0]
    cdef const floating* tp = &target[0]
    cdef floating* gp = NULL if grad_pred is None else &grad_pred[0]
    cdef floating d, n_f = <floating>n
    cdef double dd, total = 0
    with nogil:
        for i in range(n):
            d = pp[i] - tp[i]
            dd = d
            total += dd * dd
        if gp != NULL:
            for i in range(n):
                gp[i] = <floating>2 * (pp[i] - tp[i]) / n_f
    return total / n


def count_correct(const floating[:, ::1] scores, const int64_t[::1] labels):
    """Rows whose first maximal score (NumPy's argmax: first max wins, NaN counts as maximal) is the label."""
    cdef Py_ssize_t rows = scores.shape[0], cols = scores.shape[1], i, j, best, correct = 0
    if rows == 0 or cols == 0:
        return 0
    cdef const floating* sp = &scores[0, 0]
    cdef const int64_t* lp = &labels[0]
    cdef const floating* x
    cdef floating m
    with nogil:
        for i in range(rows):
            x = sp + i * cols
            best = 0
            m = x[0]
            if m == m:
                for j in range(1, cols):
                    if x[j] > m or x[j] != x[j]:
                        m = x[j]
                        best = j
                        if m != m:
                            break
            correct += best == lp[i]
    return correct
