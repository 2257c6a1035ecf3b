"""NumPy reference of one LSTM layer: the ground truth the C++ path is tested against.

    i, f, g, o = σ, σ, tanh, σ of (W_ih x_t + b_ih + W_hh h_{t-1} + b_hh), split in that order
    c_t = f ⊙ c_{t-1} + i ⊙ g
    h_t = o ⊙ tanh(c_t),  or with a projection  h_t = W_hr (o ⊙ tanh(c_t))

Shapes: x (B, T, D), h0 (B, S) and c0 (B, H), weight_ih (4H, D), weight_hh (4H, S), biases
(4H,) or None, weight_hr (P, H) or None, lengths (B,) integers or None; S = P with a
projection, else H. Gate order is PyTorch's (i, f, g, o). Written for clarity,
one timestep at a time; the functions take and return exactly what
``rnnfast._core.lstm_forward`` / ``lstm_backward`` do. ``reverse=True`` walks time the other
way (see ``rnn``).
"""

import numpy as np

from .rnn import GradSum, _check_clip, _state_before, _step_options, _valid, _walk, _walk_back


def lstm_forward(x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, lengths, reverse=False,
                 weight_hr=None):
    """Run one layer over the sequence.

    Returns ``(y, h_n, c_n, gates, c)``: y (B, T, S) the outputs, zero past each sequence's
    length; h_n (B, S), c_n (B, H) the states after each sequence's last valid step; and what
    backward needs: gates (B, T, 4H), the activated i, f, g, o, and c (B, T, H), the cell
    state after every step (both zero past each sequence's length).
    """
    B, T, _ = x.shape
    H = weight_hh.shape[0] // 4
    S = weight_hh.shape[1]
    y = np.zeros((B, T, S), dtype=x.dtype)
    gates = np.zeros((B, T, 4 * H), dtype=x.dtype)
    c_all = np.zeros((B, T, H), dtype=x.dtype)
    h, c = h0.copy(), c0.copy()
    for t in _walk(T, reverse):
        a = x[:, t] @ weight_ih.T + h @ weight_hh.T  # pre-activations of all four gates
        if bias_ih is not None:
            a = a + bias_ih + bias_hh
        a_i, a_f, a_g, a_o = np.split(a, 4, axis=1)  # PyTorch's gate order
        i, f, g, o = _sigmoid(a_i), _sigmoid(a_f), np.tanh(a_g), _sigmoid(a_o)
        c_new = f * c + i * g
        h_new = o * np.tanh(c_new)
        if weight_hr is not None:
            h_new = h_new @ weight_hr.T  # the projection
        valid = _valid(lengths, B, t)
        h = np.where(valid, h_new, h)  # a finished sequence keeps both states
        c = np.where(valid, c_new, c)
        y[:, t] = np.where(valid, h_new, 0)  # ... and outputs zeros
        gates[:, t] = np.where(valid, np.concatenate([i, f, g, o], axis=1), 0)
        c_all[:, t] = np.where(valid, c_new, 0)
    return y, h, c, gates, c_all


def lstm_backward(x, h0, c0, y, gates, c, weight_ih, weight_hh, bias_ih, bias_hh, lengths,
                  dy, dh_n, dc_n, clip_per_step=0.0, grad_norms=False, reverse=False,
                  weight_hr=None, into=None):
    """Backpropagate through time, from t = T-1 down to 0 (from 0 up with ``reverse``).

    ``y``, ``gates`` and ``c`` are what ``lstm_forward`` returned; ``dy`` (B, T, H), ``dh_n``
    and ``dc_n`` (B, H) are the gradients of the loss with respect to the outputs and the final
    states. Returns ``(dx, dh0, dc0, dweight_ih, dweight_hh, dbias_ih, dbias_hh,
    dweight_hr)``; the bias gradients are None when the layer has no bias, dweight_hr without
    a projection.

    Per-step options, on dL/dh_t only (the cell path dc is never clipped): ``clip_per_step``
    > 0 rescales each sequence's dL/dh_t to that norm whenever it is larger (0 or negative:
    off); with ``grad_norms`` the tuple gains a last item, norms (B, T), each sequence's
    ||dL/dh_t|| before clipping. See ``rnn._step_options``.

    ``into`` (a ``GradSum``): add the weight gradients to its arrays, and return None in their
    place.
    """
    B, T, _ = x.shape
    _check_clip(clip_per_step)
    norms = np.zeros((B, T), dtype=x.dtype)
    dx = np.zeros_like(x)
    sums = into or GradSum(weight_ih, weight_hh, bias_ih is not None, weight_hr)
    dweight_ih, dweight_hh, dbias = sums.dweight_ih, sums.dweight_hh, sums.dbias_ih
    dweight_hr = sums.dweight_hr
    dh, dc = dh_n.copy(), dc_n.copy()  # dL/dh_t and dL/dc_t, carried backwards in time
    for t in _walk_back(T, reverse):
        valid = _valid(lengths, B, t)
        i, f, g, o = np.split(gates[:, t], 4, axis=1)
        h_prev = _state_before(y, h0, lengths, t, reverse)
        c_prev = _state_before(c, c0, lengths, t, reverse)
        tanh_c = np.tanh(c[:, t])
        dh_total = dh + dy[:, t]  # h_t feeds both the loss at t and the step t+1
        dh_total, norms[:, t] = _step_options(dh_total, valid, clip_per_step)  # dc: not clipped
        dm = dh_total
        if weight_hr is not None:
            # h_t = m_t W_hr^T with m_t = o * tanh(c_t) (zero past a sequence's length)
            dweight_hr += dh_total.T @ (o * tanh_c)
            dm = dh_total @ weight_hr
        # m_t = o * tanh(c_t)
        do = dm * tanh_c
        dc_total = dc + dm * o * (1 - tanh_c * tanh_c)  # c_t feeds h_t and c_{t+1}
        # c_t = f * c_{t-1} + i * g
        di = dc_total * g
        df = dc_total * c_prev
        dg = dc_total * i
        # i, f, g, o = σ(a_i), σ(a_f), tanh(a_g), σ(a_o): backprop through each, from outputs
        da = np.concatenate([di * i * (1 - i), df * f * (1 - f), dg * (1 - g * g),
                             do * o * (1 - o)], axis=1)
        da = np.where(valid, da, 0)  # a finished sequence gets no gradient here
        # a = x_t W_ih^T + h_{t-1} W_hh^T + b_ih + b_hh
        dweight_ih += da.T @ x[:, t]
        dweight_hh += da.T @ h_prev
        dbias += da.sum(axis=0)
        dx[:, t] = da @ weight_ih
        # frozen states pass their gradients through unchanged
        dh = np.where(valid, da @ weight_hh, dh)
        dc = np.where(valid, dc_total * f, dc)
    sums.dbias_hh[...] = dbias  # b_hh enters as b_ih does
    out = (dx, dh, dc, *((None,) * 5 if into else sums.result()))
    return out + (norms,) if grad_norms else out


def _sigmoid(a):
    """σ(a) = (1 + tanh(a/2)) / 2: the same function as 1 / (1 + exp(-a)), but exp cannot
    overflow, so saturated gates are exactly 0 or 1 even in float32."""
    return 0.5 * (1 + np.tanh(0.5 * a))
