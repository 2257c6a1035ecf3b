"""Checks and conversions at the public entry points.

Every error names the argument, what was expected and what was given. Arrays are refused
when they are not NumPy arrays, when their dtype is not a real floating type, or when their
shape is wrong; any real floating array is converted once to the model's dtype and made
C-contiguous (a copy only when needed).
"""

import math
import numbers
import functools
import os

import numpy as np

from . import _core


def shape_str(shape):
    """``(2, 3)`` as text, with the one-element tuple written ``(3,)``."""
    return str(tuple(int(s) for s in shape))


def check_float_array(a, name, dtype, ndim):
    """Raise unless ``a`` is a NumPy array of a real floating dtype with ``ndim`` dimensions
    (any number from 1 up when ``ndim`` is None)."""
    if not isinstance(a, np.ndarray):
        raise TypeError(
            f"{name} must be a numpy.ndarray, got {type(a).__name__}; "
            f"convert it first, e.g. np.asarray({name}, dtype=np.{np.dtype(dtype).name})")
    if a.dtype.kind != "f":
        raise TypeError(
            f"{name} must have a real floating dtype (it is converted to the model's "
            f"{np.dtype(dtype).name}), got {a.dtype}")
    if ndim is None and a.ndim == 0:
        raise ValueError(f"{name} must have at least 1 dimension, got a 0-D array")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got {a.ndim}-D with shape {shape_str(a.shape)}")


def as_float_array(a, name, dtype, ndim):
    """``a`` checked, then as a C-contiguous array of ``dtype`` (a copy only when needed)."""
    check_float_array(a, name, dtype, ndim)
    return np.ascontiguousarray(a, dtype=dtype)


def expect_shape(a, name, expected, meaning):
    """Raise unless ``a.shape == expected``; ``meaning`` spells the dimensions, e.g. "(B, T, H)"."""
    if a.shape != tuple(expected):
        raise ValueError(
            f"{name} must have shape {meaning} = {shape_str(expected)}, got {shape_str(a.shape)}")


def check_finite(a, name):
    """Raise if ``a`` holds a NaN or an infinity.

    For the model dtypes in C order (what the models pass after converting) the scan is one
    vectorised pass in C++ (``_core.all_finite``), so the check costs little beside a step;
    anything else is looked at by NumPy.
    """
    try:
        # ravel, not reshape(-1): the same view of a C-contiguous array, made faster.
        ok = _core.all_finite(a.ravel())
    except TypeError:  # not float32 or float64 in native byte order
        ok = bool(np.isfinite(a).all())
    if not ok:
        raise_non_finite(a, name)


def raise_non_finite(a, name):
    """The error for an ``a`` that holds a NaN or an infinity (found by the caller)."""
    bad = np.argwhere(~np.isfinite(a))
    raise ValueError(
        f"{name} contains {len(bad)} non-finite value(s) (NaN or Inf), the first at index "
        f"{tuple(int(i) for i in bad[0])}; pass check_finite=False to the model to skip this "
        f"check")


def as_lengths(lengths, B, T):
    """``lengths`` as a C-contiguous int64 array of shape (B,) with values in [0, T], or None."""
    if lengths is None:
        return None
    arr = np.asarray(lengths)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"lengths must hold integers, got dtype {arr.dtype}")
    if arr.shape != (B,):
        raise ValueError(
            f"lengths must have shape (B,) = ({B},), one length per sequence, got "
            f"{shape_str(arr.shape)}")
    if B and (arr.min() < 0 or arr.max() > T):
        bad = int(np.flatnonzero((arr < 0) | (arr > T))[0])
        raise ValueError(
            f"lengths must lie in [0, T] = [0, {T}], got {int(arr[bad])} at index {bad}")
    return np.ascontiguousarray(arr, dtype=np.int64)


def positive_int(value, name):
    """``value`` as an int ≥ 1, refusing bools, floats and anything else."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")
    return int(value)


def boolean(value, name):
    """``value`` as a bool, refusing anything but True and False."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def dropout(value):
    """The probability of dropping a unit between layers, a float in [0, 1)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, np.floating,
                                                                     np.integer)):
        raise TypeError(f"dropout must be a float in [0, 1), got {type(value).__name__}")
    value = float(value)
    if not 0 <= value < 1:
        raise ValueError(f"dropout must be a float in [0, 1), got {value!r}")
    return value


def proj_size(value, hidden_size):
    """The LSTM's proj_size: an int in [0, hidden_size) (0: no projection)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"proj_size must be an int, got {type(value).__name__}")
    valid_limit = isinstance(hidden_size, (int, np.integer)) and not isinstance(
        hidden_size, (bool, np.bool_)) and hidden_size >= 1
    limit = hidden_size if valid_limit else None  # else hidden_size's own error says it
    if value < 0 or (limit is not None and value >= limit):
        raise ValueError(f"proj_size must lie in [0, hidden_size) = [0, {limit}), got {value}")
    return int(value)


def collect(errors, check, *args):
    """``check(*args)``, or None with its TypeError or ValueError appended to ``errors``."""
    try:
        return check(*args)
    except (TypeError, ValueError) as e:
        errors.append(e)
        return None


def raise_all(errors):
    """Raise one exception naming every error in ``errors`` (none: return): a TypeError if
    any of them is one, else a ValueError."""
    if not errors:
        return
    if len(errors) == 1:
        raise errors[0]
    kind = TypeError if any(isinstance(e, TypeError) for e in errors) else ValueError
    raise kind(f"{len(errors)} arguments are wrong: " + "; ".join(str(e) for e in errors))


def clip_per_step(value):
    """backward's clip_per_step: None (off) -> 0.0, else a positive finite float."""
    if value is None:
        return 0.0
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, np.floating,
                                                                     np.integer)):
        raise TypeError(f"clip_per_step must be a positive float or None, got "
                        f"{type(value).__name__}")
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"clip_per_step must be a positive finite float (None for off), got "
                         f"{value!r}")
    return value


def model_dtype(dtype):
    """The model's dtype: float32 or float64 and nothing else."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be numpy.float32 or numpy.float64, got {dtype!r}") from None
    if dt not in (np.float32, np.float64):
        raise TypeError(f"dtype must be numpy.float32 or numpy.float64, got {dt}")
    return dt


@functools.lru_cache(maxsize=None)
def _physical_memory():
    """Bytes of RAM on this machine, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_allocation(nbytes, what):
    """Refuse, before allocating anything, a request larger than the machine's memory.

    ``what`` names the request: text, or a function returning it, called only on refusal
    (for the per-step callers, which would otherwise format a message every call).
    """
    total = _physical_memory()
    if total is not None and nbytes > total:
        if callable(what):
            what = what()
        raise MemoryError(
            f"{what} would need {nbytes / 2**30:.1f} GiB, more than this machine's "
            f"{total / 2**30:.1f} GiB of memory")
