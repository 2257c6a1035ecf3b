"""Composed models: ids -> Embedding -> recurrent -> pool -> Linear, against a hand-chained
computation, finite differences and torch autograd; training, checkpoints, bad input.

Letters: B = batch, T = timesteps, V = vocabulary, E = embedding_dim, H = hidden units,
C = classes."""

import json

import numpy as np
import pytest

import rnnfast
from rnnfast import losses, optim
from rnnfast.model import pool_backward, pool_forward
from support import numeric_grad, record, rel_err

V, E, H, C = 6, 3, 3, 3


def classifier(pool="last", bidirectional=True, dropout=0.0, dtype=np.float64, seed=0,
               vocab=V, emb=E, hidden=H, classes=C):
    """ids -> Embedding -> 2-layer (bidirectional) LSTM -> pool -> Linear: one expression."""
    return rnnfast.Model(
        rnnfast.LSTM(emb, hidden, num_layers=2, bidirectional=bidirectional, dropout=dropout,
                     dtype=dtype, seed=seed),
        rnnfast.Linear((2 if bidirectional else 1) * hidden, classes, dtype=dtype, seed=seed + 1),
        embedding=rnnfast.Embedding(vocab, emb, padding_idx=0, dtype=dtype, seed=seed + 2),
        pool=pool)


def char_lm(dtype=np.float64, seed=0, vocab=V, emb=E, hidden=H):
    """ids -> Embedding -> LSTM -> Linear at every step: one expression."""
    return rnnfast.Model(rnnfast.LSTM(emb, hidden, dtype=dtype, seed=seed),
                         rnnfast.Linear(hidden, vocab, dtype=dtype, seed=seed + 1),
                         embedding=rnnfast.Embedding(vocab, emb, dtype=dtype, seed=seed + 2))


def padded_ids(rng, B, T, lengths, vocab=V):
    """Ids in [1, vocab) at the valid steps, the padding id 0 after them."""
    ids = rng.integers(1, vocab, size=(B, T))
    ids[np.arange(T)[None, :] >= lengths[:, None]] = 0
    return ids


# -- pooling ----------------------------------------------------------------------------------

@pytest.mark.parametrize("directions", [1, 2])
@pytest.mark.parametrize("kind", ["last", "mean"])
def test_pool_picks_what_torch_h_n_and_a_masked_mean_give(kind, directions):
    rng = np.random.default_rng(0)
    B, T, F = 4, 5, 2 * directions
    lengths = np.array([5, 1, 3, 2])
    y = rng.standard_normal((B, T, F))
    want = np.empty((B, F))
    for b, n in enumerate(lengths):
        if kind == "mean":
            want[b] = y[b, :n].mean(axis=0)
        else:
            half = F // directions  # forward half: after its last valid step; reverse: step 0
            want[b, :half] = y[b, n - 1, :half]
            want[b, half:] = y[b, 0, half:]
    np.testing.assert_allclose(pool_forward(y, lengths, kind, directions), want, rtol=1e-15)
    # A linear map and its backward are adjoint: <pool(y), d> = <y, pool_backward(d)>.
    d = rng.standard_normal((B, F))
    dy = pool_backward(d, lengths, kind, T, directions)
    assert not dy[np.arange(T)[None, :] >= lengths[:, None]].any()  # nothing past a length
    np.testing.assert_allclose(np.vdot(pool_forward(y, lengths, kind, directions), d),
                               np.vdot(y, dy), rtol=1e-13)


# -- one forward and backward -----------------------------------------------------------------

def test_forward_and_backward_equal_the_hand_chained_parts():
    rng = np.random.default_rng(1)
    B, T = 4, 5
    lengths = np.array([5, 2, 1, 4])
    ids = padded_ids(rng, B, T, lengths)
    model = classifier(pool="last")
    logits, state, cache = model.forward(ids, lengths=lengths)
    dlogits = rng.standard_normal(logits.shape)
    dx, dstate0, grads = model.backward(cache, dlogits)

    emb, rec, out = model.embedding, model.recurrent, model.readout
    e, emb_cache = emb.forward(ids)
    h, state_hand, rec_cache = rec.forward(e, lengths=lengths)
    pooled = np.concatenate([h[np.arange(B), lengths - 1, :H], h[:, 0, H:]], axis=1)
    logits_hand, out_cache = out.forward(pooled)
    dpooled, out_grads = out.backward(out_cache, dlogits)
    dh = np.zeros_like(h)
    for b in range(B):
        dh[b, lengths[b] - 1, :H] = dpooled[b, :H]
        dh[b, 0, H:] = dpooled[b, H:]
    de, dstate_hand, rec_grads = rec.backward(rec_cache, dh)
    _, emb_grads = emb.backward(emb_cache, de)

    np.testing.assert_array_equal(logits, logits_hand)
    for a, b in zip(state + dstate0, state_hand + dstate_hand):
        np.testing.assert_array_equal(a, b)
    assert dx is None
    hand = {**{f"embedding.{k}": v for k, v in emb_grads.items()},
            **{f"recurrent.{k}": v for k, v in rec_grads.items()},
            **{f"readout.{k}": v for k, v in out_grads.items()}}
    assert list(grads) == list(model.params) == list(hand)
    for k in hand:
        np.testing.assert_array_equal(grads[k], hand[k], err_msg=k)


@pytest.mark.parametrize("make", [
    lambda: classifier("last"), lambda: classifier("mean"),
    lambda: classifier("last", bidirectional=False), char_lm],
    ids=["bilstm-last", "bilstm-mean", "lstm-last", "char-lm"])
def test_gradients_match_finite_differences(make):
    rng = np.random.default_rng(2)
    B, T = 3, 4
    lengths = np.array([4, 1, 3])
    model = make()
    ids = padded_ids(rng, B, T, lengths)
    per_step = model.pool is None
    targets = rng.integers(0, C, size=(B, T) if per_step else B)

    def loss():
        logits, _ = model(ids, lengths=lengths)
        return losses.cross_entropy(logits, targets, reduction="sum",
                                    lengths=lengths if per_step else None)[0]

    logits, _, cache = model.forward(ids, lengths=lengths)
    _, dlogits = losses.cross_entropy(logits, targets, reduction="sum",
                                      lengths=lengths if per_step else None)
    _, _, grads = model.backward(cache, dlogits)
    for name, p in model.params.items():
        err = rel_err(grads[name], numeric_grad(loss, p, eps=1e-5))
        record("composed model vs finite differences", np.float64, err)
        assert err < 1e-7, (name, err)


def torch_parts(torch, bidirectional, vocab, emb, hidden, classes, num_layers):
    torch.manual_seed(0)
    kw = {"dtype": torch.float64}
    return (torch.nn.Embedding(vocab, emb, padding_idx=0, **kw),
            torch.nn.LSTM(emb, hidden, num_layers=num_layers, bidirectional=bidirectional,
                          batch_first=True, **kw),
            torch.nn.Linear((2 if bidirectional else 1) * hidden, classes, **kw))


def as_rnnfast(parts, pool):
    emb, lstm, lin = parts
    return rnnfast.Model(rnnfast.from_torch(lstm), rnnfast.Linear.from_torch(lin),
                         embedding=rnnfast.Embedding.from_torch(emb), pool=pool)


def assert_matches_torch(what, model, parts, logits_t, loss_t, ids, targets, lengths=None):
    """rnnfast's logits, mean cross-entropy and gradients against torch's (``loss_t`` already
    backpropagated through ``parts``)."""
    logits, _, cache = model.forward(ids, lengths=lengths)
    loss, dlogits = losses.cross_entropy(logits, targets)
    _, _, grads = model.backward(cache, dlogits)
    assert rel_err(logits, logits_t.detach().numpy()) < 1e-12
    assert abs(loss - loss_t.item()) < 1e-12
    named = {"embedding": parts[0], "recurrent": parts[1], "readout": parts[2]}
    want = {f"{prefix}.{k}": p.grad.numpy() for prefix, module in named.items()
            for k, p in module.named_parameters()}
    assert sorted(want) == sorted(grads)
    err = max(rel_err(grads[k], want[k]) for k in want)
    record(f"composed {what} vs torch", np.float64, err)
    assert err < 1e-10


@pytest.mark.parametrize("pool", ["last", "mean"])
def test_classifier_matches_torch_autograd(pool):
    torch = pytest.importorskip("torch")
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    rng = np.random.default_rng(3)
    B, T = 4, 6
    lengths = np.array([6, 3, 1, 5])
    ids = padded_ids(rng, B, T, lengths, vocab=9)
    targets = rng.integers(0, 4, size=B)
    parts = torch_parts(torch, True, 9, 5, 4, 4, num_layers=2)
    model = as_rnnfast(parts, pool)

    emb, lstm, lin = parts
    packed = pack_padded_sequence(emb(torch.from_numpy(ids)), torch.from_numpy(lengths),
                                  batch_first=True, enforce_sorted=False)
    out, (h_n, _) = lstm(packed)
    if pool == "last":
        features = torch.cat([h_n[-2], h_n[-1]], dim=1)  # the last layer's two directions
    else:
        y, _ = pad_packed_sequence(out, batch_first=True, total_length=T)
        features = y.sum(dim=1) / torch.from_numpy(lengths)[:, None]
    logits_t = lin(features)
    loss_t = torch.nn.functional.cross_entropy(logits_t, torch.from_numpy(targets))
    loss_t.backward()
    assert_matches_torch("classifier", model, parts, logits_t, loss_t, ids, targets, lengths)


def test_char_lm_matches_torch_autograd():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    ids = rng.integers(0, 7, size=(3, 8))
    targets = np.roll(ids, -1, axis=1)
    parts = torch_parts(torch, False, 7, 4, 5, 7, num_layers=1)
    model = as_rnnfast(parts, None)
    emb, lstm, lin = parts
    logits_t = lin(lstm(emb(torch.from_numpy(ids)))[0])
    loss_t = torch.nn.functional.cross_entropy(logits_t.reshape(-1, 7),
                                               torch.from_numpy(targets).reshape(-1))
    loss_t.backward()
    assert_matches_torch("char LM", model, parts, logits_t, loss_t, ids, targets)


def test_dropout_acts_in_forward_and_never_in_call():
    rng = np.random.default_rng(5)
    ids = rng.integers(1, V, size=(4, 6))
    model = classifier(dropout=0.5)
    plain = classifier(dropout=0.0)  # the same seed: the same weights
    infer, _ = model(ids)
    np.testing.assert_array_equal(infer, plain(ids)[0])
    np.testing.assert_array_equal(model(ids)[0], infer)
    assert not np.array_equal(model.forward(ids)[0], infer)


# -- training ---------------------------------------------------------------------------------

def test_fit_learns_a_sequence_classification_task():
    """The class is the first token's (mod 3): the reverse direction's state at step 0 holds
    it, so pool="last" of a bidirectional LSTM learns it quickly."""
    rng = np.random.default_rng(6)
    N, T = 96, 7
    lengths = rng.integers(2, T + 1, size=N)
    ids = padded_ids(rng, N, T, lengths, vocab=10)
    labels = ids[:, 0] % 3
    model = classifier("last", dropout=0.1, dtype=np.float32, vocab=10, emb=8, hidden=12)
    hist = rnnfast.fit(model, optim.Adam(model.params, lr=0.02), (ids, labels, lengths),
                       epochs=12, batch_size=16, seed=1, progress=False,
                       validation=(ids, labels, lengths))
    assert hist[-1]["loss"] < 0.3 * hist[0]["loss"], [h["loss"] for h in hist]
    assert hist[-1]["val_accuracy"] > 0.95


def test_fit_learns_a_character_language_model():
    """Each character is followed by the next one (mod V): per-step logits, per-step targets."""
    rng = np.random.default_rng(7)
    ids = (rng.integers(0, 8, size=(32, 1)) + np.arange(10)) % 8
    model = char_lm(dtype=np.float32, vocab=8, emb=6, hidden=16)
    hist = rnnfast.fit(model, optim.Adam(model.params, lr=0.05), (ids, (ids + 1) % 8),
                       epochs=10, batch_size=8, progress=False, validation=(ids, (ids + 1) % 8))
    assert hist[-1]["loss"] < 0.2 * hist[0]["loss"], [h["loss"] for h in hist]
    assert hist[-1]["val_accuracy"] == 1.0


def test_mse_on_a_pooled_model_takes_per_sequence_targets():
    rng = np.random.default_rng(8)
    ids = rng.integers(1, V, size=(5, 4))
    model = classifier("mean")
    out = rnnfast.train_sequence(model, optim.SGD(model.params, lr=0.1), ids,
                                 rng.standard_normal((5, C)), loss="mse")
    assert out["updates"] == 1 and np.isfinite(out["loss"])
    with pytest.raises(ValueError, match=r"targets must have shape \(B, C\) with B = \(5,\)"):
        rnnfast.train_sequence(model, optim.SGD(model.params), ids,
                               rng.standard_normal((5, 4, C)), loss="mse")


def test_checkpoint_round_trip_and_bit_identical_resume_with_dropout(tmp_path):
    rng = np.random.default_rng(9)
    N, T = 24, 6
    lengths = rng.integers(1, T + 1, size=N)
    ids = padded_ids(rng, N, T, lengths)
    data = (ids, ids[:, 0] % C, lengths)
    kw = dict(batch_size=8, seed=3, progress=False)

    straight = classifier("mean", dropout=0.4)
    rnnfast.fit(straight, optim.Adam(straight.params, lr=0.01), data, epochs=4, **kw)

    first = classifier("mean", dropout=0.4)
    opt1 = optim.Adam(first.params, lr=0.01)
    rnnfast.fit(first, opt1, data, epochs=2, **kw)
    path = tmp_path / "run.npz"
    rnnfast.save(path, first, opt1, epoch=2)

    ck = rnnfast.load(path)
    assert repr(ck.model) == repr(first) and "pool='mean'" in repr(first)
    assert list(ck.model.params) == list(first.params) and "embedding.weight" in first.params
    for k in first.params:
        np.testing.assert_array_equal(ck.model.params[k], first.params[k])
    assert ck.model.rng_state == first.rng_state
    np.testing.assert_array_equal(ck.model(ids, lengths=lengths)[0],
                                  first(ids, lengths=lengths)[0])
    opt2 = optim.Adam(ck.model.params)
    opt2.load_state_dict(ck.optimizer_state)
    rnnfast.fit(ck.model, opt2, data, epochs=2, initial_epoch=ck.epoch, **kw)
    for k in straight.params:
        np.testing.assert_array_equal(ck.model.params[k], straight.params[k], err_msg=k)


def test_a_char_lm_checkpoint_round_trips(tmp_path):
    model = char_lm()
    rnnfast.save(tmp_path / "lm.npz", model)
    loaded = rnnfast.load(tmp_path / "lm.npz").model
    assert repr(loaded) == repr(model) and loaded.pool is None
    ids = np.arange(12).reshape(2, 6) % V
    np.testing.assert_array_equal(loaded(ids)[0], model(ids)[0])


def rewrite_meta(src, dst, change):
    with np.load(src) as f:
        arrays = {k: f[k] for k in f.files}
    meta = json.loads(arrays["__meta__"].tobytes())
    change(meta)
    np.savez(dst, **{**arrays, "__meta__": np.frombuffer(json.dumps(meta).encode(), np.uint8)})


def test_checkpoint_rng_state_absent_or_broken(tmp_path):
    model = classifier(dropout=0.2)
    good = tmp_path / "good.npz"
    rnnfast.save(good, model)
    old = tmp_path / "old.npz"  # written before checkpoints kept the generator
    rewrite_meta(good, old, lambda meta: meta.pop("rng_state"))
    assert repr(rnnfast.load(old).model) == repr(model)
    broken = tmp_path / "broken.npz"
    rewrite_meta(good, broken, lambda meta: meta["rng_state"]["state"].update(state=-1))
    with pytest.raises(ValueError, match="broken.npz: its rng_state cannot be restored"):
        rnnfast.load(broken)
    not_a_dict = tmp_path / "not_a_dict.npz"
    rewrite_meta(good, not_a_dict, lambda meta: meta.update(rng_state=[1, 2]))
    with pytest.raises(ValueError, match="metadata field 'rng_state' must be dict or null"):
        rnnfast.load(not_a_dict)


# -- bad input --------------------------------------------------------------------------------

def test_model_refuses_parts_that_do_not_fit():
    lstm = rnnfast.LSTM(E, H, bidirectional=True, dtype=np.float64, seed=0)
    with pytest.raises(ValueError, match=r"readout.in_features must equal recurrent.output_size "
                                         r"\(num_directions \* hidden_size\) = 6, got 3"):
        rnnfast.Model(lstm, rnnfast.Linear(H, C, dtype=np.float64))
    out = rnnfast.Linear(2 * H, C, dtype=np.float64)
    with pytest.raises(ValueError, match="embedding.embedding_dim must equal "
                                         "recurrent.input_size = 3, got 4"):
        rnnfast.Model(lstm, out, embedding=rnnfast.Embedding(V, 4, dtype=np.float64))
    with pytest.raises(ValueError, match="embedding's dtype must be the recurrent model's "
                                         "float64, got float32"):
        rnnfast.Model(lstm, out, embedding=rnnfast.Embedding(V, E))
    with pytest.raises(TypeError, match="embedding must be an rnnfast.Embedding or None, got "
                                        "Linear"):
        rnnfast.Model(lstm, out, embedding=out)
    with pytest.raises(ValueError, match=r"pool must be one of \('last', 'mean'\) or None, got "
                                         r"'max'"):
        rnnfast.Model(lstm, out, pool="max")


def test_integers_without_an_embedding_are_refused_with_what_to_do():
    model = rnnfast.Model(rnnfast.LSTM(E, H, seed=0), rnnfast.Linear(H, C, seed=1))
    ids = np.ones((2, 4), np.int64)
    message = r"x holds integers \(int64\).*embedding=rnnfast.Embedding\(num_embeddings"
    for call in (lambda: model(ids), lambda: model.forward(ids),
                 lambda: rnnfast.fit(model, optim.SGD(model.params), (ids, ids),
                                     progress=False),
                 lambda: rnnfast.evaluate(model, (ids, ids))):
        with pytest.raises(TypeError, match=message):
            call()


def test_training_refuses_bad_ids_and_losses_before_any_update():
    rng = np.random.default_rng(10)
    model = classifier("last")
    before = {k: v.copy() for k, v in model.params.items()}
    opt = optim.SGD(model.params, lr=0.1)
    ids = rng.integers(1, V, size=(3, 5))
    labels = np.array([0, 1, 2])
    bad = ids.copy()
    bad[2, 4] = V
    with pytest.raises(ValueError, match=rf"x must lie in \[0, num_embeddings\) = \[0, {V}\), "
                                         rf"got {V} at index \(2, 4\)"):
        rnnfast.train_sequence(model, opt, bad, labels)
    with pytest.raises(TypeError, match="x must hold integer ids"):
        rnnfast.train_sequence(model, opt, ids.astype(np.float64), labels)
    with pytest.raises(TypeError, match="x must hold integer ids"):
        model(ids.astype(np.float32))
    with pytest.raises(ValueError, match="cannot train a model that pools over time "
                                         r"\(pool='last'\).*use k1=None"):
        rnnfast.train_sequence(model, opt, ids, labels, k1=2)
    with pytest.raises(ValueError, match="'cross_entropy_last' takes each sequence's last step.*"
                                         "use 'cross_entropy'"):
        rnnfast.fit(model, opt, (ids, labels), loss="cross_entropy_last", progress=False)
    with pytest.raises(ValueError, match=r"targets must have shape \(B,\) = \(3,\), got \(3, 5\)"):
        rnnfast.train_sequence(model, opt, ids, ids % C)
    with pytest.raises(ValueError, match="lengths must be at least 1 with pool='last', got 0 "
                                         "at index 1"):
        rnnfast.train_sequence(model, opt, ids, labels, lengths=np.array([5, 0, 2]))
    with pytest.raises(ValueError, match="the input has T = 0 steps: there is nothing for "
                                         "pool='last' to pool"):
        model.forward(np.zeros((2, 0), np.int64))
    for k in before:
        np.testing.assert_array_equal(model.params[k], before[k])


def test_evaluate_a_pooled_model_gives_loss_and_accuracy():
    rng = np.random.default_rng(11)
    ids = rng.integers(1, V, size=(6, 5))
    model = classifier("mean")
    logits, _ = model(ids)
    labels = logits.argmax(-1)
    labels[0] = (labels[0] + 1) % C  # one wrong
    out = rnnfast.evaluate(model, (ids, labels), batch_size=4)
    assert out["accuracy"] == pytest.approx(5 / 6)
    assert out["loss"] == pytest.approx(losses.cross_entropy(logits, labels)[0], rel=1e-12)
