"""rnnfast against PyTorch: from_torch, to_torch, and every output and gradient vs autograd.

The loss on both sides is ``sum(y * R) + sum(h_n * S)`` (``+ sum(c_n * S_c)`` for the LSTM)
with random R, S: rnnfast's backward gets dy = R and dstate = S, torch differentiates the same
sum. Weights are PyTorch's default draw scaled by WEIGHT_SCALE, so that the nonlinearities
saturate and relu units switch off.

float64: relative error (max|a - b| / max|b|) <= 1e-9; float32: <= 1e-4, both sides in float32.
Lengths: rnnfast's ``lengths`` against ``pack_padded_sequence(..., enforce_sorted=False)``.
"""

import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import rnnfast  # noqa: E402
from support import CELLS, as_parts, make, record, rel_err  # noqa: E402

TOL = {np.float64: 1e-9, np.float32: 1e-4}
TORCH_DTYPE = {np.float64: torch.float64, np.float32: torch.float32}
TORCH_CELLS = {
    "rnn_tanh": (torch.nn.RNN, {"nonlinearity": "tanh"}),
    "rnn_relu": (torch.nn.RNN, {"nonlinearity": "relu"}),
    "lstm": (torch.nn.LSTM, {}),
    "gru": (torch.nn.GRU, {}),
}
WEIGHT_SCALE = 3.0  # times U(-1/sqrt(H), 1/sqrt(H))

# (B, T, D, H, L, lengths, bias); lengths: "none", "partial" (one full, the rest in [1, T]),
# "short" (all < T: torch's packed output is shorter than T and is padded back to T)
CONFIGS = [
    (1, 1, 1, 1, 1, "none", True),
    (3, 6, 4, 5, 1, "none", True),
    (2, 7, 5, 4, 2, "none", False),
    (4, 9, 3, 6, 2, "partial", True),
    (5, 8, 3, 7, 3, "partial", False),
    (6, 12, 8, 16, 2, "partial", True),
    (3, 10, 2, 5, 2, "short", True),
]


# -- the two sides ---------------------------------------------------------------------------

def torch_module(cell, D, H, L, bias, dtype, seed, batch_first=True, **kw):
    """A torch module with random weights, scaled up."""
    torch.manual_seed(seed)
    cls, extra = TORCH_CELLS[cell]
    module = cls(D, H, num_layers=L, bias=bias, batch_first=batch_first,
                 dtype=TORCH_DTYPE[dtype], **extra, **kw)
    with torch.no_grad():
        for p in module.parameters():
            p.mul_(WEIGHT_SCALE)
    return module


def rnnfast_model(cell, D, H, L, bias, dtype, seed, **kw):
    """An rnnfast model with random weights, scaled up."""
    model = make(cell, D, H, L, dtype=dtype, seed=seed, bias=bias, **kw)
    for p in model.params.values():
        p *= WEIGHT_SCALE
    return model


def data(model, B, T, lengths_mode, dtype, seed):
    """x, state0, lengths, R (= dy) and S (= dstate), already rounded to ``dtype``."""
    rng = np.random.default_rng(seed)
    widths = (model.state_size, model.hidden_size)[:model.state_parts]  # h (S), c (H)

    def state(scale):
        parts = tuple(rng.uniform(-scale, scale, (model.num_layers * model.num_directions, B,
                                                  width)).astype(dtype) for width in widths)
        return parts[0] if len(parts) == 1 else parts

    x = rng.standard_normal((B, T, model.input_size)).astype(dtype)
    state0 = state(1.0)
    if lengths_mode == "none":
        lengths = None
    elif lengths_mode == "partial":
        lengths = rng.integers(1, T + 1, size=B)
        lengths[0] = T
    else:  # "short"
        lengths = rng.integers(1, T, size=B)
    R = rng.standard_normal((B, T, model.output_size)).astype(dtype)
    S = state(1.0)
    return x, state0, lengths, R, S


def ours(model, x, state0, lengths, R, S):
    """forward + backward with dy = R, dstate = S: every tensor, by name."""
    y, state_n, cache = model.forward(x, state0, lengths)
    dx, dstate0, grads = model.backward(cache, R, S)
    out = {"y": y, "dx": dx}
    out.update({f"state_n[{i}]": p for i, p in enumerate(as_parts(state_n))})
    out.update({f"dstate0[{i}]": p for i, p in enumerate(as_parts(dstate0))})
    out.update({f"d{k}": g for k, g in grads.items()})
    return out


def theirs(module, x, state0, lengths, R, S):
    """torch's forward and autograd of ``sum(y * R) + sum(state_n * S)``: the same names.

    x, state0, R, S are batch-first numpy arrays whatever ``module.batch_first`` says.
    """
    B, T, _ = x.shape
    xt = torch.tensor(x, requires_grad=True)
    s0 = [torch.tensor(p, requires_grad=True) for p in as_parts(state0)]
    inp = xt if module.batch_first else xt.transpose(0, 1)
    h0 = tuple(s0) if len(s0) == 2 else s0[0]
    if lengths is None:
        y, state_n = module(inp, h0)
    else:
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            inp, torch.as_tensor(lengths, dtype=torch.int64), batch_first=module.batch_first,
            enforce_sorted=False)
        out, state_n = module(packed, h0)
        y, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=module.batch_first,
                                                      total_length=T)
    if not module.batch_first:
        y = y.transpose(0, 1)
    state_n = state_n if isinstance(state_n, tuple) else (state_n,)
    loss = (y * torch.tensor(R)).sum()
    for part, s in zip(state_n, as_parts(S)):
        loss = loss + (part * torch.tensor(s)).sum()
    module.zero_grad()
    loss.backward()
    out = {"y": y.detach().numpy(), "dx": xt.grad.numpy()}
    out.update({f"state_n[{i}]": p.detach().numpy() for i, p in enumerate(state_n)})
    out.update({f"dstate0[{i}]": p.grad.numpy() for i, p in enumerate(s0)})
    out.update({f"d{name}": p.grad.numpy() for name, p in module.named_parameters()})
    return out


def compare(got, want, cell, dtype, label, check="torch"):
    """Every tensor of ``want`` against ``got``: recorded, dtype checked, worst within TOL."""
    assert sorted(got) == sorted(want)
    errors = {k: rel_err(got[k], want[k]) for k in want}
    for k, err in errors.items():
        record(f"{check} {cell} {k.split('_l')[0]}", dtype, err)
        assert got[k].dtype == dtype, k
    worst = max(errors, key=errors.get)
    assert errors[worst] <= TOL[dtype], f"{label}: worst {worst} rel err {errors[worst]:.3e}"


# -- outputs, states and gradients against autograd ------------------------------------------

# One unit, one step, tanh saturated (y = -0.99989): every gradient is a single number times
# 1 - y^2 = 2.2e-4, so one float32 ulp of y (6e-8) moves it by 5.6e-4 relative. Eigen's
# vectorised float tanh (cpp/rnn.hpp) is 1 ulp off here where torch's is correctly rounded; the
# float64 truth on the same float32 inputs puts ours 5.8e-4 away and torch's 3e-5 away. An
# accuracy finding about the compiled tanh, not about interop: kept visible, not tuned away.
SATURATED_1ULP = ("rnn_tanh", CONFIGS[0], np.float32, "to_torch")


@pytest.mark.parametrize("direction", ["from_torch", "to_torch"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "B{}T{}D{}H{}L{}-{}-bias{}".format(*c))
@pytest.mark.parametrize("cell", CELLS)
def test_matches_torch_autograd(cell, config, dtype, direction, request):
    known = (cell, config, dtype, direction) == SATURATED_1ULP
    if known:
        request.applymarker(pytest.mark.xfail(
            reason="float32 tanh 1 ulp off at saturation, 1-element gradients: see "
                   "SATURATED_1ULP", strict=True))
    B, T, D, H, L, lengths_mode, bias = config
    seed = CONFIGS.index(config)
    if direction == "from_torch":
        module = torch_module(cell, D, H, L, bias, dtype, seed)
        model = rnnfast.from_torch(module)
    else:
        model = rnnfast_model(cell, D, H, L, bias, dtype, seed)
        module = model.to_torch()
    assert model.dtype == dtype
    x, state0, lengths, R, S = data(model, B, T, lengths_mode, dtype, seed)
    compare(ours(model, x, state0, lengths, R, S), theirs(module, x, state0, lengths, R, S),
            cell, dtype, direction, check="torch xfail" if known else "torch")


@pytest.mark.parametrize("direction", ["from_torch", "to_torch"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("config", CONFIGS[1:], ids=lambda c: "B{}T{}D{}H{}L{}-{}-bias{}".format(*c))
@pytest.mark.parametrize("cell", CELLS)
def test_bidirectional_matches_torch_autograd(cell, config, dtype, direction):
    """Both directions, their state order, layer k > 0 reading both, and packed sequences
    (the reverse direction starting at each sequence's last valid step)."""
    B, T, D, H, L, lengths_mode, bias = config
    seed = 100 + CONFIGS.index(config)
    if direction == "from_torch":
        module = torch_module(cell, D, H, L, bias, dtype, seed, bidirectional=True)
        model = rnnfast.from_torch(module)
    else:
        model = rnnfast_model(cell, D, H, L, bias, dtype, seed, bidirectional=True)
        module = model.to_torch()
    assert model.bidirectional and module.bidirectional
    x, state0, lengths, R, S = data(model, B, T, lengths_mode, dtype, seed)
    compare(ours(model, x, state0, lengths, R, S), theirs(module, x, state0, lengths, R, S),
            cell, dtype, direction, check="torch bidirectional")


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("direction", ["from_torch", "to_torch"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("config", CONFIGS[1:], ids=lambda c: "B{}T{}D{}H{}L{}-{}-bias{}".format(*c))
@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
def test_projection_matches_torch_autograd(config, dtype, direction, bidirectional):
    """LSTM(proj_size=P): h_t = W_hr (o ⊙ tanh c_t), P units of h and output, H of c."""
    B, T, D, H, L, lengths_mode, bias = config
    P, seed = H // 2, 200 + CONFIGS.index(config)
    kw = {"proj_size": P, "bidirectional": bidirectional}
    if direction == "from_torch":
        module = torch_module("lstm", D, H, L, bias, dtype, seed, **kw)
        model = rnnfast.from_torch(module)
    else:
        model = rnnfast_model("lstm", D, H, L, bias, dtype, seed, **kw)
        module = model.to_torch()
    assert model.proj_size == module.proj_size == P and model.output_size == P * (1 + bidirectional)
    x, state0, lengths, R, S = data(model, B, T, lengths_mode, dtype, seed)
    compare(ours(model, x, state0, lengths, R, S), theirs(module, x, state0, lengths, R, S),
            "lstm", dtype, direction, check="torch proj")


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("cell", CELLS)
def test_dropout_module_in_eval_mode_converts_to_equal_inference(cell, bidirectional):
    """A module trained with dropout, in eval(): rnnfast's inference call (which never drops)
    equals torch's output, and the dropout probability comes along."""
    module = torch_module(cell, 3, 5, 3, True, np.float64, seed=51, dropout=0.4,
                          bidirectional=bidirectional).eval()
    model = rnnfast.from_torch(module)
    assert model.dropout == 0.4 and model.to_torch().dropout == 0.4
    x = np.random.default_rng(52).standard_normal((4, 6, 3))
    y, state = model(x, lengths=[6, 2, 5, 1])
    packed = torch.nn.utils.rnn.pack_padded_sequence(
        torch.tensor(x), torch.tensor([6, 2, 5, 1]), batch_first=True, enforce_sorted=False)
    with torch.no_grad():
        out, state_t = module(packed)
    y_t, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=6)
    assert rel_err(y, y_t.numpy()) <= 1e-12
    for ours_, theirs_ in zip(as_parts(state), as_parts(state_t)):
        assert rel_err(ours_, theirs_.numpy()) <= 1e-12


@pytest.mark.parametrize("cell", CELLS)
def test_time_major_module_and_numpy_backend(cell):
    """batch_first=False converts too (rnnfast stays batch-first); backend is passed through."""
    module = torch_module(cell, 3, 6, 2, True, np.float64, seed=11, batch_first=False)
    for backend in ("cpp", "numpy"):
        model = rnnfast.from_torch(module, backend=backend)
        assert model.backend == backend
        x, state0, lengths, R, S = data(model, 4, 7, "partial", np.float64, seed=12)
        compare(ours(model, x, state0, lengths, R, S), theirs(module, x, state0, lengths, R, S),
                cell, np.float64, f"batch_first=False, backend={backend}")


@pytest.mark.parametrize("cell", CELLS)
def test_length_zero_against_the_rest_of_the_batch(cell):
    """torch refuses length 0; rnnfast passes the state through. The other sequences must
    match torch run without the empty one, and the empty one must change nothing."""
    module = torch_module(cell, 3, 5, 2, True, np.float64, seed=21)
    model = rnnfast.from_torch(module)
    x, state0, _, R, S = data(model, 4, 6, "none", np.float64, seed=22)
    lengths = np.array([6, 0, 3, 5])
    got = ours(model, x, state0, lengths, R, S)

    keep = np.flatnonzero(lengths > 0)
    rows = (lambda s: tuple(p[:, keep] for p in as_parts(s)))
    pick = (lambda s: rows(s) if isinstance(s, tuple) else rows(s)[0])
    want = theirs(module, x[keep], pick(state0), lengths[keep], R[keep], pick(S))
    for k, w in want.items():
        g = got[k]
        if k in ("y", "dx"):
            g = g[keep]
        elif k.startswith(("state_n", "dstate0")):
            g = g[:, keep]
        assert rel_err(g, w) <= TOL[np.float64], k

    # The empty sequence: zero outputs and input gradient, state and its gradient unchanged.
    assert not got["y"][1].any() and not got["dx"][1].any()
    for i, (s, ds) in enumerate(zip(as_parts(state0), as_parts(S))):
        np.testing.assert_array_equal(got[f"state_n[{i}]"][:, 1], s[:, 1])
        np.testing.assert_array_equal(got[f"dstate0[{i}]"][:, 1], ds[:, 1])


# -- conversions ------------------------------------------------------------------------------

@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi-dropout"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("cell", CELLS)
def test_round_trip_copies_weights_exactly(cell, dtype, bias, bidirectional):
    dropout = 0.3 if bidirectional else 0.0
    module = torch_module(cell, 4, 5, 3, bias, dtype, seed=31, batch_first=False,
                          bidirectional=bidirectional, dropout=dropout)
    model = rnnfast.from_torch(module)
    back = model.to_torch()
    cls, extra = TORCH_CELLS[cell]
    assert type(back) is cls and back.batch_first
    assert (back.input_size, back.hidden_size, back.num_layers, back.bias) == (4, 5, 3, bias)
    assert (back.bidirectional, back.dropout) == (bidirectional, dropout)
    assert getattr(back, "nonlinearity", None) == extra.get("nonlinearity")
    want = dict(module.named_parameters())
    got = dict(back.named_parameters())
    assert list(got) == list(want) == list(model.params)
    for name, p in got.items():
        assert p.dtype == TORCH_DTYPE[dtype] and p.requires_grad
        assert torch.equal(p, want[name]), name
        assert model.params[name].dtype == dtype and model.params[name].flags.c_contiguous
        np.testing.assert_array_equal(model.params[name], want[name].detach().numpy())

    # And the other way round: rnnfast -> torch -> rnnfast.
    again = rnnfast.from_torch(back)
    assert type(again) is type(model) and again.config() == model.config()
    for name, a in model.params.items():
        np.testing.assert_array_equal(again.params[name], a)

    # Copies, not views: changing any one of the four leaves the other three alone.
    name = "weight_hh_l1"
    four = {"module": lambda: module.get_parameter(name).detach().numpy(), "model": lambda:
            model.params[name], "back": lambda: back.get_parameter(name).detach().numpy(),
            "again": lambda: again.params[name]}
    for moved in four:
        before = {k: get().copy() for k, get in four.items()}
        with torch.no_grad():
            four[moved]()[...] += 1.0  # numpy views of the torch tensors write through
        for k, get in four.items():
            if k == moved:
                np.testing.assert_array_equal(get(), before[k] + 1.0)
            else:
                np.testing.assert_array_equal(get(), before[k], err_msg=f"{moved} moved {k}")


def test_to_torch_refuses_broken_params():
    model = rnnfast.GRU(3, 4, dtype=np.float64)
    model.params["weight_hh_l0"] = np.zeros((4, 4))
    with pytest.raises(ValueError, match=r"params\['weight_hh_l0'\] must be .*\(12, 4\)"):
        model.to_torch()


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_linear_both_ways(dtype, bias):
    torch.manual_seed(41)
    module = torch.nn.Linear(6, 3, bias=bias, dtype=TORCH_DTYPE[dtype])
    layer = rnnfast.Linear.from_torch(module)
    assert (layer.in_features, layer.out_features, layer.bias, layer.dtype) == (6, 3, bias, dtype)
    x = np.random.default_rng(42).standard_normal((2, 5, 6)).astype(dtype)
    want = module(torch.tensor(x)).detach().numpy()
    err = rel_err(layer(x), want)
    record("torch linear y", dtype, err)
    assert err <= TOL[dtype]
    back = layer.to_torch()
    assert type(back) is torch.nn.Linear
    for name, p in module.named_parameters():
        assert torch.equal(back.get_parameter(name), p)
    layer.params["weight"] += 1.0  # not shared
    assert torch.equal(back.weight, module.weight)


# -- refusals ---------------------------------------------------------------------------------

@pytest.mark.parametrize("obj, match", [
    (torch.nn.Linear(3, 4), r"torch\.nn\.RNN, LSTM or GRU.*rnnfast\.Linear\.from_torch"),
    (torch.nn.LSTMCell(3, 4), r"torch\.nn\.LSTM.*got torch\.nn\.modules\.rnn\.LSTMCell"),
    (torch.nn.Sequential(torch.nn.GRU(3, 4)), r"got torch\.nn\.modules\.container\.Sequential"),
    (rnnfast.LSTM(3, 4), r"got rnnfast\.lstm\.LSTM"),
    (np.zeros((4, 3)), r"got numpy\.ndarray"),
    ("lstm", r"got builtins\.str"),
])
def test_refuses_other_objects(obj, match):
    with pytest.raises(TypeError, match=match):
        rnnfast.from_torch(obj)
    if not isinstance(obj, torch.nn.Linear):
        with pytest.raises(TypeError, match="takes a torch.nn.Linear"):
            rnnfast.Linear.from_torch(obj)


@pytest.mark.parametrize("convert, name", [
    (lambda m: m.half(), "torch.float16"),
    (lambda m: m.bfloat16(), "torch.bfloat16"),
])
def test_refuses_other_dtypes(convert, name):
    module = convert(torch.nn.LSTM(3, 4))
    with pytest.raises(TypeError, match=f"float32 or float64.*{name}.*module.float()"):
        rnnfast.from_torch(module)
    with pytest.raises(TypeError, match=f"float32 or float64.*{name}"):
        rnnfast.Linear.from_torch(convert(torch.nn.Linear(3, 4)))


def test_refuses_mixed_dtypes():
    module = torch.nn.GRU(3, 4)
    module.weight_hh_l0.data = module.weight_hh_l0.data.double()
    with pytest.raises(TypeError, match="share one dtype.*torch.float32, torch.float64"):
        rnnfast.from_torch(module)


def test_without_torch_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    install = r"pip install torch==2\.13\.0 .*pip install \"rnnfast\[torch\]\""
    with pytest.raises(ImportError, match=f"from_torch needs PyTorch.*{install}"):
        rnnfast.from_torch(object())
    with pytest.raises(ImportError, match=f"LSTM.to_torch needs PyTorch.*{install}"):
        rnnfast.LSTM(3, 4).to_torch()
    with pytest.raises(ImportError, match=install):
        rnnfast.Linear(3, 4).to_torch()
    with pytest.raises(ImportError, match=install):
        rnnfast.Linear.from_torch(object())
