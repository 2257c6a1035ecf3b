"""The CPU check at import, threads, and how the compiled module was built.

The default build of ``rnnfast._core`` uses x86-64-v3 instructions (AVX2, FMA; see
bench/README.md for why). Loading it on a CPU without them would crash the interpreter with
"illegal instruction", so ``check_cpu`` compares the instruction sets the build enabled
(``_build.ISA``, written by CMake) with the flags of this CPU before ``_core`` is imported,
and raises ImportError naming what is missing. It can only read the CPU's flags on Linux
(/proc/cpuinfo); elsewhere it lets the import go ahead.
"""

# Compiler macro __X__ -> the flag /proc/cpuinfo shows for it.
_CPUINFO_FLAG = {
    "SSE3": "pni", "SSSE3": "ssse3", "SSE4_1": "sse4_1", "SSE4_2": "sse4_2", "POPCNT": "popcnt",
    "AVX": "avx", "AVX2": "avx2", "FMA": "fma", "BMI": "bmi1", "BMI2": "bmi2", "F16C": "f16c",
    "LZCNT": "abm", "MOVBE": "movbe", "AVX512F": "avx512f", "AVX512CD": "avx512cd",
    "AVX512BW": "avx512bw", "AVX512DQ": "avx512dq", "AVX512VL": "avx512vl",
    "AVX512VNNI": "avx512_vnni", "AVX512BF16": "avx512_bf16", "AVX512FP16": "avx512_fp16",
}


def _build():
    try:
        from . import _build
    except ImportError:  # a source tree that was never built: _core is missing too
        return None
    return _build


def build_info():
    """How ``rnnfast._core`` was built: ``{"arch", "isa", "openmp"}``.

    ``arch`` is the ``-march`` value (``"none"`` for the compiler's baseline), ``isa`` the
    instruction sets it enabled, ``openmp`` whether Eigen's products can use threads.
    """
    b = _build()
    if b is None:
        return {"arch": None, "isa": [], "openmp": None}
    return {"arch": b.ARCH, "isa": list(b.ISA), "openmp": bool(b.OPENMP)}


def _cpu_flags(path="/proc/cpuinfo"):
    """The set of this CPU's flags, or None where they cannot be read."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def missing_cpu_features(isa, flags):
    """The instruction sets in ``isa`` (macro names) that ``flags`` (cpuinfo) lacks."""
    return [m for m in isa if m in _CPUINFO_FLAG and _CPUINFO_FLAG[m] not in flags]


def check_cpu():
    """Raise ImportError if this CPU lacks an instruction set that ``_core`` was built with."""
    b = _build()
    if b is None or not b.ISA:
        return
    flags = _cpu_flags()
    if flags is None:
        return
    missing = missing_cpu_features(b.ISA, flags)
    if missing:
        raise ImportError(
            f"rnnfast's compiled module was built with -march={b.ARCH}, which needs the "
            f"instruction set(s) {', '.join(missing)} that this CPU does not have. Build a "
            f"portable version from source instead: pip install --no-binary rnnfast rnnfast "
            f"-Ccmake.define.RNNFAST_ARCH=none (or, in a checkout, pip install . "
            f"-Ccmake.define.RNNFAST_ARCH=none); RNNFAST_ARCH=native tunes it for this CPU.")


def set_num_threads(n):
    """Use up to ``n`` threads in the compiled path.

    A layer call with enough work (B >= 2 and B*T*G*H*(D+H) >= 2**22 multiply-adds, G = 1,
    3, 4 for RNN, GRU, LSTM) splits its batch into ``min(n, B)`` contiguous chunks, one thread
    each, for the whole time loop (sequences are independent: no synchronisation per step);
    each chunk sums its own weight gradients, added in chunk order. Results repeat bit for bit
    for a given ``n`` and match the NumPy reference as the serial path does. The default at
    import is OMP_NUM_THREADS when it is set to a positive integer, else 1 (in builds with
    OpenMP, OpenMP's default; there ``n`` also sets Eigen's OpenMP threads).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    from . import _core
    global _threads_chosen
    _core.set_num_threads(n)
    _threads_chosen = True


# Whether set_num_threads was called (OMP_NUM_THREADS calls it at import): rnnfast.torch's
# modules follow torch.get_num_threads() until then.
_threads_chosen = False


def threads_chosen():
    """Whether a thread count was chosen, by ``set_num_threads`` or OMP_NUM_THREADS."""
    return _threads_chosen


def threads_from_env(environ=None):
    """The thread count OMP_NUM_THREADS asks for (its first entry), or None when it is unset or
    not a positive integer (OpenMP ignores such a value too)."""
    import os
    value = (os.environ if environ is None else environ).get("OMP_NUM_THREADS", "")
    first = value.split(",")[0].strip()
    return int(first) if first.isdigit() and int(first) > 0 else None


def get_num_threads():
    """The number of threads the compiled path's matrix products may use."""
    from . import _core
    return int(_core.get_num_threads())


def set_cache_limit(nbytes):
    """Keep at most ``nbytes`` of freed large arrays for reuse (default 1 GiB).

    Frees every block the cache holds now; the limit applies from then on. The cache is one
    per process and safe to use from several threads.

    The compiled path takes every array of 256 KiB or more (outputs, the forward cache,
    backward's workspaces) from a cache of blocks that earlier arrays of the same size gave
    back when NumPy freed them. A training loop asks for the same sizes at every step, so after
    the first step it allocates no fresh memory; fresh pages cost the kernel a zeroing pass on
    first touch (12-16 % of a step at the large benchmark configs). The price is that up to
    ``nbytes`` stay resident between steps. ``set_cache_limit(0)`` turns the cache off.
    """
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 0:
        raise ValueError(f"nbytes must be an int >= 0, got {nbytes!r}")
    from . import _core
    _core.set_cache_limit(min(nbytes, 2**63 - 1))


def empty_cache():
    """Free every block the array cache holds (see set_cache_limit); the limit is unchanged.

    Arrays still in use are not affected: their blocks return to the cache when freed.
    """
    from . import _core
    _core.empty_cache()


def cache_info():
    """The array cache's state: a dict with cached_bytes, cached_blocks, limit (bytes), and
    hits and misses (blocks reused or newly allocated, since import)."""
    from . import _core
    return dict(_core.cache_info())
