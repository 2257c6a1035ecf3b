"""The long short-term memory network (LSTM)."""

import numpy as np

from . import _checks, _core, reference
from ._recurrent import Recurrent


class LSTM(Recurrent):
    """A stack of LSTM layers, trained by backpropagation through time.

    ``i, f, g, o = σ, σ, tanh, σ of (W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)``, split in that
    order; ``c_t = f ⊙ c_{t-1} + i ⊙ g``; ``h_t = o ⊙ tanh(c_t)``, or with a projection
    ``h_t = W_hr (o ⊙ tanh(c_t))``. Layer k's input is layer k-1's output sequence. Names, shapes, gate order and initialisation are PyTorch's
    (``torch.nn.LSTM`` with ``batch_first=True``), so weights move between the two as they are.

    Parameters
    ----------
    input_size : int
        D, the features of each input step.
    hidden_size : int
        H, the units of each layer.
    num_layers : int, default 1
    bias : bool, default True
        Whether the layers have ``bias_ih_l{k}`` and ``bias_hh_l{k}``.
    bidirectional : bool, default False
        Whether every layer also runs over the sequence backwards (PyTorch's reverse
        direction): outputs are ``[forward, reverse]`` along the features, the state has
        two rows per layer (layer 0 forward, layer 0 reverse, layer 1 forward, ...), and
        layer k > 0 reads both directions' outputs. Parameters of the reverse direction are
        named ``..._l{k}_reverse``. With ``lengths``, a sequence's reverse direction starts
        at its last valid step. With two threads allowed (``rnnfast.set_num_threads``) the
        two directions of a layer run at the same time.
    dropout : float in [0, 1), default 0.0
        Dropout on the outputs of every layer but the last, as ``torch.nn``: applied by
        ``forward`` (training) with masks drawn from the model's own generator (seeded by
        ``seed``; ``rng_state`` saves and restores it) and kept for ``backward``; never by
        the inference call ``model(x)``.
    proj_size : int in [0, hidden_size), default 0
        P > 0 projects every h_t to P units by ``weight_hr_l{k}`` (P, H) (Sak et al. 2014,
        as ``torch.nn.LSTM(proj_size=P)``): h, the outputs and the columns of W_hh have P
        units, the cell state c keeps H.
    dtype : numpy.float32 or numpy.float64, default float32
        Of the parameters and all computation; inputs of another floating dtype are converted.
    seed : int or None
        Seeds the initialisation U(-1/sqrt(H), 1/sqrt(H)); the same seed gives the same
        weights in float32 and float64.
    backend : {"cpp", "numpy"}, default "cpp"
        "cpp" runs the compiled time loops; "numpy" the reference implementation
        (``rnnfast.reference``), slow and readable, with the same results.
    check_finite : bool, default True
        Raise ValueError when x, a state or dy holds NaN or Inf.

    Attributes
    ----------
    params : dict of str to ndarray
        ``weight_ih_l{k}`` (4H, D_k), ``weight_hh_l{k}`` (4H, S), ``bias_ih_l{k}`` (4H,),
        ``bias_hh_l{k}`` (4H,), rows in the gate order i, f, g, o, and ``weight_hr_l{k}``
        (P, H) with a projection; S = P or H, D_0 = input_size, D_k = num_directions * S.
        The live arrays, which optimisers update in place.
    output_size : int
        num_directions * S, the features of each output step.

    Notes
    -----
    The state is the tuple ``(h, c)``, h (num_directions * num_layers, B, S) and c
    (num_directions * num_layers, B, H); so are ``dstate`` and the gradient with respect to the
    initial state.

    Memory: per layer, the forward cache keeps the outputs y and, for backward, the activated
    gates and c_t at every step, 1 + 5 = 6 values per (b, t, unit): 24 bytes per (B, T, H) in
    float32, 48 in float64 (plus layer 0's input x), with y S wide. tanh(c_t) and, with a
    projection, o ⊙ tanh(c_t) are recomputed in backward rather than kept.

    Examples
    --------
    >>> import numpy as np, rnnfast
    >>> model = rnnfast.LSTM(3, 8, num_layers=2, seed=0)
    >>> x = np.ones((4, 10, 3), dtype=np.float32)
    >>> y, (h, c), cache = model.forward(x)
    >>> y.shape, h.shape, c.shape
    ((4, 10, 8), (2, 4, 8), (2, 4, 8))
    >>> dx, (dh0, dc0), grads = model.backward(cache, np.ones_like(y))
    >>> grads["weight_hh_l1"].shape
    (32, 8)
    """

    gates = 4
    state_parts = 2
    saved_per_step = 5  # the activated i, f, g, o and c_t

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, bidirectional=False,
                 dropout=0.0, proj_size=0, dtype=np.float32, seed=None, backend="cpp",
                 check_finite=True):
        errors = []
        self.proj_size = _checks.collect(errors, _checks.proj_size, proj_size, hidden_size) or 0
        super().__init__(input_size, hidden_size, num_layers, bias, bidirectional, dropout,
                         dtype, seed, backend, check_finite, errors)
        impl = _core if backend == "cpp" else reference
        self._forward_fn, self._backward_fn = impl.lstm_forward, impl.lstm_backward

    def _forward_args(self, x, state0, p, lengths, reverse):
        h0, c0 = state0
        return (x, h0, c0, *p[:4], lengths, reverse, p[4])

    def _forward_out(self, out):
        y, h_n, c_n, gates, c = out
        return y, (h_n, c_n), (gates, c)

    def _backward_args(self, x, state0, y, saved, p, lengths, dy, dstate_n, step, reverse):
        (h0, c0), (gates, c), (dh_n, dc_n) = state0, saved, dstate_n
        return (x, h0, c0, y, gates, c, *p[:4], lengths, dy, dh_n, dc_n, step["clip_per_step"],
                step["grad_norms"], reverse, p[4])

    def _backward_out(self, out):
        dx, dh0, dc0, *grads = out
        return dx, (dh0, dc0), tuple(grads[:5]), *grads[5:]  # grads[5:]: the norms, if asked for
