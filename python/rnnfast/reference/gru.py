"""NumPy reference of one GRU layer: the ground truth the C++ path is tested against.

    r = σ(W_ir x_t + b_ir + W_hr h_{t-1} + b_hr)
    z = σ(W_iz x_t + b_iz + W_hz h_{t-1} + b_hz)
    n = tanh(W_in x_t + b_in + r ⊙ (W_hn h_{t-1} + b_hn))
    h_t = (1 − z) ⊙ n + z ⊙ h_{t-1}

The reset gate multiplies ``W_hn h + b_hn``, as in PyTorch and cuDNN, not h before W_hn as in
Cho et al. (2014). Shapes: x (B, T, D), h0 (B, H), weight_ih (3H, D), weight_hh (3H, H),
biases (3H,) or None, lengths (B,) integers or None. Gate order is PyTorch's (r, z, n).
Written for clarity, one timestep at a time; the functions take and return exactly what
``rnnfast._core.gru_forward`` / ``gru_backward`` do. ``reverse=True`` walks time the other way
(see ``rnn``).
"""

import numpy as np

from .lstm import _sigmoid
from .rnn import GradSum, _check_clip, _state_before, _step_options, _valid, _walk, _walk_back


def gru_forward(x, h0, weight_ih, weight_hh, bias_ih, bias_hh, lengths, reverse=False):
    """Run one layer over the sequence.

    Returns ``(y, h_n, gates, a_hn)``: y (B, T, H) the outputs, zero past each sequence's
    length; h_n (B, H) the state after each sequence's last valid step; and what backward
    needs: gates (B, T, 3H), the activated r, z, n, and a_hn (B, T, H), the recurrent term
    ``W_hn h_{t-1} + b_hn`` that r multiplies (both zero past each sequence's length).
    """
    B, T, _ = x.shape
    H = weight_hh.shape[1]
    y = np.zeros((B, T, H), dtype=x.dtype)
    gates = np.zeros((B, T, 3 * H), dtype=x.dtype)
    a_hn_all = np.zeros((B, T, H), dtype=x.dtype)
    h = h0.copy()
    for t in _walk(T, reverse):
        ax = x[:, t] @ weight_ih.T  # input side of all three gates
        ah = h @ weight_hh.T  # recurrent side of all three gates
        if bias_ih is not None:
            ax = ax + bias_ih
            ah = ah + bias_hh
        ax_r, ax_z, a_in = np.split(ax, 3, axis=1)  # PyTorch's gate order
        ah_r, ah_z, a_hn = np.split(ah, 3, axis=1)
        r = _sigmoid(ax_r + ah_r)
        z = _sigmoid(ax_z + ah_z)
        n = np.tanh(a_in + r * a_hn)
        h_new = (1 - z) * n + z * h
        valid = _valid(lengths, B, t)
        h = np.where(valid, h_new, h)  # a finished sequence keeps its state
        y[:, t] = np.where(valid, h_new, 0)  # ... and outputs zeros
        gates[:, t] = np.where(valid, np.concatenate([r, z, n], axis=1), 0)
        a_hn_all[:, t] = np.where(valid, a_hn, 0)
    return y, h, gates, a_hn_all


def gru_backward(x, h0, y, gates, a_hn, weight_ih, weight_hh, bias_ih, bias_hh, lengths, dy,
                 dh_n, clip_per_step=0.0, grad_norms=False, reverse=False, into=None):
    """Backpropagate through time, from t = T-1 down to 0 (from 0 up with ``reverse``).

    ``y``, ``gates`` and ``a_hn`` are what ``gru_forward`` returned; ``dy`` (B, T, H) and
    ``dh_n`` (B, H) are the gradients of the loss with respect to the outputs and the final
    state. Returns ``(dx, dh0, dweight_ih, dweight_hh, dbias_ih, dbias_hh)``; the bias
    gradients are None when the layer has no bias. The two bias gradients differ in their n
    part: b_in enters n directly, b_hn through r.

    Per-step options (see ``rnn._step_options``): ``clip_per_step`` > 0 rescales each
    sequence's dL/dh_t to that norm whenever it is larger (0 or negative: off); with
    ``grad_norms`` the tuple gains a last item, norms (B, T), each sequence's ||dL/dh_t||
    before clipping.

    ``into`` (a ``GradSum``): add the weight gradients to its arrays, and return None in their
    place.
    """
    B, T, _ = x.shape
    _check_clip(clip_per_step)
    norms = np.zeros((B, T), dtype=x.dtype)
    dx = np.zeros_like(x)
    sums = into or GradSum(weight_ih, weight_hh, bias_ih is not None)
    dweight_ih, dweight_hh = sums.dweight_ih, sums.dweight_hh
    dbias_ih, dbias_hh = sums.dbias_ih, sums.dbias_hh
    dh = dh_n.copy()  # dL/dh_t, carried backwards in time
    for t in _walk_back(T, reverse):
        valid = _valid(lengths, B, t)
        r, z, n = np.split(gates[:, t], 3, axis=1)
        h_prev = _state_before(y, h0, lengths, t, reverse)
        dh_total = dh + dy[:, t]  # h_t feeds both the loss at t and the step t+1
        dh_total, norms[:, t] = _step_options(dh_total, valid, clip_per_step)
        # h_t = (1 - z) * n + z * h_{t-1}
        dn = dh_total * (1 - z)
        dz = dh_total * (h_prev - n)
        dh_direct = dh_total * z
        # n = tanh(a_in + r * a_hn): backprop through tanh, from its output
        da_in = dn * (1 - n * n)
        dr = da_in * a_hn[:, t]
        da_hn = da_in * r
        # r, z = σ(a_r), σ(a_z): backprop through σ, from its output
        da_r = dr * r * (1 - r)
        da_z = dz * z * (1 - z)
        # the input side [a_r a_z a_in] = x_t W_ih^T + b_ih
        dax = np.where(valid, np.concatenate([da_r, da_z, da_in], axis=1), 0)
        # the recurrent side [a_r a_z a_hn] = h_{t-1} W_hh^T + b_hh
        dah = np.where(valid, np.concatenate([da_r, da_z, da_hn], axis=1), 0)
        dweight_ih += dax.T @ x[:, t]
        dbias_ih += dax.sum(axis=0)
        dx[:, t] = dax @ weight_ih
        dweight_hh += dah.T @ h_prev
        dbias_hh += dah.sum(axis=0)
        # h_{t-1} enters through the recurrent side and directly; a frozen state passes
        # its gradient through unchanged
        dh = np.where(valid, dah @ weight_hh + dh_direct, dh)
    out = (dx, dh, *((None,) * 4 if into else sums.result()[:4]))
    return out + (norms,) if grad_norms else out
