"""rnnfast inside PyTorch: ``torch.nn.RNN``, ``LSTM`` and ``GRU`` computed by rnnfast's loops.

Change one line of a PyTorch script, ``torch.nn.LSTM(...)`` -> ``rnnfast.torch.LSTM(...)``,
and keep the rest: the constructor, parameters, ``state_dict``, ``forward(input, hx)`` and
what it returns are torch.nn's (the classes subclass torch.nn's, so ``isinstance(m,
torch.nn.LSTM)`` holds); the forward and backward passes run rnnfast's compiled time loops::

    import rnnfast.torch
    rnn = rnnfast.torch.LSTM(64, 128, num_layers=2, batch_first=True, dropout=0.2)
    output, (h_n, c_n) = rnn(x)          # x (B, T, 64), or a PackedSequence

How it works: one ``torch.autograd.Function`` per call hands NumPy views of the tensors (no
copies) to the same layer stack as ``rnnfast.LSTM`` and keeps its cache for the backward
pass, which returns the gradients of the input, the initial state and every parameter as
tensors over rnnfast's arrays (no copies either). Copies are made where the layouts differ:

- ``batch_first=False`` (torch's default): rnnfast's loops are batch-first, so the input is
  transposed into a contiguous copy and so is the output (and their gradients);
- a ``PackedSequence`` is scattered into a zero-padded batch and its output gathered back;
- a non-contiguous input, state or parameter (a parametrised weight, say) is made contiguous.

What the forward pass keeps for backward is held by autograd's saved tensors, so it is freed
when backward has run (unless ``retain_graph=True``), as torch.nn's buffers are.

Differences from torch.nn, all deliberate:

- CPU tensors only, float32 or float64 (use torch.nn's modules on a GPU, or in half
  precision; under ``torch.autocast`` a half-precision input is computed in the module's
  dtype and the output has that dtype); double backward (``create_graph=True``) is refused;
- ``torch.jit.script`` is refused with a clear error; ``torch.jit.trace`` records torch.nn's
  own operations for these modules (the compiled loops are invisible to the tracer), so a
  traced model computes as torch.nn does;
- dropout's masks are drawn from torch's default generator (``torch.manual_seed`` repeats
  them) but are not the masks torch.nn would draw;
- NaN and Inf pass through as in torch.nn (no check, unlike rnnfast's own models);
- threads: rnnfast follows ``torch.get_num_threads()`` unless ``rnnfast.set_num_threads`` (or
  ``OMP_NUM_THREADS``) chose a count; with two threads the two directions of a bidirectional
  layer run at the same time.

Under ``torch.compile`` they behave as torch.nn's recurrent modules: by default dynamo leaves
the frame that calls one uncompiled (it runs eagerly, with the same results); with
``torch._dynamo.config.allow_rnn = True`` the modules' forward is a graph break and the rest
of that frame compiles. Importing this module needs PyTorch; ``import rnnfast`` does not.
"""

import numpy as np
import torch
from torch.nn.utils.rnn import PackedSequence

from . import _core, _platform
from ._recurrent import ForwardCache
from .gru import GRU as _GRU
from .lstm import LSTM as _LSTM
from .rnn import RNN as _RNN

__all__ = ["RNN", "LSTM", "GRU"]

_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}


class _Stack(torch.autograd.Function):
    """``outputs = stack(x, *state, *params)`` through one rnnfast model (``impl``).

    Inputs after the non-tensor ones: x (B, T, D) contiguous, the state's parts (each
    (L·N, B, S), or None for zeros) and the parameters in ``impl.params``' order. Outputs: y
    (B, T, N·S) and the final state's parts.
    """

    @staticmethod
    def forward(ctx, impl, lengths, train, n_state, x, *tensors):
        states, params = tensors[:n_state], tensors[n_state:]
        # contiguous(): a parametrised or transposed weight is a strided view (copied here)
        arrays = {name: p.detach().contiguous().numpy() for name, p in zip(impl.params, params)}
        impl.params = arrays
        state = _state_arrays(states)
        y, state_n, cache = impl._run(x.detach().numpy(), state, lengths, train)
        ctx.impl, ctx.arrays = impl, arrays
        ctx.skeleton, cache_tensors = _pack_cache(cache)
        ctx.state_given = [s is not None for s in states]
        state_n = _parts(state_n)
        ctx.shapes = (y.shape, [s.shape for s in state_n])
        # An output that the loss does not reach gets None, not a tensor of zeros: rnnfast's
        # backward takes None for a zero dstate, and a zero dy is made only when needed.
        ctx.set_materialize_grads(False)
        outs = (torch.from_numpy(y), *(torch.from_numpy(s) for s in state_n))
        # Saved so that autograd refuses a backward after any of them was changed in place:
        # the cache holds views of x, of the initial state and of the outputs, and the
        # weights are read again.
        checked = (x, *(s for s in states if s is not None), *params, outs[0])
        ctx.n_checked = len(checked)
        # The cache's arrays are saved as tensors (sharing their memory) so that autograd
        # frees them after backward, as it frees torch.nn's buffers, unless retain_graph.
        ctx.save_for_backward(*checked, *cache_tensors)
        return outs

    @staticmethod
    def backward(ctx, dy, *dstate):
        if torch.is_grad_enabled():  # create_graph=True: the gradient would have to be traced
            raise RuntimeError(
                f"rnnfast.torch.{ctx.impl.__class__.__name__} does not support double backward "
                f"(backward or autograd.grad with create_graph=True through it); use torch.nn's "
                f"module for higher-order gradients")
        saved = ctx.saved_tensors  # raises if x, a parameter or y was changed in place, or freed
        cache = _unpack_cache(ctx.skeleton, saved[ctx.n_checked:])
        impl = ctx.impl
        impl.params = ctx.arrays  # another forward may have pointed it elsewhere since
        y_shape, state_shapes = ctx.shapes
        dy = np.zeros(y_shape, impl.dtype) if dy is None else dy.numpy()
        if all(d is None for d in dstate):
            dstate = None
        else:
            dstate = tuple(np.zeros(shape, impl.dtype) if d is None else d.numpy()
                           for d, shape in zip(dstate, state_shapes))
            dstate = dstate if len(dstate) > 1 else dstate[0]
        dx, dstate0, grads = impl.backward(cache, dy, dstate, check_finite=False)
        dstate0 = [torch.from_numpy(a) if given else None
                   for a, given in zip(_parts(dstate0), ctx.state_given)]
        return (None, None, None, None, torch.from_numpy(dx), *dstate0,
                *(torch.from_numpy(grads[name]) for name in impl.params))


def _pack_cache(cache):
    """ForwardCache -> (skeleton, tensors): its arrays as tensors over the same memory, for
    save_for_backward; read-only arrays (the model's kept zero states) stay in the skeleton."""
    arrays, where = [], {}

    def put(a):
        if a is None or not a.flags.writeable:
            return a
        k = where.get(id(a))
        if k is None:
            k = where[id(a)] = len(arrays)
            arrays.append(a)
        return k

    layers = [(put(x), tuple(map(put, s0)), put(y), tuple(map(put, saved)))
              for x, s0, y, saved in cache.layers]
    masks = [put(m) for m in cache.masks]
    skeleton = (cache.owner, cache.batch, cache.steps, cache.lengths, layers, masks)
    return skeleton, [torch.from_numpy(a) for a in arrays]


def _unpack_cache(skeleton, tensors):
    """The inverse of _pack_cache, from ctx.saved_tensors."""
    arrays = [t.numpy() for t in tensors]

    def get(k):
        return arrays[k] if isinstance(k, int) else k

    owner, batch, steps, lengths, layers, masks = skeleton
    layers = [(get(x), tuple(map(get, s0)), get(y), tuple(map(get, saved)))
              for x, s0, y, saved in layers]
    return ForwardCache(owner, batch, steps, lengths, layers, [get(m) for m in masks])


def _parts(state):
    """rnnfast's state (one array, or the LSTM's tuple) -> a tuple of its parts."""
    return state if isinstance(state, tuple) else (state,)


def _state_arrays(parts):
    """The initial state's tensors (each (L·N, B, S), or all None) -> rnnfast's state
    argument: None for zeros, one array, or the LSTM's tuple."""
    if parts[0] is None:
        return None
    arrays = tuple(p.detach().numpy() for p in parts)
    return arrays if len(arrays) > 1 else arrays[0]


def _packed_rows(batch_sizes, sorted_indices, B, T):
    """Where each row of a PackedSequence's data sits in the padded batch: the flat index
    b·T + t of every row (in the packed order: time-major, longest sequence first), and each
    sequence's length, both in the original batch order."""
    counts = batch_sizes.to(torch.int64)
    order = torch.arange(B) if sorted_indices is None else sorted_indices.to(torch.int64)
    t = torch.repeat_interleave(torch.arange(T), counts)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(int(counts.sum())) - torch.repeat_interleave(starts, counts)
    lengths = torch.empty(B, dtype=torch.int64)
    lengths[order] = (counts[:, None] > torch.arange(B)).sum(0)
    return order[rank] * T + t, lengths


class _Drop:
    """rnnfast's dropout mask drawn from torch's default generator, so that
    ``torch.manual_seed`` repeats a run."""

    def __init__(self, p, dtype):
        self.p, self.dtype = p, dtype

    def __call__(self, shape):
        keep = 1.0 - self.p
        mask = torch.empty(shape, dtype=self.dtype).bernoulli_(keep).div_(keep)
        return mask.numpy()


class _Module:
    """What the three modules add to torch.nn's: the forward pass through rnnfast."""

    _impl_class = None  # rnnfast.RNN, LSTM or GRU

    def _impl(self, dtype):
        """The rnnfast model this module runs with parameters of ``dtype``, made once per
        dtype (its own parameters are replaced by views of the module's at every call)."""
        impls = self.__dict__.setdefault("_rnnfast_impls", {})
        impl = impls.get(dtype)
        if impl is None:
            kw = {"proj_size": self.proj_size} if self.proj_size else {}
            if self.mode.startswith("RNN_"):
                kw["nonlinearity"] = self.nonlinearity
            # Parameters are drawn here only to be replaced: their cost is once per module.
            impl = self._impl_class(self.input_size, self.hidden_size, self.num_layers,
                                    bias=bool(self.bias), bidirectional=bool(self.bidirectional),
                                    dtype=_DTYPES[dtype],
                                    check_finite=False, **kw)
            # forward passes self._flat_weights in this order
            assert list(impl.params) == list(self._flat_weights_names), "parameter order"
            impls[dtype] = impl
        return impl

    def __prepare_scriptable__(self):
        # torch.jit.script cannot compile a forward that calls NumPy and the compiled loops.
        raise RuntimeError(
            f"rnnfast.torch.{type(self).__name__} cannot be scripted with torch.jit.script; "
            f"script a torch.nn.{type(self).__name__} loaded with this module's state_dict")

    def __getstate__(self):
        # The rnnfast models are caches, remade on first use: not pickled, not deep-copied.
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__
        state = dict(state)
        state.pop("_rnnfast_impls", None)
        return state

    def _refuse(self, input):
        """Clear errors for what rnnfast cannot run, in torch's style."""
        name = f"rnnfast.torch.{type(self).__name__}"
        # torch.nn keeps a module's parameters on one device: the first stands for all.
        for t in (input, self._flat_weights[0]):
            if t.device.type != "cpu":
                raise RuntimeError(
                    f"{name} runs on the CPU, but got a tensor on {t.device}; use "
                    f"torch.nn.{type(self).__name__} for tensors on {t.device.type}")
        dtype = self._flat_weights[0].dtype
        if dtype not in _DTYPES:
            raise RuntimeError(
                f"{name} computes in torch.float32 or torch.float64, but its parameters are "
                f"{dtype}; convert the module with .float() or .double(), or use "
                f"torch.nn.{type(self).__name__} for {dtype}")

    @torch.compiler.disable
    def forward(self, input, hx=None):
        if torch.jit.is_tracing():  # numpy is invisible to the tracer: trace torch.nn's ops
            return super().forward(input, hx)
        self._update_flat_weights()
        packed = isinstance(input, PackedSequence)
        data = input.data if packed else input
        self._refuse(data)
        lstm = self.mode == "LSTM"
        N = 2 if self.bidirectional else 1
        batch_dim = 0 if self.batch_first else 1

        # Shapes, checked by torch.nn's own functions (their messages); then to (B, T, D).
        if packed:
            B, T = int(input.batch_sizes[0]), len(input.batch_sizes)
            batched = True
            self.check_input(data, input.batch_sizes)
            if hx is not None:
                self.check_forward_args(data, hx, input.batch_sizes)
            rows, lengths = _packed_rows(input.batch_sizes, input.sorted_indices, B, T)
            x = data.new_zeros(B * T, data.shape[-1]).index_copy(0, rows, data)
            x = x.view(B, T, -1)
        else:
            if data.dim() not in (2, 3):
                raise ValueError(f"{type(self).__name__}: Expected input to be 2D or 3D, got "
                                 f"{data.dim()}D instead")
            batched = data.dim() == 3
            x = data if batched else data.unsqueeze(batch_dim)
            if hx is None:
                self.check_input(x, None)
            else:
                hx = self._batched_state(hx, batched)
                self.check_forward_args(x, hx, None)
            if not self.batch_first:
                x = x.transpose(0, 1)
            lengths = None
        wdtype = self._flat_weights[0].dtype
        x = x.to(wdtype).contiguous()  # .to: a no-op but under autocast, which check_input allows
        B = x.shape[0]
        states = (tuple(hx) if lstm else (hx,)) if hx is not None else (None,) * (1 + lstm)
        states = tuple(s if s is None else s.to(wdtype).contiguous() for s in states)

        if not _platform.threads_chosen():
            threads = torch.get_num_threads()
            if _core.get_num_threads() != threads:
                _core.set_num_threads(threads)
        dtype = self._flat_weights[0].dtype
        impl = self._impl(dtype)
        # torch.nn reads self.dropout at every call: so does this (a user may change it).
        p = float(self.dropout) if self.num_layers > 1 else 0.0
        if impl.dropout != p:
            impl.dropout, impl._dropout_mask = p, _Drop(p, dtype)
        params = self._flat_weights
        np_lengths = None if lengths is None else lengths.numpy()
        if torch.is_grad_enabled() and any(
                t is not None and t.requires_grad for t in (x, *states, *params)):
            y, *state_n = _Stack.apply(impl, np_lengths, self.training, len(states), x,
                                       *states, *params)
        else:  # no_grad or nothing to differentiate: no cache, no graph
            impl.params = {name: p.detach().contiguous().numpy()
                           for name, p in zip(impl.params, params)}
            y, state_n, _ = impl._run(x.numpy(), _state_arrays(states), np_lengths,
                                      self.training)
            y, state_n = torch.from_numpy(y), [torch.from_numpy(s) for s in _parts(state_n)]

        if packed:
            out = PackedSequence(y.reshape(B * T, -1).index_select(0, rows),
                                 input.batch_sizes, input.sorted_indices,
                                 input.unsorted_indices)
        else:
            out = y if self.batch_first else y.transpose(0, 1).contiguous()
            if not batched:
                out = out.squeeze(batch_dim)
                state_n = [s.squeeze(1) for s in state_n]
        return out, (tuple(state_n) if lstm else state_n[0])

    def _batched_state(self, hx, batched):
        """``hx`` as torch.nn checks it for a batched or unbatched input, given 3-D."""
        lstm = self.mode == "LSTM"
        parts = tuple(hx) if lstm else (hx,)
        want = 3 if batched else 2
        if any(p.dim() != want for p in parts):
            got = ", ".join(f"{p.dim()}-D" for p in parts)
            kind = "batched 3-D" if batched else "unbatched 2-D"
            what = "hx and cx" if lstm else "hx"
            raise RuntimeError(f"For {kind} input, {what} should also be {want}-D but got "
                               f"({got}) tensor{'s' if lstm else ''}")
        if not batched:
            parts = tuple(p.unsqueeze(1) for p in parts)
        return parts if lstm else parts[0]


class RNN(_Module, torch.nn.RNN):
    """``torch.nn.RNN`` (tanh or relu) computed by rnnfast: the same constructor, parameters
    and ``forward``; see ``rnnfast.torch``'s documentation for the differences."""

    _impl_class = _RNN


class LSTM(_Module, torch.nn.LSTM):
    """``torch.nn.LSTM`` (with ``proj_size`` too) computed by rnnfast: the same constructor,
    parameters and ``forward``; see ``rnnfast.torch``'s documentation for the differences."""

    _impl_class = _LSTM


class GRU(_Module, torch.nn.GRU):
    """``torch.nn.GRU`` computed by rnnfast: the same constructor, parameters and
    ``forward``; see ``rnnfast.torch``'s documentation for the differences."""

    _impl_class = _GRU
