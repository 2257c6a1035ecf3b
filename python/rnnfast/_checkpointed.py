"""Checkpointed BPTT: the exact gradient of a recurrent stack in memory that does not grow
with the length of the sequence times the cache of a step (docs/memory.md).

``forward(..., checkpoint=k)`` cuts time into segments of k steps, runs the layers segment by
segment and keeps, instead of every step's saved values, only each layer's state where each
segment starts. ``backward`` walks the segments from the last, runs one segment's forward again
from its stored states (keeping its cache this time), backpropagates through it, and carries
dL/dstate across the segment's edge into the segment before.

The results are the full cache's bit for bit. Each segment's forward and backward are the
layer functions of the whole-sequence path on the segment's steps, told which steps of which
whole call they are (``plan_steps``, ``offset``): they then use threads as that call would,
and group their products over the same steps (the input side in chunks of 16 steps,
backward's weight gradients in windows), so every product is the whole call's on the same
rows. For that a segment starts at a multiple of the call's unit (``_core.segment_unit``: the
window: 128 steps at batch 1 and one thread, 16 with two), so k is rounded up to a
multiple of it. The weight gradients of every segment are added into one ``GradSum`` per layer
and direction, window after window, in the whole call's order.

Two schedules:

- one direction: segment-major. Forward runs every layer over segment 0, then over segment 1,
  ...; backward recomputes all layers over one segment and backpropagates through all of them.
  Nothing T-long is kept beyond the user's x (and y, dy, dx, which are the user's).
- bidirectional: layer-major. Layer k + 1 reads both directions of layer k at every step, and
  the reverse direction of layer k reaches step 0 only after every step, so layers run one
  after the other over the whole sequence, each direction segment by segment, and the stack
  keeps each inner layer's output (the next layer's input, one value per unit and step)
  instead of its whole cache. With two threads the two directions' segments run side by side,
  as the whole layer's directions do.

Dropout masks are not kept: the generator's state before each draw is, and backward draws the
same mask again (then puts the generator back where it was).
"""

import math

import numpy as np

from . import _checks, _core, reference


class CheckpointCache:
    """What ``backward`` needs from a checkpointed ``forward``. Treat it as opaque.

    It holds the input x (a reference, as ``ForwardCache`` does), each layer's state at the
    start of every segment, the generator states of the dropout masks, and for a
    bidirectional stack each inner layer's output.
    """

    __slots__ = ("owner", "batch", "steps", "lengths", "edges", "states", "inputs",
                 "mask_states", "mask_shapes")

    def __init__(self, owner, batch, steps, lengths, edges, states, inputs, mask_states,
                 mask_shapes):
        self.owner = owner
        self.batch = batch
        self.steps = steps
        self.lengths = lengths
        self.edges = edges  # segment j is steps [edges[j], edges[j + 1])
        # per layer and direction i = k·N + d, per segment j: the state tuple the walk
        # entered the segment with (at edges[j] walking up, at edges[j + 1] walking down)
        self.states = states
        self.inputs = inputs  # per layer: its input sequence (bidirectional); [x] otherwise
        # one direction: per segment, the generator state before its masks; bidirectional:
        # per layer, before its mask (None without dropout)
        self.mask_states = mask_states
        self.mask_shapes = mask_shapes

    @property
    def segment_steps(self):
        """The steps per segment (the last segment may be shorter)."""
        return self.edges[1] - self.edges[0]

    @property
    def nbytes(self):
        """Bytes of the arrays this cache keeps alive (layer 0's input included)."""
        seen, total = set(), 0
        arrays = [a for per_layer in self.states for state in per_layer for a in state]
        for a in (*self.inputs, *arrays):
            if id(a) not in seen:
                seen.add(id(a))
                total += a.nbytes
        return total


def requested_steps(checkpoint, T):
    """The steps per segment that ``checkpoint`` asks for over T steps, before rounding to
    the unit (``segment_steps``); None for the full cache. Refuses a bad value by name."""
    if checkpoint is None:
        return None
    if isinstance(checkpoint, str):
        if checkpoint != "auto":
            raise ValueError(f"checkpoint must be None, a positive int or 'auto', got "
                             f"{checkpoint!r}")
        return max(1, math.isqrt(max(T - 1, 0)) + 1)  # ceil(sqrt(T)): about sqrt(T) segments
    return _checks.positive_int(checkpoint, "checkpoint")


def segment_steps(model, checkpoint, B, T):
    """The steps per segment of ``model.forward(x, checkpoint=checkpoint)`` over x (B, T, ·):
    what ``checkpoint`` asks for rounded up to a multiple of the layers' unit; None for the
    full cache (``checkpoint`` None, or k >= T)."""
    k = requested_steps(checkpoint, T)
    if k is None or B == 0 or k >= T:
        return None
    unit = segment_unit(model, B, T)
    k = -(-k // unit) * unit
    return k if k < T else None


def segment_unit(model, B, T):
    """The steps a segment must start at a multiple of for its products to be those of the
    whole call, for every layer of ``model`` over B sequences of T steps (1 for the
    reference, whose products are one step at a time)."""
    if model.backend != "cpp":
        return 1
    threads = _core.get_num_threads()
    if model.num_directions == 2:  # each direction with half the threads (_core.run_concurrently)
        threads = max(1, threads // 2)
    unit_of = _core.segment_unit if model.dtype == np.float32 else _core.segment_unit64
    unit = 1
    for k in range(model.num_layers):
        D = model.input_size if k == 0 else model.num_directions * model.state_size
        unit = math.lcm(unit, unit_of(model.gates, B, T, D, model.hidden_size, model.proj_size,
                                      threads))
    return unit


def _segment_lengths(lengths, s0, s1):
    """The lengths of a layer call over steps [s0, s1): each sequence's steps in it."""
    if lengths is None:
        return None
    return np.clip(lengths - s0, 0, s1 - s0).astype(np.int64)


class _Stack:
    """The model's layer functions, bound once per call over T steps. Each call is one segment
    [s0, s1) of the whole call, told so (compiled backend: ``plan_steps``, ``offset``)."""

    def __init__(self, model, T):
        self.model = model
        self.params = model._layer_params()
        self.S = model.state_size
        self.T = T
        self.cpp = model.backend == "cpp"
        self.concurrent = self.cpp and _core.get_num_threads() >= 2

    def _plan(self, s0):
        return {"plan_steps": self.T, "offset": s0} if self.cpp else {}

    def forward_call(self, i, x, state0, lengths, reverse, s0):
        m = self.model
        return (m._forward_fn, m._forward_args(x, state0, self.params[i], lengths, reverse),
                self._plan(s0))

    def backward_call(self, i, layer, lengths, dy, dstate_n, step, reverse, s0, into):
        m = self.model
        return (m._backward_fn,
                m._backward_args(*layer, self.params[i], lengths, dy, dstate_n, step, reverse),
                dict(self._plan(s0), into=into))

    def run(self, calls):
        """The calls' results, in order; two (a layer's directions) side by side where the
        whole-sequence path runs them so (``Recurrent._run_calls``)."""
        if len(calls) == 2 and self.concurrent:
            return _core.run_concurrently([fn(*args, defer=True, **kw) for fn, args, kw in calls])
        return [fn(*args, **kw) for fn, args, kw in calls]

    def forward(self, i, x, state0, lengths, reverse, s0):
        return self.model._forward_out(self.run([self.forward_call(i, x, state0, lengths,
                                                                   reverse, s0)])[0])

    def backward(self, i, layer, lengths, dy, dstate_n, step, reverse, s0, into):
        return self.model._backward_out(self.run([self.backward_call(
            i, layer, lengths, dy, dstate_n, step, reverse, s0, into)])[0])

    def grad_sum(self, i):
        """Where layer-direction i's segments add their weight gradients."""
        p = self.params[i]
        if not self.cpp:
            cls = reference.GradSum
        else:
            cls = _core.GradSum32 if self.model.dtype == np.float32 else _core.GradSum64
        return cls(p[0], p[1], p[2] is not None, p[4] if len(p) > 4 else None)


def _draw_mask(model, shape, state):
    model._dropout_rng.bit_generator.state = state
    return model._dropout_mask(shape)


def forward(model, x, states, lengths, train, k):
    """Checkpointed forward: returns (y, final states per layer and direction, cache)."""
    B, T, _ = x.shape
    edges = list(range(0, T, k)) + [T]
    if model.num_directions == 1:
        return _forward_segment_major(model, x, states, lengths, train, edges)
    return _forward_layer_major(model, x, states, lengths, train, edges)


def _dropout_on(model, train):
    return train and model.dropout > 0


def _forward_segment_major(model, x, states, lengths, train, edges):
    B, T = x.shape[:2]
    stack, L = _Stack(model, T), model.num_layers
    y = np.empty((B, T, stack.S), model.dtype)
    current = list(states)
    stored = [[] for _ in range(L)]
    mask_states = []
    rng = model._dropout_rng.bit_generator
    for s0, s1 in zip(edges[:-1], edges[1:]):
        mask_states.append(rng.state if _dropout_on(model, train) else None)
        seg_lengths = _segment_lengths(lengths, s0, s1)
        inp = np.ascontiguousarray(x[:, s0:s1])
        for k in range(L):
            stored[k].append(current[k])
            out, current[k], _ = stack.forward(k, inp, current[k], seg_lengths, False, s0)
            if _dropout_on(model, train) and k < L - 1:
                out = out * model._dropout_mask(out.shape)
            inp = out
        y[:, s0:s1] = inp
    cache = CheckpointCache(model._token, B, T, lengths, edges, stored, [x], mask_states, None)
    return y, current, cache


def _forward_layer_major(model, x, states, lengths, train, edges):
    B, T = x.shape[:2]
    stack, L = _Stack(model, T), model.num_layers
    J = len(edges) - 1
    finals, stored, inputs, mask_states, mask_shapes = [], [], [], [], []
    inp = x
    for k in range(L):
        inputs.append(inp)
        i = (2 * k, 2 * k + 1)
        current = [states[i[0]], states[i[1]]]
        per_segment = [[None] * J, [None] * J]
        y = np.empty((B, T, 2 * stack.S), model.dtype)
        for j in range(J):
            # the forward direction's segment j beside the reverse direction's J-1-j
            calls, places = [], []
            for d, jd in ((0, j), (1, J - 1 - j)):
                s0, s1 = edges[jd], edges[jd + 1]
                per_segment[d][jd] = current[d]
                calls.append(stack.forward_call(i[d], np.ascontiguousarray(inp[:, s0:s1]),
                                                current[d], _segment_lengths(lengths, s0, s1),
                                                d == 1, s0))
                places.append((s0, s1))
            for d, out in enumerate(stack.run(calls)):
                (s0, s1), cols = places[d], slice(d * stack.S, (d + 1) * stack.S)
                y[:, s0:s1, cols], current[d], _ = model._forward_out(out)
        finals.extend(current)
        stored.extend(per_segment)
        state = None
        if _dropout_on(model, train) and k < L - 1:
            state = model._dropout_rng.bit_generator.state
            y = y * model._dropout_mask(y.shape)
        mask_states.append(state)
        mask_shapes.append(y.shape)
        inp = y
    cache = CheckpointCache(model._token, B, T, lengths, edges, stored, inputs, mask_states,
                            mask_shapes)
    return inp, finals, cache


def backward(model, cache, dy, dstates, step):
    """Checkpointed backward: returns (dx, dstate0 per layer and direction, grads per layer
    and direction as tuples, and the (L·N, B, T) norms of dL/dh_t or None)."""
    rng = model._dropout_rng.bit_generator
    after = rng.state  # replaying the masks moves the generator: put it back afterwards
    try:
        if model.num_directions == 1:
            return _backward_segment_major(model, cache, dy, dstates, step)
        return _backward_layer_major(model, cache, dy, dstates, step)
    finally:
        rng.state = after


def _backward_segment_major(model, cache, dy, dstates, step):
    x, edges, lengths = cache.inputs[0], cache.edges, cache.lengths
    B, T = cache.batch, cache.steps
    stack, L = _Stack(model, T), model.num_layers
    dx = np.empty(x.shape, model.dtype)
    carry = list(dstates)
    sums = [stack.grad_sum(k) for k in range(L)]
    norms = np.zeros((L, B, T), model.dtype) if step["grad_norms"] else None
    for j in reversed(range(len(edges) - 1)):
        s0, s1 = edges[j], edges[j + 1]
        seg_lengths = _segment_lengths(lengths, s0, s1)
        # this segment's forward again, keeping its cache
        if cache.mask_states[j] is not None:
            model._dropout_rng.bit_generator.state = cache.mask_states[j]
        inp, layers, masks = np.ascontiguousarray(x[:, s0:s1]), [], []
        for k in range(L):
            state0 = cache.states[k][j]
            out, _, saved = stack.forward(k, inp, state0, seg_lengths, False, s0)
            layers.append((inp, state0, out, saved))
            mask = None
            if cache.mask_states[j] is not None and k < L - 1:
                mask = model._dropout_mask(out.shape)
                out = out * mask
            masks.append(mask)
            inp = out
        d_out = np.ascontiguousarray(dy[:, s0:s1])
        for k in reversed(range(L)):
            if masks[k] is not None:
                d_out = d_out * masks[k]
            d_out, carry[k], _, *seg_norms = stack.backward(k, layers[k], seg_lengths, d_out,
                                                             carry[k], step, False, s0, sums[k])
            if norms is not None:
                norms[k, :, s0:s1] = seg_norms[0]
        dx[:, s0:s1] = d_out
    return dx, carry, [_result(s) for s in sums], norms


def _result(grad_sum):
    """A GradSum's gradients as the layer's tuple (dweight_ih, dweight_hh, dbias_ih,
    dbias_hh, dweight_hr), None for an absent one."""
    return tuple(grad_sum.result())


def _backward_layer_major(model, cache, dy, dstates, step):
    edges, lengths, B, T = cache.edges, cache.lengths, cache.batch, cache.steps
    stack, L, S = _Stack(model, T), model.num_layers, model.state_size
    J = len(edges) - 1
    dstate0, grads = [None] * (2 * L), [None] * (2 * L)
    norms = np.zeros((2 * L, B, T), model.dtype) if step["grad_norms"] else None
    d_out = dy
    for k in reversed(range(L)):
        if cache.mask_states[k] is not None:
            d_out = d_out * _draw_mask(model, cache.mask_shapes[k], cache.mask_states[k])
        inp = cache.inputs[k]
        i = (2 * k, 2 * k + 1)
        carry = [dstates[i[0]], dstates[i[1]]]
        sums = [stack.grad_sum(i[0]), stack.grad_sum(i[1])]
        dx = [np.empty(inp.shape, model.dtype), np.empty(inp.shape, model.dtype)]
        for j in range(J):
            # against each direction's walk: the forward direction's segment J-1-j beside
            # the reverse direction's j; first their forwards again, then their backwards
            places = [(edges[jd], edges[jd + 1]) for jd in (J - 1 - j, j)]
            jd = (J - 1 - j, j)
            x_seg = [np.ascontiguousarray(inp[:, s0:s1]) for s0, s1 in places]
            seg_lengths = [_segment_lengths(lengths, s0, s1) for s0, s1 in places]
            state0 = [cache.states[i[d]][jd[d]] for d in (0, 1)]
            outs = stack.run([stack.forward_call(i[d], x_seg[d], state0[d], seg_lengths[d],
                                                 d == 1, places[d][0]) for d in (0, 1)])
            calls = []
            for d, out in enumerate(outs):
                y_d, _, saved = model._forward_out(out)
                s0, s1 = places[d]
                dy_seg = np.ascontiguousarray(d_out[:, s0:s1, d * S:(d + 1) * S])
                calls.append(stack.backward_call(i[d], (x_seg[d], state0[d], y_d, saved),
                                                 seg_lengths[d], dy_seg, carry[d], step,
                                                 d == 1, s0, sums[d]))
            for d, out in enumerate(stack.run(calls)):
                s0, s1 = places[d]
                dx[d][:, s0:s1], carry[d], _, *seg_norms = model._backward_out(out)
                if norms is not None:
                    norms[i[d], :, s0:s1] = seg_norms[0]
        for d in (0, 1):
            dstate0[i[d]], grads[i[d]] = carry[d], _result(sums[d])
        d_out = dx[0] + dx[1]  # both directions read the same x
    return d_out, dstate0, grads, norms
