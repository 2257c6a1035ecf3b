"""Losses over sequences. Each returns ``(loss, dinput)``: the scalar and its gradient.

Reductions, as in PyTorch: ``"mean"`` (the default) divides by the number of terms that
count; ``"sum"`` is the textbook's total loss over a sequence, E = Σ_t E_t (summed over the
batch as well). Steps past a sequence's length (``lengths``) and targets equal to
``ignore_index`` count for nothing and get zero gradient.

For a many-to-one task, take the last valid step of every sequence with ``last_step`` and
give its result to a loss; ``last_step_backward`` sends the gradient back to that step. That is
what ``fit(..., loss="cross_entropy_last")`` does to classify sequences
(``rnnfast.train.sequence_loss`` names every loss ``fit`` takes):

>>> import numpy as np
>>> from rnnfast import losses
>>> y = np.zeros((2, 5, 3), dtype=np.float32)           # logits (B, T, C) of every step
>>> last = losses.last_step(y, lengths=[5, 3])          # (B, C): steps 4 and 2
>>> loss, dlast = losses.cross_entropy(last, np.array([0, 2]))
>>> dy = losses.last_step_backward(dlast, [5, 3], T=5)  # (B, T, C), zero elsewhere
>>> dy.shape
(2, 5, 3)
"""

import numpy as np

from . import _checks


def _reduction(reduction):
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    return reduction


def _step_mask(shape, lengths):
    """(B, T) boolean mask of valid steps for a batch-first array of ``shape``; None if all."""
    if lengths is None:
        return None
    if len(shape) < 3:
        raise ValueError(f"lengths applies to (B, T, ...) inputs, got shape {_checks.shape_str(shape)}")
    B, T = shape[:2]
    lengths = _checks.as_lengths(lengths, B, T)
    return np.arange(T)[None, :] < lengths[:, None]


def _float_input(a, name):
    _checks.check_float_array(a, name, a.dtype if isinstance(a, np.ndarray) else np.float32,
                              None)
    return np.ascontiguousarray(a)


def cross_entropy(logits, targets, *, ignore_index=-100, reduction="mean", lengths=None):
    """Softmax cross-entropy with integer class targets, at every timestep.

    Parameters
    ----------
    logits : ndarray (B, T, C) or (N, C), float32 or float64
    targets : integer ndarray (B, T) or (N,)
        Class indices in [0, C), or ``ignore_index``.
    ignore_index : int, default -100
    reduction : {"mean", "sum"}
        "mean" divides by the number of targets that count (not ignored, within lengths).
        With none counting, the loss is 0 and the gradient zero (PyTorch gives NaN).
    lengths : (B,) ints, optional
        For (B, T, C) logits: steps t >= lengths[b] count for nothing.

    Returns
    -------
    loss : float
    dlogits : ndarray, the shape and dtype of ``logits``
    """
    _reduction(reduction)
    logits = _float_input(logits, "logits")
    if logits.ndim < 2:
        raise ValueError(f"logits must be (N, C) or (B, T, C), got shape "
                         f"{_checks.shape_str(logits.shape)}")
    targets = np.asarray(targets)
    if targets.dtype.kind not in "iu":
        raise TypeError(f"targets must hold integer class indices, got dtype {targets.dtype}")
    _checks.expect_shape(targets, "targets", logits.shape[:-1], "logits.shape[:-1]")
    C = logits.shape[-1]
    counts = targets != ignore_index
    mask = _step_mask(logits.shape, lengths)
    if mask is not None:
        counts &= mask
    bad = counts & ((targets < 0) | (targets >= C))
    if bad.any():
        i = tuple(int(j) for j in np.argwhere(bad)[0])
        raise ValueError(f"targets must lie in [0, C) = [0, {C}) or equal ignore_index="
                         f"{ignore_index}, got {int(targets[i])} at index {i}")
    safe_targets = np.where(counts, targets, 0)[..., None]
    # log softmax, shifted by the max so that exp cannot overflow
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_z = np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    log_p = shifted - log_z
    n = int(counts.sum())
    if n == 0:
        return 0.0, np.zeros_like(logits)
    picked = np.take_along_axis(log_p, safe_targets, axis=-1)[..., 0]
    loss = -float(picked[counts].sum(dtype=np.float64))
    # E = -log softmax(z)[y]  =>  dE/dz = softmax(z) - onehot(y)
    dlogits = np.exp(log_p)
    np.put_along_axis(dlogits, safe_targets,
                      np.take_along_axis(dlogits, safe_targets, axis=-1) - 1, axis=-1)
    dlogits *= counts[..., None]
    if reduction == "mean":
        loss /= n
        dlogits /= n
    return loss, dlogits


def mse(pred, target, *, reduction="mean", lengths=None):
    """Mean-squared error, ``(pred - target)**2`` over every element that counts.

    Parameters
    ----------
    pred : ndarray, float32 or float64
        Any shape; (B, T, ...) with ``lengths``.
    target : ndarray
        The shape of ``pred``; converted to its dtype.
    reduction : {"mean", "sum"}
        "mean" divides by the number of elements that count (PyTorch's ``MSELoss``).
    lengths : (B,) ints, optional
        Steps t >= lengths[b] count for nothing.

    Returns
    -------
    loss : float
    dpred : ndarray, the shape and dtype of ``pred``
    """
    _reduction(reduction)
    pred = _float_input(pred, "pred")
    target = _float_input(target, "target")
    _checks.expect_shape(target, "target", pred.shape, "pred.shape")
    diff = pred - target.astype(pred.dtype, copy=False)
    mask = _step_mask(pred.shape, lengths)
    if mask is not None:
        diff *= mask.reshape(mask.shape + (1,) * (pred.ndim - 2))
        n = int(mask.sum()) * int(np.prod(pred.shape[2:], dtype=np.int64))
    else:
        n = diff.size
    loss = float(np.dot(diff.ravel(), diff.ravel()))
    # E = Σ (p - t)^2  =>  dE/dp = 2 (p - t)
    dpred = 2 * diff
    if reduction == "mean" and n:
        loss /= n
        dpred /= n
    return loss, dpred


def last_step(y, lengths=None):
    """Each sequence's output at its last valid step: (B, T, H) -> (B, H).

    Parameters
    ----------
    y : ndarray (B, T, H)
    lengths : (B,) ints, optional
        Valid steps of each sequence, each at least 1 (an empty sequence has no last step);
        None takes step T - 1 of every sequence.

    Returns
    -------
    ndarray (B, H)
        ``y[b, lengths[b] - 1]`` for every b.
    """
    y = _float_input(y, "y")
    if y.ndim != 3:
        raise ValueError(f"y must be 3-D (B, T, H), got shape {_checks.shape_str(y.shape)}")
    B, T = y.shape[:2]
    last = _last_index(lengths, B, T)
    return y[np.arange(B), last]


def last_step_backward(dlast, lengths, T):
    """Backward of ``last_step``: (B, H) -> (B, T, H), zero except at the last valid steps.

    Parameters
    ----------
    dlast : ndarray (B, H)
        The gradient with respect to ``last_step``'s result.
    lengths : (B,) ints or None
        As given to ``last_step``.
    T : int
        The number of steps of ``last_step``'s input.

    Returns
    -------
    ndarray (B, T, H)
    """
    dlast = _float_input(dlast, "dlast")
    if dlast.ndim != 2:
        raise ValueError(f"dlast must be 2-D (B, H), got shape {_checks.shape_str(dlast.shape)}")
    B = dlast.shape[0]
    dy = np.zeros((B, T, dlast.shape[1]), dtype=dlast.dtype)
    dy[np.arange(B), _last_index(lengths, B, T)] = dlast
    return dy


def _last_index(lengths, B, T):
    if lengths is None:
        if T == 0:
            raise ValueError("y has T = 0 steps: there is no last step")
        return np.full(B, T - 1)
    lengths = _checks.as_lengths(lengths, B, T)
    if B and lengths.min() == 0:
        b = int(np.argmin(lengths))
        raise ValueError(f"lengths must be at least 1 for last_step, got 0 at index {b}")
    return lengths - 1
