"""Linear read-out, losses, clipping and optimisers: gradients against finite differences,
and against PyTorch where it is installed (those tests are skipped without it)."""

import numpy as np
import pytest

import rnnfast
from rnnfast import clip, losses, optim
from support import numeric_grad, rel_err

try:
    import torch
except ImportError:  # torch is an optional peer
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")


# -- Linear -----------------------------------------------------------------------------------

@pytest.mark.parametrize("bias", [True, False])
def test_linear_gradients(bias):
    rng = np.random.default_rng(0)
    lin = rnnfast.Linear(4, 3, bias=bias, dtype=np.float64, seed=1)
    x = rng.standard_normal((2, 5, 4))
    R = rng.standard_normal((2, 5, 3))
    y, cache = lin.forward(x)
    np.testing.assert_allclose(y, x @ lin.params["weight"].T + (lin.params["bias"] if bias else 0))
    dx, grads = lin.backward(cache, R)
    assert grads.keys() == lin.params.keys()

    def f():
        return float((lin(x) * R).sum())
    assert rel_err(dx, numeric_grad(f, x)) < 1e-7
    for name, p in lin.params.items():
        assert rel_err(grads[name], numeric_grad(f, p)) < 1e-7, name


def test_linear_bad_input():
    lin = rnnfast.Linear(4, 3)
    with pytest.raises(ValueError, match="in_features = 4"):
        lin(np.zeros((2, 5, 3), np.float32))
    with pytest.raises(TypeError, match="x must have a real floating dtype"):
        lin(np.zeros((2, 4), np.int64))
    _, cache = lin.forward(np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match=r"dy must have shape \(\.\.\., out_features\) = \(2, 3\)"):
        lin.backward(cache, np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="this Linear's forward"):
        rnnfast.Linear(4, 3).backward(cache, np.zeros((2, 3), np.float32))


# -- losses -----------------------------------------------------------------------------------

@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cross_entropy_gradient_and_masks(reduction):
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((3, 4, 5))
    targets = rng.integers(0, 5, size=(3, 4))
    targets[0, 1] = -100
    lengths = np.array([4, 2, 3])
    loss, d = losses.cross_entropy(logits, targets, reduction=reduction, lengths=lengths)

    def f():
        return losses.cross_entropy(logits, targets, reduction=reduction, lengths=lengths)[0]
    assert rel_err(d, numeric_grad(f, logits)) < 1e-7
    counted = (targets != -100) & (np.arange(4)[None] < lengths[:, None])
    assert not d[~counted].any()
    # by hand: -log softmax at the target, over the counted steps
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    want = -np.take_along_axis(logp, np.where(counted, targets, 0)[..., None], -1)[..., 0][counted]
    assert loss == pytest.approx(want.mean() if reduction == "mean" else want.sum(), rel=1e-12)


def test_cross_entropy_is_stable_and_checks_targets():
    loss, d = losses.cross_entropy(np.array([[1000.0, -1000.0]]), np.array([0]))
    assert loss == 0.0 and np.isfinite(d).all()
    with pytest.raises(ValueError, match=r"targets must lie in \[0, C\) = \[0, 2\).*got 2"):
        losses.cross_entropy(np.zeros((1, 2)), np.array([2]))
    with pytest.raises(TypeError, match="targets must hold integer"):
        losses.cross_entropy(np.zeros((1, 2)), np.array([0.0]))
    loss, d = losses.cross_entropy(np.zeros((1, 2)), np.array([-100]))
    assert loss == 0.0 and not d.any()


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_mse_gradient_with_lengths(reduction):
    rng = np.random.default_rng(2)
    pred, target = rng.standard_normal((3, 4, 2)), rng.standard_normal((3, 4, 2))
    lengths = [4, 1, 0]
    loss, d = losses.mse(pred, target, reduction=reduction, lengths=lengths)

    def f():
        return losses.mse(pred, target, reduction=reduction, lengths=lengths)[0]
    assert rel_err(d, numeric_grad(f, pred)) < 1e-7
    sq = ((pred - target) ** 2)[[0, 0, 0, 0, 1], [0, 1, 2, 3, 0]]
    assert loss == pytest.approx(sq.mean() if reduction == "mean" else sq.sum(), rel=1e-12)


def test_last_step_and_its_backward():
    y = np.arange(2 * 3 * 2, dtype=np.float64).reshape(2, 3, 2)
    np.testing.assert_array_equal(losses.last_step(y, [3, 1]), [y[0, 2], y[1, 0]])
    np.testing.assert_array_equal(losses.last_step(y), y[:, 2])
    dy = losses.last_step_backward(np.ones((2, 2)), [3, 1], 3)
    assert dy[0, 2].all() and dy[1, 0].all() and dy.sum() == 4
    with pytest.raises(ValueError, match="at least 1 for last_step, got 0 at index 1"):
        losses.last_step(y, [3, 0])


@needs_torch
def test_losses_match_torch():
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((3, 4, 5))
    targets = rng.integers(0, 5, size=(3, 4))
    targets[1, 2] = -100
    for reduction in ("mean", "sum"):
        z = torch.tensor(logits, requires_grad=True)
        ref = torch.nn.functional.cross_entropy(z.reshape(-1, 5), torch.tensor(targets).reshape(-1),
                                                reduction=reduction)
        ref.backward()
        loss, d = losses.cross_entropy(logits, targets, reduction=reduction)
        assert loss == pytest.approx(ref.item(), rel=1e-12)
        assert rel_err(d, z.grad.numpy()) < 1e-12
        p = torch.tensor(logits, requires_grad=True)
        t = rng.standard_normal(logits.shape)
        ref = torch.nn.functional.mse_loss(p, torch.tensor(t), reduction=reduction)
        ref.backward()
        loss, d = losses.mse(logits, t, reduction=reduction)
        assert loss == pytest.approx(ref.item(), rel=1e-12)
        assert rel_err(d, p.grad.numpy()) < 1e-12


# -- clipping ---------------------------------------------------------------------------------

def test_clip_grad_norm():
    grads = {"a": np.array([3.0, 0.0]), "b": np.array([[4.0]])}
    norm = clip.clip_grad_norm(grads, 1.0)
    assert norm == pytest.approx(5.0)
    assert clip.global_norm(grads) == pytest.approx(1.0, rel=1e-6)
    before = {k: v.copy() for k, v in grads.items()}
    clip.clip_grad_norm(grads, 10.0)  # below the threshold: unchanged
    for k in grads:
        np.testing.assert_array_equal(grads[k], before[k])
    grads["a"][0] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        clip.clip_grad_norm(grads, 1.0, error_if_nonfinite=True)
    with pytest.raises(ValueError, match="max_norm must be positive"):
        clip.clip_grad_norm(grads, 0.0)


def test_clip_grad_value():
    grads = {"a": np.array([-9.0, 0.5, 7.0])}
    clip.clip_grad_value(grads, 5)
    np.testing.assert_array_equal(grads["a"], [-5.0, 0.5, 5.0])


@needs_torch
def test_clip_grad_norm_matches_torch():
    rng = np.random.default_rng(4)
    grads = {k: rng.standard_normal(s) * 3 for k, s in (("a", (3, 4)), ("b", (5,)))}
    ts = [torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in grads.values()]
    for t, g in zip(ts, grads.values()):
        t.grad = torch.tensor(g)
    ref = torch.nn.utils.clip_grad_norm_(ts, 2.0)
    norm = clip.clip_grad_norm(grads, 2.0)
    assert norm == pytest.approx(ref.item(), rel=1e-12)
    for t, g in zip(ts, grads.values()):
        np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-12)


# -- optimisers -------------------------------------------------------------------------------

OPTIMISERS = [
    ("SGD", {"lr": 0.1}),
    ("SGD", {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.01}),
    ("SGD", {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
    ("SGD", {"lr": 0.1, "momentum": 0.5, "dampening": 0.3}),
    ("Adagrad", {"lr": 0.1, "lr_decay": 0.01, "weight_decay": 0.1}),
    ("RMSprop", {"lr": 0.01}),
    ("RMSprop", {"lr": 0.01, "momentum": 0.9, "centered": True, "weight_decay": 0.1}),
    ("Adam", {"lr": 0.01}),
    ("Adam", {"lr": 0.01, "amsgrad": True, "weight_decay": 0.1}),
    ("AdamW", {"lr": 0.01}),
    ("AdamW", {"lr": 0.01, "weight_decay": 0.1, "amsgrad": True}),
]


def _grad_sequence(shapes, steps, seed=5):
    rng = np.random.default_rng(seed)
    return [{k: rng.standard_normal(s) for k, s in shapes.items()} for _ in range(steps)]


@needs_torch
@pytest.mark.parametrize("name,kw", OPTIMISERS, ids=lambda v: str(v))
def test_optimisers_match_torch_for_20_steps(name, kw):
    shapes = {"w": (3, 4), "b": (4,)}
    rng = np.random.default_rng(6)
    params = {k: rng.standard_normal(s) for k, s in shapes.items()}
    tparams = [torch.tensor(p.copy(), requires_grad=True) for p in params.values()]
    ours = getattr(optim, name)(params, **kw)
    theirs = getattr(torch.optim, name)(tparams, **kw)
    for grads in _grad_sequence(shapes, 20):
        ours.step(grads)
        for t, g in zip(tparams, grads.values()):
            t.grad = torch.tensor(g)
        theirs.step()
    for p, t in zip(params.values(), tparams):
        assert rel_err(p, t.detach().numpy()) < 1e-12


@pytest.mark.parametrize("name,kw", OPTIMISERS, ids=lambda v: str(v))
def test_optimiser_state_dict_resumes_exactly(name, kw):
    shapes = {"w": (3, 4), "b": (4,)}
    grads = _grad_sequence(shapes, 10)
    start = {k: np.random.default_rng(7).standard_normal(s).astype(np.float32)
             for k, s in shapes.items()}
    straight = {k: v.copy() for k, v in start.items()}
    opt = getattr(optim, name)(straight, **kw)
    for g in grads:
        opt.step(g)
    resumed = {k: v.copy() for k, v in start.items()}
    first = getattr(optim, name)(resumed, **kw)
    for g in grads[:5]:
        first.step(g)
    second = getattr(optim, name)(resumed, **kw)
    second.load_state_dict(first.state_dict())
    for g in grads[5:]:
        second.step(g)
    for k in start:
        np.testing.assert_array_equal(resumed[k], straight[k])


def test_optimiser_refuses_wrong_grads():
    params = {"w": np.zeros((2, 2))}
    opt = optim.Adam(params)
    with pytest.raises(ValueError, match=r"missing \['w'\], unexpected \['v'\]"):
        opt.step({"v": np.zeros((2, 2))})
    with pytest.raises(ValueError, match=r"grads\['w'\] must have shape \(2, 2\)"):
        opt.step({"w": np.zeros(3)})
    assert opt.step_count == 0 and not params["w"].any()
    with pytest.raises(ValueError, match="lr must be >= 0"):
        optim.SGD(params, lr=-1)
    with pytest.raises(ValueError, match="state_dict is for 'SGD'"):
        opt.load_state_dict(optim.SGD(params).state_dict())


@needs_torch
@pytest.mark.parametrize("sched,kw", [("StepLR", {"step_size": 3, "gamma": 0.5}),
                                      ("ExponentialLR", {"gamma": 0.9}),
                                      ("CosineAnnealingLR", {"T_max": 10, "eta_min": 0.01})])
def test_schedules_match_torch(sched, kw):
    ours = getattr(optim, sched)(optim.SGD({"w": np.zeros(1)}, lr=0.1), **kw)
    t_opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    theirs = getattr(torch.optim.lr_scheduler, sched)(t_opt, **kw)
    for _ in range(10):
        t_opt.step()
        theirs.step()
        assert ours.step() == pytest.approx(t_opt.param_groups[0]["lr"], rel=1e-12)


# -- initialisation ---------------------------------------------------------------------------

def test_identity_init_is_irnn():
    m = rnnfast.init.identity(rnnfast.RNN(3, 5, num_layers=2, nonlinearity="relu", seed=0),
                              scale=0.9, input_std=0.001, seed=1)
    for k in range(2):
        np.testing.assert_array_equal(m.params[f"weight_hh_l{k}"], 0.9 * np.eye(5, dtype=np.float32))
        assert not m.params[f"bias_ih_l{k}"].any() and not m.params[f"bias_hh_l{k}"].any()
        assert m.params[f"weight_ih_l{k}"].std() < 0.01
    with pytest.raises(TypeError, match="for RNN models"):
        rnnfast.init.identity(rnnfast.LSTM(3, 5))


@pytest.mark.parametrize("cls", [rnnfast.RNN, rnnfast.LSTM, rnnfast.GRU])
def test_orthogonal_init_gives_orthonormal_gate_blocks(cls):
    m = rnnfast.init.orthogonal(cls(3, 6, num_layers=2, dtype=np.float64, seed=0), gain=2.0,
                                seed=3)
    for k in range(2):
        w = m.params[f"weight_hh_l{k}"]
        for g in range(m.gates):
            block = w[g * 6:(g + 1) * 6]
            np.testing.assert_allclose(block @ block.T, 4.0 * np.eye(6), atol=1e-12)
    again = rnnfast.init.orthogonal(cls(3, 6, num_layers=2, dtype=np.float64, seed=0), gain=2.0,
                                    seed=3)
    np.testing.assert_array_equal(again.params["weight_hh_l1"], m.params["weight_hh_l1"])


def test_forget_bias_sets_the_f_slice_only():
    m = rnnfast.LSTM(3, 4, num_layers=2, seed=0)
    before = {k: v.copy() for k, v in m.params.items()}
    rnnfast.init.forget_bias(m, 1.0)
    for k in range(2):
        b_ih, b_hh = m.params[f"bias_ih_l{k}"], m.params[f"bias_hh_l{k}"]
        np.testing.assert_array_equal(b_ih[4:8] + b_hh[4:8], 1.0)
        for s in (slice(0, 4), slice(8, 16)):
            np.testing.assert_array_equal(b_ih[s], before[f"bias_ih_l{k}"][s])
    with pytest.raises(TypeError, match="for LSTM models"):
        rnnfast.init.forget_bias(rnnfast.GRU(3, 4))
    with pytest.raises(ValueError, match="bias=True"):
        rnnfast.init.forget_bias(rnnfast.LSTM(3, 4, bias=False))
