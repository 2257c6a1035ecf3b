"""The read-out: one affine map applied at every timestep (the textbook's Wy)."""

import numpy as np

from . import _blas, _checks


class LinearCache:
    """What ``Linear.backward`` needs: the input, by reference. Treat it as opaque."""

    def __init__(self, owner, x):
        self.owner = owner
        self.x = x


class Linear:
    """``y = x W^T + b`` over the last axis, at every timestep.

    Parameters
    ----------
    in_features, out_features : int
    bias : bool, default True
    dtype : numpy.float32 or numpy.float64, default float32
    seed : int or None
        Seeds PyTorch's default initialisation, U(-1/sqrt(in_features), 1/sqrt(in_features))
        for the weight and the bias.

    Attributes
    ----------
    params : dict
        ``weight`` (out_features, in_features) and ``bias`` (out_features,), the live arrays,
        named as in ``torch.nn.Linear``.
    """

    def __init__(self, in_features, out_features, bias=True, dtype=np.float32, seed=None,
                 check_finite=True):
        self.in_features = _checks.positive_int(in_features, "in_features")
        self.out_features = _checks.positive_int(out_features, "out_features")
        if not isinstance(bias, (bool, np.bool_)):
            raise TypeError(f"bias must be True or False, got {bias!r}")
        self.bias = bool(bias)
        self.dtype = _checks.model_dtype(dtype)
        self.check_finite = bool(check_finite)
        self._token = object()
        shapes = self._shapes()
        _checks.check_allocation(
            sum(int(np.prod(s, dtype=np.float64)) for s in shapes.values()) * self.dtype.itemsize,
            f"the parameters of Linear({self.in_features}, {self.out_features})")
        rng = np.random.default_rng(seed)
        bound = 1.0 / np.sqrt(self.in_features)
        self.params = {name: rng.uniform(-bound, bound, size=shape).astype(self.dtype)
                       for name, shape in shapes.items()}

    def _shapes(self):
        shapes = {"weight": (self.out_features, self.in_features)}
        if self.bias:
            shapes["bias"] = (self.out_features,)
        return shapes

    def _checked_params(self):
        for name, shape in self._shapes().items():
            a = self.params.get(name)
            if not isinstance(a, np.ndarray) or a.shape != shape or a.dtype != self.dtype:
                got = (type(a).__name__ if not isinstance(a, np.ndarray)
                       else f"{a.dtype} array of shape {_checks.shape_str(a.shape)}")
                raise ValueError(f"params[{name!r}] must be a {self.dtype} array of shape "
                                 f"{_checks.shape_str(shape)}, got {got}")
        return self.params["weight"], self.params.get("bias")

    def __call__(self, x):
        """Inference: ``y = model(x)``. See ``forward``."""
        return self.forward(x)[0]

    def forward(self, x, *, check_finite=None):
        """``x`` (..., in_features) -> ``y`` (..., out_features), and the cache for backward.

        ``check_finite`` overrides the read-out's setting for this call (a ``Model`` passes
        False for the hidden states it computed itself, so that an overflow reaches the loss
        as NaN instead of raising).
        """
        _checks.check_float_array(x, "x", self.dtype, None)
        if x.shape[-1] != self.in_features:
            raise ValueError(f"x must have shape (..., in_features) with in_features = "
                             f"{self.in_features}, got {_checks.shape_str(x.shape)}")
        rows = int(np.prod(x.shape[:-1], dtype=np.float64))
        # Before anything is allocated (x may be a broadcast view that holds no memory):
        # the converted x and y.
        _checks.check_allocation(
            rows * (self.in_features + self.out_features) * self.dtype.itemsize,
            f"Linear({self.in_features}, {self.out_features}).forward over "
            f"{_checks.shape_str(x.shape[:-1])} rows")
        x = np.ascontiguousarray(x, dtype=self.dtype)
        if self.check_finite if check_finite is None else check_finite:
            _checks.check_finite(x, "x")
        weight, bias = self._checked_params()
        with _blas.LIMITED:  # BLAS on this thread only: its own threads would spin (_blas)
            y = x @ weight.T
        if bias is not None:
            y += bias
        return y, LinearCache(self._token, x)

    def backward(self, cache, dy):
        """Returns ``dx`` (..., in_features) and ``grads`` with the keys of ``params``."""
        if not isinstance(cache, LinearCache) or cache.owner is not self._token:
            raise ValueError("cache must be the cache returned by this Linear's forward")
        x = cache.x
        _checks.check_float_array(dy, "dy", self.dtype, x.ndim)
        _checks.expect_shape(dy, "dy", x.shape[:-1] + (self.out_features,),
                             "(..., out_features)")
        dy = np.ascontiguousarray(dy, dtype=self.dtype)  # converted once its shape is right
        if self.check_finite:
            _checks.check_finite(dy, "dy")
        weight, bias = self._checked_params()
        # y = x W^T + b, over all leading axes at once
        dy2 = dy.reshape(-1, self.out_features)
        with _blas.LIMITED:
            grads = {"weight": dy2.T @ x.reshape(-1, self.in_features)}
            dx = dy @ weight
        if bias is not None:
            grads["bias"] = dy2.sum(axis=0)
        return dx, grads

    def to_torch(self):
        """The equivalent ``torch.nn.Linear``, same dtype, weights copied (not shared)."""
        from . import interop

        return interop.linear_to_torch(self)

    @classmethod
    def from_torch(cls, module):
        """A ``Linear`` with the weights of a ``torch.nn.Linear`` (copied), in its dtype
        (float32 or float64)."""
        from . import interop

        return interop.linear_from_torch(module)

    def config(self):
        """The constructor's arguments (JSON-friendly), enough to build the same read-out."""
        return {"class": "Linear", "in_features": self.in_features,
                "out_features": self.out_features, "bias": self.bias, "dtype": self.dtype.name,
                "check_finite": self.check_finite}

    def __repr__(self):
        extra = "" if self.bias else ", bias=False"
        return f"Linear({self.in_features}, {self.out_features}{extra}, dtype=np.{self.dtype.name})"
