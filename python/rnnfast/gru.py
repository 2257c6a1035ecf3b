"""The gated recurrent unit (GRU), in PyTorch's variant."""

import numpy as np

from . import _core, reference
from ._recurrent import Recurrent


class GRU(Recurrent):
    """A stack of GRU layers, trained by backpropagation through time.

    ``r, z = σ(W_ir x_t + b_ir + W_hr h_{t-1} + b_hr), σ(W_iz x_t + b_iz + W_hz h_{t-1} + b_hz)``;
    ``n = tanh(W_in x_t + b_in + r ⊙ (W_hn h_{t-1} + b_hn))``;
    ``h_t = (1 − z) ⊙ n + z ⊙ h_{t-1}``. Layer k's input is layer k-1's output sequence.

    This is PyTorch's (and cuDNN's) GRU: the reset gate multiplies ``W_hn h + b_hn``. In the
    original of Cho et al. (2014) it multiplies h before W_hn, ``W_hn (r ⊙ h)``, which is a
    different function of the same weights. Names, shapes, gate order and initialisation are
    PyTorch's (``torch.nn.GRU`` with ``batch_first=True``), so weights move between the two as
    they are.

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
        ``weight_ih_l{k}`` (3H, D_k), ``weight_hh_l{k}`` (3H, H), ``bias_ih_l{k}`` (3H,),
        ``bias_hh_l{k}`` (3H,), rows in the gate order r, z, n: the live arrays, which
        optimisers update in place.

    Notes
    -----
    Memory: per layer, the forward cache keeps the outputs y and, for backward, the activated
    r, z, n and ``W_hn h_{t-1} + b_hn`` at every step, 1 + 4 = 5 values per (b, t, unit):
    20 bytes per (B, T, H) in float32, 40 in float64 (plus layer 0's input x).

    Examples
    --------
    >>> import numpy as np, rnnfast
    >>> model = rnnfast.GRU(3, 8, num_layers=2, seed=0)
    >>> x = np.ones((4, 10, 3), dtype=np.float32)
    >>> y, h, cache = model.forward(x)
    >>> y.shape, h.shape
    ((4, 10, 8), (2, 4, 8))
    >>> dx, dh0, grads = model.backward(cache, np.ones_like(y))
    >>> grads["weight_hh_l1"].shape
    (24, 8)
    """

    gates = 3
    state_parts = 1
    saved_per_step = 4  # the activated r, z, n and W_hn h_{t-1} + b_hn

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, bidirectional=False,
                 dropout=0.0, dtype=np.float32, seed=None, backend="cpp", check_finite=True):
        super().__init__(input_size, hidden_size, num_layers, bias, bidirectional, dropout,
                         dtype, seed, backend, check_finite)
        impl = _core if backend == "cpp" else reference
        self._forward_fn, self._backward_fn = impl.gru_forward, impl.gru_backward

    def _forward_args(self, x, state0, p, lengths, reverse):
        return (x, state0[0], *p[:4], lengths, reverse)

    def _forward_out(self, out):
        y, h_n, gates, a_hn = out
        return y, (h_n,), (gates, a_hn)

    def _backward_args(self, x, state0, y, saved, p, lengths, dy, dstate_n, step, reverse):
        gates, a_hn = saved
        return (x, state0[0], y, gates, a_hn, *p[:4], lengths, dy, dstate_n[0],
                step["clip_per_step"], step["grad_norms"], reverse)

    def _backward_out(self, out):
        dx, dh0, *grads = out
        return dx, (dh0,), tuple(grads[:4]), *grads[4:]  # grads[4:]: the norms, if asked for
