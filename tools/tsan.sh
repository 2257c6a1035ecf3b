#!/usr/bin/env bash
# ThreadSanitizer on the helper thread (cpp/helper.hpp): builds tools/helper_race.cpp, which
# runs every cell's forward and backward at batch 1 and 8 on two threads, and runs it. A data race
# makes TSan print a report and the run fail.
#
#   bash tools/tsan.sh                    # venv (for Eigen's headers) and binary under build/tsan/
#   TSAN_DIR=/tmp/tsan bash tools/tsan.sh
#
# The extension module is not used: an uninstrumented interpreter cannot host TSan, and the
# race, if any, is in the C++ headers, which the driver includes as the module does.
set -euo pipefail
cd "$(dirname "$0")/.."

dir="${TSAN_DIR:-build/tsan}"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
if [ ! -x "$dir/venv/bin/python" ]; then
  python3 -m venv "$dir/venv"
  "$dir/venv/bin/python" -m pip install -q "cmeel-eigen>=3.4,<3.5"
fi
eigen="$("$dir/venv/bin/python" -m cmeel cmake 2>/dev/null | tail -n 1)/include/eigen3"

# The compile definitions and instruction set of CMakeLists.txt's default build.
"${CXX:-g++}" -std=c++17 -O1 -g -fsanitize=thread -march=x86-64-v3 -pthread \
  -DEIGEN_GEMM_TO_COEFFBASED_THRESHOLD=0 -I"$eigen" -Icpp tools/helper_race.cpp \
  -o "$dir/helper_race"
TSAN_OPTIONS="halt_on_error=1" "$dir/helper_race"
