"""How the compiled core was built and which kernel runs, threads, and the array cache."""


def build_info():
    """How the compiled core was built and which of its kernels runs on this CPU.

    A dict with ``kernel`` (the kernel in use: its ``-march`` level, e.g. ``"x86-64-v3"``, or
    ``"generic"`` for the compiler's baseline), ``isa`` (the instruction sets that kernel
    uses, as compiler macro names), ``kernels`` (every kernel this build has, most portable
    first), ``cpu`` (the instruction sets this CPU supports, read by CPUID) and ``openmp``
    (whether Eigen's products can use threads). The environment variable RNNFAST_KERNEL,
    read at import, chooses another kernel than the fastest.
    """
    from . import _core, _kernels  # noqa: F401  (importing _core chooses the kernel)
    name, _, isa = _kernels.loaded()
    from . import _build
    return {"kernel": name, "isa": list(isa), "kernels": [k[0] for k in _kernels.kernels()],
            "cpu": sorted(_kernels.cpu_features()), "openmp": bool(_build.OPENMP)}


def set_num_threads(n):
    """Use up to ``n`` threads in the compiled path.

    A layer call with enough work (B >= 2 and B*T*G*H*(D+H) >= 2**22 multiply-adds, G = 1,
    3, 4 for RNN, GRU, LSTM) splits its batch into ``min(n, B)`` contiguous chunks, one thread
    each, for the whole time loop (sequences are independent: no synchronisation per step);
    each chunk sums its own weight gradients, added in chunk order. Results repeat bit for bit
    for a given ``n`` and match the NumPy reference as the serial path does. The default at
    import is OMP_NUM_THREADS when it is set to a positive integer, else 1 (in builds with
    OpenMP, OpenMP's default; there ``n`` also sets Eigen's OpenMP threads).

    The read-out's products are NumPy's: inside rnnfast's calls NumPy's BLAS runs on one
    thread whatever ``n`` is, and keeps its own count outside them (docs/threads.md).
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
