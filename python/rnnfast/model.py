"""A recurrent stack with a read-out at every step: the model people train."""

from ._recurrent import Recurrent
from .linear import Linear


class ModelCache:
    """What ``Model.backward`` needs: the two parts' caches. Treat it as opaque."""

    def __init__(self, owner, recurrent, readout):
        self.owner = owner
        self.recurrent = recurrent
        self.readout = readout


class Model:
    """``logits_t = readout(recurrent(x)_t)``: an RNN, LSTM or GRU followed by a ``Linear``.

    Parameters
    ----------
    recurrent : RNN, LSTM or GRU
    readout : Linear
        Its ``in_features`` must equal the recurrent model's ``hidden_size``, and the two
        must share a dtype.

    Attributes
    ----------
    params : dict
        Every parameter of both parts, as live arrays, named ``recurrent.<name>`` and
        ``readout.<name>``; ``backward``'s grads use the same names.
    """

    def __init__(self, recurrent, readout):
        if not isinstance(recurrent, Recurrent):
            raise TypeError(f"recurrent must be an rnnfast RNN, LSTM or GRU, got "
                            f"{type(recurrent).__name__}")
        if not isinstance(readout, Linear):
            raise TypeError(f"readout must be an rnnfast.Linear, got {type(readout).__name__}")
        if readout.in_features != recurrent.hidden_size:
            raise ValueError(f"readout.in_features must equal recurrent.hidden_size = "
                             f"{recurrent.hidden_size}, got {readout.in_features}")
        if readout.dtype != recurrent.dtype:
            raise ValueError(f"readout's dtype must be the recurrent model's {recurrent.dtype}, "
                             f"got {readout.dtype}")
        self.recurrent = recurrent
        self.readout = readout
        self._token = object()

    @property
    def dtype(self):
        return self.recurrent.dtype

    @property
    def params(self):
        return {**{f"recurrent.{k}": v for k, v in self.recurrent.params.items()},
                **{f"readout.{k}": v for k, v in self.readout.params.items()}}

    def __call__(self, x, state=None, lengths=None):
        """Inference: ``logits, state = model(x, state=None, lengths=None)``."""
        h, state = self.recurrent(x, state, lengths)
        return self.readout.forward(h, check_finite=False)[0], state

    def forward(self, x, state=None, lengths=None):
        """``x`` (B, T, D) -> logits (B, T, out_features), the final state, and the cache."""
        h, state, rec_cache = self.recurrent.forward(x, state, lengths)
        # h is ours, not the user's: an overflow in it must reach the loss, not raise here.
        logits, out_cache = self.readout.forward(h, check_finite=False)
        return logits, state, ModelCache(self._token, rec_cache, out_cache)

    def backward(self, cache, dlogits, dstate=None, **options):
        """Returns ``dx, dstate0, grads``; ``options`` go to the recurrent model's backward
        (``clip_per_step``, ``return_grad_norms``: see ``RNN.backward``). With
        ``return_grad_norms=True`` a fourth value follows: the (num_layers, T) norms of
        dL/dh_t."""
        if not isinstance(cache, ModelCache) or cache.owner is not self._token:
            raise ValueError("cache must be the cache returned by this model's forward")
        dh, out_grads = self.readout.backward(cache.readout, dlogits)
        dx, dstate0, rec_grads, *norms = self.recurrent.backward(
            cache.recurrent, dh, dstate, check_finite=False, **options)  # dh is ours
        grads = {**{f"recurrent.{k}": v for k, v in rec_grads.items()},
                 **{f"readout.{k}": v for k, v in out_grads.items()}}
        return dx, dstate0, grads, *norms

    def config(self):
        """The constructor arguments of both parts, for checkpoints."""
        return {"recurrent": self.recurrent.config(), "readout": self.readout.config()}

    def __repr__(self):
        return f"Model({self.recurrent!r}, {self.readout!r})"

