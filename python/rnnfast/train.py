"""The training loop: full and truncated BPTT, clipping, validation, early stopping.

``train_sequence`` trains on one batch of sequences with BPTT(k1, k2); ``fit`` runs epochs of
those over a data set, with a progress bar and a history.

Truncated BPTT(k1, k2), k2 >= k1 (Williams & Peng 1990): the state is carried forward through
the sequence; every k1 steps, the model runs forward over the last k2 steps from the state
stored at their beginning, the loss is taken on the last k1 outputs only, the gradient flows
back through all k2 steps, and the parameters are updated. No gradient crosses a window's
start. k1 = k2 = k is the common chunked form; k1 = k2 = T is full BPTT.
"""

import math
import time

import numpy as np

from . import _checkpointed, _checks, clip, losses
from .embedding import as_ids, refuse_ids

#: The names ``fit``, ``evaluate`` and ``train_sequence`` take as ``loss`` (see
#: ``sequence_loss``).
LOSSES = ("cross_entropy", "mse", "cross_entropy_last", "mse_last")


class NonFiniteError(FloatingPointError):
    """A loss or gradient was NaN or infinite and ``on_nonfinite="stop"`` was asked for."""


def sequence_loss(kind, logits, targets, lengths=None, reduction="mean"):
    """The loss named ``kind`` and its gradient with respect to ``logits``.

    These are the losses that ``fit``, ``evaluate`` and ``train_sequence`` take by name.

    Parameters
    ----------
    kind : {"cross_entropy", "mse", "cross_entropy_last", "mse_last"}
        For per-step logits (B, T, C):

        - ``"cross_entropy"``: softmax cross-entropy at every valid step, with integer class
          targets (B, T) (``-100`` ignores a step); a sequence tagger or a language model.
        - ``"mse"``: mean-squared error at every valid step, targets (B, T, C).
        - ``"cross_entropy_last"``: classification of whole sequences (many-to-one): the
          cross-entropy of each sequence's logits at its last valid step (step
          ``lengths[b] - 1``, or T - 1), with one integer class per sequence, targets (B,).
          The other steps get zero gradient, so the whole sequence is read before the
          decision and BPTT carries the gradient back from that step alone.
        - ``"mse_last"``: regression from the last valid step, targets (B, C).

        For the per-sequence logits (B, C) of a pooled ``Model``: ``"cross_entropy"`` with
        targets (B,) or ``"mse"`` with targets (B, C) (the ``"_last"`` losses are refused by
        ``fit`` there: the pool has already chosen the step).
    logits : ndarray (B, T, C), or (B, C)
        The model's output.
    targets : ndarray
        Shapes as above; class indices are integers in [0, C).
    lengths : array-like of ints, shape (B,), optional
        Valid steps of each sequence; steps past them count for nothing. None for
        per-sequence logits (the pool has used them).
    reduction : {"mean", "sum"}, default "mean"
        "mean" divides by the number of terms that count (PyTorch's default); "sum" is the
        textbook's E = sum over t of E_t.

    Returns
    -------
    loss : float
    dlogits : ndarray
        The gradient of ``loss`` with respect to ``logits``, of their shape and dtype: what
        the model's ``backward`` takes.

    See Also
    --------
    rnnfast.losses.cross_entropy, rnnfast.losses.mse, rnnfast.losses.last_step

    Examples
    --------
    Classify sequences from their last step:

    >>> import numpy as np, rnnfast
    >>> logits = np.zeros((2, 5, 3), dtype=np.float32)      # (B, T, C)
    >>> loss, dlogits = rnnfast.train.sequence_loss("cross_entropy_last", logits,
    ...                                             np.array([0, 2]), lengths=[5, 3])
    >>> round(loss, 4), dlogits.shape, bool(dlogits[1, 3:].any())
    (1.0986, (2, 5, 3), False)
    """
    if kind == "cross_entropy":
        return losses.cross_entropy(logits, targets, reduction=reduction, lengths=lengths)
    if kind == "mse":
        return losses.mse(logits, targets, reduction=reduction, lengths=lengths)
    if kind in ("cross_entropy_last", "mse_last"):
        last = losses.last_step(logits, lengths)
        fn = losses.cross_entropy if kind == "cross_entropy_last" else losses.mse
        loss, dlast = fn(last, targets, reduction=reduction)
        return loss, losses.last_step_backward(dlast, lengths, logits.shape[1])
    raise ValueError(f"loss must be one of {LOSSES}, got {kind!r}")


def _window_lengths(lengths, start, stop):
    return None if lengths is None else np.clip(lengths - start, 0, stop - start)


def _all_finite(grads):
    return all(np.isfinite(g).all() for g in grads.values())


def _add_grads(total, grads):
    if total is None:
        return grads
    for k, g in grads.items():
        total[k] += g
    return total


def _per_sequence(model):
    """Whether the model's logits are one per sequence (B, C): a ``Model`` with a pool."""
    return getattr(model, "pool", None) is not None


def _check_loss(model, loss):
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if _per_sequence(model) and loss.endswith("_last"):
        raise ValueError(f"loss {loss!r} takes each sequence's last step of per-step logits, "
                         f"but this model pools over time (pool={model.pool!r}) and its logits "
                         f"are per sequence already: use {loss[:-len('_last')]!r} with "
                         f"per-sequence targets")


def _model_input(model, x):
    """``x`` checked and converted once for every window: integer ids (B, T) for a model that
    starts with an embedding, else real features (B, T, D)."""
    embedding = getattr(model, "embedding", None)
    if embedding is not None:
        return as_ids(x, "x", embedding.num_embeddings)
    refuse_ids(x, "x")
    x = _checks.as_float_array(x, "x", model.dtype, 3)
    check = getattr(model, "check_finite", getattr(getattr(model, "recurrent", None),
                                                   "check_finite", False))
    if check:
        _checks.check_finite(x, "x")
    return x


def _loss_terms(kind, logits, targets, lengths=None):
    """The number of terms that ``sequence_loss(kind, ...)`` with ``reduction="mean"``
    divides by: what ranks holding parts of a batch add up to take the batch's mean."""
    targets = np.asarray(targets)
    if kind.endswith("_last") or logits.ndim == 2:  # one output per sequence
        if kind.startswith("cross_entropy"):
            return int((targets != -100).sum())
        return logits.shape[0] * logits.shape[-1]
    mask = losses._step_mask(logits.shape, lengths)
    if kind == "cross_entropy":
        counts = targets != -100
        return int((counts if mask is None else counts & mask).sum())
    if mask is None:
        return logits.size
    return int(mask.sum()) * int(np.prod(logits.shape[2:], dtype=np.int64))


def _window_loss(loss, logits, targets, lengths, start, prev_end, end, per_sequence,
                 reduction="mean"):
    """The loss of a window whose logits cover steps [start, end), taken on steps
    [prev_end, end) (on the whole of per-sequence logits), its gradient with respect to all
    the logits and, for ``reduction="sum"``, its number of terms (else None)."""
    if per_sequence:  # only ever full BPTT: the window is the whole sequence
        value, dlogits = sequence_loss(loss, logits, targets, reduction=reduction)
        terms = _loss_terms(loss, logits, targets) if reduction == "sum" else None
        return value, dlogits, terms
    new = slice(prev_end - start, end - start)
    win_targets = targets if loss.endswith("_last") else targets[:, prev_end:end]
    win_lengths = _window_lengths(lengths, prev_end, end)
    value, dnew = sequence_loss(loss, logits[:, new], win_targets, win_lengths, reduction)
    terms = None
    if reduction == "sum":
        terms = _loss_terms(loss, logits[:, new], win_targets, win_lengths)
    dlogits = np.zeros_like(logits)
    dlogits[:, new] = dnew
    return value, dlogits, terms


def _window(model, x, targets, lengths, loss, pieces, prev_end, state, options, comm=None,
            checkpoint=None):
    """One window of truncated BPTT: forward over ``pieces`` (one, or two split where the next
    window will start, so that its start state is kept), the loss on steps [prev_end, end),
    backward through every piece.

    Returns (loss, grads, state at the end, state at the split); grads is None when the loss
    or a gradient is not finite, and then backward is not run on a non-finite loss gradient.

    With ``comm`` (more than one rank), this rank's rows give a loss sum and the gradient of
    that sum, which are added up over the ranks with the count of loss terms in one
    Allreduce and divided by the total count: the mean of the whole batch and its gradient,
    the same on every rank, which all skip the update together if any rank's is not finite.
    """
    if comm is not None:
        return _window_distributed(model, x, targets, lengths, loss, pieces, prev_end, state,
                                   options, comm, checkpoint)
    start, end = pieces[0][0], pieces[-1][1]
    logits, caches, s, cut_state = _forward_pieces(model, x, lengths, pieces, state, checkpoint)
    value, dlogits, _ = _window_loss(loss, logits, targets, lengths, start, prev_end, end,
                                     _per_sequence(model))
    if not (math.isfinite(value) and np.isfinite(dlogits).all()):
        return value, None, s, cut_state
    grads = _backward_pieces(model, pieces, caches, dlogits, options)
    return value, grads if _all_finite(grads) else None, s, cut_state


def _forward_pieces(model, x, lengths, pieces, state, checkpoint=None):
    end = pieces[-1][1]
    caches, outs, s, cut_state = [], [], state, None
    # only when asked for: a model of the user's own need not know the keyword
    extra = {} if checkpoint is None else {"checkpoint": checkpoint}
    for a, b in pieces:
        out, s, cache = model.forward(x[:, a:b], s, _window_lengths(lengths, a, b), **extra)
        caches.append(cache)
        outs.append(out)
        if b != end:
            cut_state = s
    logits = outs[0] if len(outs) == 1 else np.concatenate(outs, axis=1)
    return logits, caches, s, cut_state


def _backward_pieces(model, pieces, caches, dlogits, options):
    # The later piece first, chaining the gradient of the state between them.
    start, end = pieces[0][0], pieces[-1][1]
    grads, dstate, offset = None, None, end - start
    for (a, b), cache in reversed(list(zip(pieces, caches))):
        offset -= b - a
        # (per-sequence logits (B, C) come only in one piece, and have no time axis to cut)
        d = dlogits if len(pieces) == 1 else dlogits[:, offset:offset + b - a]
        _, dstate, g = model.backward(cache, d, dstate, **options)
        grads = _add_grads(grads, g)
    return grads


def _window_distributed(model, x, targets, lengths, loss, pieces, prev_end, state, options,
                        comm, checkpoint=None):
    from . import distributed

    start, end = pieces[0][0], pieces[-1][1]
    logits, caches, s, cut_state = _forward_pieces(model, x, lengths, pieces, state, checkpoint)
    value, dlogits, terms = _window_loss(loss, logits, targets, lengths, start, prev_end, end,
                                         _per_sequence(model), reduction="sum")
    if math.isfinite(value) and np.isfinite(dlogits).all():
        grads = _backward_pieces(model, pieces, caches, dlogits, options)
    else:
        # Every rank must still join the Allreduce; NaN makes the sum say "skip" everywhere.
        grads = {k: np.full_like(p, np.nan) for k, p in model.params.items()}
        value = math.nan
    value, terms = distributed.allreduce_grads(grads, value, terms, comm=comm)
    if not (math.isfinite(value) and _all_finite(grads)):
        return value, None, s, cut_state
    if terms:  # with no terms anywhere the mean is 0 with zero gradient, as sequence_loss's
        value /= terms
        for g in grads.values():
            g /= terms
    return value, grads, s, cut_state


def train_sequence(model, optimizer, x, targets, lengths=None, state=None, *,
                   loss="cross_entropy", k1=None, k2=None, clip_norm=None, clip_value=None,
                   on_nonfinite="skip", backward_options=None, checkpoint=None):
    """Train on one batch of sequences with BPTT(k1, k2); returns a dict of what happened.

    Parameters
    ----------
    model : Model
        Or anything with ``forward``/``backward``/``params`` like it.
    optimizer : rnnfast.optim.Optimizer
        An optimiser over ``model.params``.
    x : ndarray
        (B, T, D) real features; integer ids (B, T) when the model starts with an
        ``Embedding`` (integers are refused otherwise).
    targets : ndarray
        Per-step targets (B, T) for cross-entropy, (B, T, C) for MSE; for the many-to-one
        losses (B,) or (B, C). For a model with a pool (``Model(..., pool=...)``), whose
        logits are one (B, C) per sequence: ``"cross_entropy"`` with class indices (B,) or
        ``"mse"`` with targets (B, C); the ``"_last"`` losses are refused there.
    lengths : array-like of ints, shape (B,), optional
        Valid steps of each sequence.
    state : optional
        The initial state, in the recurrent model's form; zeros when None.
    loss : str, default "cross_entropy"
        One of ``LOSSES``; see ``sequence_loss``.
    k1, k2 : int, optional
        Truncation: update every k1 steps, backpropagating through k2 >= k1 steps. Both
        default to T (full BPTT); k2 defaults to k1. A model with a pool trains by full BPTT
        only (its loss depends on every step).
    clip_norm, clip_value : float, optional
        Clip the parameter gradients by global L2 norm, then by value, before each update.
    on_nonfinite : {"skip", "stop"}
        When a window's loss or gradient is NaN or Inf: skip its update (the parameters are
        left as they were, the carried state restarts from zeros) or raise NonFiniteError.
    backward_options : dict, optional
        Passed to the model's ``backward``, e.g. ``{"clip_per_step": 1.0}`` for per-step
        clipping of dL/dh_t inside BPTT (see ``RNN.backward``).
    checkpoint : None, int or "auto", optional
        Checkpointed BPTT inside every window (see ``LSTM.forward``): the gradient of the
        full cache in memory that does not grow with the window's length times the cache
        of a step, for about one more forward pass of time. None keeps the full cache.

    Returns
    -------
    dict
        ``loss`` (the mean over the windows that updated), ``state`` (after the last step),
        ``updates`` and ``skipped`` (counts of windows), ``grad_norm`` (the last update's
        global norm before clipping).
    """
    return _train_sequence(model, optimizer, x, targets, lengths, state, loss=loss, k1=k1,
                           k2=k2, clip_norm=clip_norm, clip_value=clip_value,
                           on_nonfinite=on_nonfinite, backward_options=backward_options,
                           checkpoint=checkpoint)


def _train_sequence(model, optimizer, x, targets, lengths=None, state=None, *, loss, k1, k2,
                    clip_norm, clip_value, on_nonfinite, backward_options, comm=None,
                    checkpoint=None):
    """``train_sequence`` on this rank's rows of a batch shared with the other ranks of
    ``comm`` (None: a batch of its own); clipping and the step act on the reduced gradient."""
    if on_nonfinite not in ("skip", "stop"):
        raise ValueError(f"on_nonfinite must be 'skip' or 'stop', got {on_nonfinite!r}")
    _check_loss(model, loss)
    # Every window's input is checked here, before the first update: a bad value at step
    # T - 1 must not fail the call after earlier windows have changed the parameters.
    x = _model_input(model, x)
    B, T = x.shape[:2]
    lengths = _checks.as_lengths(lengths, B, T)
    k1 = T if k1 is None else _checks.positive_int(k1, "k1")
    k2 = k1 if k2 is None else _checks.positive_int(k2, "k2")
    if k2 < k1:
        raise ValueError(f"k2 must be >= k1 = {k1}, got {k2}")
    _checkpointed.requested_steps(checkpoint, T)  # refuses a bad value before any update
    truncated = k1 < T
    if truncated and loss.endswith("_last"):
        raise ValueError(f"truncated BPTT (k1 = {k1} < T = {T}) needs a per-step loss, got "
                         f"{loss!r}: use k1=None for a many-to-one loss")
    if truncated and _per_sequence(model):
        raise ValueError(f"truncated BPTT (k1 = {k1} < T = {T}) cannot train a model that pools "
                         f"over time (pool={model.pool!r}): its one output per sequence "
                         f"depends on every step, so a window of k1 steps has no loss of its "
                         f"own; use k1=None (full BPTT)")
    options = dict(backward_options or {})
    if options.get("return_grad_norms"):
        raise ValueError("backward_options cannot ask for return_grad_norms: train_sequence "
                         "does not collect them; call model.backward(..., "
                         "return_grad_norms=True) directly")

    targets = _check_targets(targets, loss, B, T, _per_sequence(model), model.dtype)

    window_state = state  # the state at the current window's start
    final_state = state  # what T = 0 returns: the state unchanged
    total, updates, skipped, grad_norm = 0.0, 0, 0, float("nan")
    end = 0
    # An overflow anywhere in a window is dealt with (its update is skipped), not warned about.
    with np.errstate(over="ignore", invalid="ignore"):
        while end < T:
            prev_end, end = end, min(end + k1, T)
            start = max(0, end - k2)
            next_start = max(0, min(end + k1, T) - k2)  # where the next window will start
            cut = next_start if start < next_start < end else None
            pieces = [(start, end)] if cut is None else [(start, cut), (cut, end)]
            value, grads, final_state, cut_state = _window(
                model, x, targets, lengths, loss, pieces, prev_end, window_state, options, comm,
                checkpoint)
            if grads is not None:
                if clip_norm is not None:
                    grad_norm = clip.clip_grad_norm(grads, clip_norm)
                else:
                    grad_norm = clip.global_norm(grads)
                if clip_value is not None:
                    clip.clip_grad_value(grads, clip_value)
                optimizer.step(grads)
                total += value
                updates += 1
            else:
                if on_nonfinite == "stop":
                    raise NonFiniteError(
                        f"non-finite loss or gradient in the window of steps [{start}, {end}) "
                        f"(loss = {value}); the parameters were left as they were. Lower the "
                        f"learning rate, clip gradients (clip_norm=...), or pass "
                        f"on_nonfinite='skip'")
                skipped += 1
                final_state = cut_state = None  # restart from zeros, not from NaN
                window_state = None
            if next_start == end:
                window_state = final_state
            elif cut is not None:
                window_state = cut_state
            # else the next window starts where this one did, from the same state
    return {"loss": total / updates if updates else float("nan"), "state": final_state,
            "updates": updates, "skipped": skipped, "grad_norm": grad_norm}


def _require_array(a, name, dtype):
    """Refuse anything but a NumPy array, as x is refused: a list of rows would be guessed at
    (ragged rows, mixed types) and its mistakes would surface deep inside the loop."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}; convert it "
                        f"first, e.g. np.asarray({name}, dtype=np.{np.dtype(dtype).name})")


def _check_targets(targets, loss, B, T, per_sequence, dtype):
    """Targets of the shape ``loss`` needs, checked before any update; ``dtype`` is the
    model's, which real targets are converted to."""
    one = per_sequence or loss.endswith("_last")  # one target per sequence
    if loss.startswith("cross_entropy"):
        _require_array(targets, "targets", np.int64)
        if targets.dtype.kind not in "iu":
            raise TypeError(f"targets must hold integer class indices for {loss!r}, got dtype "
                            f"{targets.dtype}")
        want, meaning = ((B,), "(B,)") if one else ((B, T), "(B, T)")
        if targets.shape != want:
            hint = ""
            if not one and targets.shape == (B,):
                hint = ("; one class per sequence is the many-to-one loss: use "
                        "loss='cross_entropy_last' (the loss at each sequence's last step)")
            elif one and not per_sequence and targets.shape == (B, T):
                hint = "; a class at every step is the per-step loss: use loss='cross_entropy'"
            raise ValueError(f"targets must have shape {meaning} = {_checks.shape_str(want)}, "
                             f"got {_checks.shape_str(targets.shape)}{hint}")
    else:
        _require_array(targets, "targets", dtype)
        _checks.check_float_array(targets, "targets", dtype, None)
        want = (B,) if one else (B, T)
        nd = 2 if one else 3
        if targets.ndim != nd or targets.shape[:len(want)] != want:
            hint = ""
            if not one and targets.ndim == 2 and targets.shape[0] == B:
                hint = ("; one target per sequence is the many-to-one loss: use "
                        "loss='mse_last' (the loss at each sequence's last step)")
            raise ValueError(f"targets must have shape {'(B, C)' if nd == 2 else '(B, T, C)'} "
                             f"with {'B' if nd == 2 else '(B, T)'} = {want} for {loss!r}, got "
                             f"{_checks.shape_str(targets.shape)}{hint}")
    return targets


def _batches(data, batch_size, rng):
    """Yield (x, targets, lengths) batches: from arrays, shuffled by ``rng``, or as given."""
    if isinstance(data, tuple) and data and isinstance(data[0], np.ndarray):
        x, targets, lengths = (data + (None,))[:3]
        N = x.shape[0]
        order = rng.permutation(N) if rng is not None else np.arange(N)
        for i in range(0, N, batch_size):
            idx = np.sort(order[i:i + batch_size]) if rng is None else order[i:i + batch_size]
            yield x[idx], targets[idx], None if lengths is None else np.asarray(lengths)[idx]
        return
    for batch in data:
        if not isinstance(batch, tuple) or len(batch) not in (2, 3):
            raise TypeError("each batch must be a tuple (x, targets) or (x, targets, lengths), "
                            f"got {type(batch).__name__}")
        yield (batch + (None,))[:3]


def _check_data(data, name, dtype):
    """Refuse, before the first batch, ``data`` that is neither arrays (x, targets[, lengths])
    nor an iterable of such batches; ``dtype`` is the model's."""
    if isinstance(data, tuple) and data and not isinstance(data[0], tuple):
        # (x, targets[, lengths]), for a tuple of batches would hold tuples
        if len(data) not in (2, 3):
            raise ValueError(f"{name} must be (x, targets) or (x, targets, lengths), got a "
                             f"tuple of {len(data)}")
        if not isinstance(data[0], np.ndarray):
            raise TypeError(f"{name}: x must be a numpy.ndarray, got {type(data[0]).__name__}; "
                            f"convert it first, e.g. np.asarray(x, dtype=np.{np.dtype(dtype).name})"
                            f" (integer ids for a model that starts with an Embedding)")
        if not isinstance(data[1], np.ndarray):
            raise TypeError(f"{name}: targets must be a numpy.ndarray, like x, got "
                            f"{type(data[1]).__name__}; convert it first, e.g. "
                            f"np.asarray(targets) (integer classes for cross-entropy, "
                            f"np.{np.dtype(dtype).name} for MSE)")
        n = data[0].shape[0]
        for part, label in zip(data[1:], ("targets", "lengths")):
            if part is not None and len(part) != n:
                raise ValueError(f"{name}: {label} must have {n} rows like x, got {len(part)}")
        return
    if isinstance(data, (np.ndarray, str, bytes)) or not hasattr(data, "__iter__"):
        raise TypeError(f"{name} must be a tuple of arrays (x, targets[, lengths]) or an "
                        f"iterable of such batches, got {type(data).__name__}")


def evaluate(model, data, loss="cross_entropy", batch_size=256):
    """Mean loss over ``data`` (and accuracy for the cross-entropy losses), inference only.

    The model runs as ``model(x, None, lengths)``: no dropout, nothing kept for backward, the
    parameters unchanged. Each batch starts from the zero state.

    Parameters
    ----------
    model : Model
        Or anything called as ``logits, state = model(x, state, lengths)``.
    data : tuple or iterable
        As for ``fit``: ``(x, targets)`` or ``(x, targets, lengths)`` arrays, taken in order
        in batches of ``batch_size`` rows, or an iterable of such batches. Targets per step,
        or per sequence for the ``"_last"`` losses and for a model with a pool.
    loss : str, default "cross_entropy"
        One of ``LOSSES`` (see ``sequence_loss``), with the ``"mean"`` reduction.
    batch_size : int, default 256
        Rows per forward call when ``data`` is a tuple of arrays.

    Returns
    -------
    dict
        ``loss``: the mean of the batches' mean losses, each weighted by its number of rows
        (NaN for empty data). With a cross-entropy loss also ``accuracy``: the fraction of the
        predictions that count (the argmax of the logits, at every valid step whose target
        is not -100, or at each sequence's last step for ``"cross_entropy_last"`` and
        per-sequence logits) that equal their targets.

    Examples
    --------
    >>> import numpy as np, rnnfast
    >>> model = rnnfast.Model(rnnfast.GRU(3, 8, seed=0), rnnfast.Linear(8, 2, seed=1))
    >>> x = np.zeros((10, 6, 3), dtype=np.float32)
    >>> y = np.zeros(10, dtype=np.int64)                  # one class per sequence
    >>> sorted(rnnfast.evaluate(model, (x, y), loss="cross_entropy_last"))
    ['accuracy', 'loss']
    """
    _check_data(data, "data", model.dtype)
    _check_loss(model, loss)
    per_sequence = _per_sequence(model)
    total, weight, correct, counted = 0.0, 0, 0, 0
    for x, targets, lengths in _batches(data, batch_size, None):
        logits, _ = model(x, None, lengths)
        targets = _check_targets(targets, loss, x.shape[0], x.shape[1], per_sequence,
                                 model.dtype)
        value, _ = sequence_loss(loss, logits, targets, None if per_sequence else lengths)
        total += value * len(x)
        weight += len(x)
        if loss.startswith("cross_entropy"):
            right, seen = _hits(loss, logits, targets, lengths, per_sequence)
            correct += right
            counted += seen
    out = {"loss": total / weight if weight else float("nan")}
    if counted:
        out["accuracy"] = correct / counted
    return out


def _hits(loss, logits, targets, lengths, per_sequence):
    """(correct predictions, predictions that count) of a cross-entropy batch."""
    if per_sequence or loss.endswith("_last"):
        last = logits if per_sequence else losses.last_step(logits, lengths)
        pred, want = last.argmax(-1), np.asarray(targets)
        mask = np.ones(len(want), bool)
    else:
        pred, want = logits.argmax(-1), np.asarray(targets)
        mask = want != -100
        if lengths is not None:
            mask &= np.arange(want.shape[1])[None] < np.asarray(lengths)[:, None]
    return int(((pred == want) & mask).sum()), int(mask.sum())


def _evaluate_sharded(model, data, loss, batch_size, comm):
    """``evaluate`` with each batch's rows split over the ranks of ``comm``: every rank gets
    the single-process result, from one Allreduce of per-batch sums and counts (a batch's
    loss is its mean over terms, weighted by its rows, as ``evaluate`` takes it)."""
    from . import distributed

    MPI = distributed.require_mpi()
    per_sequence = _per_sequence(model)
    records, rows = [], []
    for x, targets, lengths in _batches(data, batch_size, None):
        mine = distributed.shard(len(x), comm)
        rows.append(len(x))
        x, targets = x[mine], targets[mine]
        lengths = None if lengths is None else lengths[mine]
        record = [0.0, 0, 0, 0]  # loss sum, loss terms, correct, counted
        if len(x):
            logits, _ = model(x, None, lengths)
            lens = None if per_sequence else lengths
            record[0], _ = sequence_loss(loss, logits, targets, lens, reduction="sum")
            record[1] = _loss_terms(loss, logits, targets, lens)
            if loss.startswith("cross_entropy"):
                record[2:] = _hits(loss, logits, targets, lengths, per_sequence)
        records.append(record)
    buf = np.array(records, dtype=np.float64).reshape(-1, 4)
    comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
    total = sum((s / n if n else 0.0) * r for (s, n, _, _), r in zip(buf, rows))
    weight, correct, counted = sum(rows), int(buf[:, 2].sum()), int(buf[:, 3].sum())
    out = {"loss": float(total) / weight if weight else float("nan")}
    if counted:
        out["accuracy"] = correct / counted
    return out


def _fingerprint(model, optimizer, data, validation, settings):
    """What must agree on every rank for their training to be one run, small enough to
    gather: shapes and dtypes (not contents) of the data, the model and the settings."""
    def arrays(d):
        if d is None:
            return None
        return [None if a is None else (tuple(np.shape(a)), np.asarray(a).dtype.str) for a in d]

    config = model.config() if hasattr(model, "config") else type(model).__name__
    return {"model": config,
            "params": [(k, tuple(v.shape), v.dtype.str) for k, v in model.params.items()],
            "optimizer": type(optimizer).__name__, "data": arrays(data),
            "validation": arrays(validation), **settings}


def _start_distributed(model, optimizer, data, validation, settings):
    """The world communicator, once every rank is known to have been given the same model,
    data shapes and arguments; None in a world of one (then fit runs exactly as without
    MPI)."""
    from . import distributed

    comm = distributed.require_mpi().COMM_WORLD
    if comm.Get_size() == 1:
        return None
    for d, name in ((data, "data"), (validation, "validation")):
        if d is not None and not (isinstance(d, tuple) and isinstance(d[0], np.ndarray)):
            # each rank splits every batch, so all of them must see the same batches
            raise TypeError(f"fit(distributed=True) needs {name} as a tuple of arrays (x, "
                            f"targets[, lengths]), the same on every rank; got an iterable "
                            f"of batches")
    distributed.check_same(_fingerprint(model, optimizer, data, validation, settings),
                           "models, optimisers, data shapes or fit arguments", comm)
    return comm


def fit(model, optimizer, data, *, epochs=1, batch_size=32, loss="cross_entropy", k1=None,
        k2=None, clip_norm=None, clip_value=None, shuffle=True, seed=0, validation=None,
        patience=None, callbacks=(), progress=True, on_nonfinite="skip", schedule=None,
        initial_epoch=0, backward_options=None, distributed=False, checkpoint=None):
    """Train ``model`` for ``epochs`` passes over ``data``; returns the history.

    Every batch is one call of ``train_sequence``: forward, the loss, BPTT (full, or
    truncated with ``k1``/``k2``), clipping and one optimiser step per window. The model's
    ``params`` are updated in place.

    Parameters
    ----------
    model : Model
        Usually a ``Model`` (a recurrent stack and its read-out); anything with
        ``forward``/``backward``/``params`` like it.
    optimizer : rnnfast.optim.Optimizer
        An optimiser over ``model.params``.
    data : tuple or iterable
        ``(x, targets)`` or ``(x, targets, lengths)`` arrays, split into batches of
        ``batch_size`` rows (shuffled each epoch when ``shuffle``); or an iterable of such
        batches, used as it comes (re-iterated every epoch, so pass a list or a re-iterable
        object). ``x`` is (N, T, D) real features, or (N, T) integer ids for a model that
        starts with an ``Embedding``. Targets are per step, or per sequence for the
        ``"_last"`` losses and for a model with a pool (see ``train_sequence``).
    epochs : int, default 1
    batch_size : int, default 32
    loss : str, default "cross_entropy"
        One of ``LOSSES``: ``"cross_entropy"`` (per step, or per sequence with a pool),
        ``"mse"``, ``"cross_entropy_last"`` (one class per sequence, from its last valid
        step: sequence classification), ``"mse_last"``. See ``sequence_loss``.
    k1, k2, clip_norm, clip_value, on_nonfinite, backward_options, checkpoint
        As for ``train_sequence``.
    shuffle : bool, default True
    seed : int
        Seeds the shuffling of each epoch (from ``seed`` and the epoch's number, so a run
        resumed at ``initial_epoch`` shuffles as the uninterrupted run did). The same seed
        gives bit-identical runs.
    validation : like ``data``, optional
        Evaluated after every epoch (loss, and accuracy for cross-entropy).
    patience : int, optional
        Early stopping: stop after ``patience`` epochs without a better validation loss, and
        put back the parameters of the best epoch.
    callbacks : sequence of callables ``f(epoch, logs)``
        Called after every epoch with that epoch's record; returning True stops training.
    progress : bool, default True
        A tqdm bar per epoch with the loss, throughput (timesteps/s) and ETA.
    schedule : rnnfast.optim.StepLR, ExponentialLR or CosineAnnealingLR, optional
        Stepped after every epoch.
    initial_epoch : int, default 0
        The number of epochs already done, when resuming from a checkpoint: epochs are
        numbered from it, and the shuffling continues as in the uninterrupted run.
    distributed : bool
        Data-parallel training over MPI (``mpiexec -n N python script.py``; needs
        ``pip install "rnnfast[mpi]"``, else ImportError). Every rank calls ``fit`` with the
        same model configuration, optimiser and arrays (``data`` and ``validation`` must be
        tuples of arrays); each global batch of ``batch_size`` rows, in the single-process
        order, is cut into one contiguous slice per rank, and the gradients, loss sums and
        loss-term counts of every window are summed in one Allreduce, so that each rank takes
        the single-process step (clipping acts on the summed gradient). Rank 0's parameters
        and optimiser state are broadcast first; differing shapes or arguments raise
        ValueError on every rank. Validation is split the same way; the progress bar and
        messages come from rank 0 only, and the history (rank 0's timings) is the same on
        every rank. After every epoch (after the callbacks) a checksum of the parameters is
        compared across the ranks; if they differ, every rank raises
        ``rnnfast.distributed.RankMismatchError`` naming the ranks. An exception on one rank
        prints ``rank R: <error>`` to stderr and ends the job with
        ``MPI.COMM_WORLD.Abort(1)``. In a world of one this is ``fit`` without MPI. To
        checkpoint, call ``rnnfast.save(..., distributed=True)`` on every rank (a callback
        does: callbacks run on every rank) and resume with ``rnnfast.load`` on every rank and
        ``initial_epoch``. See docs/distributed.md.

    Returns
    -------
    list of dict
        One per epoch: ``epoch`` (counted from 1), ``loss`` (the mean of the batches'
        losses), ``updates``, ``skipped``, ``seconds``, ``timesteps_per_second`` and, with
        validation, ``val_loss`` and, for cross-entropy, ``val_accuracy``.

    Examples
    --------
    Classify sequences by their last step (many-to-one), then resume from a checkpoint:

    >>> import numpy as np, rnnfast
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((64, 10, 3)).astype(np.float32)
    >>> y = (x[:, :, 0].sum(axis=1) > 0).astype(np.int64)
    >>> model = rnnfast.Model(rnnfast.GRU(3, 16, seed=0), rnnfast.Linear(16, 2, seed=1))
    >>> opt = rnnfast.optim.Adam(model.params, lr=1e-2)
    >>> history = rnnfast.fit(model, opt, (x, y), epochs=2, loss="cross_entropy_last",
    ...                       progress=False)
    >>> [h["epoch"] for h in history]
    [1, 2]
    """
    _check_data(data, "data", model.dtype)
    if validation is not None:
        _check_data(validation, "validation", model.dtype)
    epochs = _checks.positive_int(epochs, "epochs")
    batch_size = _checks.positive_int(batch_size, "batch_size")
    _check_loss(model, loss)
    _checkpointed.requested_steps(checkpoint, 0)  # a bad value refused before the first epoch
    comm = None
    if distributed:
        settings = {"epochs": epochs, "batch_size": batch_size, "loss": loss, "k1": k1,
                    "k2": k2, "clip_norm": clip_norm, "clip_value": clip_value,
                    "shuffle": shuffle, "seed": seed, "patience": patience,
                    "on_nonfinite": on_nonfinite, "initial_epoch": initial_epoch,
                    "backward_options": repr(backward_options), "checkpoint": repr(checkpoint),
                    "schedule": type(schedule).__name__}
        comm = _start_distributed(model, optimizer, data, validation, settings)
    if comm is None:
        return _fit(model, optimizer, data, epochs, batch_size, loss, k1, k2, clip_norm,
                    clip_value, shuffle, seed, validation, patience, callbacks, progress,
                    on_nonfinite, schedule, initial_epoch, backward_options, None, checkpoint)
    from . import distributed as dist

    # NonFiniteError is decided from the reduced gradient and RankMismatchError from the
    # gathered checksums, so every rank raises them together.
    with dist.abort_on_error(comm, keep=(NonFiniteError, dist.RankMismatchError)):
        dist.broadcast_params(model.params, comm=comm)
        dist.broadcast_optimizer(optimizer, comm=comm)
        return _fit(model, optimizer, data, epochs, batch_size, loss, k1, k2, clip_norm,
                    clip_value, shuffle, seed, validation, patience, callbacks,
                    progress and comm.Get_rank() == 0, on_nonfinite, schedule, initial_epoch,
                    backward_options, comm, checkpoint)


def _fit(model, optimizer, data, epochs, batch_size, loss, k1, k2, clip_norm, clip_value,
         shuffle, seed, validation, patience, callbacks, progress, on_nonfinite, schedule,
         initial_epoch, backward_options, comm, checkpoint=None):
    """The epochs of ``fit``; with ``comm``, on this rank's slice of every batch."""
    if comm is not None:
        from . import distributed
    talk = comm is None or comm.Get_rank() == 0
    history, best, best_params, waited = [], math.inf, None, 0
    for epoch in range(initial_epoch, initial_epoch + epochs):
        rng = np.random.default_rng([seed, epoch]) if shuffle else None
        batches = _batches(data, batch_size, rng)
        total = None
        if isinstance(data, tuple):
            total = math.ceil(len(data[0]) / batch_size)
        bar = _progress(batches, total, f"epoch {epoch + 1}", progress)
        start, steps, losses_seen, updates, skipped = time.perf_counter(), 0, [], 0, 0
        for x, targets, lengths in bar:
            steps += x.shape[0] * x.shape[1]
            if comm is not None:
                mine = distributed.shard(len(x), comm)
                x, targets = x[mine], targets[mine]
                lengths = None if lengths is None else lengths[mine]
            out = _train_sequence(model, optimizer, x, targets, lengths, loss=loss, k1=k1,
                                  k2=k2, clip_norm=clip_norm, clip_value=clip_value,
                                  on_nonfinite=on_nonfinite, backward_options=backward_options,
                                  comm=comm, checkpoint=checkpoint)
            updates += out["updates"]
            skipped += out["skipped"]
            if out["updates"]:
                losses_seen.append(out["loss"])
            if progress:
                rate = steps / max(time.perf_counter() - start, 1e-9)
                bar.set_postfix(loss=f"{out['loss']:.4f}", steps_per_s=f"{rate:.3g}",
                                refresh=False)
        seconds = time.perf_counter() - start
        logs = {"epoch": epoch + 1, "loss": float(np.mean(losses_seen)) if losses_seen else
                float("nan"), "updates": updates, "skipped": skipped, "seconds": seconds,
                "timesteps_per_second": steps / seconds if seconds > 0 else float("nan")}
        if skipped and talk:
            print(f"epoch {epoch + 1}: skipped {skipped} update(s) with a non-finite loss or "
                  f"gradient; the parameters were kept as they were")
        if validation is not None:
            if comm is None:
                result = evaluate(model, validation, loss)
            else:
                result = _evaluate_sharded(model, validation, loss, 256, comm)
            logs.update({f"val_{k}": v for k, v in result.items()})
        if comm is not None:
            # Everything but the timings is equal already; rank 0's timings make it all equal.
            logs = comm.bcast(logs, root=0)
        if schedule is not None:
            schedule.step()
        history.append(logs)
        stop = any(cb(epoch + 1, logs) is True for cb in callbacks)
        if comm is not None:
            # After the callbacks, so that one changing a rank's parameters is caught in this
            # epoch; a callback that stops one rank must stop them all, or the rest would
            # wait forever: both ride in one allgather.
            stop = any(distributed.check_params_agree(model.params, f"after epoch {epoch + 1}",
                                                      comm, extra=stop))
        if patience is not None and validation is not None:
            if logs["val_loss"] < best:
                best, waited = logs["val_loss"], 0
                best_params = {k: v.copy() for k, v in model.params.items()}
            else:
                waited += 1
                if waited >= patience:
                    stop = True
        if stop:
            break
    if best_params is not None and history[-1]["val_loss"] > best:
        for k, v in best_params.items():
            model.params[k][...] = v
    return history


def _progress(iterable, total, desc, enabled):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm
    return tqdm(iterable, total=total, desc=desc, unit="batch", leave=True)
