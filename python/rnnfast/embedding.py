"""The embedding: a table of vectors looked up by integer ids, the first layer of a model on
tokens (``torch.nn.Embedding``).

Letters: B = batch, T = timesteps, V = rows of the table (num_embeddings), E = embedding_dim,
N = B·T ids.
"""

import numpy as np

from . import _checks


def as_ids(ids, name, num_embeddings):
    """``ids`` checked: an integer ndarray (B, T) with every value in [0, num_embeddings),
    returned as a C-contiguous ``np.intp`` array (a copy only when needed).

    Any integer dtype is accepted; bools, floats, complex and objects are refused with a
    TypeError, an id out of range with a ValueError naming its index (b, t). B = 0 or T = 0
    are allowed.
    """
    if not isinstance(ids, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray of integer ids, got "
                        f"{type(ids).__name__}; convert it first, e.g. np.asarray({name})")
    if ids.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integer ids in [0, num_embeddings) = "
                        f"[0, {num_embeddings}), got dtype {ids.dtype}")
    if ids.ndim != 2:
        raise ValueError(f"{name} must be 2-D (B, T), got {ids.ndim}-D with shape "
                         f"{_checks.shape_str(ids.shape)}")
    if ids.size and (ids.min() < 0 or ids.max() >= num_embeddings):
        b, t = np.argwhere((ids < 0) | (ids >= num_embeddings))[0]
        raise ValueError(f"{name} must lie in [0, num_embeddings) = [0, {num_embeddings}), got "
                         f"{int(ids[b, t])} at index ({int(b)}, {int(t)})")
    return np.ascontiguousarray(ids, dtype=np.intp)


def refuse_ids(x, name):
    """Raise the error that says what to do when integer ids reach a model without an
    embedding."""
    if isinstance(x, np.ndarray) and x.dtype.kind in "iu":
        raise TypeError(
            f"{name} holds integers ({x.dtype}), but this model takes real-valued features "
            f"(B, T, input_size); to feed token ids (B, T), start the model with an embedding: "
            f"rnnfast.Model(recurrent, readout, embedding=rnnfast.Embedding(num_embeddings, "
            f"recurrent.input_size))")


def scatter_add_rows(ids, rows, num_rows):
    """``out[ids[n]] += rows[n]`` for every n in order, into zeros (num_rows, E).

    Equal bit for bit to ``np.add.at(out, ids, rows)``, and as it an add in the order of
    ``ids``, so the same input gives the same sums on every run.

    Parameters
    ----------
    ids : intp ndarray (N,), values in [0, num_rows)
    rows : ndarray (N, E), C-contiguous
    num_rows : int

    Notes
    -----
    ``np.add.at`` is fastest with one index per element of a 1-D array (its fast loop, NumPy
    1.25 and later), so the rows are scattered as N·E flat indices into the flat table: 2-5x
    faster than ``np.add.at`` on rows, and faster than a stable sort with ``np.add.reduceat``
    or ``np.bincount`` in float32 (bench/embedding_scatter.py). It costs N·E index words
    (8 bytes each) for the length of the call.
    """
    E = rows.shape[1]
    out = np.zeros(num_rows * E, rows.dtype)  # (V·E,)
    np.add.at(out, (ids.reshape(-1, 1) * E + np.arange(E)).ravel(), rows.ravel())
    return out.reshape(num_rows, E)


def _padding_idx(value, num_embeddings):
    """``padding_idx`` as torch keeps it: None, or an int in [0, num_embeddings), a negative
    one counted from the end."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"padding_idx must be an int or None, got {type(value).__name__}")
    if not -num_embeddings <= value < num_embeddings:
        raise ValueError(f"padding_idx must lie in [-num_embeddings, num_embeddings) = "
                         f"[{-num_embeddings}, {num_embeddings}), got {value}")
    return int(value) % num_embeddings


class EmbeddingCache:
    """What ``Embedding.backward`` needs: the checked ids, by reference. Treat it as opaque."""

    def __init__(self, owner, ids):
        self.owner = owner
        self.ids = ids


class Embedding:
    """``y[b, t] = weight[ids[b, t]]``: one learned vector per id, as ``torch.nn.Embedding``.

    Parameters
    ----------
    num_embeddings : int
        V, the number of ids (the vocabulary).
    embedding_dim : int
        E, the length of each vector.
    padding_idx : int or None
        The id of padding: its row starts at zero and never receives a gradient (it is left
        as it is by training). A negative value counts from the end, as in torch; it is kept
        as the equivalent id in [0, V).
    dtype : numpy.float32 or numpy.float64, default float32
    seed : int or None
        Seeds PyTorch's initialisation, N(0, 1) for every element (drawn in float64, then
        cast, so one seed gives the same table in both dtypes), the padding row zeroed.

    Attributes
    ----------
    params : dict
        ``weight`` (num_embeddings, embedding_dim), the live array, named as in torch.

    Notes
    -----
    Memory: the cache holds the ids (N words); backward makes the gradient (V, E) and, while it
    runs, N·E index words (see ``scatter_add_rows``).

    Examples
    --------
    >>> import numpy as np, rnnfast
    >>> emb = rnnfast.Embedding(100, 8, padding_idx=0, seed=0)
    >>> y, cache = emb.forward(np.array([[5, 7, 0]]))
    >>> y.shape
    (1, 3, 8)
    >>> _, grads = emb.backward(cache, np.ones_like(y))
    >>> float(grads["weight"][5].sum()), float(grads["weight"][0].sum())
    (8.0, 0.0)
    """

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None, dtype=np.float32,
                 seed=None):
        self.num_embeddings = _checks.positive_int(num_embeddings, "num_embeddings")
        self.embedding_dim = _checks.positive_int(embedding_dim, "embedding_dim")
        self.padding_idx = _padding_idx(padding_idx, self.num_embeddings)
        self.dtype = _checks.model_dtype(dtype)
        self._token = object()
        shape = (self.num_embeddings, self.embedding_dim)
        # The float64 draw comes first, so the check counts its 8 bytes per element.
        _checks.check_allocation(
            self.num_embeddings * self.embedding_dim * (8 + self.dtype.itemsize),
            f"the parameters of Embedding({self.num_embeddings}, {self.embedding_dim})")
        weight = np.random.default_rng(seed).standard_normal(shape).astype(self.dtype)
        if self.padding_idx is not None:
            weight[self.padding_idx] = 0
        self.params = {"weight": weight}

    def _checked_weight(self):
        shape = (self.num_embeddings, self.embedding_dim)
        w = self.params.get("weight")
        if not isinstance(w, np.ndarray) or w.shape != shape or w.dtype != self.dtype:
            got = (type(w).__name__ if not isinstance(w, np.ndarray)
                   else f"{w.dtype} array of shape {_checks.shape_str(w.shape)}")
            raise ValueError(f"params['weight'] must be a {self.dtype} array of shape "
                             f"{_checks.shape_str(shape)}, got {got}")
        return w

    def __call__(self, ids):
        """Inference: ``y = emb(ids)``. See ``forward``."""
        return self.forward(ids)[0]

    def forward(self, ids):
        """``ids`` (B, T) integers -> ``y`` (B, T, embedding_dim), and the cache for backward.

        Any integer dtype; every id must lie in [0, num_embeddings) (see ``as_ids``).
        """
        ids = as_ids(ids, "ids", self.num_embeddings)
        weight = self._checked_weight()
        _checks.check_allocation(
            ids.size * self.embedding_dim * self.dtype.itemsize,
            lambda: f"Embedding({self.num_embeddings}, {self.embedding_dim}).forward over "
                    f"{_checks.shape_str(ids.shape)} ids")
        return np.take(weight, ids, axis=0), EmbeddingCache(self._token, ids)

    def backward(self, cache, dy):
        """Returns ``None, grads``: there is no gradient with respect to integer ids (None in
        its place, as torch's autograd gives), and ``grads`` with the keys of ``params``.

        ``grads["weight"][v]`` is the sum of ``dy[b, t]`` over every (b, t) with
        ``ids[b, t] == v``, summed in the order of the ids (so bit-identical from run to
        run); the row of ``padding_idx`` is zero.
        """
        if not isinstance(cache, EmbeddingCache) or cache.owner is not self._token:
            raise ValueError("cache must be the cache returned by this Embedding's forward")
        ids = cache.ids
        V, E = self.num_embeddings, self.embedding_dim
        _checks.check_float_array(dy, "dy", self.dtype, 3)
        _checks.expect_shape(dy, "dy", ids.shape + (E,), "(B, T, embedding_dim)")
        dy = np.ascontiguousarray(dy, dtype=self.dtype)  # converted once its shape is right
        _checks.check_allocation(
            V * E * self.dtype.itemsize + ids.size * E * np.dtype(np.intp).itemsize,
            lambda: f"Embedding({V}, {E}).backward over {_checks.shape_str(ids.shape)} ids")
        # y[b, t] = weight[ids[b, t]]  =>  dweight[v] = Σ_{ids[b, t] = v} dy[b, t]
        dweight = scatter_add_rows(ids.ravel(), dy.reshape(-1, E), V)
        if self.padding_idx is not None:
            dweight[self.padding_idx] = 0
        return None, {"weight": dweight}

    def to_torch(self):
        """The equivalent ``torch.nn.Embedding``, same dtype and padding_idx, weights copied
        (not shared). Needs PyTorch."""
        from . import interop

        torch = interop._torch("Embedding.to_torch")
        self._checked_weight()
        module = torch.nn.Embedding(self.num_embeddings, self.embedding_dim,
                                    padding_idx=self.padding_idx,
                                    dtype=interop._torch_dtypes(torch)[self.dtype])
        return interop._copy_out(torch, module, self.params)

    @classmethod
    def from_torch(cls, module):
        """An ``Embedding`` with the weights and padding_idx of a ``torch.nn.Embedding``
        (copied), in its dtype (float32 or float64).

        Refuses a module with ``max_norm`` (which renormalises rows in forward) or
        ``scale_grad_by_freq``, which rnnfast does not have; ``sparse=True`` converts (the
        gradient's values are the same, rnnfast keeps them dense).
        """
        from . import interop

        torch = interop._torch("rnnfast.Embedding.from_torch")
        if not isinstance(module, torch.nn.Embedding):
            raise TypeError(f"Embedding.from_torch takes a torch.nn.Embedding, got "
                            f"{type(module).__module__}.{type(module).__qualname__}")
        for attr, off in (("max_norm", None), ("scale_grad_by_freq", False)):
            if getattr(module, attr) != off:
                raise ValueError(f"the module has {attr}={getattr(module, attr)!r}, which "
                                 f"rnnfast does not support; only {attr}={off!r} converts")
        dtype = interop._module_dtype(torch, module, "torch.nn.Embedding")
        layer = cls(module.num_embeddings, module.embedding_dim,
                    padding_idx=module.padding_idx, dtype=dtype)
        interop._copy_in(layer.params, module, ["weight"])
        return layer

    def config(self):
        """The constructor's arguments (JSON-friendly), enough to build the same layer."""
        return {"class": "Embedding", "num_embeddings": self.num_embeddings,
                "embedding_dim": self.embedding_dim, "padding_idx": self.padding_idx,
                "dtype": self.dtype.name}

    def __repr__(self):
        extra = "" if self.padding_idx is None else f", padding_idx={self.padding_idx}"
        return (f"Embedding({self.num_embeddings}, {self.embedding_dim}{extra}, "
                f"dtype=np.{self.dtype.name})")
