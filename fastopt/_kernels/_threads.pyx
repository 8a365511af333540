# cython: language_level=3, cdivision=True
"""The thread policy of the compiled kernels: thread counts, every size threshold, training mode, fork
safety and the stall guard, in one module. One function decides how many threads a call uses:
``threads_for(kind, work, pieces)``; a kernel splits its work into that many pieces (never a number that
changes its results: the pieces are fixed by the shapes, see ``_nn.pyx`` and ``_optim.pyx``).

Thresholds, measured on a 2-core AMD EPYC VM (AVX2), float32: two threads pay for an optimizer update from
16-32k elements (square roots and divisions: AdaGrad, RMSProp, Adam, ...) and 64-128k for a streaming one (SGD,
Lion). A parallel region ends in a barrier: when the other core is busy (another process, BLAS threads still
spinning after a GEMM) a step waits there for a scheduler time slice, measured at 1-20 ms instead of 50 us for a
110k-parameter Adam step; the stall guard below then runs the kernels serially for a while. The threshold is
2**15 elements, and four times that for streaming updates (on a 2-core AMD EPYC Zen 4 VM: a 1e5-element Adam
step on raw arrays took 25.7 instead of 40.9 us, against PyTorch's fused 61.5 us; a batch-32 PyTorch training step
of the 784-128-64-10 network with ``fastopt.torch.Adam`` 580 instead of 635 us, PyTorch's pool spinning on the
other core after each backward pass notwithstanding). ``set_update_threshold`` sets another; while models train
with the direct GEMM path (BLAS's own threads asleep), ``begin_training`` lowers a higher one to 2**15; with a
multi-threaded BLAS (the ``numpy.matmul`` path) it makes the updates serial, so that two thread pools do not spin
against each other. A dense layer's products run on
several threads from one block's worth of flops (2**18; starting and joining a region costs about 2 us), a row
gather from 2**14 elements and a scan from 2**18.

Stall guard: threads only while they pay. libgomp's threads keep spinning for milliseconds after a region; when
another process keeps a core busy, the calling thread waits at barriers for the other thread's time slice, and
the spinning thread takes CPU time from it (a batch-32 training step measured 3-20x slower than on one thread,
calls stalled for up to 36 ms). Two signs of it count as a stall: a region in which the calling thread, after its
own share, waited at the barrier longer than STALL_SECONDS and than its share took (uneven shares make shorter
waits; a time slice is milliseconds), unless the region started more than WAKE_GAP_SECONDS after the previous one
ended: the other threads had stopped spinning and slept, and the wait was their wake-up (on a 2-core AMD EPYC Zen 4
VM, 5.8 ms for the first region after 0.25 s idle, 0.15 ms after 10 ms, none after 3 ms; counted as a stall, it
made the first steps of every fit serial for a spell); and, checked every PROBE_SECONDS, a calling thread that got less than
MIN_CPU_SHARE of the wall time since the last check (a longer gap between checks is idleness, not counted).
After a stall the kernels run serially (the same pieces, hence the same bits) for a spell, then try threads
again: the spell doubles, up to LONGEST_SPELL, when the stall comes within SPELL_MEMORY of the end of the
previous spell (the other process is still there), and starts again at FIRST_SPELL otherwise (a stray
interruption, as an idle machine has a few a second). ``FASTOPT_STALL_GUARD=0`` turns it off. The state is
shared by all calling threads without locks: it only chooses between two equal ways of computing.

Fork: libgomp's thread pool does not survive ``fork``; a forked child that entered a parallel region would hang.
A child therefore runs every kernel serially (``build_info()["forked"]``; ``fastopt.show_config()`` says so).
"""

import os

from fastopt._kernels._common cimport (
    FO_HAVE_OPENMP, FO_PROBES_CPU_SHARE, fo_omp_in_parallel, fo_omp_max_threads, fo_omp_num_procs,
    fo_thread_cpu_seconds, fo_wall_seconds,
)

cdef double STALL_SECONDS = 1e-3
cdef double PROBE_SECONDS = 0.05
cdef double MIN_CPU_SHARE = 0.8
cdef double FIRST_SPELL = 0.02
cdef double LONGEST_SPELL = 2.0
cdef double SPELL_MEMORY = 0.1
cdef double WAKE_GAP_SECONDS = 2e-3

cdef int MAX_THREADS_PER_PROCESSOR = 8
cdef double UPDATE_THRESHOLD = 32768
cdef double TRAINING_UPDATE_THRESHOLD = 32768
cdef double LIGHT_UPDATE_FACTOR = 4
cdef double GEMM_THRESHOLD = 262144
cdef double GATHER_THRESHOLD = 16384
cdef double SCAN_THRESHOLD = 262144

cdef int _num_threads = fo_omp_max_threads()
cdef double _update_threshold = UPDATE_THRESHOLD
cdef Py_ssize_t _trainings = 0  # fits in progress (changed with the GIL held)
cdef bint _training_serial_updates = False
cdef bint _training_serial = False  # a fit found its steps faster on one thread (set_training_serial)
cdef bint _forked = False

cdef bint _guard_on = True
cdef double _serial_until = -1e30, _spell = FIRST_SPELL, _probe_wall = 0.0, _probe_cpu = 0.0
cdef double _last_region_end = 1e300  # when the last reported region ended (none yet: no idle gap before the first)
cdef long _spells = 0, _barrier_stalls = 0, _share_stalls = 0
cdef bint _test_clock = False
cdef double _test_wall = 0.0, _test_cpu = 0.0


def _guard_from_environment():
    value = os.environ.get("FASTOPT_STALL_GUARD", "").strip().lower()
    if value not in ("", "1", "on", "0", "off"):
        raise ImportError(f"FASTOPT_STALL_GUARD must be 0/off or 1/on, got {value!r}")
    return value not in ("0", "off")


_guard_on = _guard_from_environment()


# ----------------------------------------------------------------------------------- the decision
cdef inline double _threshold(Work kind) noexcept nogil:
    cdef double update = _update_threshold
    if _trainings > 0 and not _training_serial_updates and update > TRAINING_UPDATE_THRESHOLD:
        update = TRAINING_UPDATE_THRESHOLD
    if kind == UPDATE:
        return update
    if kind == LIGHT_UPDATE:
        return update * LIGHT_UPDATE_FACTOR
    if kind == GEMM:
        return GEMM_THRESHOLD
    if kind == GATHER:
        return GATHER_THRESHOLD
    return SCAN_THRESHOLD


cdef int threads_for(Work kind, double work, Py_ssize_t pieces) noexcept nogil:
    """Threads for a call doing ``work`` (elements or flops, by kind) cut into ``pieces`` independent pieces:
    1 (run serially, no parallel region) below the kind's threshold, for updates while training beside a
    multi-threaded BLAS, while the fits in progress chose one thread (``set_training_serial``), in a forked child,
    during a spell of the stall guard, and inside a parallel region (a thread of ``_nn.StepPair`` running one of its
    steps); else min(threads, pieces)."""
    if not FO_HAVE_OPENMP or _forked or _num_threads <= 1 or pieces <= 1 or work < _threshold(kind):
        return 1
    if fo_omp_in_parallel():
        return 1
    if _trainings > 0 and _training_serial:
        return 1
    if _training_serial_updates and _trainings > 0 and (kind == UPDATE or kind == LIGHT_UPDATE):
        return 1
    if not _parallel_ok():
        return 1
    return <int>(pieces if pieces < _num_threads else _num_threads)


# ----------------------------------------------------------------------------------- the stall guard
cdef double clock() noexcept nogil:
    """Wall-clock seconds (an injected clock in tests)."""
    return _test_wall if _test_clock else fo_wall_seconds()


cdef inline double _cpu_clock() noexcept nogil:
    return _test_cpu if _test_clock else fo_thread_cpu_seconds()


cdef void _stall(double now) noexcept nogil:
    global _spell, _serial_until, _spells
    if now - _serial_until >= SPELL_MEMORY:
        _spell = FIRST_SPELL
    else:
        _spell = min(_spell * 2, LONGEST_SPELL)
    _serial_until = now + _spell
    _spells += 1


cdef bint _parallel_ok() noexcept nogil:
    global _probe_wall, _probe_cpu, _share_stalls
    cdef double now, cpu, wall
    if not _guard_on:
        return True
    now = clock()
    if now < _serial_until:
        return False
    if (FO_PROBES_CPU_SHARE or _test_clock) and now - _probe_wall >= PROBE_SECONDS:
        cpu = _cpu_clock()
        wall = now - _probe_wall
        _probe_wall = now
        if wall < 2 * PROBE_SECONDS and cpu - _probe_cpu < MIN_CPU_SHARE * wall:
            _probe_cpu = cpu
            _share_stalls += 1
            _stall(now)
            return False
        _probe_cpu = cpu
    return True


cdef void report_region(double started, double own_done) noexcept nogil:
    """Called after a parallel region: the calling thread started it at ``started`` and finished its own share at
    ``own_done``; a long wait at the barrier after that is a stall, unless the region came after an idle gap longer
    than WAKE_GAP_SECONDS (the other threads had stopped spinning and gone to sleep: the wait was their wake-up)."""
    global _barrier_stalls, _last_region_end
    cdef double now, waited, idle
    if not _guard_on:
        return
    now = clock()
    idle = started - _last_region_end
    _last_region_end = now
    waited = now - own_done
    if waited > STALL_SECONDS and waited > own_done - started and idle <= WAKE_GAP_SECONDS:
        _barrier_stalls += 1
        _stall(now)


# ----------------------------------------------------------------------------------- settings
def set_num_threads(int n):
    """Threads the parallel kernels may use (1 = serial), at most MAX_THREADS_PER_PROCESSOR per processor, or 64
    where that is fewer: libgomp starting 100,000 threads failed and the process crashed (5,000 did not finish in a
    minute on a 2-core VM)."""
    global _num_threads
    cdef int processors = max(1, fo_omp_num_procs())
    cdef int most = max(64, MAX_THREADS_PER_PROCESSOR * processors)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if n > most:
        raise ValueError(f"n must be at most {most} ({MAX_THREADS_PER_PROCESSOR} per processor of the {processors} "
                         f"here, or 64), got {n}")
    _num_threads = n


def set_update_threshold(Py_ssize_t n):
    """Smallest optimizer update (elements) split over threads outside training; streaming updates (SGD, Lion)
    use LIGHT_UPDATE_FACTOR times it."""
    global _update_threshold
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    _update_threshold = n


def begin_training(bint blas_multithreaded):
    """A fit starts (the GIL orders overlapping ones): optimizer updates split from TRAINING_UPDATE_THRESHOLD on,
    or run serially while BLAS's own threads share the cores (``blas_multithreaded``). The user's settings are
    not touched, so that a ``set_num_threads`` during a fit stays in force after it."""
    global _trainings, _training_serial_updates
    if _trainings == 0:
        _training_serial_updates = blas_multithreaded
    _trainings += 1


def end_training():
    global _trainings, _training_serial
    if _trainings > 0:
        _trainings -= 1
    if _trainings == 0:
        _training_serial = False


def set_training_serial(bint serial):
    """While models train, run every kernel on one thread (``serial``) or as the thresholds say: the choice a fit
    makes by timing its own steps both ways (``fastopt.cython_backend.StepThreads``). The blocks, hence the bits,
    are the same either way. Reset when the last fit ends."""
    global _training_serial
    _training_serial = serial


def _after_fork_in_child():
    global _forked
    _forked = True


os.register_at_fork(after_in_child=_after_fork_in_child)


def build_info():
    """The policy in force: threads, thresholds, training, fork and the stall guard's counts."""
    return {
        "openmp": bool(FO_HAVE_OPENMP),
        "num_threads": _num_threads if FO_HAVE_OPENMP and not _forked else 1,
        "forked": bool(_forked),
        "parallel_threshold": int(_update_threshold),
        "update_threshold": int(_threshold(UPDATE)),
        "light_update_threshold": int(_threshold(LIGHT_UPDATE)),
        "training_update_threshold": int(TRAINING_UPDATE_THRESHOLD),
        "gemm_threshold": int(GEMM_THRESHOLD),
        "gather_threshold": int(GATHER_THRESHOLD),
        "scan_threshold": int(SCAN_THRESHOLD),
        "trainings": _trainings,
        "training_serial_updates": bool(_trainings > 0 and _training_serial_updates),
        "training_serial": bool(_trainings > 0 and _training_serial),
        "stall_guard": bool(_guard_on),
        "serial_spells": _spells,
        "stalls_at_barriers": _barrier_stalls,
        "stalls_by_cpu_share": _share_stalls,
    }


# ----------------------------------------------------------------------------------- for tests
def use_test_clock(double wall, double cpu):
    """Replace the wall and thread-CPU clocks by these readings (tests drive the stall guard with them)."""
    global _test_clock, _test_wall, _test_cpu, _last_region_end
    if not _test_clock:
        _last_region_end = 1e300  # the real clock's last region tells nothing about the injected one
    _test_clock, _test_wall, _test_cpu = True, wall, cpu


def use_real_clock():
    """Back to the real clocks, with a fresh stall guard."""
    global _test_clock, _serial_until, _spell, _probe_wall, _probe_cpu, _last_region_end
    _test_clock = False
    _serial_until, _spell, _probe_wall, _probe_cpu, _last_region_end = -1e30, FIRST_SPELL, 0.0, 0.0, 1e300


def decide(Work kind, double work, Py_ssize_t pieces):
    """``threads_for`` from Python."""
    return threads_for(<Work>kind, work, pieces)


def report(double started, double own_done):
    """``report_region`` from Python."""
    report_region(started, own_done)


def set_stall_guard(bint on):
    """Turn the stall guard on or off (``FASTOPT_STALL_GUARD`` chooses at import)."""
    global _guard_on
    _guard_on = on
