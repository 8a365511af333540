# cython: language_level=3
"""The thread policy of the compiled kernels (``_threads.pyx``): what the kernel modules cimport."""

cpdef enum Work:
    # The kinds of parallel work; each has its own threshold (see _threads.pyx).
    UPDATE = 0        # an optimizer update with divisions or square roots, sized in elements
    LIGHT_UPDATE = 1  # a streaming optimizer update (SGD, Lion), sized in elements
    GEMM = 2          # a dense layer's products, sized in flops
    GATHER = 3        # copying a mini-batch's rows, sized in elements
    SCAN = 4          # a read-only pass over a buffer (all_finite), sized in elements

cdef int threads_for(Work kind, double work, Py_ssize_t pieces) noexcept nogil
cdef double clock() noexcept nogil
cdef void report_region(double started, double own_done) noexcept nogil
