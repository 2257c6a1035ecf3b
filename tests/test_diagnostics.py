"""rnnfast.diagnostics and rnnfast.experiments: gradient flow, spectral numbers, plots, the
experiments in quick mode and the ``rnnfast experiment`` command."""

import numpy as np
import pytest

import rnnfast
from rnnfast import cli, diagnostics, experiments
from rnnfast.tasks import adding_problem, delayed_recall
from support import CELLS, make, rel_err


def _pair(cell, D, H, L, seed=1):
    fast = make(cell, D, H, L, dtype=np.float64, backend="cpp", seed=seed)
    ref = make(cell, D, H, L, dtype=np.float64, backend="numpy", seed=seed)
    for name, p in fast.params.items():
        ref.params[name][...] = p
    return fast, ref


@pytest.mark.parametrize("cell", CELLS)
def test_gradient_flow_cpp_matches_numpy(cell):
    """A Model with a loss, and the bare recurrent model with a dy: same norms on both
    backends, and the norms are those of backward's return_grad_norms."""
    rng = np.random.default_rng(0)
    B, T, D, H, L = 4, 9, 3, 6, 2
    fast, ref = _pair(cell, D, H, L)
    x = rng.standard_normal((B, T, D))
    lengths = np.array([9, 5, 1, 7])
    targets = rng.standard_normal((B, 2))
    flows = []
    for rec in (fast, ref):
        model = rnnfast.Model(rec, rnnfast.Linear(H, 2, dtype=np.float64, seed=3))
        flows.append(diagnostics.gradient_flow(model, x, targets, lengths=lengths))
    assert flows[0].grad_norms.shape == (L, T)
    assert rel_err(flows[0].grad_norms, flows[1].grad_norms) < 1e-10
    assert flows[0].loss == pytest.approx(flows[1].loss, rel=1e-12)
    assert (flows[0].grad_norms[:, -1] > 0).all()

    dy = rng.standard_normal((B, T, H))
    bare = [diagnostics.gradient_flow(rec, x, dy=dy) for rec in (fast, ref)]
    assert rel_err(bare[0].grad_norms, bare[1].grad_norms) < 1e-10
    _, _, cache = fast.forward(x)
    *_, norms = fast.backward(cache, dy, return_grad_norms=True)
    np.testing.assert_array_equal(bare[0]["grad_norms"], norms)
    assert bare[0].loss is None


def test_gradient_flow_float32_and_no_parameter_change():
    model = rnnfast.Model(rnnfast.GRU(2, 8, seed=0), rnnfast.Linear(8, 1, seed=1))
    before = {k: v.copy() for k, v in model.params.items()}
    x, y = adding_problem(5, 12, seed=0)
    flow = diagnostics.gradient_flow(model, x, y)
    assert flow.grad_norms.dtype == np.float64 and np.isfinite(flow.grad_norms).all()
    for k, v in model.params.items():
        np.testing.assert_array_equal(v, before[k])
    assert "GRU" in flow.summary() and flow.seconds > 0


@pytest.mark.parametrize("pool", ["last", "mean"])
def test_gradient_flow_of_a_pooled_model_with_lengths(pool):
    """Token ids -> Embedding -> BiLSTM -> pool -> Linear: per-sequence targets, and lengths
    that reach the recurrent stack and the pool (not the per-sequence loss). The norms are
    backward's, each direction a row, zero past the longest sequence."""
    model = rnnfast.Model(rnnfast.LSTM(8, 6, bidirectional=True, dtype=np.float64, seed=0),
                          rnnfast.Linear(12, 3, dtype=np.float64, seed=1),
                          embedding=rnnfast.Embedding(20, 8, dtype=np.float64, seed=2),
                          pool=pool)
    ids = np.random.default_rng(0).integers(0, 20, (4, 7))
    targets, lengths = np.array([0, 1, 2, 0]), np.array([5, 3, 5, 1])
    flow = diagnostics.gradient_flow(model, ids, targets, loss="cross_entropy",
                                     lengths=lengths)
    assert flow.grad_norms.shape == (2, 7)
    assert (flow.grad_norms[:, 5:] == 0).all() and (flow.grad_norms[:, :5] > 0).all()
    value, _ = rnnfast.train.sequence_loss("cross_entropy", model(ids, lengths=lengths)[0],
                                           targets)
    assert flow.loss == pytest.approx(value, rel=1e-12)
    with pytest.raises(ValueError, match="pools over time"):
        diagnostics.gradient_flow(model, ids, targets, loss="cross_entropy_last",
                                  lengths=lengths)


def test_gradient_flow_needs_targets_or_dy():
    rec = rnnfast.RNN(2, 3, seed=0)
    x = np.zeros((1, 4, 2), np.float32)
    with pytest.raises(ValueError, match="exactly one"):
        diagnostics.gradient_flow(rec, x)
    with pytest.raises(TypeError, match="RNN, LSTM, GRU or Model"):
        diagnostics.gradient_flow(object(), x, dy=x)


@pytest.mark.parametrize("cell", CELLS)
def test_spectral_numbers_match_numpy_linalg(cell):
    model = make(cell, 3, 7, 2, seed=4)
    report = diagnostics.weight_hh_report(model)
    H = 7
    for k, layer in enumerate(report):
        w = model.params[f"weight_hh_l{k}"]
        assert layer["whole"]["spectral_norm"] == pytest.approx(np.linalg.norm(w, 2), rel=1e-12)
        if model.gates == 1:
            assert layer["whole"]["spectral_radius"] == pytest.approx(
                np.abs(np.linalg.eigvals(w)).max(), rel=1e-12)
            c = layer["condition"]
            assert c["gamma"] == 1.0 and c["bound"] == 1.0
            assert c["holds"] == (np.linalg.norm(w, 2) < 1)
        else:
            assert layer["whole"]["spectral_radius"] is None and layer["condition"] is None
            names = {4: "ifgo", 3: "rzn"}[model.gates]
            assert list(layer["gates"]) == list(names)
            for g, name in enumerate(names):
                block = w[g * H:(g + 1) * H]
                got = layer["gates"][name]
                assert got["spectral_norm"] == pytest.approx(np.linalg.norm(block, 2),
                                                             rel=1e-12)
                assert got["spectral_radius"] == pytest.approx(
                    np.abs(np.linalg.eigvals(block)).max(), rel=1e-12)
                gamma = 1.0 if name in "gn" else 0.25
                assert got["condition"]["bound"] == 1 / gamma


def test_vanishing_condition_bounds():
    assert diagnostics.vanishing_condition(0.99, "tanh")["holds"]
    assert not diagnostics.vanishing_condition(1.0, "relu")["holds"]
    assert diagnostics.vanishing_condition(3.9, "sigmoid")["holds"]
    s = diagnostics.spectral(np.array([[0.0, 2.0], [0.0, 0.0]]))
    assert s["spectral_norm"] == pytest.approx(2.0) and s["spectral_radius"] == 0.0
    assert diagnostics.spectral(np.ones((3, 2)))["spectral_radius"] is None


def test_decaying_vs_not_at_the_diagnostics_level():
    """A tanh RNN with sigma_max(W_hh) = 0.5 meets Pascanu's condition and its gradient norm
    falls at least by half per step back; an IRNN on positive inputs keeps it constant."""
    rng = np.random.default_rng(1)
    B, T, D, H = 4, 30, 2, 16
    dy = np.zeros((B, T, H))
    dy[:, -1] = rng.standard_normal((B, H))

    tanh = make("rnn_tanh", D, H, seed=2)
    w = tanh.params["weight_hh_l0"]
    w *= 0.5 / np.linalg.norm(w, 2)
    flow = diagnostics.gradient_flow(tanh, rng.standard_normal((B, T, D)), dy=dy)
    assert flow.weight_hh[0]["condition"]["holds"]
    n = flow.grad_norms[0]
    assert (n[:-1] <= 0.5 * n[1:] * (1 + 1e-12)).all()
    assert flow.decay_per_step() <= 0.5

    irnn = rnnfast.init.identity(make("rnn_relu", D, H, seed=3))
    irnn.params["weight_ih_l0"][...] = np.abs(irnn.params["weight_ih_l0"])
    flow = diagnostics.gradient_flow(irnn, rng.uniform(0.1, 1.0, (B, T, D)), dy=dy)
    assert not flow.weight_hh[0]["condition"]["holds"]  # sigma_max = 1: no guarantee
    np.testing.assert_allclose(flow.grad_norms[0], flow.grad_norms[0, -1], rtol=1e-12)
    assert flow.decay_per_step() == pytest.approx(1.0)


def test_plots_write_pngs(tmp_path):
    pytest.importorskip("matplotlib")
    model = rnnfast.Model(rnnfast.RNN(2, 4, seed=0), rnnfast.Linear(4, 1, seed=1))
    x, y = adding_problem(3, 10, seed=0)
    flow = diagnostics.gradient_flow(model, x, y, lengths=np.array([10, 4, 2]))
    path = diagnostics.plot_gradient_flow({"rnn": flow, "again": flow}, tmp_path / "f.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    hist = [{"epoch": 1, "loss": 1.0}, {"epoch": 2, "loss": float("nan")},
            {"epoch": 3, "loss": 0.5}]
    p2 = diagnostics.plot_history({"a": hist, "b": [2.0, 1.0, float("inf")]},
                                  tmp_path / "h.png", baseline=0.167, log=True)
    assert p2.read_bytes()[:4] == b"\x89PNG"


def test_plot_without_matplotlib_says_how_to_install(monkeypatch, tmp_path):
    import builtins

    real = builtins.__import__

    def fake(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("no matplotlib")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(ImportError, match=r'pip install "rnnfast\[plot\]"'):
        diagnostics.plot_history({"a": [1.0]}, tmp_path / "h.png")


def test_delayed_recall():
    x, y = delayed_recall(3, 12, 4, seed=0)
    assert x.shape == y.shape == (3, 12, 1) and set(np.unique(x)) == {-1.0, 1.0}
    np.testing.assert_array_equal(y[:, 4:], x[:, :8])
    assert not y[:, :4].any()


@pytest.mark.parametrize("name", ["vanishing", "exploding", "truncation"])
def test_experiments_run_quick(name, tmp_path):
    out = experiments.EXPERIMENTS[name](quick=True, out=None)
    assert out["rows"] and out["table"].startswith("| ") and out["figures"] == []
    assert out["table"].count("\n") == len(out["rows"]) + 1


def test_exploding_quick_counts_skipped_steps():
    """Big enough to blow up: without clipping the updates go non-finite and are skipped;
    clipping by global norm keeps every update."""
    out = experiments.exploding(quick=True, out=None)
    rows = {r["variant"]: r for r in out["rows"]}
    assert rows["no clipping"]["skipped"] > 0
    assert rows["clip global norm 1"]["skipped"] == 0


def test_cli_experiment_quick(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    assert cli.main(["experiment", "truncation", "--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| k |" in out and "rnnfast experiment truncation" in out
    assert (tmp_path / "truncation.png").exists()
