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
    static double fo_now(void) { return omp_get_wtime(); }
    #else
    #define FO_HAVE_OPENMP 0
    static int fo_omp_max_threads(void) { return 1; }
    static int fo_omp_num_procs(void) { return 1; }
    static double fo_now(void) { return 0.0; }
    #endif
    /* Stall guard: threads only while they pay. A parallel region ends in a barrier, and libgomp's threads
       keep spinning for milliseconds after it; when another process keeps a core busy, the calling thread
       waits at barriers for the other thread's time slice, and the spinning thread takes CPU time from it
       (a batch-32 training step measured 3-20x slower than on one thread, calls stalled for up to 36 ms).
       Two signs of it count as a stall: a region in which the calling thread, after its own share, waited
       at the barrier longer than FO_STALL_SECONDS and than its share took (uneven shares make shorter
       waits; a time slice is milliseconds); and, checked every FO_PROBE_SECONDS, a calling thread that got
       less than FO_MIN_CPU_SHARE of the wall time since the last check (a longer gap between checks is
       idleness, not counted). After a stall the kernels run serially (the same blocks, hence the same bits)
       for a spell, then try threads again: the spell doubles, up to FO_LONGEST_SPELL, when the stall comes
       within FO_SPELL_MEMORY of the end of the previous spell (the other process is still there), and starts
       again at FO_FIRST_SPELL otherwise (a stray interruption, as an idle machine has a few a second). One state
       per module, shared by the calling threads without locks: it only chooses between two equal ways of
       computing. */
    #define FO_STALL_SECONDS 1e-3
    #define FO_PROBE_SECONDS 0.05
    #define FO_MIN_CPU_SHARE 0.8
    #define FO_FIRST_SPELL 0.02
    #define FO_LONGEST_SPELL 2.0
    #define FO_SPELL_MEMORY 0.1
    #if FO_HAVE_OPENMP && (defined(__linux__) || defined(__APPLE__))
    #include <time.h>
    #define FO_PROBES_CPU_SHARE 1
    static double fo_thread_cpu_seconds(void) {
        struct timespec ts;
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
        return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
    }
    #else
    #define FO_PROBES_CPU_SHARE 0
    static double fo_thread_cpu_seconds(void) { return 0.0; }
    #endif
    static double fo_serial_until = -1e30, fo_spell = FO_FIRST_SPELL;
    static double fo_probe_wall = 0.0, fo_probe_cpu = 0.0;
    static long fo_spells = 0, fo_barrier_stalls = 0, fo_share_stalls = 0;
    static void fo_stall(double now) {
        fo_spell = now - fo_serial_until >= FO_SPELL_MEMORY ? FO_FIRST_SPELL
                 : fo_spell * 2 < FO_LONGEST_SPELL ? fo_spell * 2 : FO_LONGEST_SPELL;
        fo_serial_until = now + fo_spell;
        fo_spells++;
    }
    static int fo_parallel_ok(void) {
        double now = fo_now(), cpu, wall;
        if (now < fo_serial_until)
            return 0;
        if (FO_PROBES_CPU_SHARE && now - fo_probe_wall >= FO_PROBE_SECONDS) {
            cpu = fo_thread_cpu_seconds();
            wall = now - fo_probe_wall;
            fo_probe_wall = now;
            if (wall < 2 * FO_PROBE_SECONDS && cpu - fo_probe_cpu < FO_MIN_CPU_SHARE * wall) {
                fo_probe_cpu = cpu;
                fo_share_stalls++;
                fo_stall(now);
                return 0;
            }
            fo_probe_cpu = cpu;
        }
        return 1;
    }
    static void fo_parallel_report(double worked, double waited) {
        if (waited > FO_STALL_SECONDS && waited > worked) {
            fo_barrier_stalls++;
            fo_stall(fo_now());
        }
    }
    static long fo_serial_spells(void) { return fo_spells; }
    static long fo_stalls_at_barriers(void) { return fo_barrier_stalls; }
    static long fo_stalls_by_cpu_share(void) { return fo_share_stalls; }
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
    /* exp(d) for d <= 0 (a max-shifted logit) or NaN, in float32, branch-free so that a loop of it vectorizes
       (libm's expf is a call per element). d = k ln2 + r with k = round(d / ln2), |r| <= ln2 / 2, split
       Cody-Waite style (k * FO_LN2_HI is exact for |k| < 2**9); exp(r) = 1 + r + r**2 q(r), q a degree-4
       polynomial fitted for this file (least squares on the relative error, reweighted towards minimax:
       3e-9 relative in double); the result is scaled by 2**k as two powers of two, each a normal float,
       so that results down to the subnormal range round once. Measured within 0.97 ulp of the double
       exp rounded to float over 2.2e7 arguments in [-104, 0] (numpy's float32 exp: 2.5 ulp); exp(d) is
       0 below -104 (under half the smallest subnormal), and NaN stays NaN. */
    #include <stdint.h>
    #include <string.h>
    #define FO_LOG2E 1.44269504088896341f
    #define FO_LN2_HI 0.693145751953125f
    #define FO_LN2_LO 1.42860682030941723e-6f
    #define FO_ROUND_MAGIC 12582912.0f  /* 1.5 * 2**23: adding and subtracting it rounds to an integer */
    static inline float fo_pow2f(int32_t k) {  /* 2**k for -126 <= k <= 127 */
        uint32_t bits = (uint32_t)(k + 127) << 23;
        float result;
        memcpy(&result, &bits, sizeof result);
        return result;
    }
    static inline float fo_expf_nonpositive(float d) {
        /* clamped = max(d, -104), NaN kept: on the bits, because gcc does not vectorize a float select */
        uint32_t bits, magnitude, limited;
        float clamped;
        memcpy(&bits, &d, sizeof bits);
        magnitude = bits & 0x7FFFFFFFu;
        limited = magnitude < 0x42D00000u ? magnitude : 0x42D00000u;  /* 104.0f */
        bits = (bits & 0x80000000u) | (magnitude > 0x7F800000u ? magnitude : limited);
        memcpy(&clamped, &bits, sizeof clamped);
        float shifted = clamped * FO_LOG2E + FO_ROUND_MAGIC;
        float k = shifted - FO_ROUND_MAGIC;
        float r = (clamped - k * FO_LN2_HI) - k * FO_LN2_LO;
        float q = 1.3814596459269524e-3f;
        int32_t shifted_bits, exponent, half;
        q = q * r + 8.368711918592453e-3f;
        q = q * r + 4.166838899254799e-2f;
        q = q * r + 1.666652113199234e-1f;
        q = q * r + 4.999999403953552e-1f;
        /* k as an integer, from the low bits of shifted's mantissa (no float-to-int conversion, which NaN
           would make undefined; for NaN the bits are garbage and the result NaN all the same) */
        memcpy(&shifted_bits, &shifted, sizeof shifted_bits);
        exponent = shifted_bits - 0x4B400000;
        half = exponent / 2;
        return ((r * r) * q + r + 1.0f) * fo_pow2f(half) * fo_pow2f(exponent - half);
    }
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
    double fo_now() noexcept nogil
    int fo_parallel_ok() noexcept nogil
    void fo_parallel_report(double worked, double waited) noexcept nogil
    long fo_serial_spells() noexcept nogil
    long fo_stalls_at_barriers() noexcept nogil
    long fo_stalls_by_cpu_share() noexcept nogil
    const int FO_FLUSHES_SUBNORMALS
    unsigned int fo_flush_subnormals_begin() noexcept nogil
    void fo_flush_subnormals_end(unsigned int saved) noexcept nogil
    float fo_expf_nonpositive(float d) noexcept nogil


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


cdef inline floating fexp_nonpositive(floating x) noexcept nogil:
    # exp(x) for x <= 0 or NaN: float32 by the vectorizable fo_expf_nonpositive above, float64 by libm's exp.
    if floating is float:
        return fo_expf_nonpositive(x)
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
