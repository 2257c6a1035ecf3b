"""Checkpointed BPTT: the exact gradient of a recurrent stack in memory that does not grow
with the length of the sequence times the cache of a step (docs/memory.md).

``forward(..., checkpoint=k)`` cuts time into segments of k steps, runs the layers segment by
segment and keeps, instead of every step's saved values, only each layer's state where each
segment starts. ``backward`` walks the segments from the last, runs one segment's forward again
from its stored states (keeping its cache this time), backpropagates through it, and carries
dL/dstate across the segment's edge into the segment before. Each segment's forward and
backward are the layer functions of the whole-sequence path on the segment's steps: the same
arithmetic per step, so the results are the full cache's up to rounding. Two things round
differently: the weight gradients are a sum over segments of each segment's sum over its
steps, not one sum over all steps; and a matrix product over a segment's rows may take
another of Eigen's kernels (it chooses by size) than the product over all T steps' rows. In
float64 both stay within ~1e-15 relative, in float32 within ~1e-6 (tests/test_checkpointed_bptt.py);
with the reference backend, and with the compiled one at most sizes, y, the states, dx and
dstate0 are the same bit for bit.

Two schedules:

- one direction: segment-major. Forward runs every layer over segment 0, then over segment 1,
  ...; backward recomputes all layers over one segment and backpropagates through all of them.
  Nothing T-long is kept beyond the user's x (and y, dy, dx, which are the user's).
- bidirectional: layer-major. Layer k + 1 reads both directions of layer k at every step, and
  the reverse direction of layer k reaches step 0 only after every step, so layers run one
  after the other over the whole sequence, each direction segment by segment, and the stack
  keeps each inner layer's output (the next layer's input, one value per unit and step)
  instead of its whole cache.

Dropout masks are not kept: the generator's state before each draw is, and backward draws the
same mask again (then puts the generator back where it was).
"""

import math

import numpy as np

from . import _checks


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


def segment_steps(checkpoint, T):
    """The steps per segment that ``checkpoint`` asks for over T steps; None for the full
    cache (``checkpoint`` None, or at least T)."""
    if checkpoint is None:
        return None
    if isinstance(checkpoint, str):
        if checkpoint != "auto":
            raise ValueError(f"checkpoint must be None, a positive int or 'auto', got "
                             f"{checkpoint!r}")
        k = max(1, math.isqrt(max(T - 1, 0)) + 1)  # ceil(sqrt(T)): about sqrt(T) segments
    else:
        k = _checks.positive_int(checkpoint, "checkpoint")
    return k if k < T else None


def _segment_lengths(lengths, s0, s1):
    """The lengths of a layer call over steps [s0, s1): each sequence's steps in it."""
    if lengths is None:
        return None
    return np.clip(lengths - s0, 0, s1 - s0).astype(np.int64)


class _Stack:
    """The model's layer functions, bound once per call."""

    def __init__(self, model):
        self.model = model
        self.params = model._layer_params()
        self.S = model.state_size

    def forward(self, i, x, state0, lengths, reverse):
        m = self.model
        return m._forward_out(m._forward_fn(*m._forward_args(x, state0, self.params[i],
                                                              lengths, reverse)))

    def backward(self, i, layer, lengths, dy, dstate_n, step, reverse):
        m = self.model
        return m._layer_backward(*layer, self.params[i], lengths, dy, dstate_n, step, reverse)


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
    stack, L = _Stack(model), model.num_layers
    B, T = x.shape[:2]
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
            out, current[k], _ = stack.forward(k, inp, current[k], seg_lengths, False)
            if _dropout_on(model, train) and k < L - 1:
                out = out * model._dropout_mask(out.shape)
            inp = out
        y[:, s0:s1] = inp
    cache = CheckpointCache(model._token, B, T, lengths, edges, stored, [x], mask_states, None)
    return y, current, cache


def _forward_layer_major(model, x, states, lengths, train, edges):
    stack, L, N = _Stack(model), model.num_layers, model.num_directions
    B, T = x.shape[:2]
    segments = range(len(edges) - 1)
    finals, stored, inputs, mask_states, mask_shapes = [], [], [], [], []
    inp = x
    for k in range(L):
        inputs.append(inp)
        outs = []
        for d in range(N):
            i = k * N + d
            current, per_segment = states[i], [None] * len(segments)
            y_d = np.empty((B, T, stack.S), model.dtype)
            for j in (reversed(segments) if d else segments):  # in the direction's walk
                s0, s1 = edges[j], edges[j + 1]
                per_segment[j] = current
                y_d[:, s0:s1], current, _ = stack.forward(
                    i, np.ascontiguousarray(inp[:, s0:s1]), current,
                    _segment_lengths(lengths, s0, s1), d == 1)
            finals.append(current)
            stored.append(per_segment)
            outs.append(y_d)
        y = np.concatenate(outs, axis=2)
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


def _add(total, grads):
    """Adds a segment's gradient tuple to the running total (None for the first segment)."""
    if total is None:
        return list(grads)
    for a, g in zip(total, grads):
        if a is not None:
            a += g
    return total


def _backward_segment_major(model, cache, dy, dstates, step):
    stack, L = _Stack(model), model.num_layers
    x, edges, lengths = cache.inputs[0], cache.edges, cache.lengths
    B, T = cache.batch, cache.steps
    dx = np.empty(x.shape, model.dtype)
    carry = list(dstates)
    grads = [None] * L
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
            out, _, saved = stack.forward(k, inp, state0, seg_lengths, False)
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
            d_out, carry[k], g, *seg_norms = stack.backward(k, layers[k], seg_lengths, d_out,
                                                             carry[k], step, False)
            grads[k] = _add(grads[k], g)
            if norms is not None:
                norms[k, :, s0:s1] = seg_norms[0]
        dx[:, s0:s1] = d_out
    return dx, carry, grads, norms


def _backward_layer_major(model, cache, dy, dstates, step):
    stack, L, N, S = _Stack(model), model.num_layers, model.num_directions, model.state_size
    edges, lengths, B, T = cache.edges, cache.lengths, cache.batch, cache.steps
    segments = range(len(edges) - 1)
    dstate0, grads = [None] * (L * N), [None] * (L * N)
    norms = np.zeros((L * N, B, T), model.dtype) if step["grad_norms"] else None
    d_out = dy
    for k in reversed(range(L)):
        if cache.mask_states[k] is not None:
            d_out = d_out * _draw_mask(model, cache.mask_shapes[k], cache.mask_states[k])
        inp = cache.inputs[k]
        d_in = None
        for d in range(N):
            i = k * N + d
            carry, dx_d = dstates[i], np.empty(inp.shape, model.dtype)
            for j in (segments if d else reversed(segments)):  # against the direction's walk
                s0, s1 = edges[j], edges[j + 1]
                seg_lengths = _segment_lengths(lengths, s0, s1)
                x_seg, state0 = np.ascontiguousarray(inp[:, s0:s1]), cache.states[i][j]
                out, _, saved = stack.forward(i, x_seg, state0, seg_lengths, d == 1)
                dy_seg = np.ascontiguousarray(d_out[:, s0:s1, d * S:(d + 1) * S])
                dx_d[:, s0:s1], carry, g, *seg_norms = stack.backward(
                    i, (x_seg, state0, out, saved), seg_lengths, dy_seg, carry, step, d == 1)
                grads[i] = _add(grads[i], g)
                if norms is not None:
                    norms[i, :, s0:s1] = seg_norms[0]
            dstate0[i] = carry
            d_in = dx_d if d_in is None else d_in + dx_d  # both directions read the same x
        d_out = d_in
    return d_out, dstate0, grads, norms
