"""Clipping of the final parameter gradients, in place.

Per-step clipping of dL/dh_t inside the backward loop is a separate mechanism: an option of
the models' ``backward``.
"""

import math

import numpy as np


def _arrays(grads):
    if not isinstance(grads, dict):
        raise TypeError(f"grads must be a dict of name -> ndarray, got {type(grads).__name__}")
    for name, g in grads.items():
        if not isinstance(g, np.ndarray) or g.dtype.kind != "f":
            raise TypeError(f"grads[{name!r}] must be a floating ndarray, got "
                            f"{type(g).__name__ if not isinstance(g, np.ndarray) else g.dtype}")
    return list(grads.values())


def _positive(value, name):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer,
                                                                     np.floating)):
        raise TypeError(f"{name} must be a positive float, got {type(value).__name__}")
    if not value > 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return float(value)


def global_norm(grads):
    """The L2 norm of all gradients together.

    Parameters
    ----------
    grads : dict of str to ndarray
        As ``backward`` returns them.

    Returns
    -------
    float
        The square root of the sum of squares of every element (each array's sum in its own
        dtype, their total in float64).
    """
    return math.sqrt(sum(float(np.dot(g.ravel(), g.ravel())) for g in _arrays(grads)))


def clip_grad_norm(grads, max_norm, *, error_if_nonfinite=False):
    """Rescale all gradients together so that their global L2 norm is at most ``max_norm``.

    As ``torch.nn.utils.clip_grad_norm_``: every gradient is multiplied, in place, by
    ``min(1, max_norm / (norm + 1e-6))``.

    Parameters
    ----------
    grads : dict of str to ndarray
        As ``backward`` returns them; changed in place.
    max_norm : positive float
    error_if_nonfinite : bool, default False
        When True, a NaN or infinite norm raises ValueError and changes nothing; otherwise
        such gradients are left as they are (and the norm returned says so).

    Returns
    -------
    float
        The global norm before clipping (``global_norm``).
    """
    _positive(max_norm, "max_norm")
    arrays = _arrays(grads)
    norm = global_norm(grads)
    if not math.isfinite(norm):
        if error_if_nonfinite:
            raise ValueError(f"the total norm of the gradients is {norm}: they hold NaN or Inf")
        return norm
    scale = min(1.0, max_norm / (norm + 1e-6))
    if scale < 1.0:
        for g in arrays:
            g *= g.dtype.type(scale)
    return norm


def clip_grad_value(grads, clip_value):
    """Clip every gradient element to [-clip_value, clip_value], in place.

    Parameters
    ----------
    grads : dict of str to ndarray
        As ``backward`` returns them; changed in place.
    clip_value : positive float
        E.g. 5, the classic choice of small character-level RNNs.
    """
    _positive(clip_value, "clip_value")
    for g in _arrays(grads):
        np.clip(g, -clip_value, clip_value, out=g)
