"""The vanilla (Elman) RNN."""

import numpy as np

from . import _core, reference
from ._recurrent import Recurrent


class RNN(Recurrent):
    """A stack of vanilla RNN layers, trained by backpropagation through time.

    ``h_t = f(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)`` with f = tanh or relu; layer k's
    input is layer k-1's output sequence. Names, shapes and initialisation are PyTorch's
    (``torch.nn.RNN`` with ``batch_first=True``), so weights move between the two as they are.

    Parameters
    ----------
    input_size : int
        D, the features of each input step.
    hidden_size : int
        H, the units of each layer.
    num_layers : int, default 1
    nonlinearity : {"tanh", "relu"}, default "tanh"
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
        Raise ValueError when x, a state or dy holds NaN or Inf. The check is one pass over
        the array; switch it off only when the inputs are known to be finite.

    Attributes
    ----------
    params : dict of str to ndarray
        ``weight_ih_l{k}`` (H, D_k), ``weight_hh_l{k}`` (H, H), ``bias_ih_l{k}`` (H,),
        ``bias_hh_l{k}`` (H,): the live arrays, which optimisers update in place.

    Examples
    --------
    >>> import numpy as np, rnnfast
    >>> model = rnnfast.RNN(3, 8, num_layers=2, seed=0)
    >>> x = np.ones((4, 10, 3), dtype=np.float32)
    >>> y, h, cache = model.forward(x)
    >>> y.shape, h.shape
    ((4, 10, 8), (2, 4, 8))
    >>> dx, dh0, grads = model.backward(cache, np.ones_like(y))
    >>> grads["weight_hh_l1"].shape
    (8, 8)
    """

    gates = 1
    state_parts = 1
    saved_per_step = 0  # backward works from the outputs alone

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 bidirectional=False, dropout=0.0, dtype=np.float32, seed=None, backend="cpp",
                 check_finite=True):
        errors = []
        if nonlinearity not in ("tanh", "relu"):
            errors.append(ValueError(f"nonlinearity must be 'tanh' or 'relu', got "
                                     f"{nonlinearity!r}"))
        self.nonlinearity = nonlinearity
        super().__init__(input_size, hidden_size, num_layers, bias, bidirectional, dropout,
                         dtype, seed, backend, check_finite, errors)
        impl = _core if backend == "cpp" else reference
        self._forward_fn, self._backward_fn = impl.rnn_forward, impl.rnn_backward

    def _forward_args(self, x, state0, p, lengths, reverse):
        return (x, state0[0], *p[:4], lengths, self.nonlinearity, reverse)

    def _forward_out(self, out):
        y, h_n = out
        return y, (h_n,), ()

    def _backward_args(self, x, state0, y, saved, p, lengths, dy, dstate_n, step, reverse):
        return (x, state0[0], y, *p[:4], lengths, self.nonlinearity, dy, dstate_n[0],
                step["clip_per_step"], step["grad_norms"], reverse)

    def _backward_out(self, out):
        dx, dh0, *grads = out
        return dx, (dh0,), tuple(grads[:4]), *grads[4:]  # grads[4:]: the norms, if asked for

    def _config_extra(self):
        return {"nonlinearity": self.nonlinearity}

    def _repr_extra(self):
        return f", nonlinearity={self.nonlinearity!r}"
