#!/usr/bin/env bash
# Memory-error checks of the compiled kernels: AddressSanitizer and/or valgrind memcheck.
#
#   scripts/asan_kernel_tests.sh            # both
#   scripts/asan_kernel_tests.sh asan       # AddressSanitizer only
#   scripts/asan_kernel_tests.sh valgrind   # valgrind only
#
# asan:     copies the tree to a temporary folder, builds the extension there with
#           CFLAGS/LDFLAGS="-fsanitize=address -fno-omit-frame-pointer" (both the baseline and the AVX2
#           copies), then runs tests/test_cython_kernels.py and tests/test_fuzz.py against that build with
#           libasan preloaded into the (uninstrumented) Python, once with the AVX2 kernels and once with
#           FASTOPT_ISA=baseline. Any ASan report aborts the run (halt_on_error=1) and fails the script.
# valgrind: runs tests/test_cython_kernels.py on the in-place build under valgrind memcheck, with
#           PYTHONMALLOC=malloc so that every Python allocation is visible; fails on any memcheck error
#           whose stack involves fastopt's kernels (errors inside CPython/NumPy/OpenBLAS start-up are
#           counted and listed but not attributed to fastopt).
#
# Environment: KEEP=1 keeps the ASan tree; FUZZ_EXAMPLES=N sets FASTOPT_FUZZ_EXAMPLES for the fuzz tests
# under ASan (default: the file's own counts); VALGRIND_K="expr" selects tests for valgrind (default all).
set -u -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODE="${1:-both}"
PYTHON="${PYTHON:-python}"
# the interpreter itself, not a wrapper such as a pyenv shim (valgrind would trace the wrapper only)
PYTHON="$("$PYTHON" -c 'import sys; print(sys.executable)')"
STATUS=0

log() { printf '\n=== %s\n' "$*"; }

run_asan() {
    local libasan work start
    libasan="$(gcc -print-file-name=libasan.so)"
    if [ ! -e "$libasan" ]; then
        echo "libasan.so not found (gcc -print-file-name=libasan.so said: $libasan)"; return 1
    fi
    work="$(mktemp -d /tmp/fastopt-asan.XXXXXX)"
    log "ASan: building in $work (libasan: $libasan)"
    start=$SECONDS
    # a clean copy: sources, tests, data; no compiled modules, no build folder
    (cd "$ROOT" && tar --exclude=./.git --exclude=./build --exclude='*.so' --exclude='__pycache__' \
        --exclude=./.hypothesis -cf - .) | (cd "$work" && tar -xf -)
    # The flags go into CC as well as CFLAGS/LDFLAGS: setup.py test-links small probe programs to decide on
    # OpenMP and the AVX2 copies, and setuptools links executables with CC alone; with the flags only in
    # CFLAGS the probes fail to link (undefined __asan_* symbols) and the build silently drops OpenMP and AVX2.
    if ! (cd "$work" && CC="${CC:-gcc} -fsanitize=address -fno-omit-frame-pointer" \
            CFLAGS="-fsanitize=address -fno-omit-frame-pointer -g" LDFLAGS="-fsanitize=address" \
            "$PYTHON" setup.py build_ext --inplace >build.log 2>&1); then
        echo "ASan build failed; see $work/build.log"; tail -30 "$work/build.log"; return 1
    fi
    echo "built in $((SECONDS - start)) s: $(cd "$work" && ls fastopt/_kernels/*.so | xargs -n1 basename | tr '\n' ' ')"
    grep "fastopt setup:" "$work/build.log" || true
    local isa rc
    # Canary: ASan must catch a deliberate out-of-bounds read, made by calling a trusted kernel directly
    # (bypassing the checks) with a gradient shorter than the parameter. If it does not, ASan is not active.
    log "ASan canary: a deliberate heap overflow through the raw kernel must be reported"
    (cd "$work" && env LD_PRELOAD="$libasan" ASAN_OPTIONS="detect_leaks=0:halt_on_error=1" PYTHONPATH="$work" \
        FASTOPT_QUIET_FALLBACK=1 "$PYTHON" -c "
import numpy as np
from fastopt._kernels import _optim
p = np.zeros(4096); g = np.ones(64)
_optim.sgd_step(p, g, None, {'lr': 0.1, 'momentum': 0.0, 'dampening': 0.0, 'nesterov': False, 'weight_decay': 0.0, 'first_step': True})
print('canary NOT detected')" >canary.log 2>&1)
    if grep -q "ERROR: AddressSanitizer: heap-buffer-overflow" "$work/canary.log"; then
        echo "canary detected: $(grep -m1 'ERROR: AddressSanitizer' "$work/canary.log" | cut -c1-100)"
    else
        echo "ASan did NOT detect the canary overflow: the sanitizer is not active"; cat "$work/canary.log"; STATUS=1
    fi
    for isa in auto baseline; do
        log "ASan: tests/test_cython_kernels.py tests/test_fuzz.py tests/test_kernel_table.py tests/test_reliability.py (FASTOPT_ISA=$isa)"
        start=$SECONDS
        (cd "$work" && env LD_PRELOAD="$libasan" \
            ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=1:allocator_may_return_null=1" \
            PYTHONPATH="$work" FASTOPT_QUIET_FALLBACK=1 FASTOPT_ISA="$isa" \
            ${FUZZ_EXAMPLES:+FASTOPT_FUZZ_EXAMPLES=$FUZZ_EXAMPLES} \
            "$PYTHON" -c "import fastopt.cython_backend as c; print('kernels:', c.build_info()['modules'], c.build_info()['compile_args'])" \
            && env LD_PRELOAD="$libasan" \
            ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=1:allocator_may_return_null=1" \
            PYTHONPATH="$work" FASTOPT_QUIET_FALLBACK=1 FASTOPT_ISA="$isa" \
            ${FUZZ_EXAMPLES:+FASTOPT_FUZZ_EXAMPLES=$FUZZ_EXAMPLES} \
            "$PYTHON" -m pytest tests/test_cython_kernels.py tests/test_fuzz.py tests/test_kernel_table.py tests/test_reliability.py -q -p no:cacheprovider \
                -k "not test_regression_missing_state_buffer" -W ignore 2>&1 | tee "asan-$isa.log" | tail -5)
        rc=$?
        if grep -q "ERROR: AddressSanitizer" "$work/asan-$isa.log"; then
            echo "AddressSanitizer reported an error (see $work/asan-$isa.log):"
            grep -A30 "ERROR: AddressSanitizer" "$work/asan-$isa.log" | head -40
            rc=1
        fi
        echo "ASan ($isa): exit $rc in $((SECONDS - start)) s"
        [ "$rc" -eq 0 ] || STATUS=1
    done
    if [ "${KEEP:-0}" = 1 ]; then echo "kept $work"; else rm -rf "$work"; fi
}

run_valgrind() {
    if ! command -v valgrind >/dev/null; then echo "valgrind not installed"; return 1; fi
    local start logfile rc errors ours
    logfile="$(mktemp /tmp/fastopt-valgrind.XXXXXX.log)"
    log "valgrind memcheck: tests/test_cython_kernels.py (log: $logfile)"
    start=$SECONDS
    (cd "$ROOT" && env PYTHONMALLOC=malloc PYTHONPATH="$ROOT" FASTOPT_QUIET_FALLBACK=1 OMP_NUM_THREADS=2 \
        valgrind --tool=memcheck --log-file="$logfile" --num-callers=30 --error-limit=no \
        "$PYTHON" -m pytest tests/test_cython_kernels.py -q -p no:cacheprovider -W ignore \
            ${VALGRIND_K:+-k "$VALGRIND_K"} 2>&1 | tail -5)
    rc=$?
    errors="$(grep -E '== ERROR SUMMARY' "$logfile" | tail -1)"
    # memcheck errors whose stack mentions the kernels (module names _nn / _optim, or their C sources)
    ours="$(awk '/^==[0-9]+== [A-Z][a-z].*(Invalid|uninitialised|Conditional|Mismatched|overlap)/{block=$0; keep=1; next}
                 keep && /^==[0-9]+== *$/ {if (block ~ /(_nn|_optim)(_avx2)?(\.c|\.cpython|\.pyx)/) print block "\n"; keep=0; next}
                 keep {block = block "\n" $0}' "$logfile")"
    echo "valgrind: pytest exit $rc in $((SECONDS - start)) s; $errors"
    if [ -n "$ours" ]; then
        echo "memcheck errors in fastopt's kernels:"; echo "$ours" | head -80; STATUS=1
    else
        echo "no memcheck error involves fastopt's kernels"
        grep -E '^==[0-9]+== (Invalid|Conditional|Use of uninit|Syscall param)' "$logfile" | sort | uniq -c | head -10
    fi
    [ "$rc" -eq 0 ] || STATUS=1
}

case "$MODE" in
    asan) run_asan || STATUS=1 ;;
    valgrind) run_valgrind || STATUS=1 ;;
    both) run_asan || STATUS=1; run_valgrind || STATUS=1 ;;
    *) echo "usage: $0 [asan|valgrind|both]"; exit 2 ;;
esac
exit $STATUS
