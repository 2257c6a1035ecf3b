"""rnnfast.torch's modules against torch.nn's: outputs, final states and every gradient.

Every configuration torch.nn's recurrent modules take (cell, layers, direction, bias,
proj_size, batch_first, padded or packed input, given or zero initial state) runs through
both modules with the same weights; float64 must agree to 1e-9 and float32 to 2e-4 (relative
to the largest entry of each tensor), and torch.autograd.gradcheck checks the backward pass
on its own.
"""

import itertools

import pytest

torch = pytest.importorskip("torch")

import rnnfast.torch as rt  # noqa: E402
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence  # noqa: E402,E501

CELLS = {  # name -> (rnnfast.torch class, torch.nn class, extra constructor arguments)
    "rnn_tanh": (rt.RNN, torch.nn.RNN, {"nonlinearity": "tanh"}),
    "rnn_relu": (rt.RNN, torch.nn.RNN, {"nonlinearity": "relu"}),
    "lstm": (rt.LSTM, torch.nn.LSTM, {}),
    "lstm_proj": (rt.LSTM, torch.nn.LSTM, {"proj_size": 3}),
    "gru": (rt.GRU, torch.nn.GRU, {}),
}
INPUTS = ("batch_first", "time_major", "packed_sorted", "packed_unsorted")
D, H, B, T = 5, 6, 4, 7
TOLERANCE = {torch.float64: 1e-9, torch.float32: 2e-4}

# torch.nn's float32 LSTM with a projection leaves oneDNN for its own loops, and says so.
pytestmark = pytest.mark.filterwarnings(
    "ignore:LSTM with projections is not supported with oneDNN")


def make_pair(cell, num_layers, bidirectional, bias, batch_first, dtype, seed=0):
    ours, theirs, extra = CELLS[cell]
    kw = dict(num_layers=num_layers, bidirectional=bidirectional, bias=bias,
              batch_first=batch_first, dtype=dtype, **extra)
    torch.manual_seed(seed)
    reference = theirs(D, H, **kw)
    module = ours(D, H, **kw)
    module.load_state_dict(reference.state_dict())
    return module, reference


def make_state(module, dtype, generator):
    N = 2 if module.bidirectional else 1
    S = module.proj_size or module.hidden_size
    h = torch.randn(N * module.num_layers, B, S, dtype=dtype, generator=generator)
    if isinstance(module, torch.nn.LSTM):
        c = torch.randn(N * module.num_layers, B, H, dtype=dtype, generator=generator)
        return (h.requires_grad_(), c.requires_grad_())
    return h.requires_grad_()


def leaves(state):
    return list(state) if isinstance(state, tuple) else [state]


def run(module, x, lengths, kind, state):
    """Loss of one forward through ``module`` and everything whose gradient is compared."""
    if kind.startswith("packed"):
        sorted_ = kind == "packed_sorted"
        inp = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=sorted_)
        out, state_n = module(inp, state)
        assert isinstance(out, PackedSequence)
        assert torch.equal(out.batch_sizes, inp.batch_sizes)
        y, _ = pad_packed_sequence(out, batch_first=True, total_length=T)
    elif kind == "time_major":
        y, state_n = module(x.transpose(0, 1), state)
        y = y.transpose(0, 1)
    else:
        y, state_n = module(x, state)
    # Weights that differ per output entry, so that a misplaced entry shows.
    w = torch.linspace(-1, 2, y.numel(), dtype=y.dtype).reshape(y.shape)
    loss = (w * y).sum() + sum((s ** 2).sum() * (k + 1) for k, s in enumerate(leaves(state_n)))
    return loss, [y, *leaves(state_n)]


def compare(cell, num_layers, bidirectional, bias, kind, with_state, dtype):
    module, reference = make_pair(cell, num_layers, bidirectional, bias,
                                  batch_first=kind != "time_major", dtype=dtype)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, T, D, dtype=dtype, generator=g)
    # Sorted lengths for enforce_sorted=True, shuffled otherwise; one full-length sequence.
    lengths = torch.tensor([7, 5, 3, 1] if kind == "packed_sorted" else [3, 7, 1, 5])
    state = make_state(module, dtype, g) if with_state else None
    results = []
    for m in (reference, module):
        xs = x.clone().requires_grad_()
        ss = None if state is None else (
            tuple(s.detach().clone().requires_grad_() for s in state) if isinstance(state, tuple)
            else state.detach().clone().requires_grad_())
        loss, outs = run(m, xs, lengths, kind, ss)
        wrt = {"x": xs, **({} if ss is None else {f"state{k}": s for k, s in
                                                  enumerate(leaves(ss))}),
               **dict(m.named_parameters())}
        grads = torch.autograd.grad(loss, list(wrt.values()))
        named = {f"output{k}": o.detach() for k, o in enumerate(outs)}
        named.update({f"d{name}": g for name, g in zip(wrt, grads)})
        results.append(named)
    want, got = results
    assert list(got) == list(want)
    for name in want:
        assert got[name].shape == want[name].shape, name
        assert got[name].dtype == want[name].dtype, name
        scale = float(want[name].abs().max()) or 1.0
        err = float((got[name] - want[name]).abs().max()) / scale
        assert err <= TOLERANCE[dtype], f"{name}: relative error {err:.2e}"


GRID = list(itertools.product(CELLS, (1, 2, 3), (False, True), INPUTS))


@pytest.mark.parametrize("cell,num_layers,bidirectional,kind", GRID)
def test_float64_parity(cell, num_layers, bidirectional, kind):
    compare(cell, num_layers, bidirectional, bias=True, kind=kind, with_state=num_layers != 2,
            dtype=torch.float64)


@pytest.mark.parametrize("cell,bidirectional,kind", list(itertools.product(
    CELLS, (False, True), INPUTS)))
def test_without_bias(cell, bidirectional, kind):
    compare(cell, 2, bidirectional, bias=False, kind=kind, with_state=True,
            dtype=torch.float64)


@pytest.mark.parametrize("cell,bidirectional,kind", list(itertools.product(
    CELLS, (False, True), ("batch_first", "packed_unsorted"))))
def test_float32_parity(cell, bidirectional, kind):
    compare(cell, 2, bidirectional, bias=True, kind=kind, with_state=True,
            dtype=torch.float32)


@pytest.mark.parametrize("cell", list(CELLS))
def test_unbatched_input(cell):
    module, reference = make_pair(cell, 2, True, True, batch_first=False, dtype=torch.float64)
    x = torch.randn(T, D, dtype=torch.float64)
    state = make_state(module, torch.float64, torch.Generator().manual_seed(2))
    state = tuple(s[:, 0].detach() for s in state) if isinstance(state, tuple) \
        else state[:, 0].detach()
    for hx in (None, state):
        (y0, s0), (y1, s1) = reference(x, hx), module(x, hx)
        assert y1.shape == y0.shape == (T, 2 * (module.proj_size or H))
        torch.testing.assert_close(y1, y0, rtol=1e-12, atol=1e-12)
        for a, b in zip(leaves(s1), leaves(s0)):
            assert a.shape == b.shape
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cell", list(CELLS))
def test_gradcheck(cell):
    """torch's finite differences of every input, state and parameter, float64."""
    module, _ = make_pair(cell, 2, True, True, batch_first=True, dtype=torch.float64)
    names = [name for name, _ in module.named_parameters()]
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, D, dtype=torch.float64, generator=g, requires_grad=True)
    N, S = 2, module.proj_size or H
    h0 = torch.randn(2 * N, 2, S, dtype=torch.float64, generator=g, requires_grad=True)
    extra = ()
    if isinstance(module, torch.nn.LSTM):
        extra = (torch.randn(2 * N, 2, H, dtype=torch.float64, generator=g,
                             requires_grad=True),)
    params = [p.detach().clone().requires_grad_() for p in module.parameters()]

    def f(x, h0, *rest):
        state = (h0, rest[0]) if extra else h0
        weights = dict(zip(names, rest[len(extra):]))
        y, state_n = torch.func.functional_call(module, weights, (x, state))
        return (y, *leaves(state_n))

    assert torch.autograd.gradcheck(f, (x, h0, *extra, *params), eps=1e-6, atol=1e-7)


def test_zero_state_gradient_is_not_returned_for_absent_hx():
    module, _ = make_pair("lstm", 1, False, True, batch_first=True, dtype=torch.float64)
    x = torch.randn(B, T, D, dtype=torch.float64, requires_grad=True)
    y, (h, c) = module(x)
    (y.sum() + h.sum() + c.sum()).backward()
    assert x.grad is not None and all(p.grad is not None for p in module.parameters())


@pytest.mark.parametrize("cell,used", [("lstm", "h_n"), ("lstm", "c_n"), ("lstm_proj", "y"),
                                       ("gru", "h_n"), ("rnn_tanh", "y")])
def test_loss_on_some_outputs_only(cell, used):
    """Outputs the loss never reaches get no gradient from autograd (None): they count as
    zeros."""
    module, reference = make_pair(cell, 2, True, True, batch_first=True, dtype=torch.float64)
    x = torch.randn(B, T, D, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    grads = []
    for m in (reference, module):
        xs = x.clone().requires_grad_()
        y, state = m(xs)
        h = state[0] if isinstance(state, tuple) else state
        picked = {"y": y, "h_n": h, "c_n": state[-1] if isinstance(state, tuple) else h}[used]
        grads.append(torch.autograd.grad((picked ** 2).sum(), [xs, *m.parameters()]))
    for want, got in zip(*grads):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
