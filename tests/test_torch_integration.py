"""rnnfast.torch's modules inside the rest of PyTorch.

Optimisers and gradient clipping, state_dict / torch.save / pickle / deepcopy, torch.compile,
DistributedDataParallel on gloo, the thread count it takes from torch, and the inputs it
refuses. Output and gradient parity of the modules themselves is tested elsewhere; here the
reference is the same program run with torch.nn's module, or run uncompiled, or in one process.
"""

import copy
import json
import os
import pickle
import socket
import subprocess
import sys
import textwrap
import time

import pytest

torch = pytest.importorskip("torch")

import rnnfast  # noqa: E402
import rnnfast.torch as rt  # noqa: E402

F64 = torch.float64
CLASSES = {"RNN": (torch.nn.RNN, rt.RNN), "LSTM": (torch.nn.LSTM, rt.LSTM),
           "GRU": (torch.nn.GRU, rt.GRU)}


def rel_err(got, ref):
    """max |got - ref| / max |ref|."""
    assert got.shape == ref.shape, (got.shape, ref.shape)
    scale = ref.abs().max().item()
    diff = (got - ref).abs().max().item()
    return diff / scale if scale > 0 else diff


def max_rel_err(got, ref):
    return max(rel_err(g, r) for g, r in zip(got, ref))


def grads(module):
    return [p.grad.clone() for p in module.parameters()]


def pair(name, *args, seed=0, **kw):
    """torch.nn's module and rnnfast.torch's with the same weights (float64)."""
    nn_cls, rt_cls = CLASSES[name]
    torch.manual_seed(seed)
    ref = nn_cls(*args, dtype=F64, **kw)
    fast = rt_cls(*args, dtype=F64, **kw)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


# -- 1. a training loop ----------------------------------------------------------------------

class Tagger(torch.nn.Module):
    """Embedding -> recurrent module -> Linear, one class per time step."""

    def __init__(self, cell, vocab, emb, hidden, classes, **kw):
        super().__init__()
        self.batch_first = kw.get("batch_first", False)
        directions = 2 if kw.get("bidirectional", False) else 1
        self.emb = torch.nn.Embedding(vocab, emb, dtype=F64)
        self.rnn = cell(emb, hidden, dtype=F64, **kw)
        self.head = torch.nn.Linear(directions * hidden, classes, dtype=F64)

    def forward(self, ids):  # ids (B, T)
        x = self.emb(ids if self.batch_first else ids.t())
        y, _ = self.rnn(x)
        return self.head(y if self.batch_first else y.transpose(0, 1))  # (B, T, classes)


TRAIN_CONFIGS = {
    "LSTM-2-layer-bidirectional": ("LSTM", dict(num_layers=2, bidirectional=True,
                                                batch_first=True)),
    "GRU-time-major": ("GRU", dict(num_layers=1)),
    "RNN-relu-2-layer": ("RNN", dict(num_layers=2, nonlinearity="relu", batch_first=True)),
}
MAX_NORM = 0.2


def train(cell, kw, init_state, data, steps=50):
    """The per-step losses and pre-clipping gradient norms of 50 Adam steps."""
    torch.manual_seed(1)
    model = Tagger(cell, 11, 5, 6, 4, **kw)
    model.load_state_dict(init_state)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    losses, norms = [], []
    for step in range(steps):
        ids, target = data[step % len(data)]
        opt.zero_grad()
        logits = model(ids)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 4), target.reshape(-1))
        loss.backward()
        norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_NORM).item())
        opt.step()
        losses.append(loss.item())
    return torch.tensor(losses, dtype=F64), torch.tensor(norms, dtype=F64), model


@pytest.mark.parametrize("config", TRAIN_CONFIGS)
def test_training_loop_follows_torch_nn(config):
    name, kw = TRAIN_CONFIGS[config]
    nn_cls, rt_cls = CLASSES[name]
    gen = torch.Generator().manual_seed(123)
    data = [(torch.randint(0, 11, (4, 7), generator=gen),
             torch.randint(0, 4, (4, 7), generator=gen)) for _ in range(3)]
    torch.manual_seed(0)
    init_state = Tagger(nn_cls, 11, 5, 6, 4, **kw).state_dict()

    ref_loss, ref_norm, ref_model = train(nn_cls, kw, init_state, data)
    loss, norm, model = train(rt_cls, kw, init_state, data)

    assert isinstance(model.rnn, rt_cls) and not isinstance(ref_model.rnn, rt_cls)
    assert (ref_norm > MAX_NORM).sum() >= 10, "clipping should be active on many steps"
    assert ref_loss[-5:].mean() < 0.8 * ref_loss[:5].mean(), "the loop should learn"
    assert rel_err(loss, ref_loss) <= 1e-8, (loss, ref_loss)
    assert rel_err(norm, ref_norm) <= 1e-8, (norm, ref_norm)
    assert max_rel_err(list(model.parameters()), list(ref_model.parameters())) <= 1e-8


# -- 2. state_dict, torch.save, pickle, deepcopy ---------------------------------------------

@pytest.mark.parametrize("name", CLASSES)
def test_state_dict_round_trips(name):
    kw = dict(num_layers=2, bidirectional=True, batch_first=True)
    nn_cls, rt_cls = CLASSES[name]
    x = torch.randn(3, 5, 4, dtype=F64)

    torch.manual_seed(0)
    src = nn_cls(4, 6, dtype=F64, **kw)
    torch.manual_seed(1)  # a different draw, so that loading has something to change
    fast = rt_cls(4, 6, dtype=F64, **kw)
    assert rel_err(fast(x)[0], src(x)[0]) > 1e-3
    fast.load_state_dict(src.state_dict())
    assert rel_err(fast(x)[0], src(x)[0]) <= 1e-12

    torch.manual_seed(2)
    fast2 = rt_cls(4, 6, dtype=F64, **kw)
    back = nn_cls(4, 6, dtype=F64, **kw)
    assert rel_err(back(x)[0], fast2(x)[0]) > 1e-3
    back.load_state_dict(fast2.state_dict())
    assert list(back.state_dict()) == list(fast2.state_dict())
    for k, v in fast2.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    assert rel_err(back(x)[0], fast2(x)[0]) <= 1e-12


class Classifier(torch.nn.Module):
    """Embedding -> rnnfast.torch.LSTM -> Linear on the last step: a whole model to save."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(9, 4, dtype=F64)
        self.rnn = rt.LSTM(4, 5, num_layers=2, batch_first=True, dtype=F64)
        self.head = torch.nn.Linear(5, 3, dtype=F64)

    def forward(self, ids):
        y, _ = self.rnn(self.emb(ids))
        return self.head(y[:, -1])


def _torch_save_load(model, tmp_path):
    path = tmp_path / "model.pt"
    torch.save(model, path)
    return torch.load(path, weights_only=False)


@pytest.mark.parametrize("how", ["torch.save", "pickle", "deepcopy"])
def test_whole_model_copies(how, tmp_path):
    torch.manual_seed(0)
    model = Classifier()
    ids = torch.randint(0, 9, (3, 6))
    out = model(ids)  # fills the module's cache of rnnfast models before copying
    out.pow(2).sum().backward()
    ref_grads = grads(model)

    copied = {"torch.save": lambda m: _torch_save_load(m, tmp_path),
              "pickle": lambda m: pickle.loads(pickle.dumps(m)),
              "deepcopy": copy.deepcopy}[how](model)

    assert type(copied.rnn) is rt.LSTM and isinstance(copied.rnn, torch.nn.LSTM)
    copied.zero_grad()
    out2 = copied(ids)
    assert torch.equal(out2, out)
    out2.pow(2).sum().backward()
    for g, r in zip(grads(copied), ref_grads):
        assert torch.equal(g, r)

    # The copy computes with its own weights, not with views left over from the original.
    with torch.no_grad():
        copied.rnn.weight_hh_l1.mul_(-1.0)
    assert rel_err(copied(ids), out) > 1e-3
    assert torch.equal(model(ids), out)


# -- 3. torch.compile ------------------------------------------------------------------------

class Scorer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(10, 4, dtype=F64)
        self.rnn = rt.LSTM(4, 5, batch_first=True, dtype=F64)
        self.out = torch.nn.Linear(5, 3, dtype=F64)

    def forward(self, ids):
        y, _ = self.rnn(self.emb(ids))
        return self.out(torch.tanh(y))


def _outputs_and_grads(fn, model, ids):
    model.zero_grad()
    out = fn(ids)
    out.pow(2).sum().backward()
    return out.detach(), grads(model)


# Importing inductor warns about torch's own use of torch.jit.script_method.
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("backend", ["eager", "aot_eager", "inductor"])
def test_compile_matches_uncompiled(backend):
    # inductor finishes in about a second here: dynamo leaves the frame that calls a
    # torch.nn.LSTM (subclass included) uncompiled, so there is nothing for it to build.
    torch.manual_seed(0)
    model = Scorer()
    ids = torch.randint(0, 10, (3, 6))
    ref_out, ref_grads = _outputs_and_grads(model, model, ids)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=backend)
    for _ in range(2):  # the second call runs what the first one compiled
        out, got = _outputs_and_grads(compiled, model, ids)
        assert rel_err(out, ref_out) <= 1e-12
        assert max_rel_err(got, ref_grads) <= 1e-12
    torch._dynamo.reset()


# Dynamo reads .grad of every non-leaf tensor that enters a resumed frame, which warns
# (and, as an error under this suite's filterwarnings, aborts tracing) after any graph break.
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf")
@pytest.mark.parametrize("allow_rnn", [False, True], ids=["default", "allow_rnn"])
@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_compile_breaks_the_graph_only_at_the_module(allow_rnn, backend):
    # As with torch.nn's recurrent modules (these are subclasses of them), dynamo by default
    # leaves the whole frame that calls the module uncompiled; with allow_rnn the module's
    # forward is a graph break and the embedding before it and the tanh and Linear after it
    # reach the backend. inductor is left out: with allow_rnn it compiles real kernels, about
    # 30 s from a cold cache on two cores.
    from torch._dynamo.testing import CompileCounterWithBackend

    torch.manual_seed(0)
    model = Scorer()
    ids = torch.randint(0, 10, (3, 6))
    ref_out, ref_grads = _outputs_and_grads(model, model, ids)
    torch._dynamo.reset()
    counter = CompileCounterWithBackend(backend)
    with torch._dynamo.config.patch(allow_rnn=allow_rnn):
        compiled = torch.compile(model, backend=counter)
        out, got = _outputs_and_grads(compiled, model, ids)
    torch._dynamo.reset()
    assert rel_err(out, ref_out) <= 1e-12
    assert max_rel_err(got, ref_grads) <= 1e-12
    if allow_rnn:
        assert counter.frame_count == 2, "one graph before the module and one after it"
        assert counter.op_count >= 3, "embedding, tanh and linear"
    else:
        assert counter.frame_count == 0, "torch.nn's rule for frames that call an RNN"


# -- 4. DistributedDataParallel --------------------------------------------------------------

class Regressor(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = rt.LSTM(3, 5, num_layers=2, bidirectional=True, batch_first=True, dtype=F64)
        self.head = torch.nn.Linear(10, 1, dtype=F64)

    def forward(self, x):
        y, _ = self.rnn(x)
        return self.head(y).squeeze(-1)


DDP_WORKER = textwrap.dedent("""
    import datetime, importlib.util, sys
    import torch, torch.distributed as dist
    import rnnfast

    rank, world, workdir, test_file = sys.argv[1:]
    rank, world = int(rank), int(world)
    rnnfast.set_num_threads(1)
    torch.set_num_threads(1)
    spec = importlib.util.spec_from_file_location("integration_models", test_file)
    models = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(models)

    setup = torch.load(f"{workdir}/setup.pt", weights_only=False)
    # A file in the test's own folder to meet at: no port to choose that another process
    # could take first.
    dist.init_process_group("gloo", init_method=f"file://{workdir}/rendezvous", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=60))
    model = models.Regressor()
    model.load_state_dict(setup["state"])
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    half = setup["x"].shape[0] // world
    x = setup["x"][rank * half:(rank + 1) * half]
    target = setup["target"][rank * half:(rank + 1) * half]

    def step():
        model.zero_grad()
        torch.nn.functional.mse_loss(ddp(x), target).backward()
        return [p.grad.clone() for p in model.parameters()]

    with ddp.no_sync():
        local = step()
    synced = step()
    torch.save({"local": local, "synced": synced,
                "threads": (rnnfast.get_num_threads(), torch.get_num_threads())},
               f"{workdir}/rank{rank}.pt")
    dist.destroy_process_group()
    # Gloo's threads can still be joinable when the interpreter tears down its C++ statics,
    # which then aborts with "terminate called without an active exception" (one run in a
    # few, pytorch/pytorch#28126 and its followers): the results are saved, so leave here.
    sys.stdout.flush()
    import os
    os._exit(0)
""")


def _child_env():
    env = dict(os.environ)
    # gloo would otherwise pick the address the host name resolves to.
    if any(name == "lo" for _, name in socket.if_nameindex()):
        env["GLOO_SOCKET_IFNAME"] = "lo"
    return env


def test_ddp_gradients_equal_one_process_gradients(tmp_path):
    torch.manual_seed(0)
    model = Regressor()
    x = torch.randn(6, 5, 3, dtype=F64)
    target = torch.randn(6, 5, dtype=F64)
    torch.save({"state": model.state_dict(), "x": x, "target": target}, tmp_path / "setup.pt")
    torch.nn.functional.mse_loss(model(x), target).backward()
    ref = grads(model)

    script = tmp_path / "worker.py"
    script.write_text(DDP_WORKER)
    procs = [subprocess.Popen([sys.executable, str(script), str(rank), "2", str(tmp_path),
                               __file__],
                              cwd=tmp_path, env=_child_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
             for rank in range(2)]
    deadline = time.monotonic() + 120
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=max(1.0, deadline - time.monotonic()))[0])
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        for p in procs:
            p.communicate()
        pytest.fail("the DDP workers did not finish within 120 s")
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log

    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for r, res in enumerate(results):
        assert res["threads"] == (1, 1)
        assert max_rel_err(res["synced"], ref) <= 1e-10, f"rank {r}"
        # Each rank's own half gives another gradient: the allreduce is what made it equal.
        assert max_rel_err(res["local"], ref) > 1e-3, f"rank {r}"
    for a, b in zip(results[0]["synced"], results[1]["synced"]):
        assert torch.equal(a, b)


# -- 5. threads ------------------------------------------------------------------------------

THREADS_SCRIPT = textwrap.dedent("""
    import json
    import torch
    import rnnfast, rnnfast.torch
    from rnnfast import _platform

    rnn = rnnfast.torch.GRU(3, 4)
    x = torch.randn(5, 2, 3)
    seen = [_platform.threads_chosen()]
    for step in ("torch 2", "torch 1", "torch 2", "rnnfast 1", "torch 2"):
        who, n = step.split()
        if who == "torch":
            torch.set_num_threads(int(n))
            rnn(x)
        else:
            rnnfast.set_num_threads(int(n))
        seen.append(rnnfast.get_num_threads())
    seen.append(_platform.threads_chosen())
    print(json.dumps(seen))
""")


@pytest.mark.parametrize("omp, want", [
    (None, [False, 2, 1, 2, 1, 1, True]),
    ("1", [True, 1, 1, 1, 1, 1, True]),  # OMP_NUM_THREADS chose the count at import
])
def test_threads_follow_torch_until_chosen(omp, want):
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    if omp is not None:
        env["OMP_NUM_THREADS"] = omp
    res = subprocess.run([sys.executable, "-c", THREADS_SCRIPT], env=env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout.strip().splitlines()[-1]) == want


# -- 6. what is refused, and torch's modes ---------------------------------------------------

@pytest.mark.parametrize("name", CLASSES)
@pytest.mark.parametrize("where", ["input", "module and input"])
def test_other_devices_are_refused(name, where):
    module = CLASSES[name][1](3, 4)
    if where == "module and input":
        module = module.to("meta")
    with pytest.raises(RuntimeError) as info:
        module(torch.randn(5, 2, 3, device="meta"))
    msg = str(info.value)
    assert "meta" in msg and f"torch.nn.{name}" in msg, msg


@pytest.mark.parametrize("name", CLASSES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_refused(name, dtype):
    module = CLASSES[name][1](3, 4, dtype=dtype)
    with pytest.raises(RuntimeError) as info:
        module(torch.randn(5, 2, 3, dtype=dtype))
    msg = str(info.value)
    assert "float32" in msg and "float64" in msg and str(dtype) in msg, msg


@pytest.mark.parametrize("name", CLASSES)
def test_double_backward_is_refused(name):
    _, fast = pair(name, 3, 4)
    x = torch.randn(5, 2, 3, dtype=F64, requires_grad=True)
    y, _ = fast(x)
    (g,) = torch.autograd.grad(y.pow(2).sum(), x, retain_graph=True)
    assert g.abs().max() > 0
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(y.pow(2).sum(), x, create_graph=True)


def _zeros(*shape):
    return torch.zeros(*shape, dtype=F64)


# For an input (T=5, B=2, D=3) and hidden size 4: a mistake and how torch.nn's message starts.
HX_CASES = {
    "RNN h": ("RNN", lambda: _zeros(1, 3, 4), "Expected hidden size"),
    "GRU h": ("GRU", lambda: _zeros(1, 2, 5), "Expected hidden size"),
    "LSTM h": ("LSTM", lambda: (_zeros(2, 2, 4), _zeros(1, 2, 4)), "Expected hidden[0] size"),
    "LSTM c": ("LSTM", lambda: (_zeros(1, 2, 4), _zeros(1, 3, 4)), "Expected hidden[1] size"),
}


@pytest.mark.parametrize("case", HX_CASES)
def test_wrong_state_shape_gives_torch_error(case):
    name, make_hx, start = HX_CASES[case]
    ref, fast = pair(name, 3, 4)
    x = torch.randn(5, 2, 3, dtype=F64)
    with pytest.raises(RuntimeError) as want:
        ref(x, make_hx())
    with pytest.raises(RuntimeError) as got:
        fast(x, make_hx())
    assert str(want.value).startswith(start)
    assert str(got.value) == str(want.value)


@pytest.mark.parametrize("name, what", [
    (name, what) for what in ("output", "input", "weight", "h0", "c0") for name in CLASSES
    if what != "c0" or name == "LSTM"])
def test_inplace_change_before_backward_is_refused(name, what):
    # Backward reads these after forward; changed in place they would give a wrong gradient
    # silently, so autograd's version check must refuse (torch.nn refuses for the state too).
    _, fast = pair(name, 3, 4, batch_first=True)
    x = torch.randn(2, 5, 3, dtype=F64, requires_grad=True)
    h0 = torch.randn(1, 2, 4, dtype=F64)
    c0 = torch.randn(1, 2, 4, dtype=F64)
    inp = x * 1.0  # not a leaf, so that it may be changed in place
    y, _ = fast(inp, (h0, c0) if name == "LSTM" else h0)
    loss = y.pow(2).sum()
    target = {"output": y, "input": inp, "weight": fast.weight_hh_l0, "h0": h0, "c0": c0}[what]
    with torch.no_grad():
        target.mul_(0.5)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


@pytest.mark.parametrize("name", CLASSES)
@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_forward_without_grad(name, mode):
    _, fast = pair(name, 3, 4, num_layers=2)
    x = torch.randn(5, 2, 3, dtype=F64, requires_grad=True)
    y_ref, h_ref = fast(x)
    assert y_ref.grad_fn is not None
    ctx = torch.no_grad() if mode == "no_grad" else torch.inference_mode()
    with ctx:
        y, h = fast(x)
    for got, want in ((y, y_ref), *zip(h if name == "LSTM" else (h,),
                                       h_ref if name == "LSTM" else (h_ref,))):
        assert not got.requires_grad and got.grad_fn is None
        assert torch.equal(got, want.detach())


@pytest.mark.parametrize("name", CLASSES)
def test_train_and_eval_switch_dropout(name):
    ref, fast = pair(name, 3, 6, num_layers=2, dropout=0.5)
    x = torch.randn(7, 4, 3, dtype=F64)
    assert fast.training
    torch.manual_seed(5)
    train1 = fast(x)[0]
    torch.manual_seed(5)
    train2 = fast(x)[0]
    torch.manual_seed(6)
    train3 = fast(x)[0]

    fast.eval()
    ref.eval()
    evaluated = fast(x)[0]
    assert rel_err(evaluated, ref(x)[0]) <= 1e-12
    assert torch.equal(fast(x)[0], evaluated)

    assert torch.equal(train1, train2)
    assert rel_err(train1, evaluated) > 1e-2
    assert rel_err(train3, train1) > 1e-2
    fast.train()
    torch.manual_seed(5)
    assert torch.equal(fast(x)[0], train1)


# -- 7. the rest of torch's machinery -------------------------------------------------------

def _pair(cls, torch_cls, *args, **kw):
    torch.manual_seed(0)
    ref = torch_cls(*args, dtype=F64, **kw)
    fast = cls(*args, dtype=F64, **kw)
    fast.load_state_dict(ref.state_dict())
    return fast, ref


def test_the_cache_is_freed_by_backward_unless_retained():
    fast, ref = _pair(rt.LSTM, torch.nn.LSTM, 3, 4, num_layers=2, batch_first=True)
    x = torch.randn(2, 5, 3, dtype=F64, requires_grad=True)
    y, _ = fast(x)
    y.sum().backward(retain_graph=True)
    first = x.grad.clone()
    y.sum().backward()  # the retained graph still holds what backward needs
    torch.testing.assert_close(x.grad, 2 * first, rtol=1e-12, atol=0)
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        y.sum().backward()


def test_dropout_changed_after_the_first_call_is_followed():
    fast, ref = _pair(rt.GRU, torch.nn.GRU, 3, 6, num_layers=2, batch_first=True, dropout=0.5)
    x = torch.randn(2, 5, 3, dtype=F64)
    torch.manual_seed(1)
    dropped, _ = fast(x)
    fast.dropout = ref.dropout = 0.0
    torch.testing.assert_close(fast(x)[0], ref(x)[0], rtol=1e-12, atol=1e-14)
    assert (dropped - ref(x)[0]).abs().max() > 1e-3
    fast.dropout = 0.5
    torch.manual_seed(1)
    torch.testing.assert_close(fast(x)[0], dropped, rtol=0, atol=0)


def test_a_parametrised_weight_is_taken_as_torch_takes_it():
    fast, ref = _pair(rt.GRU, torch.nn.GRU, 40, 4, batch_first=True)
    for m in (fast, ref):
        torch.manual_seed(2)  # registering draws from the generator: the same draws for both
        torch.nn.utils.parametrizations.orthogonal(m, "weight_ih_l0")
    x = torch.randn(2, 5, 40, dtype=F64)
    got, want = fast(x)[0], ref(x)[0]
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    gf = torch.autograd.grad(got.sum(), list(fast.parameters()))
    gr = torch.autograd.grad(want.sum(), list(ref.parameters()))
    for a, b in zip(gf, gr):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_autocast_input_runs_in_the_module_dtype():
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 3)
    fast = rt.LSTM(3, 4, batch_first=True)
    x = torch.randn(2, 5, 3, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, (h, c) = fast(lin(x))
    assert y.dtype == torch.float32 and y.shape == (2, 5, 4)
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


# torch's own warnings about tracing: its deprecation, and torch.nn's Python checks that the
# tracer cannot record (it warns on every such branch).
@pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_jit_trace_records_torch_nn_and_jit_script_is_refused():
    fast, ref = _pair(rt.LSTM, torch.nn.LSTM, 3, 4, batch_first=True)
    fast.eval()
    ref.eval()
    with torch.no_grad():
        traced = torch.jit.trace(fast, (torch.randn(2, 5, 3, dtype=F64),))
    other = torch.randn(2, 5, 3, dtype=F64)
    torch.testing.assert_close(traced(other)[0], ref(other)[0], rtol=1e-12, atol=1e-14)
    with pytest.raises(RuntimeError, match="cannot be scripted"):
        torch.jit.script(fast)
