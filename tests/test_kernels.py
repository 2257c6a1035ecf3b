"""The kernels of one build, one per instruction-set level, and how one is chosen at import.

Each kernel is run in a subprocess (RNNFAST_KERNEL names it; python/rnnfast/_kernels.py):
it repeats its own results bit for bit, and agrees with the others within the tolerances the
compiled core holds against the reference. Under Debian's qemu-user, emulating older CPUs, a
fresh interpreter must pick the fastest kernel that CPU runs and compute what the same kernel
computes on the real CPU (bit for bit in float32; in float64 the C library's tanh, which glibc
picks by CPU, may differ in the last bit), instead of dying of an illegal instruction.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import rnnfast
from rnnfast import _kernels

from support import rel_err

STEP = Path(__file__).with_name("kernel_step.py")
X86 = rnnfast.build_info()["kernels"][0].startswith("x86-64")


def test_build_info_names_the_kernel_in_use():
    info = rnnfast.build_info()
    assert info["kernel"] in info["kernels"]
    assert set(info["isa"]) <= set(info["cpu"])
    assert rnnfast._core.__name__ == f"rnnfast.{_kernels.loaded()[1]}"
    # The fastest one this CPU can run, unless the environment chose another.
    if not os.environ.get(_kernels.ENV):
        runnable = [name for name, _, isa in _kernels.kernels() if set(isa) <= set(info["cpu"])]
        assert info["kernel"] == runnable[-1]


# Compiler macro __X__ -> the flag Linux's /proc/cpuinfo shows for it.
CPUINFO_FLAG = {
    "SSE3": "pni", "SSSE3": "ssse3", "SSE4_1": "sse4_1", "SSE4_2": "sse4_2", "POPCNT": "popcnt",
    "AVX": "avx", "AVX2": "avx2", "FMA": "fma", "BMI": "bmi1", "BMI2": "bmi2", "F16C": "f16c",
    "LZCNT": "abm", "MOVBE": "movbe", "AVX512F": "avx512f", "AVX512CD": "avx512cd",
    "AVX512BW": "avx512bw", "AVX512DQ": "avx512dq", "AVX512VL": "avx512vl",
    "AVX512VNNI": "avx512_vnni", "AVX512BF16": "avx512_bf16", "AVX512FP16": "avx512_fp16",
}


@pytest.mark.skipif(not (X86 and Path("/proc/cpuinfo").exists()), reason="x86-64 Linux only")
def test_cpuid_agrees_with_the_kernel_about_this_cpu():
    # Not under an emulator (there /proc/cpuinfo describes the host), the two readings of the
    # same CPU must agree.
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    flags = next(set(line.split(":", 1)[1].split()) for line in lines if line.startswith("flags"))
    assert set(rnnfast.build_info()["cpu"]) == {m for m, f in CPUINFO_FLAG.items() if f in flags}


KERNELS = [("base", "_core_base", []), ("v3", "_core_v3", ["AVX2", "FMA"]),
           ("v4", "_core_v4", ["AVX2", "FMA", "AVX512F"])]


def test_choose_takes_the_last_kernel_the_cpu_runs():
    assert _kernels.choose(KERNELS, {"AVX2", "FMA", "SSE3"})[0] == "v3"
    assert _kernels.choose(KERNELS, {"AVX2", "FMA", "AVX512F"})[0] == "v4"
    assert _kernels.choose(KERNELS, set())[0] == "base"
    assert _kernels.choose(KERNELS, {"AVX2", "FMA"}, forced="base")[0] == "base"


def test_choose_refuses_what_the_cpu_lacks_or_the_build_has_not():
    with pytest.raises(ImportError, match=r"RNNFAST_KERNEL='v4'.*needs AVX512F.*can run: base, v3"):
        _kernels.choose(KERNELS, {"AVX2", "FMA"}, forced="v4")
    with pytest.raises(ImportError, match=r"RNNFAST_KERNEL='v5' names no kernel.*base, v3, v4"):
        _kernels.choose(KERNELS, {"AVX2", "FMA"}, forced="v5")
    with pytest.raises(ImportError, match=r"none of rnnfast's compiled kernels.*needs AVX2"):
        _kernels.choose(KERNELS[1:], {"SSE3"})


def test_unknown_kernel_in_the_environment_is_an_import_error():
    env = {**os.environ, _kernels.ENV: "pentium-mmx"}
    run = subprocess.run([sys.executable, "-c", "import rnnfast"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode != 0
    assert "ImportError: RNNFAST_KERNEL='pentium-mmx' names no kernel of this build" in run.stderr


# -- the same computation with every kernel ---------------------------------------------------

def _inputs(path):
    rng = np.random.default_rng(7)
    B, T, D, H, C = 4, 12, 6, 16, 5
    data = {"x": rng.normal(size=(B, T, D)), "lengths": np.array([12, 7, 12, 3]),
            "dy": rng.normal(size=(B, T, 2 * H)), "targets": rng.integers(0, C, (B, T)),
            "readout": rng.uniform(-0.3, 0.3, (C, 2 * H))}
    import kernel_step
    for cls, kw in kernel_step.CASES.values():
        for name, value in cls(D, H, seed=0, **kw).params.items():
            data[f"{cls.__name__}.{name}"] = rng.uniform(-0.4, 0.4, value.shape)
    np.savez(path, **data)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    path = tmp_path_factory.mktemp("kernels") / "inputs.npz"
    _inputs(path)
    return path


def _run(inputs, out, kernel=None, emulate=None):
    env = dict(os.environ)
    env.pop(_kernels.ENV, None)
    if kernel:
        env[_kernels.ENV] = kernel
    cmd = [sys.executable, str(STEP), str(inputs), str(out)]
    if emulate:
        cmd = [shutil.which("qemu-x86_64"), "-cpu", emulate] + cmd
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return dict(np.load(out))


def _runnable():
    cpu = set(rnnfast.build_info()["cpu"])
    return [name for name, _, isa in _kernels.kernels() if set(isa) <= cpu]


@pytest.fixture(scope="module")
def native(inputs, tmp_path_factory):
    """Each kernel this CPU runs: its results, from a subprocess."""
    d = tmp_path_factory.mktemp("native")
    return {k: _run(inputs, d / f"{k}.npz", kernel=k) for k in _runnable()}


def _layer_keys(saved):  # the compiled core's own results: no NumPy arithmetic in them
    return [k for k in saved if k != "kernel" and ".after." not in k and not k.endswith(".loss")]


def test_each_kernel_repeats_bit_for_bit(native, inputs, tmp_path):
    for kernel, first in native.items():
        again = _run(inputs, tmp_path / f"{kernel}.npz", kernel=kernel)
        assert str(again["kernel"]) == kernel
        for key in first:
            np.testing.assert_array_equal(again[key], first[key], err_msg=f"{kernel}: {key}")


def test_kernels_agree_within_the_parity_tolerances(native):
    base = native[_runnable()[0]]
    for kernel, saved in native.items():
        for key in _layer_keys(saved):
            tol = 1e-10 if ".float64." in key else 1e-4
            assert rel_err(saved[key], base[key]) <= tol, (kernel, key)
        for key in saved:  # after one Adam step, which divides by sqrt(v) ~ |g|: float64 only
            if ".float64." in key and key not in _layer_keys(saved):
                assert rel_err(saved[key], base[key]) <= 1e-8, (kernel, key)


# -- emulated CPUs ----------------------------------------------------------------------------

QEMU = shutil.which("qemu-x86_64")
# .ci/run installs qemu-user and sets this, so that in CI a missing emulator fails, not skips.
need_qemu = pytest.mark.skipif(
    not (X86 and (QEMU or os.environ.get("RNNFAST_REQUIRE_QEMU"))),
    reason="needs an x86-64 build and qemu-x86_64 (Debian's qemu-user)")


@need_qemu
@pytest.mark.parametrize("cpu, kernel", [("Nehalem", "x86-64"), ("Haswell", "x86-64-v3")])
def test_an_emulated_cpu_gets_its_fastest_kernel_and_the_same_results(cpu, kernel, native,
                                                                       inputs, tmp_path):
    assert QEMU, "qemu-x86_64 is not installed (apt install qemu-user)"
    if kernel not in native:
        pytest.skip(f"this build or CPU has no {kernel} kernel to compare with")
    emulated = _run(inputs, tmp_path / "emulated.npz", emulate=cpu)
    assert str(emulated["kernel"]) == kernel
    real = native[kernel]
    for key in _layer_keys(real):
        if ".float32." in key:  # the same instructions, Eigen's own tanh: the same bits
            np.testing.assert_array_equal(emulated[key], real[key], err_msg=key)
        else:  # float64 tanh comes from the C library, whose variant depends on the CPU
            assert rel_err(emulated[key], real[key]) <= 1e-12, key
    for key in real:  # NumPy picks its own code paths by CPU too: the step within tolerance
        if key != "kernel" and key not in _layer_keys(real):
            tol = 1e-8 if ".float64." in key else 1e-3
            assert rel_err(emulated[key], real[key]) <= tol, key


@need_qemu
def test_an_emulated_cpu_refuses_a_kernel_it_cannot_run():
    assert QEMU, "qemu-x86_64 is not installed (apt install qemu-user)"
    env = {**os.environ, _kernels.ENV: "x86-64-v3"}
    run = subprocess.run([QEMU, "-cpu", "Nehalem", sys.executable, "-c", "import rnnfast"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode != 0
    assert "RNNFAST_KERNEL='x86-64-v3' asks for a kernel that needs AVX, AVX2" in run.stderr
