"""What every recurrent model shares: parameters, input checks, the stack of layers, caches.

A cell (RNN, LSTM, GRU) subclasses ``Recurrent`` and supplies how one layer runs forward and
backward over the whole sequence, on either backend:

- ``"cpp"``: ``rnnfast._core``, one call per layer per pass;
- ``"numpy"``: ``rnnfast.reference``, the readable ground truth.

Letters: B = batch, T = timesteps, D = input features, H = hidden units, L = layers,
G = gates per cell, N = directions (2 when bidirectional, else 1).

A direction is one layer call walking time up (forward) or down (reverse); the stack runs the
N directions of layer k on the same input and joins their outputs along the feature axis,
forward first, as the input of layer k + 1. States, parameters and per-step norms are indexed
i = k·N + direction, PyTorch's order.
"""

import warnings

import numpy as np

from . import _checkpointed, _checks
from . import _core
from ._core import all_finite


# The largest zero state a model keeps between calls; larger ones are made at each call, where
# that costs little beside the step.
_KEEP_ZEROS_BYTES = 1 << 16


class ForwardCache:
    """What ``backward`` needs from one ``forward`` call. Treat it as opaque.

    It holds references, not copies: per layer the layer's input, initial state, outputs and
    whatever the cell saves (``saved``). The input of layer 0 is the ``x`` given to
    ``forward`` (or its converted copy), so do not modify ``x`` in place before ``backward``.
    """

    __slots__ = ("owner", "batch", "steps", "lengths", "layers", "masks")

    def __init__(self, owner, batch, steps, lengths, layers, masks):
        self.owner = owner
        self.batch = batch
        self.steps = steps
        self.lengths = lengths
        self.layers = layers  # per layer and direction (i = k·N + d): (x, state0, y, saved)
        self.masks = masks  # per layer: the dropout mask applied to its output, or None

    @property
    def nbytes(self):
        """Bytes of the arrays this cache keeps alive (layer 0's input included)."""
        seen, total = set(), 0
        masks = [m for m in self.masks if m is not None]
        for x, state0, y, saved in self.layers:
            for a in (x, y, *state0, *saved, *masks):
                if id(a) not in seen:
                    seen.add(id(a))
                    total += a.nbytes
        return total


def _mean_over_sequences(norms, lengths):
    """(B, T) per-sequence norms, 0 past each length -> (T,): their mean over the sequences
    still running at each step, 0 at a step where none is."""
    B, T = norms.shape
    running = np.full(T, B) if lengths is None else (np.arange(T) < lengths[:, None]).sum(0)
    return norms.sum(axis=0) / np.maximum(running, 1)


class Recurrent:
    """Base of RNN, LSTM and GRU: see those classes for the public documentation."""

    gates = 1  # G: rows of weight_ih per hidden unit
    state_parts = 1  # 1 for h; 2 for the LSTM's (h, c)
    proj_size = 0  # P: units of h_t when the LSTM projects it (proj_size > 0), else 0
    saved_per_step = 0  # floats per (b, t, unit) that a layer saves for backward, beyond y

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, bidirectional=False,
                 dropout=0.0, dtype=np.float32, seed=None, backend="cpp", check_finite=True,
                 errors=()):
        # Every argument is checked before any is refused, so that one error names them all;
        # ``errors`` brings a subclass's own.
        errors = list(errors)
        self.input_size = _checks.collect(errors, _checks.positive_int, input_size, "input_size")
        self.hidden_size = _checks.collect(errors, _checks.positive_int, hidden_size,
                                           "hidden_size")
        self.num_layers = _checks.collect(errors, _checks.positive_int, num_layers, "num_layers")
        self.bias = _checks.collect(errors, _checks.boolean, bias, "bias")
        self.bidirectional = _checks.collect(errors, _checks.boolean, bidirectional,
                                             "bidirectional")
        self.dropout = _checks.collect(errors, _checks.dropout, dropout)
        self.dtype = _checks.collect(errors, _checks.model_dtype, dtype)
        if backend not in ("cpp", "numpy"):
            errors.append(ValueError(f"backend must be 'cpp' or 'numpy', got {backend!r}"))
        _checks.raise_all(errors)
        if self.dropout > 0 and self.num_layers == 1:
            # As torch.nn: dropout acts between layers, so with one layer it does nothing.
            warnings.warn(f"dropout={self.dropout} acts between layers and does nothing with "
                          f"num_layers=1", UserWarning, stacklevel=3)
        self.backend = backend
        self.check_finite = bool(check_finite)
        self.seed = seed
        self.num_directions = 2 if self.bidirectional else 1
        # S: units of h_t, what each direction outputs and the next step reads
        self.state_size = self.proj_size or self.hidden_size
        self.output_size = self.num_directions * self.state_size
        self._token = object()  # identifies this model's caches
        self._zeros = None  # (B, per-layer zero states) kept by _zero_states
        self._param_shapes = self._shapes()  # fixed by the constructor's arguments
        # Per layer and direction, (name, shape) of each parameter in the order the layer
        # functions take them, (None, None) for an absent one; and the names of the gradients
        # a layer returns.
        self._layer_specs = tuple(
            tuple((name, self._param_shapes[name]) if name in self._param_shapes
                  else (None, None)
                  for name in (f"weight_ih_l{sfx}", f"weight_hh_l{sfx}", f"bias_ih_l{sfx}",
                               f"bias_hh_l{sfx}", f"weight_hr_l{sfx}"))
            for sfx in self._suffixes())
        self._layer_grad_names = tuple(tuple(name for name, _ in spec if name is not None)
                                       for spec in self._layer_specs)
        rng = np.random.default_rng(seed)
        self.params = self._init_params(rng)
        # Dropout's masks: a generator of their own, seeded from the same seed after the
        # weights are drawn, so a seed gives the same weights with or without dropout.
        self._dropout_rng = np.random.default_rng(rng.integers(2**63))

    def _suffixes(self):
        """Per layer and direction (i = k·N + d), the suffix of its parameters' names."""
        return tuple(f"{k}{'_reverse' if d else ''}" for k in range(self.num_layers)
                     for d in range(self.num_directions))

    @property
    def rng_state(self):
        """The state of the generator that draws dropout's masks (a JSON-friendly dict), for
        checkpoints: assign it back to repeat the same masks."""
        return self._dropout_rng.bit_generator.state

    @rng_state.setter
    def rng_state(self, state):
        self._dropout_rng.bit_generator.state = state

    # -- parameters -------------------------------------------------------------------------

    def _shapes(self):
        """Name -> shape of every parameter, in PyTorch's order."""
        G, H, N, S = self.gates, self.hidden_size, self.num_directions, self.state_size
        shapes = {}
        for i, sfx in enumerate(self._suffixes()):
            D_k = self.input_size if i < N else N * S  # layer k > 0 reads every direction
            shapes[f"weight_ih_l{sfx}"] = (G * H, D_k)
            shapes[f"weight_hh_l{sfx}"] = (G * H, S)
            if self.bias:
                shapes[f"bias_ih_l{sfx}"] = (G * H,)
                shapes[f"bias_hh_l{sfx}"] = (G * H,)
            if self.proj_size:
                shapes[f"weight_hr_l{sfx}"] = (self.proj_size, H)
        return shapes

    def _init_params(self, rng):
        """PyTorch's default: every parameter drawn from U(-1/sqrt(H), 1/sqrt(H))."""
        shapes = self._param_shapes
        total = sum(int(np.prod(s, dtype=np.float64)) for s in shapes.values())
        _checks.check_allocation(
            total * self.dtype.itemsize,
            f"the parameters of input_size={self.input_size}, hidden_size={self.hidden_size}, "
            f"num_layers={self.num_layers}")
        bound = 1.0 / np.sqrt(self.hidden_size)
        # Drawn in float64 and then cast, so that one seed gives the same model in both dtypes.
        return {name: rng.uniform(-bound, bound, size=shape).astype(self.dtype)
                for name, shape in shapes.items()}

    def _layer_params(self):
        """Per layer, the tuple ``(weight_ih, weight_hh, bias_ih, bias_hh)`` (biases None
        without bias), checked.

        ``params`` holds live arrays that users and optimisers may replace, or reshape in
        place; so they are looked at on every call, and anything of the wrong shape, dtype or
        layout is refused here, before it can reach C++.
        """
        get, dtype = self.params.get, self.dtype
        layers = []
        for spec in self._layer_specs:
            p = []
            for name, shape in spec:
                a = None if name is None else get(name)
                # The usual case in a few cheap tests; the full check tells the rest apart.
                if name is not None and (type(a) is not np.ndarray or a.dtype is not dtype
                                         or a.shape != shape or not a.flags.c_contiguous):
                    self._check_param(name, shape, a)
                p.append(a)
            layers.append(tuple(p))
        return layers

    def _check_param(self, name, shape, a):
        """Raise unless ``a`` can be parameter ``name`` (an ndarray subclass, or a dtype equal
        to the model's without being the same object, passes)."""
        if not isinstance(a, np.ndarray) or a.shape != shape or a.dtype != self.dtype \
                or not a.flags.c_contiguous:
            got = (f"{type(a).__name__}" if not isinstance(a, np.ndarray) else
                   f"{a.dtype} array of shape {_checks.shape_str(a.shape)}"
                   f"{'' if a.flags.c_contiguous else ', not C-contiguous'}")
            raise ValueError(
                f"params[{name!r}] must be a C-contiguous {self.dtype} array of shape "
                f"{_checks.shape_str(shape)}, got {got}")

    # -- state ------------------------------------------------------------------------------

    def _state_widths(self):
        """Units of each part of the state: (S,), or the LSTM's (S, H) for (h, c)."""
        return (self.state_size, self.hidden_size)[:self.state_parts]

    def _layer_states(self, state, B, name):
        """The user's state (zeros if None), checked, per layer and direction: a tuple of
        ``state_parts`` arrays (B, S) (the LSTM's c: (B, H))."""
        L, dtype = self.num_layers * self.num_directions, self.dtype
        rows = "num_layers" if self.num_directions == 1 else "2 * num_layers"
        which = ("" if self.num_directions == 1 else
                 ": bidirectional, layer 0 forward, layer 0 reverse, layer 1 forward, ...")
        if state is None:
            return self._zero_states(B)
        if self.state_parts == 1:
            parts, labels = (state,), (name,)
        else:
            if not isinstance(state, tuple) or len(state) != self.state_parts:
                raise TypeError(f"{name} must be a tuple (h, c) of two arrays, got "
                                f"{type(state).__name__}")
            parts, labels = state, (f"{name}[0] (h)", f"{name}[1] (c)")
        out = []
        for part, label, width in zip(parts, labels, self._state_widths()):
            units = ("proj_size" if width == self.proj_size != self.hidden_size else
                     "hidden_size")
            _checks.check_float_array(part, label, dtype, 3)
            _checks.expect_shape(part, label, (L, B, width), f"({rows}, B, {units}){which}")
            a = np.ascontiguousarray(part, dtype=dtype)
            if self.check_finite and not all_finite(a.ravel()):
                _checks.raise_non_finite(a, label)
            out.append(a)
        return list(zip(*out))  # iterating an (L, B, H) array gives its L views (B, H)

    def _zero_states(self, B):
        """Per layer and direction, a tuple of ``state_parts`` zero arrays (B, H).

        Made read-only and kept for the next call with the same B when small (the online
        case, where making them anew is a noticeable part of a step): the layer functions only
        read their initial state and dstate, and the user never sees these arrays.
        """
        kept = self._zeros
        if kept is not None and kept[0] == B:
            return kept[1]
        LN = self.num_layers * self.num_directions
        parts = [np.zeros((LN, B, width), self.dtype) for width in self._state_widths()]
        for part in parts:
            part.flags.writeable = False
        per_layer = tuple(zip(*parts))  # views (B, width) of one array per part
        if sum(part.nbytes for part in parts) <= _KEEP_ZEROS_BYTES:
            self._zeros = (B, per_layer)
        return per_layer

    def _user_state(self, per_layer):
        """Per-layer tuples of (B, H) arrays -> the user's form: one (L·N, B, H) array, or for
        the LSTM the tuple (h, c) of two."""
        if len(per_layer) == 1:
            # Views, not copies: the layer functions return arrays of their own, never an input.
            parts = [a[None] for a in per_layer[0]]
        else:
            parts = []
            for layer_parts in zip(*per_layer):
                whole = np.empty((len(layer_parts), *layer_parts[0].shape), self.dtype)
                for k, a in enumerate(layer_parts):
                    whole[k] = a
                parts.append(whole)
        return parts[0] if self.state_parts == 1 else tuple(parts)

    # -- the public passes ------------------------------------------------------------------

    def __call__(self, x, state=None, lengths=None):
        """Inference: ``y, state = model(x, state=None, lengths=None)``.

        Arguments and results as for ``forward``, without the cache: no dropout is applied
        here, and nothing is kept for backward.
        """
        y, state, _ = self._run(x, state, lengths, train=False)
        return y, state

    def forward(self, x, state=None, lengths=None, checkpoint=None):
        """Run the model over the sequences and keep what ``backward`` needs.

        Parameters
        ----------
        x : ndarray, shape (B, T, input_size)
            Batch-first inputs, any real floating dtype (converted to the model's dtype).
        state : ndarray or tuple of two ndarrays, optional
            The initial state, (num_directions * num_layers, B, hidden_size), or for the LSTM
            a tuple ``(h, c)`` of two such arrays (h proj_size wide with a projection), in
            PyTorch's order: layer 0 forward, layer 0 reverse, layer 1 forward, ...; zeros
            when None.
        lengths : array-like of ints, shape (B,), optional
            Valid steps of each sequence, in [0, T]. At steps t >= lengths[b] the state of
            sequence b stays as it was, its output is zero and it receives no gradient. The
            reverse direction of a sequence starts at its last valid step.
        checkpoint : None, int or "auto", optional
            Checkpointed BPTT, the exact gradient in bounded memory (docs/memory.md). None
            (the default) keeps every step's saved values for ``backward``. An int k cuts
            time into segments of k steps and keeps only each layer's state at the start of
            every segment; ``backward`` then runs each segment's forward again, from the
            last segment back, and backpropagates through it: about one more forward pass
            of time. ``"auto"``: k = ceil(sqrt(T)). The compiled backend rounds k up to a
            multiple of its kernels' unit for this call (at most 128 steps;
            ``cache.segment_steps`` says what was used), and k >= T is the full cache. The
            results are the full cache's bit for bit. A bidirectional stack keeps each
            inner layer's output besides. With dropout, a one-direction stack draws its
            masks segment by segment: the same distribution as without checkpoints,
            another draw.

        Returns
        -------
        y : ndarray (B, T, num_directions * hidden_size)
            The last layer's outputs, the forward direction's first.
        state : like ``state``
            Every layer's state after each sequence's last valid step.
        cache : ForwardCache or CheckpointCache
            For ``backward``.

        Notes
        -----
        This is the training pass: dropout between layers (``dropout`` > 0) is applied here,
        with masks drawn from the model's seeded generator and kept in the cache.

        B = 0 or T = 0 are allowed: y is empty, and with T = 0 the state is returned unchanged.
        """
        return self._run(x, state, lengths, train=True, checkpoint=checkpoint)

    def _run(self, x, state, lengths, train, checkpoint=None):
        dtype, L, H, N = self.dtype, self.num_layers, self.state_size, self.num_directions
        _checks.check_float_array(x, "x", dtype, 3)
        B, T, D = x.shape
        if D != self.input_size:
            raise ValueError(f"x must have shape (B, T, input_size) with input_size = "
                             f"{self.input_size}, got {_checks.shape_str(x.shape)}")
        segment = _checkpointed.segment_steps(self, checkpoint, B, T)
        # Before anything is allocated, converting x included: per layer, the directions'
        # outputs and saved values and their joined output (and its dropout mask); with
        # checkpoints, one segment's worth of that, and the joined outputs kept whole.
        per_layer = N * H * (1 + self.saved_per_step) + (N * H if N > 1 else 0) \
            + (N * H if train and self.dropout > 0 else 0)
        kept = B * T * (D + L * per_layer)
        if segment is not None:
            kept = B * T * (D + N * H * (L if N > 1 else 1)) + B * segment * L * per_layer
        _checks.check_allocation(
            kept * dtype.itemsize,
            lambda: f"forward over B={B}, T={T} with hidden_size={H}, num_layers={L}"
                    f"{', bidirectional' if N > 1 else ''}")
        x = np.ascontiguousarray(x, dtype=dtype)
        # x is now of the model's dtype in C order, what all_finite takes: called directly,
        # without check_finite's wrapper, since at online the check is held under 2 % of a step.
        if self.check_finite and not all_finite(x.ravel()):
            _checks.raise_non_finite(x, "x")
        lengths = _checks.as_lengths(lengths, B, T)
        states = self._layer_states(state, B, "state")
        if segment is not None and B > 0:
            y, finals, cache = _checkpointed.forward(self, x, states, lengths, train, segment)
            return y, self._user_state(finals), cache
        layer_params = self._layer_params()

        forward_args, forward_out = self._forward_args, self._forward_out
        finals, layers, masks = [], [], []
        inp = x
        for k in range(L):
            outs = []
            calls = [forward_args(inp, states[k * N + d], layer_params[k * N + d], lengths, d == 1)
                     for d in range(N)]
            for d, out in enumerate(self._run_calls(self._forward_fn, calls)):
                y, s_n, saved = forward_out(out)
                finals.append(s_n)
                layers.append((inp, states[k * N + d], y, saved))
                outs.append(y)
            y = outs[0] if N == 1 else np.concatenate(outs, axis=2)
            mask = None
            if train and self.dropout > 0 and k < L - 1:
                mask = self._dropout_mask(y.shape)
                y = y * mask
            masks.append(mask)
            inp = y
        cache = ForwardCache(self._token, B, T, lengths, layers, masks)
        return inp, self._user_state(finals), cache

    def _dropout_mask(self, shape):
        """Inverted dropout, as torch.nn: each element kept with probability 1 - p and then
        scaled by 1 / (1 - p), so that inference needs no scaling."""
        keep = 1.0 - self.dropout
        return (self._dropout_rng.random(shape) < keep).astype(self.dtype) / self.dtype.type(keep)

    def backward(self, cache, dy, dstate=None, *, clip_per_step=None, return_grad_norms=False,
                 check_finite=None):
        """Backpropagation through time.

        Parameters
        ----------
        cache : ForwardCache or CheckpointCache
            From this model's ``forward``.
        dy : ndarray (B, T, num_directions * hidden_size)
            Gradient of the loss with respect to ``y``. Entries past a sequence's length are
            ignored.
        dstate : like the state, optional
            Gradient with respect to the final state returned by ``forward``; zeros if None.
        clip_per_step : positive float, optional
            Per-step gradient clipping (Mikolov; Pascanu et al. 2013), inside the time loop
            of every layer: at every step t, the total gradient reaching the hidden state,
            dL/dh_t (from the output at t plus from step t+1), is rescaled to norm
            ``clip_per_step`` whenever its L2 norm is larger, before it flows on into the
            step. The norm is taken per sequence (each batch row on its own, over the H
            units), so a sequence's gradient does not depend on what else is in the batch.
            For the LSTM only dL/dh_t is clipped; the cell path dL/dc_t is left alone.
            None (the default) is off and costs nothing. With clipping on the result is no
            longer the gradient of the loss: check gradients (finite differences) with it
            off. Independent of clipping the parameter gradients afterwards
            (``rnnfast.clip``).
        return_grad_norms : bool, default False
            Also return the norms of dL/dh_t: how gradients vanish or explode with distance
            from the loss.
        check_finite : bool, optional
            Overrides the model's ``check_finite`` for ``dy`` in this call (a ``Model`` passes
            False for the gradient it computed itself, so that an overflow shows as
            non-finite gradients instead of raising).

        Returns
        -------
        dx : ndarray (B, T, input_size)
        dstate0 : like the state
            Gradient with respect to the initial state.
        grads : dict
            Same keys and shapes as ``params``.
        grad_norms : ndarray (num_directions * num_layers, T)
            Only with ``return_grad_norms=True``; rows in the state's order.
            ``grad_norms[i, t]``: the L2 norm over the H units of dL/dh_t at layer i (the
            total gradient reaching h_t, as clipped by ``clip_per_step``, before that
            step's own clipping), averaged over the sequences still running at step t
            (t < lengths[b]); 0 at a step where none is. In the model's dtype.
        """
        clip = _checks.clip_per_step(clip_per_step)
        grad_norms = bool(return_grad_norms)
        if not isinstance(cache, (ForwardCache, _checkpointed.CheckpointCache)):
            raise TypeError(f"cache must be the ForwardCache or CheckpointCache returned by "
                            f"forward, got {type(cache).__name__}")
        if cache.owner is not self._token:
            raise ValueError("cache was made by another model's forward; pass the cache from "
                             "this model's forward")
        B, T = cache.batch, cache.steps
        check = self.check_finite if check_finite is None else bool(check_finite)
        _checks.check_float_array(dy, "dy", self.dtype, 3)
        _checks.expect_shape(dy, "dy", (B, T, self.output_size),
                             "(B, T, hidden_size)" if self.num_directions == 1 else
                             "(B, T, 2 * hidden_size): bidirectional, forward half first")
        dy = np.ascontiguousarray(dy, dtype=self.dtype)  # converted once its shape is right
        if check and not all_finite(dy.ravel()):  # dy converted as x in forward
            _checks.raise_non_finite(dy, "dy")
        dstates = self._layer_states(dstate, B, "dstate")
        layer_params = self._layer_params()

        L, N, H = self.num_layers, self.num_directions, self.state_size
        dstate0 = [None] * (L * N)
        layer_grads = [None] * (L * N)
        norms = np.zeros((L * N, T), self.dtype) if grad_norms else None  # (L·N, T)
        step = {"clip_per_step": clip, "grad_norms": grad_norms}
        if isinstance(cache, _checkpointed.CheckpointCache):
            d_out, dstate0, layer_grads, raw = _checkpointed.backward(self, cache, dy, dstates,
                                                                      step)
            if grad_norms:
                for i in range(L * N):
                    norms[i] = _mean_over_sequences(raw[i], cache.lengths)
            return self._backward_result(d_out, dstate0, layer_grads, norms)
        backward_args, backward_out, lengths = self._backward_args, self._backward_out, cache.lengths
        d_out = dy
        for k in reversed(range(L)):
            if cache.masks[k] is not None:
                d_out = d_out * cache.masks[k]  # y = y_k ⊙ mask
            calls = []
            for d in range(N):
                i = k * N + d
                # y = [y_forward y_reverse] along features: each direction gets its half
                dy_d = d_out if N == 1 else np.ascontiguousarray(d_out[:, :, d * H:(d + 1) * H])
                calls.append(backward_args(*cache.layers[i], layer_params[i], lengths, dy_d,
                                           dstates[i], step, d == 1))
            d_in = None
            for d, out in enumerate(self._run_calls(self._backward_fn, calls)):
                i = k * N + d
                dx, dstate0[i], layer_grads[i], *layer_norms = backward_out(out)
                d_in = dx if d_in is None else d_in + dx  # both directions read the same x
                if grad_norms:
                    norms[i] = _mean_over_sequences(layer_norms[0], lengths)
            d_out = d_in
        return self._backward_result(d_out, dstate0, layer_grads, norms)

    def _backward_result(self, dx, dstate0, layer_grads, norms):
        grads = {}  # in the order of params
        for names, g in zip(self._layer_grad_names, layer_grads):
            grads.update(zip(names, (a for a in g if a is not None)))
        if norms is not None:
            return dx, self._user_state(dstate0), grads, norms
        return dx, self._user_state(dstate0), grads

    # -- what a cell supplies ---------------------------------------------------------------

    # A cell supplies its layer functions (``_forward_fn``, ``_backward_fn``: rnnfast._core's
    # or rnnfast.reference's) and how the stack's arguments map onto theirs and back:

    def _forward_args(self, x, state0, p, lengths, reverse):
        """The positional arguments of ``_forward_fn`` for one layer in one direction
        (``reverse``: walking time down); ``p`` is the layer's ``(weight_ih, weight_hh,
        bias_ih, bias_hh)``."""
        raise NotImplementedError

    def _forward_out(self, out):
        """``_forward_fn``'s result -> (y, final state tuple, saved tuple)."""
        raise NotImplementedError

    def _backward_args(self, x, state0, y, saved, p, lengths, dy, dstate_n, step, reverse):
        """The positional arguments of ``_backward_fn`` (keywords cost microseconds per call
        through pybind11). ``step`` holds ``clip_per_step`` (0 for off) and ``grad_norms``."""
        raise NotImplementedError

    def _backward_out(self, out):
        """``_backward_fn``'s result -> (dx, dstate0 tuple, the tuple of the parameter
        gradients in the order of the layer's names (dweight_ih, dweight_hh, dbias_ih,
        dbias_hh[, dweight_hr]), None for an absent one), and the (B, T) norms of dL/dh_t last
        when ``step["grad_norms"]``."""
        raise NotImplementedError

    def _layer_backward(self, x, state0, y, saved, p, lengths, dy, dstate_n, step, reverse):
        """One layer in one direction: see ``_backward_out``."""
        return self._backward_out(self._backward_fn(*self._backward_args(
            x, state0, y, saved, p, lengths, dy, dstate_n, step, reverse)))

    def _run_calls(self, fn, calls):
        """``fn(*args)`` for each args in ``calls``: the directions of one layer. Two compiled
        calls with two threads allowed run at the same time, one thread each
        (``_core.run_concurrently``): their results are those of one thread, bit for bit."""
        if len(calls) == 2 and self.backend == "cpp" and _core.get_num_threads() >= 2:
            return _core.run_concurrently([fn(*args, defer=True) for args in calls])
        return [fn(*args) for args in calls]

    def to_torch(self):
        """The equivalent ``torch.nn.RNN``, ``LSTM`` or ``GRU`` (``batch_first=True``), same
        dtype, weights copied (not shared). Needs PyTorch; see ``rnnfast.from_torch``."""
        from . import interop

        return interop.recurrent_to_torch(self)

    def config(self):
        """The constructor's arguments (JSON-friendly), enough to build the same model."""
        return {"class": type(self).__name__, "input_size": self.input_size,
                "hidden_size": self.hidden_size, "num_layers": self.num_layers,
                "bias": self.bias, "bidirectional": self.bidirectional,
                "dropout": self.dropout, "dtype": self.dtype.name, "backend": self.backend,
                **({"proj_size": self.proj_size} if self.proj_size else {}),
                "check_finite": self.check_finite, **self._config_extra()}

    def _config_extra(self):
        return {}

    def __repr__(self):
        extra = "" if self.bias else ", bias=False"
        if self.bidirectional:
            extra += ", bidirectional=True"
        if self.dropout:
            extra += f", dropout={self.dropout}"
        if self.proj_size:
            extra += f", proj_size={self.proj_size}"
        return (f"{type(self).__name__}({self.input_size}, {self.hidden_size}, "
                f"num_layers={self.num_layers}{self._repr_extra()}{extra}, "
                f"dtype=np.{self.dtype.name}, backend={self.backend!r})")

    def _repr_extra(self):
        return ""
