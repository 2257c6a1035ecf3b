"""The model people train: a recurrent stack and a read-out, optionally fed by an embedding
and pooled over time.

    x (B, T, D) or ids (B, T) -> [embedding] -> recurrent -> [pool over time] -> readout

Letters: B = batch, T = timesteps, D = input features, F = the recurrent stack's output
features (num_directions · hidden_size), C = the read-out's outputs.
"""

import numpy as np

from . import _checks
from ._recurrent import Recurrent
from .embedding import Embedding, as_ids, refuse_ids
from .linear import Linear

POOLS = ("last", "mean")


def pool_forward(y, lengths, kind, num_directions=1):
    """One vector per sequence from the recurrent outputs: (B, T, F) -> (B, F).

    Parameters
    ----------
    y : ndarray (B, T, F)
        The outputs of a stack with ``num_directions`` directions, the forward direction's
        F / num_directions features first.
    lengths : int ndarray (B,) or None
        Valid steps of each sequence (all T when None); every one must be at least 1.
    kind : {"last", "mean"}
        ``"last"``: each direction's output after it has read the whole sequence, as
        PyTorch's ``h_n`` of the last layer: the forward half at step lengths[b] - 1, the
        reverse half at step 0. ``"mean"``: the mean over the valid steps.
    num_directions : {1, 2}
    """
    B, T, F = y.shape
    lengths = _pool_lengths(lengths, B, T, kind)
    if kind == "mean":
        valid = (np.arange(T) < lengths[:, None]).astype(y.dtype)  # (B, T)
        return (y * valid[:, :, None]).sum(axis=1) / lengths[:, None].astype(y.dtype)
    forward_features = F // num_directions
    pooled = y[np.arange(B), lengths - 1]  # (B, F), a copy
    pooled[:, forward_features:] = y[:, 0, forward_features:]
    return pooled


def pool_backward(dpooled, lengths, kind, T, num_directions=1):
    """Backward of ``pool_forward``: (B, F) -> dy (B, T, F), zero at the steps the pool did
    not read (steps past a sequence's length among them)."""
    B, F = dpooled.shape
    lengths = _pool_lengths(lengths, B, T, kind)
    if kind == "mean":
        # pooled = Σ_{t < len} y_t / len  =>  dy_t = dpooled / len for t < len, else 0
        valid = (np.arange(T) < lengths[:, None]).astype(dpooled.dtype)  # (B, T)
        return valid[:, :, None] * (dpooled / lengths[:, None].astype(dpooled.dtype))[:, None]
    forward_features = F // num_directions
    dy = np.zeros((B, T, F), dpooled.dtype)
    # pooled[:, :Ff] = y[b, len - 1, :Ff]; pooled[:, Ff:] = y[:, 0, Ff:] (disjoint features)
    dy[np.arange(B), lengths - 1, :forward_features] = dpooled[:, :forward_features]
    dy[:, 0, forward_features:] = dpooled[:, forward_features:]
    return dy


def _pool_lengths(lengths, B, T, kind):
    """``lengths`` checked for pooling (T each when None): a sequence of no step has nothing
    to pool, so every length must be at least 1."""
    if kind not in POOLS:
        raise ValueError(f"pool must be one of {POOLS} or None, got {kind!r}")
    if lengths is None:
        if T == 0 and B:
            raise ValueError(f"the input has T = 0 steps: there is nothing for pool={kind!r} "
                             f"to pool")
        return np.full(B, T)
    lengths = _checks.as_lengths(lengths, B, T)
    if B and lengths.min() == 0:
        b = int(np.argmin(lengths))
        raise ValueError(f"lengths must be at least 1 with pool={kind!r}, got 0 at index {b}")
    return lengths


class ModelCache:
    """What ``Model.backward`` needs: the parts' caches, and for a pooled model the lengths
    and T. Treat it as opaque."""

    def __init__(self, owner, embedding, recurrent, pool, readout):
        self.owner = owner
        self.embedding = embedding
        self.recurrent = recurrent
        self.pool = pool  # (lengths, T) or None
        self.readout = readout


class Model:
    """``logits = readout(pool(recurrent(embedding(x))))``, where embedding and pool are
    optional: an RNN, LSTM or GRU followed by a ``Linear``, per step or per sequence.

    Two common models, each one expression::

        # token ids -> embedding -> 2-layer bidirectional LSTM -> last states -> classes
        rnnfast.Model(rnnfast.LSTM(64, 128, num_layers=2, bidirectional=True, dropout=0.3),
                      rnnfast.Linear(256, 5), embedding=rnnfast.Embedding(4000, 64,
                      padding_idx=0), pool="last")
        # characters -> embedding -> LSTM -> next character at every step
        rnnfast.Model(rnnfast.LSTM(32, 256), rnnfast.Linear(256, 96),
                      embedding=rnnfast.Embedding(96, 32))

    Why fixed, optional slots and not a general chain of layers: the recurrent stack takes and
    returns a state and ``lengths`` that no other layer has, the pool needs the lengths and
    the stack's directions, and the training loop must know whether the logits are per step
    or per sequence. A general chain would carry all of that through every layer; the four
    slots cover the models people bring from PyTorch (sequence classifiers, language models,
    sequence taggers), keep the parameter names of checkpoints stable, and fit on one screen.

    Parameters
    ----------
    recurrent : RNN, LSTM or GRU
    readout : Linear
        Its ``in_features`` must equal the recurrent model's ``output_size``
        (num_directions · hidden_size), and its dtype the recurrent model's.
    embedding : Embedding, optional
        When given, the model takes integer ids (B, T) instead of features (B, T, D); its
        ``embedding_dim`` must equal the recurrent model's ``input_size``, and the dtypes
        must agree.
    pool : {None, "last", "mean"}
        None: logits at every step, (B, T, C). Otherwise one vector per sequence is taken
        from the recurrent outputs before the read-out (see ``pool_forward``), and the logits
        are (B, C): ``"last"``, the last valid step of each direction as PyTorch's ``h_n``
        (forward half at step lengths[b] - 1, reverse half at step 0); ``"mean"``, the mean
        over the valid steps. Every sequence needs at least one step. Train a pooled model
        by full BPTT with ``fit(..., loss="cross_entropy")`` and class targets (B,), or
        ``loss="mse"`` and targets (B, C).

    Attributes
    ----------
    params : dict
        Every parameter of the parts, as live arrays, named ``embedding.weight`` (with an
        embedding), ``recurrent.<name>`` and ``readout.<name>``; ``backward``'s grads use the
        same names.
    """

    def __init__(self, recurrent, readout, embedding=None, pool=None):
        if not isinstance(recurrent, Recurrent):
            raise TypeError(f"recurrent must be an rnnfast RNN, LSTM or GRU, got "
                            f"{type(recurrent).__name__}")
        if not isinstance(readout, Linear):
            raise TypeError(f"readout must be an rnnfast.Linear, got {type(readout).__name__}")
        if embedding is not None and not isinstance(embedding, Embedding):
            raise TypeError(f"embedding must be an rnnfast.Embedding or None, got "
                            f"{type(embedding).__name__}")
        if pool is not None and pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS} or None, got {pool!r}")
        # Until every recurrent model has output_size, a unidirectional one's is hidden_size.
        features = getattr(recurrent, "output_size", recurrent.hidden_size)
        if readout.in_features != features:
            raise ValueError(f"readout.in_features must equal recurrent.output_size "
                             f"(num_directions * hidden_size) = {features}, got "
                             f"{readout.in_features}")
        if readout.dtype != recurrent.dtype:
            raise ValueError(f"readout's dtype must be the recurrent model's {recurrent.dtype}, "
                             f"got {readout.dtype}")
        if embedding is not None:
            if embedding.embedding_dim != recurrent.input_size:
                raise ValueError(f"embedding.embedding_dim must equal recurrent.input_size = "
                                 f"{recurrent.input_size}, got {embedding.embedding_dim}")
            if embedding.dtype != recurrent.dtype:
                raise ValueError(f"embedding's dtype must be the recurrent model's "
                                 f"{recurrent.dtype}, got {embedding.dtype}")
        self.recurrent = recurrent
        self.readout = readout
        self.embedding = embedding
        self.pool = pool
        self._token = object()

    @property
    def dtype(self):
        """The dtype of the parameters and of every computation: the recurrent model's."""
        return self.recurrent.dtype

    @property
    def rng_state(self):
        """The recurrent model's ``rng_state`` (dropout's generator), for checkpoints.

        Reading it raises AttributeError when the recurrent model has none, so that
        ``hasattr(model, "rng_state")`` tells whether there is one.
        """
        return self.recurrent.rng_state

    @rng_state.setter
    def rng_state(self, state):
        self.recurrent.rng_state = state

    def _parts(self):
        """(prefix, part) in the order data flows through them."""
        parts = [("embedding", self.embedding)] if self.embedding is not None else []
        return parts + [("recurrent", self.recurrent), ("readout", self.readout)]

    @property
    def params(self):
        """Every part's live parameter arrays, in one new dict at each access, named
        ``embedding.weight``, ``recurrent.<name>`` and ``readout.<name>``."""
        return {f"{prefix}.{k}": v for prefix, part in self._parts()
                for k, v in part.params.items()}

    def __call__(self, x, state=None, lengths=None):
        """Inference: ``logits, state = model(x, state=None, lengths=None)``, without dropout.
        See ``forward``."""
        logits, state, _ = self._run(x, state, lengths, train=False)
        return logits, state

    def forward(self, x, state=None, lengths=None, checkpoint=None):
        """The training pass (the recurrent model's dropout on), keeping what backward needs.

        Parameters
        ----------
        x : ndarray (B, T, D) of real features, or with an embedding integer ids (B, T)
        state, lengths, checkpoint : as for the recurrent model's ``forward``

        Returns
        -------
        logits : ndarray (B, T, C), or (B, C) with a pool
        state : the recurrent model's final state
        cache : ModelCache
        """
        return self._run(x, state, lengths, train=True, checkpoint=checkpoint)

    def _run(self, x, state, lengths, train, checkpoint=None):
        emb_cache = rec_cache = pool_cache = None
        if self.embedding is None:
            refuse_ids(x, "x")
        else:
            # checked here too, so that an error names the model's argument
            x, emb_cache = self.embedding.forward(as_ids(x, "x", self.embedding.num_embeddings))
        if train:
            h, state, rec_cache = self.recurrent.forward(x, state, lengths, checkpoint=checkpoint)
        else:
            h, state = self.recurrent(x, state, lengths)
        if self.pool is not None:
            B, T = h.shape[:2]
            lengths = _checks.as_lengths(lengths, B, T)
            h = pool_forward(h, lengths, self.pool, self._directions())
            pool_cache = (lengths, T)
        # h is ours, not the user's: an overflow in it must reach the loss, not raise here.
        logits, out_cache = self.readout.forward(h, check_finite=False)
        cache = ModelCache(self._token, emb_cache, rec_cache, pool_cache, out_cache) \
            if train else None
        return logits, state, cache

    def _directions(self):
        return getattr(self.recurrent, "num_directions", 1)

    def backward(self, cache, dlogits, dstate=None, **options):
        """Returns ``dx, dstate0, grads``; ``options`` go to the recurrent model's backward
        (``clip_per_step``, ``return_grad_norms``: see ``RNN.backward``). With
        ``return_grad_norms=True`` a fourth value follows: the norms of dL/dh_t.

        ``dlogits`` has the shape of the logits, (B, T, C) or with a pool (B, C). With an
        embedding, ``dx`` is None (integer ids have no gradient) and the gradient reaches
        ``embedding.weight`` instead.
        """
        if not isinstance(cache, ModelCache) or cache.owner is not self._token:
            raise ValueError("cache must be the cache returned by this model's forward")
        dh, out_grads = self.readout.backward(cache.readout, dlogits)
        if self.pool is not None:
            lengths, T = cache.pool
            dh = pool_backward(dh, lengths, self.pool, T, self._directions())
        dx, dstate0, rec_grads, *norms = self.recurrent.backward(
            cache.recurrent, dh, dstate, check_finite=False, **options)  # dh is ours
        part_grads = {"recurrent": rec_grads, "readout": out_grads}
        if self.embedding is not None:
            dx, part_grads["embedding"] = self.embedding.backward(cache.embedding, dx)
        grads = {f"{prefix}.{k}": v for prefix, _ in self._parts()
                 for k, v in part_grads[prefix].items()}
        return dx, dstate0, grads, *norms

    def config(self):
        """The constructor arguments of the parts (JSON-friendly), for checkpoints."""
        config = {"recurrent": self.recurrent.config(), "readout": self.readout.config()}
        if self.embedding is not None:
            config["embedding"] = self.embedding.config()
        if self.pool is not None:
            config["pool"] = self.pool
        return config

    def __repr__(self):
        extra = "" if self.embedding is None else f", embedding={self.embedding!r}"
        extra += "" if self.pool is None else f", pool={self.pool!r}"
        return f"Model({self.recurrent!r}, {self.readout!r}{extra})"
