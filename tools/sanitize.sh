#!/usr/bin/env bash
# Build rnnfast._core with AddressSanitizer + UndefinedBehaviorSanitizer into a venv of its
# own and run the C++-facing tests against it.
#
#   bash tools/sanitize.sh            # venv and build under build/sanitize/ (kept, reused)
#   SANITIZE_DIR=/tmp/san bash tools/sanitize.sh
#   bash tools/sanitize.sh -x -k lstm # extra arguments go to pytest
#
# Why the environment below:
# - The Python interpreter is not instrumented, so the ASan runtime must be loaded first, by
#   LD_PRELOAD (otherwise: "ASan runtime does not come first in initial library list").
# - detect_leaks=0: LeakSanitizer would report every object CPython, NumPy and pytest keep
#   alive until exit (interned strings, module state, arenas freed by nobody), thousands of
#   reports none of which is ours. Leaks of rnnfast itself are tested instead by RSS in
#   tests/test_hardening.py (10,000 forward/backward calls).
# - halt_on_error / abort_on_error: the first finding fails the run (exit code != 0), with a
#   stack trace on stderr; UBSan's print_stacktrace names the line.
# - One kernel, the one for this CPU (-march=native), rather than one per instruction-set
#   level: the code is the same, and each sanitized build takes minutes.
# - Eigen's own bounds assertions are on (a Debug build, no NDEBUG), optimised at -O1 so the
#   tests stay fast enough.
set -euo pipefail
cd "$(dirname "$0")/.."

dir="${SANITIZE_DIR:-build/sanitize}"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
venv="$dir/venv"
start=$SECONDS

if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
fi
# rnnfast's runtime dependencies (pyproject.toml) and the build's, by name: the build below
# runs with --no-deps so that pip never rebuilds the C++ for a dependency. Run every time, so
# a venv kept from before a dependency was added gets it (a no-op when all are present).
"$venv/bin/python" -m pip install -q numpy tqdm threadpoolctl "pytest>=7" hypothesis \
  "scikit-build-core>=0.10" "pybind11>=2.12" "cmeel-eigen>=3.4,<3.5" ninja cmake

flags="-O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all"
"$venv/bin/python" -m pip install -q --no-build-isolation --no-deps --force-reinstall \
  -Cbuild-dir="$dir/cmake" \
  -Ccmake.build-type=Debug \
  -Ccmake.define.RNNFAST_KERNELS=native \
  -Ccmake.define.CMAKE_CXX_FLAGS="$flags" \
  -Ccmake.define.CMAKE_SHARED_LINKER_FLAGS="-fsanitize=address,undefined" \
  -Ccmake.define.CMAKE_MODULE_LINKER_FLAGS="-fsanitize=address,undefined" \
  .
echo "sanitize: built in $((SECONDS - start)) s"

libasan="$(g++ -print-file-name=libasan.so)"
libubsan="$(g++ -print-file-name=libubsan.so)"
# The C++-facing tests: everything that calls into _core, directly or through the models.
tests=(tests/test_parity.py tests/test_bad_input.py tests/test_gates.py
       tests/test_backward_options.py tests/test_gradcheck.py tests/test_training_parts.py
       tests/test_fuzz.py tests/test_hardening.py tests/test_threads.py)
LD_PRELOAD="$libasan $libubsan" \
ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=1:strict_init_order=1:detect_stack_use_after_return=1" \
UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1" \
RNNFAST_SANITIZE=1 \
  "$venv/bin/python" -m pytest -q -p no:cacheprovider "${tests[@]}" "$@"
echo "sanitize: clean, $((SECONDS - start)) s in all"
