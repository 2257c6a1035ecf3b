"""NumPy's BLAS threads inside rnnfast's calls (docs/threads.md).

``rnnfast.set_num_threads(n)`` (or OMP_NUM_THREADS) bounds the threads of a training step.
The recurrent layers' C++ loops use up to n; the read-out's matrix products are NumPy's, and
NumPy's BLAS has a thread count of its own: the wheels on PyPI bundle OpenBLAS, which starts
one thread per core when NumPy is imported, and whose threads keep a core busy (spinning) for
about 0.1 s after every product they took part in. So ``Linear.forward`` and
``Linear.backward`` run their products inside ``LIMITED``: for that time, every BLAS library
that threadpoolctl finds in the process uses at most ``blas_threads()`` threads (1), and gets
back the count it had when the products are done (about 2 us for both). NumPy code outside
rnnfast's calls keeps whatever BLAS threads the user gave it; importing rnnfast changes none.

The BLAS libraries are found once, at the first call (threadpoolctl's scan of the loaded
libraries takes about 10 ms). The limit is process-wide, as OpenBLAS's own count is: while
one Python thread is in rnnfast's read-out, NumPy products in the process's other threads are
limited too, and the counts are given back when the last such call is done.
"""

import ctypes
import itertools
import os
import threading
import warnings

_lock = threading.Lock()
_depth = 0  # limited() sections open, over all Python threads
_restore = []  # (setter, count) for each library lowered by the outermost open section
_libs = None  # [(getter, setter)] per BLAS library, found at the first call


def blas_threads():
    """How many BLAS threads NumPy's products may use inside rnnfast's calls: 1, at every
    ``rnnfast.set_num_threads`` value.

    One, not n: OpenBLAS's threads spin for about 0.1 s after each product they helped
    with, so at n = 2 its second thread would hold the core that the recurrent layers'
    second thread (a split batch, or the helper of a batch-1 call) needs right after the
    read-out; bench/blas_threads.py measures both choices.
    """
    return 1


def _openblas_symbols(lib):
    """``openblas_get_num_threads`` / ``openblas_set_num_threads`` of an OpenBLAS on its own
    pthreads, called directly: its thread count is process-wide, and threadpoolctl lets only
    one Python thread set it, so a count lowered by one thread and given back by another
    would otherwise stay lowered."""
    for prefix, suffix in itertools.product(("", "scipy_"), ("", "64_", "_64")):
        get = getattr(lib.dynlib, f"{prefix}openblas_get_num_threads{suffix}", None)
        put = getattr(lib.dynlib, f"{prefix}openblas_set_num_threads{suffix}", None)
        if get is not None and put is not None:
            get.restype, get.argtypes = ctypes.c_int, []
            put.restype, put.argtypes = None, [ctypes.c_int]
            return get, put
    return None


def _find_libs():
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # installed with rnnfast; without it there is nothing to limit
        return []
    try:
        found = ThreadpoolController().select(user_api="blas").lib_controllers
    except Exception as e:  # an unusual platform must not stop the read-out from working
        warnings.warn(f"rnnfast could not inspect NumPy's BLAS ({e!r}); its threads are not "
                      f"limited inside rnnfast's calls", RuntimeWarning, stacklevel=4)
        return []
    libs = []
    for lib in found:
        direct = None
        if lib.internal_api == "openblas" and getattr(lib, "threading_layer", "") == "pthreads":
            direct = _openblas_symbols(lib)
        libs.append(direct or (lib.get_num_threads, lib.set_num_threads))
    return libs


class limited:
    """Context manager: inside it, NumPy's BLAS uses at most ``blas_threads()`` threads.

    Sections nest and may be open in several Python threads at once: the outermost one
    lowers the counts, the last one to close restores them.
    """

    __slots__ = ()

    def __enter__(self):
        global _depth, _libs
        with _lock:
            if _depth == 0:
                if _libs is None:
                    _libs = _find_libs()
                limit = blas_threads()  # looked up at every call: bench/ replaces it
                try:
                    for get, put in _libs:
                        before = get()
                        if before is not None and before > limit:
                            put(limit)
                            _restore.append((put, before))
                except BaseException:
                    _give_back()
                    raise
            _depth += 1
        return self

    def __exit__(self, *exc):
        global _depth
        with _lock:
            _depth -= 1
            if _depth == 0:
                _give_back()
        return False


def _give_back():
    while _restore:
        put, before = _restore.pop()
        put(before)


def _after_fork_in_child():
    # Only the forking thread lives on in the child, and it was not inside a section (they
    # hold no more than a few products): sections that other threads had open will never
    # close here, so give their counts back now, with a lock no dead thread can hold.
    global _lock, _depth
    _lock = threading.Lock()
    _depth = 0
    _give_back()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


LIMITED = limited()  # stateless: one instance serves every call
