"""NumPy reference of one vanilla RNN layer: the ground truth the C++ path is tested against.

    h_t = f(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh),   f = tanh or relu

Shapes: x (B, T, D), h0 (B, H), weight_ih (H, D), weight_hh (H, H), biases (H,) or None,
lengths (B,) integers or None. Written for clarity, one timestep at a time; the functions take
and return exactly what ``rnnfast._core.rnn_forward`` / ``rnn_backward`` do.

``reverse=True`` walks time the other way, as the reverse direction of PyTorch's bidirectional
layers: step t follows step t+1, and sequence b starts at its last valid step, lengths[b] - 1,
from the initial state; its final state is the state after step 0. Outputs stay where their
step is (y[:, t] is the output of step t).
"""

import numpy as np


def rnn_forward(x, h0, weight_ih, weight_hh, bias_ih, bias_hh, lengths, nonlinearity,
                reverse=False):
    """Run one layer over the sequence.

    Returns ``(y, h_n)``: y (B, T, H) the outputs, zero past each sequence's length, and
    h_n (B, H) the state after each sequence's last valid step.
    """
    B, T, _ = x.shape
    H = weight_hh.shape[0]
    f = np.tanh if nonlinearity == "tanh" else (lambda a: np.maximum(a, 0))
    y = np.zeros((B, T, H), dtype=x.dtype)
    h = h0.copy()
    for t in _walk(T, reverse):
        a = x[:, t] @ weight_ih.T + h @ weight_hh.T  # pre-activation
        if bias_ih is not None:
            a = a + bias_ih + bias_hh
        h_new = f(a)
        valid = _valid(lengths, B, t)
        h = np.where(valid, h_new, h)  # a finished sequence keeps its state
        y[:, t] = np.where(valid, h_new, 0)  # ... and outputs zeros
    return y, h


def rnn_backward(x, h0, y, weight_ih, weight_hh, bias_ih, bias_hh, lengths, nonlinearity,
                 dy, dh_n, clip_per_step=0.0, grad_norms=False, reverse=False, into=None):
    """Backpropagate through time, from t = T-1 down to 0 (from 0 up with ``reverse``).

    ``y`` is what ``rnn_forward`` returned; ``dy`` (B, T, H) and ``dh_n`` (B, H) are the
    gradients of the loss with respect to the outputs and the final state.
    Returns ``(dx, dh0, dweight_ih, dweight_hh, dbias_ih, dbias_hh)``; the bias gradients are
    None when the layer has no bias.

    Per-step options (see ``_step_options``): ``clip_per_step`` > 0 rescales each sequence's
    dL/dh_t to that norm whenever it is larger (0 or negative: off); with ``grad_norms`` the
    tuple gains a last item, norms (B, T), each sequence's ||dL/dh_t|| before clipping.

    ``into`` (a ``GradSum``): add the weight gradients to its arrays, and return None in their
    place.
    """
    B, T, _ = x.shape
    _check_clip(clip_per_step)
    norms = np.zeros((B, T), dtype=x.dtype)
    dx = np.zeros_like(x)
    sums = into or GradSum(weight_ih, weight_hh, bias_ih is not None)
    dweight_ih, dweight_hh, dbias = sums.dweight_ih, sums.dweight_hh, sums.dbias_ih
    dh = dh_n.copy()  # dL/dh_t, carried backwards in time
    for t in _walk_back(T, reverse):
        valid = _valid(lengths, B, t)
        h_t = y[:, t]
        h_prev = _state_before(y, h0, lengths, t, reverse)
        dh_total = dh + dy[:, t]  # the state feeds both the loss at t and the step t+1
        dh_total, norms[:, t] = _step_options(dh_total, valid, clip_per_step)
        if nonlinearity == "tanh":
            da = (1 - h_t * h_t) * dh_total  # backprop through tanh
        else:
            da = (h_t > 0) * dh_total  # backprop through relu
        da = np.where(valid, da, 0)  # a finished sequence gets no gradient here
        dweight_ih += da.T @ x[:, t]
        dweight_hh += da.T @ h_prev
        dbias += da.sum(axis=0)
        dx[:, t] = da @ weight_ih
        dh = np.where(valid, da @ weight_hh, dh)  # a frozen state passes its gradient through
    sums.dbias_hh[...] = dbias  # b_hh enters as b_ih does
    out = (dx, dh, *((None,) * 4 if into else sums.result()[:4]))
    return out + (norms,) if grad_norms else out


class GradSum:
    """A layer's weight gradients, summed step by step by its backward.

    A checkpointed backward passes one as ``into`` to the backward of each segment, from the
    last: each adds its steps in the order one backward over all the steps would, so the sums
    are that backward's, bit for bit. The twin of ``rnnfast._core.GradSum32``/``64``.
    """

    def __init__(self, weight_ih, weight_hh, bias, weight_hr=None):
        self.bias = bool(bias)
        self.dweight_ih = np.zeros_like(weight_ih)
        self.dweight_hh = np.zeros_like(weight_hh)
        self.dbias_ih = np.zeros(weight_hh.shape[0], dtype=weight_hh.dtype)
        self.dbias_hh = np.zeros(weight_hh.shape[0], dtype=weight_hh.dtype)
        self.dweight_hr = None if weight_hr is None else np.zeros_like(weight_hr)

    def result(self):
        """``(dweight_ih, dweight_hh, dbias_ih, dbias_hh, dweight_hr)``, None for an absent
        one."""
        if not self.bias:
            return self.dweight_ih, self.dweight_hh, None, None, self.dweight_hr
        return self.dweight_ih, self.dweight_hh, self.dbias_ih, self.dbias_hh, self.dweight_hr


def _walk(T, reverse):
    """The order in which forward visits the steps."""
    return reversed(range(T)) if reverse else range(T)


def _walk_back(T, reverse):
    """The order in which backward visits the steps: forward's, reversed."""
    return range(T) if reverse else reversed(range(T))


def _state_before(saved, initial, lengths, t, reverse):
    """(B, H): the state step t started from. That is the state saved by the step walked just
    before it (t-1; t+1 with ``reverse``) where that step ran, else the initial state: at the
    first step, and, with ``reverse``, at a sequence's last valid step."""
    B, T = saved.shape[:2]
    before = t + 1 if reverse else t - 1
    if not 0 <= before < T:
        return initial
    return np.where(_valid(lengths, B, before), saved[:, before], initial)


def _valid(lengths, B, t):
    """(B, 1) mask of the sequences still running at step t."""
    if lengths is None:
        return np.ones((B, 1), dtype=bool)
    return (t < lengths)[:, None]


def _check_clip(clip_per_step):
    """Refuse a threshold that is NaN or infinite (0 or negative means off)."""
    if not np.isfinite(clip_per_step):
        raise ValueError(f"clip_per_step must be finite (0 or negative for off), got "
                         f"{clip_per_step!r}")


def _step_options(dh_total, valid, clip_per_step):
    """The per-step options of backward, on dh_total (B, H), the total dL/dh_t at one step.

    One sequence (row) at a time, so that a sequence's gradient does not depend on the rest of
    the batch. Returns ``(dh_total, norm)``: norm (B,) is each valid row's L2 norm before
    clipping (0 past the sequence's length); when clip_per_step > 0, every row whose norm
    exceeds it is rescaled to norm clip_per_step (rows past their length have norm 0 and are
    left as they are; backward does not use them).
    """
    norm = np.where(valid[:, 0], np.linalg.norm(dh_total, axis=1), 0)
    if clip_per_step > 0:
        # clip / max(norm, clip) is 1 when norm <= clip, and clip / norm when it is larger
        dh_total = dh_total * (clip_per_step / np.maximum(norm, clip_per_step))[:, None]
    return dh_total, norm
