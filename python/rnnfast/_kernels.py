"""Which compiled kernel runs: the fastest one this CPU can, chosen once at import.

The compiled core is built once per instruction-set level into modules of its own
(``_core_x86_64``, ``_core_x86_64_v3``, ``_core_x86_64_v4`` on x86-64; one ``_core_generic``
elsewhere: CMakeLists.txt). ``rnnfast._cpu``, built for the baseline so that it loads on any
CPU, reads the CPU's instruction sets with CPUID; the last kernel of ``_build.KERNELS`` (most
portable first) whose instruction sets the CPU has is imported, and ``rnnfast._core`` is that
module. The environment variable RNNFAST_KERNEL names another one (``RNNFAST_KERNEL=x86-64``):
for tests, comparisons, and CPUs that report an instruction set they run badly.

Each kernel repeats its own results bit for bit; two kernels may differ in the last bits
(FMA and wider vectors change the order of roundings), within the tolerances the tests hold
against the NumPy reference.
"""

import importlib
import os

ENV = "RNNFAST_KERNEL"


def kernels():
    """The kernels this build has, most portable first: ``[(name, module, isa), ...]``."""
    from . import _build
    return list(_build.KERNELS)


def cpu_features():
    """The instruction sets this CPU and its OS support, as compiler macro names ("AVX2")."""
    from . import _cpu
    return frozenset(_cpu.features())


def choose(available, features, forced=None):
    """The kernel to load, ``(name, module, isa)``: the named one when ``forced`` is given,
    else the last of ``available`` whose ``isa`` is within ``features``. Raises ImportError
    naming what is missing when there is none, or when ``forced`` is unknown or not runnable."""
    names = ", ".join(name for name, _, _ in available)
    if forced:
        for kernel in available:
            if kernel[0] == forced:
                missing = [i for i in kernel[2] if i not in features]
                if missing:
                    runnable = [n for n, _, isa in available if set(isa) <= features]
                    raise ImportError(
                        f"{ENV}={forced!r} asks for a kernel that needs {', '.join(missing)}, "
                        f"which this CPU does not have; it can run: {', '.join(runnable) or 'none'}")
                return kernel
        raise ImportError(f"{ENV}={forced!r} names no kernel of this build; it has: {names}")
    runnable = [k for k in available if set(k[2]) <= features]
    if not runnable:
        least = min(available, key=lambda k: len(k[2]))
        raise ImportError(
            f"this CPU can run none of rnnfast's compiled kernels ({names}): the most portable "
            f"one needs {', '.join(i for i in least[2] if i not in features)}. Build one for "
            f"it from source: pip install --no-binary rnnfast rnnfast "
            f"-Ccmake.define.RNNFAST_KERNELS=generic")
    return runnable[-1]


_loaded = None  # (name, module, isa) of the kernel imported as rnnfast._core


def load():
    """Import the kernel this CPU should run (see the module's docstring) and return it."""
    global _loaded
    name, module, isa = choose(kernels(), cpu_features(), os.environ.get(ENV, "").strip())
    core = importlib.import_module(f"{__package__}.{module}")
    _loaded = (name, module, isa)
    return core


def loaded():
    """``(name, module, isa)`` of the kernel in use, or None before rnnfast._core is imported."""
    return _loaded
