"""Embedding: initialisation, forward and backward against a NumPy reference and torch, bad
input. Letters: B = batch, T = timesteps, V = num_embeddings, E = embedding_dim."""

import numpy as np
import pytest

import rnnfast
from rnnfast.embedding import scatter_add_rows
from support import record, rel_err

V, E = 11, 5
TOL = {np.float32: 1e-5, np.float64: 1e-12}


def reference_backward(ids, dy, num_embeddings, padding_idx=None):
    """dweight[v] = Σ_{ids[b, t] = v} dy[b, t], by np.add.at on rows; padding row zero."""
    dweight = np.zeros((num_embeddings, dy.shape[-1]), dy.dtype)
    np.add.at(dweight, ids.reshape(-1), dy.reshape(-1, dy.shape[-1]))
    if padding_idx is not None:
        dweight[padding_idx] = 0
    return dweight


def random_ids(rng, B, T, num_embeddings=V, dtype=np.int64):
    return rng.integers(0, num_embeddings, size=(B, T)).astype(dtype)


# -- initialisation ---------------------------------------------------------------------------

def test_init_is_torch_normal_drawn_in_float64_with_the_padding_row_zeroed():
    a = rnnfast.Embedding(400, 50, dtype=np.float64, seed=3).params["weight"]
    b = rnnfast.Embedding(400, 50, dtype=np.float32, seed=3).params["weight"]
    assert a.shape == (400, 50) and a.dtype == np.float64 and b.dtype == np.float32
    np.testing.assert_array_equal(b, a.astype(np.float32))  # one seed, one table
    assert abs(a.mean()) < 0.02 and abs(a.std() - 1) < 0.02  # N(0, 1)
    p = rnnfast.Embedding(400, 50, padding_idx=7, dtype=np.float64, seed=3)
    assert not p.params["weight"][7].any()
    mask = np.arange(400) != 7
    np.testing.assert_array_equal(p.params["weight"][mask], a[mask])


def test_negative_padding_idx_counts_from_the_end_as_in_torch():
    emb = rnnfast.Embedding(V, E, padding_idx=-2, seed=0)
    assert emb.padding_idx == V - 2 and not emb.params["weight"][V - 2].any()
    assert repr(emb) == f"Embedding({V}, {E}, padding_idx={V - 2}, dtype=np.float32)"
    assert emb.config() == {"class": "Embedding", "num_embeddings": V, "embedding_dim": E,
                            "padding_idx": V - 2, "dtype": "float32"}


# -- forward and backward against the reference -----------------------------------------------

@pytest.mark.parametrize("padding_idx", [None, 0, 4])
@pytest.mark.parametrize("id_dtype", [np.int8, np.uint16, np.int32, np.int64, np.uint64])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_and_backward_match_the_reference(dtype, id_dtype, padding_idx):
    rng = np.random.default_rng(1)
    emb = rnnfast.Embedding(V, E, padding_idx=padding_idx, dtype=dtype, seed=2)
    emb.params["weight"][...] = rng.standard_normal((V, E))  # the padding row too
    ids = random_ids(rng, 6, 9, dtype=id_dtype)  # 54 ids in 11 rows: many repeats
    ids[0, :3] = 4
    y, cache = emb.forward(ids)
    assert y.dtype == dtype and y.shape == (6, 9, E)
    np.testing.assert_array_equal(y, emb.params["weight"][ids])  # the padding row as it is
    np.testing.assert_array_equal(emb(ids), y)
    dy = rng.standard_normal(y.shape)  # float64, converted to the layer's dtype
    dids, grads = emb.backward(cache, dy)
    assert dids is None and list(grads) == ["weight"] and grads["weight"].dtype == dtype
    ref = reference_backward(ids, dy.astype(dtype), V, padding_idx)
    err = rel_err(grads["weight"], ref)
    record("embedding backward vs reference", dtype, err)
    assert err <= TOL[dtype]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_scatter_add_is_np_add_at_and_repeats_bit_for_bit(dtype):
    rng = np.random.default_rng(5)
    ids = rng.integers(0, 300, size=4000)
    ids[:500] = 17  # one heavy row, as a frequent token
    rows = rng.standard_normal((4000, 33)).astype(dtype)
    got = scatter_add_rows(ids, rows, 300)
    want = np.zeros((300, 33), dtype)
    np.add.at(want, ids, rows)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(scatter_add_rows(ids, rows, 300), got)


def test_empty_inputs_give_empty_outputs_and_zero_gradients():
    emb = rnnfast.Embedding(V, E, dtype=np.float64, seed=0)
    for shape in [(0, 4), (3, 0), (0, 0)]:
        y, cache = emb.forward(np.zeros(shape, np.int64))
        assert y.shape == shape + (E,)
        _, grads = emb.backward(cache, np.zeros(shape + (E,)))
        np.testing.assert_array_equal(grads["weight"], np.zeros((V, E)))


# -- PyTorch ----------------------------------------------------------------------------------

@pytest.mark.parametrize("padding_idx", [None, 3, -1])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_torch_embedding_autograd(dtype, padding_idx):
    torch = pytest.importorskip("torch")
    tdtype = {np.float32: torch.float32, np.float64: torch.float64}[dtype]
    torch.manual_seed(0)
    module = torch.nn.Embedding(V, E, padding_idx=padding_idx, dtype=tdtype)
    emb = rnnfast.Embedding.from_torch(module)
    assert emb.dtype == dtype and emb.padding_idx == module.padding_idx
    rng = np.random.default_rng(4)
    ids = random_ids(rng, 5, 7)
    ids[1, :4] = module.padding_idx if padding_idx is not None else 0
    dy = rng.standard_normal((5, 7, E)).astype(dtype)

    y_t = module(torch.from_numpy(ids))
    y_t.backward(torch.from_numpy(dy))
    y, cache = emb.forward(ids)
    _, grads = emb.backward(cache, dy)
    np.testing.assert_array_equal(y, y_t.detach().numpy())
    err = rel_err(grads["weight"], module.weight.grad.numpy())
    record("embedding backward vs torch", dtype, err)
    assert err <= TOL[dtype]

    back = emb.to_torch()
    assert isinstance(back, torch.nn.Embedding) and back.padding_idx == module.padding_idx
    assert back.weight.dtype == tdtype
    np.testing.assert_array_equal(back.weight.detach().numpy(), emb.params["weight"])
    assert back.weight.data_ptr() != module.weight.data_ptr()


def test_from_torch_refuses_what_rnnfast_does_not_have():
    torch = pytest.importorskip("torch")
    with pytest.raises(ValueError, match="max_norm=1.0, which rnnfast does not support"):
        rnnfast.Embedding.from_torch(torch.nn.Embedding(V, E, max_norm=1.0))
    with pytest.raises(ValueError, match="scale_grad_by_freq=True"):
        rnnfast.Embedding.from_torch(torch.nn.Embedding(V, E, scale_grad_by_freq=True))
    with pytest.raises(TypeError, match="takes a torch.nn.Embedding, got torch.nn"):
        rnnfast.Embedding.from_torch(torch.nn.Linear(V, E))
    with pytest.raises(TypeError, match="float16"):
        rnnfast.Embedding.from_torch(torch.nn.Embedding(V, E, dtype=torch.float16))


# -- bad input --------------------------------------------------------------------------------

@pytest.mark.parametrize("bad,kind,message", [
    ([[1, 2]], TypeError, r"ids must be a numpy.ndarray of integer ids, got list"),
    (np.ones((2, 3)), TypeError, r"ids must hold integer ids .* got dtype float64"),
    (np.ones((2, 3), bool), TypeError, r"ids must hold integer ids .* got dtype bool"),
    (np.ones((2, 3), complex), TypeError, r"got dtype complex128"),
    (np.ones((2, 3), object), TypeError, r"got dtype object"),
    (np.ones(3, np.int64), ValueError, r"ids must be 2-D \(B, T\), got 1-D with shape \(3,\)"),
    (np.ones((1, 2, 3), np.int64), ValueError, r"ids must be 2-D \(B, T\), got 3-D"),
    (np.array([[1, 2], [3, V]]), ValueError,
     rf"ids must lie in \[0, num_embeddings\) = \[0, {V}\), got {V} at index \(1, 1\)"),
    (np.array([[1, -3], [-1, 2]], np.int8), ValueError, r"got -3 at index \(0, 1\)"),
    (np.array([[2**64 - 1]], np.uint64), ValueError, rf"got {2**64 - 1} at index \(0, 0\)"),
])
def test_forward_refuses_bad_ids(bad, kind, message):
    emb = rnnfast.Embedding(V, E, seed=0)
    with pytest.raises(kind, match=message):
        emb.forward(bad)


def test_backward_refuses_a_bad_dy_or_cache():
    emb, other = rnnfast.Embedding(V, E, seed=0), rnnfast.Embedding(V, E, seed=0)
    _, cache = emb.forward(np.zeros((2, 3), np.int64))
    with pytest.raises(ValueError, match=r"dy must have shape \(B, T, embedding_dim\) = "
                                         r"\(2, 3, 5\), got \(2, 3, 4\)"):
        emb.backward(cache, np.zeros((2, 3, 4)))
    with pytest.raises(TypeError, match="dy must have a real floating dtype"):
        emb.backward(cache, np.zeros((2, 3, E), np.int64))
    with pytest.raises(ValueError, match="cache must be the cache returned by this Embedding"):
        other.backward(cache, np.zeros((2, 3, E)))


@pytest.mark.parametrize("args,kind,message", [
    ((0, E), ValueError, "num_embeddings must be at least 1, got 0"),
    ((V, 2.0), TypeError, "embedding_dim must be an int, got float"),
    ((V, E, V), ValueError, rf"padding_idx must lie in \[-num_embeddings, num_embeddings\) = "
                            rf"\[-{V}, {V}\), got {V}"),
    ((V, E, -V - 1), ValueError, rf"got {-V - 1}"),
    ((V, E, 1.0), TypeError, "padding_idx must be an int or None, got float"),
    ((V, E, True), TypeError, "padding_idx must be an int or None, got bool"),
    ((V, E, None, np.int32), TypeError, "dtype must be numpy.float32 or numpy.float64"),
])
def test_constructor_refuses_bad_arguments(args, kind, message):
    with pytest.raises(kind, match=message):
        rnnfast.Embedding(*args)


def test_a_replaced_weight_of_the_wrong_shape_is_refused():
    emb = rnnfast.Embedding(V, E, seed=0)
    emb.params["weight"] = np.zeros((V, E + 1), np.float32)
    with pytest.raises(ValueError, match=r"params\['weight'\] must be a float32 array of shape "
                                         r"\(11, 5\), got float32 array of shape \(11, 6\)"):
        emb.forward(np.zeros((1, 1), np.int64))
