"""The classic BPTT experiments, small enough for a laptop: each prints a table, saves figures
and returns its results.

- ``vanishing``: the adding problem at several T, tanh RNN vs IRNN vs LSTM vs GRU: who beats
  the 0.167 of predicting the mean, and how the gradient flows back through time in each.
- ``exploding``: a ReLU RNN started at W_hh = I and trained by SGD with a learning rate too
  large for it, with no clipping, clipping by global norm, by value, and per step inside BPTT:
  the loss curves and how many updates were skipped as non-finite.
- ``truncation``: recall the input from exactly d steps back with truncated BPTT(k, k) for
  several k: a window must span d + 1 steps (h_{t-d} .. h_t) for the gradient to connect an
  output to the input it must recall.

Every function takes ``quick=True`` and ``out`` (the figures' directory, made if missing;
None for no figures). ``quick`` is a smoke run of seconds, for the tests: it checks that the
experiment runs end to end, on a budget too small to show its effect, and says so in its
output and its figures' titles. Run them as ``rnnfast experiment NAME``.
Figures need matplotlib (``pip install "rnnfast[plot]"``); without it the tables still come.
"""

import math
import os
import time

import numpy as np

from . import diagnostics, init, optim
from .gru import GRU
from .linear import Linear
from .lstm import LSTM
from .model import Model
from .rnn import RNN
from .tasks import ADDING_BASELINE_MSE, adding_problem, delayed_recall
from .train import evaluate, fit, train_sequence


def format_table(rows, columns):
    """Rows (dicts) as a Markdown table.

    Parameters
    ----------
    rows : list of dict
    columns : dict of str to str
        Column name -> format spec of its values (``format(value, spec)``); None shows as a
        dash.

    Returns
    -------
    str
    """
    def cell(v, spec):
        if v is None:
            return "—"
        if isinstance(v, float) and not math.isfinite(v):
            return str(v)
        return format(v, spec)

    head = "| " + " | ".join(columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(cell(r.get(c), spec) for c, spec in columns.items()) + " |"
            for r in rows]
    return "\n".join([head, rule, *body])


def _figure(fn, out, name, *args, **kwargs):
    """Draw into ``out/name`` when ``out`` is set and matplotlib is there; returns the path."""
    if out is None:
        return None
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, name)
    try:
        fn(*args, path, **kwargs)
    except ImportError as e:
        print(f"(no figure {name}: {e})")
        return None
    return path


def _smoke_note(name, budget, why):
    """What a quick run prints under its table, so that nobody takes it for the result."""
    return (f"quick: a smoke run ({budget}) that checks the experiment runs end to end; "
            f"{why}. This table is not the result: run `rnnfast experiment {name}` without "
            f"--quick for that.")


#: Appended to the figures' titles of a quick run.
_SMOKE_TITLE = " (quick smoke run)"


# -- vanishing ------------------------------------------------------------------------------

def _adding_model(cell, hidden, seed):
    """The four contenders of Le et al. (2015) / Hochreiter & Schmidhuber (1997)."""
    if cell == "tanh RNN":
        rec = RNN(2, hidden, nonlinearity="tanh", seed=seed)
    elif cell == "IRNN":
        rec = init.identity(RNN(2, hidden, nonlinearity="relu", seed=seed), scale=1.0,
                            input_std=0.001, seed=seed)
    elif cell == "LSTM":
        rec = init.forget_bias(LSTM(2, hidden, seed=seed), 1.0)
    elif cell == "GRU":
        rec = GRU(2, hidden, seed=seed)
    else:
        raise ValueError(f"unknown cell {cell!r}")
    return Model(rec, Linear(hidden, 1, seed=seed + 1))


#: Adam learning rates of ``vanishing``: the IRNN needs a small one (Le et al. 2015).
VANISHING_LR = {"tanh RNN": 1e-3, "IRNN": 1e-4, "LSTM": 5e-3, "GRU": 5e-3}


def vanishing(Ts=(50, 100, 200), cells=("tanh RNN", "IRNN", "LSTM", "GRU"), *, hidden=32,
              n_train=5000, n_test=1000, epochs=8, batch_size=50, lr=None, clip_norm=1.0,
              seed=0, quick=False, out="experiment_figures", progress=False):
    """The adding problem at several T: which cells beat predicting the mean, and why.

    Each cell trains with Adam (learning rates ``VANISHING_LR``) and clipping by global norm
    1.0 on ``n_train`` sequences for ``epochs`` epochs, all with the same budget. The
    gradient flow (``diagnostics.gradient_flow``, loss at the last step) is measured on 100
    test sequences before and after training.

    Parameters
    ----------
    Ts : sequence of int
        Sequence lengths.
    cells : sequence of str
        From "tanh RNN", "IRNN" (ReLU, W_hh = I, biases 0, input weights N(0, 0.001^2)),
        "LSTM" (forget-gate bias 1), "GRU".
    hidden, n_train, n_test, epochs, batch_size, clip_norm, seed
        The size of the runs.
    lr : dict, optional
        Cell -> learning rate, overriding ``VANISHING_LR``.
    quick : bool
        A smoke run of seconds, for tests: T = 20, 8 units, 100 sequences, 3 epochs. No cell
        learns on that budget (test MSEs near or above the baseline); its output says so.
    out : str or None
        Directory for ``vanishing_flow_init.png``, ``vanishing_flow_trained.png`` (for the
        largest T) and ``vanishing_history.png``.
    progress : bool
        tqdm bars while training.

    Returns
    -------
    dict
        ``rows`` (one dict per (T, cell): ``T``, ``cell``, ``test_mse``, ``learned``,
        ``decay_init``, ``decay_trained``, ``seconds``), ``table`` (Markdown), ``flows``
        ({T: {label: GradientFlow}}), ``histories`` ({T: {cell: history}}), ``figures``.
    """
    if quick:
        # 3 short epochs rather than 1: the history figure gets a curve, not a point
        Ts, hidden, n_train, n_test, epochs = (20,), 8, 100, 100, 3
    rates = {**VANISHING_LR, **(lr or {})}
    rows, flows, histories = [], {}, {}
    for T in Ts:
        x, y = adding_problem(n_train, T, seed=seed)
        x_test, y_test = adding_problem(n_test, T, seed=seed + 1)
        probe = (x_test[:100], y_test[:100])
        flows[T], histories[T] = {}, {}
        for cell in cells:
            start = time.perf_counter()
            model = _adding_model(cell, hidden, seed)
            before = diagnostics.gradient_flow(model, *probe)
            opt = optim.Adam(model.params, lr=rates[cell])
            hist = fit(model, opt, (x, y), epochs=epochs, batch_size=batch_size,
                       loss="mse_last", clip_norm=clip_norm, validation=(x_test, y_test),
                       seed=seed, progress=progress)
            after = diagnostics.gradient_flow(model, *probe)
            flows[T][f"{cell}, init"] = before
            flows[T][f"{cell}, trained"] = after
            histories[T][cell] = hist
            mse = hist[-1]["val_loss"]
            rows.append({"T": T, "cell": cell, "test_mse": mse,
                         "learned": "yes" if mse < ADDING_BASELINE_MSE / 10 else "no",
                         "decay_init": before.decay_per_step(),
                         "decay_trained": after.decay_per_step(),
                         "seconds": time.perf_counter() - start})
            print(f"T = {T:4d}  {cell:9s} test MSE {mse:.4f}  ({rows[-1]['seconds']:.1f} s)",
                  flush=True)
    table = format_table(rows, {"T": "d", "cell": "s", "test_mse": ".4f", "learned": "s",
                                "decay_init": ".3f", "decay_trained": ".3f",
                                "seconds": ".1f"})
    print(f"\nadding problem, baseline (predict the mean) MSE {ADDING_BASELINE_MSE:.3f}; "
          f"learned = test MSE < baseline / 10; decay = geometric-mean factor of "
          f"||dL/dh_t|| per step back (1: kept, < 1: vanishing)\n{table}")
    suffix = ""
    if quick:
        print(_smoke_note("vanishing", f"T = {Ts[0]}, {hidden} units, {n_train} sequences, "
                                       f"{epochs} epochs",
                          "no cell can learn the adding problem on this budget, so every "
                          "row says 'learned: no', with test MSEs near or above the "
                          "baseline's"))
        suffix = _SMOKE_TITLE
    T = max(Ts)
    figures = [
        _figure(diagnostics.plot_gradient_flow, out, "vanishing_flow_init.png",
                {k.split(",")[0]: v for k, v in flows[T].items() if k.endswith("init")},
                title=f"Adding problem, T = {T}: gradient flow at initialisation{suffix}"),
        _figure(diagnostics.plot_gradient_flow, out, "vanishing_flow_trained.png",
                {k.split(",")[0]: v for k, v in flows[T].items() if k.endswith("trained")},
                title=f"Adding problem, T = {T}: gradient flow after {epochs} "
                      f"epochs{suffix}"),
        _figure(diagnostics.plot_history, out, "vanishing_history.png", histories[T],
                key="val_loss", baseline=ADDING_BASELINE_MSE, log=True,
                title=f"Adding problem, T = {T}: test MSE{suffix}"),
    ]
    return {"rows": rows, "table": table, "flows": flows, "histories": histories,
            "figures": [f for f in figures if f]}


# -- exploding ------------------------------------------------------------------------------

#: The four treatments of ``exploding``: label -> (train_sequence keywords).
EXPLODING_VARIANTS = {
    "no clipping": {},
    "clip global norm 1": {"clip_norm": 1.0},
    "clip value 0.01": {"clip_value": 0.01},
    "per-step clip 0.1": {"backward_options": {"clip_per_step": 0.1}},
}


def exploding(*, T=50, hidden=32, n_train=2000, epochs=3, batch_size=50, lr=0.1, scale=1.0,
              variants=None, seed=0, quick=False, out="experiment_figures"):
    """Exploding gradients: a ReLU RNN at W_hh = scale * I trained by plain SGD, lr 0.1.

    On the adding problem with the loss at the last step. The first gradient is large enough
    that one SGD step makes the weights blow the forward pass up; without a cure every later
    update is non-finite and skipped (``train_sequence``'s ``on_nonfinite="skip"``), and the
    model never recovers.

    Parameters
    ----------
    T, hidden, n_train, epochs, batch_size, lr, scale, seed
        The task and the run: ``scale`` multiplies the identity W_hh, ``lr`` is SGD's.
    variants : dict, optional
        Label -> keyword arguments of ``train_sequence`` (default ``EXPLODING_VARIANTS``).
    quick : bool
        A smoke run of seconds: 8 units, 200 sequences, 1 epoch; its output says so.
    out : str or None
        Directory for ``exploding_loss.png`` (loss per update; skipped updates leave gaps).

    Returns
    -------
    dict
        ``rows`` (``variant``, ``updates``, ``skipped``, ``final_loss`` (mean training loss
        of the last 10 updates that were not skipped), ``test_mse``, ``max_grad_norm``),
        ``table``, ``curves`` (label -> per-update losses, NaN where skipped), ``figures``.
    """
    if quick:
        hidden, n_train, epochs = 8, 200, 1
    variants = EXPLODING_VARIANTS if variants is None else variants
    x, y = adding_problem(n_train, T, seed=seed)
    x_test, y_test = adding_problem(500, T, seed=seed + 1)
    rows, curves = [], {}
    for label, kw in variants.items():
        rec = RNN(2, hidden, nonlinearity="relu", seed=seed)
        init.identity(rec, scale=scale)
        model = Model(rec, Linear(hidden, 1, seed=seed + 1))
        opt = optim.SGD(model.params, lr=lr)
        losses, skipped, updates, norms = [], 0, 0, []
        rng = np.random.default_rng(seed)
        with np.errstate(over="ignore", invalid="ignore"):
            for _ in range(epochs):
                order = rng.permutation(n_train)
                for i in range(0, n_train, batch_size):
                    idx = order[i:i + batch_size]
                    r = train_sequence(model, opt, x[idx], y[idx], loss="mse_last", **kw)
                    losses.append(r["loss"] if r["updates"] else float("nan"))
                    skipped += r["skipped"]
                    updates += r["updates"]
                    if math.isfinite(r["grad_norm"]):
                        norms.append(r["grad_norm"])
            test = evaluate(model, (x_test, y_test), loss="mse_last")["loss"]
        finite = [v for v in losses if math.isfinite(v)]
        rows.append({"variant": label, "updates": updates, "skipped": skipped,
                     "final_loss": float(np.mean(finite[-10:])) if finite else float("nan"),
                     "test_mse": test, "max_grad_norm": max(norms) if norms else float("nan")})
        curves[f"{label} ({skipped} skipped)"] = losses
        print(f"{label:22s} skipped {skipped:4d} of {updates + skipped}  test MSE {test:.4g}",
              flush=True)
    table = format_table(rows, {"variant": "s", "updates": "d", "skipped": "d",
                                "final_loss": ".4g", "test_mse": ".4g",
                                "max_grad_norm": ".3g"})
    print(f"\nReLU RNN, W_hh = {scale:g} I, SGD lr {lr:g}, adding problem T = {T} "
          f"(baseline MSE {ADDING_BASELINE_MSE:.3f}); max_grad_norm = largest global norm "
          f"before clipping\n{table}")
    suffix = ""
    if quick:
        print(_smoke_note("exploding", f"{hidden} units, {n_train} sequences, {epochs} epoch",
                          "its few updates show which variants skip non-finite ones, but "
                          "the losses have not had the time to say how well each trains"))
        suffix = _SMOKE_TITLE
    figures = [_figure(diagnostics.plot_history, out, "exploding_loss.png", curves,
                       key="training loss", baseline=ADDING_BASELINE_MSE, log=True,
                       title=f"ReLU RNN (W_hh = {scale:g} I), SGD lr {lr:g}: loss per "
                             f"update{suffix}")]
    return {"rows": rows, "table": table, "curves": curves,
            "figures": [f for f in figures if f]}


# -- truncation -----------------------------------------------------------------------------

def truncation(ks=(5, 10, 11, 15, 20, 100), *, delay=10, T=100, hidden=16, n_train=1000,
               epochs=6, batch_size=20, lr=1e-2, seed=0, quick=False,
               out="experiment_figures"):
    """Truncated BPTT(k, k) on a dependency of exactly ``delay`` steps.

    The task (``tasks.delayed_recall``): output at every step the input sign from ``delay``
    steps back. A GRU learns it with Adam and a per-step MSE, the state carried across
    windows (train_sequence with k1 = k2 = k). The loss at step t reaches the input x_{t-d}
    only through h_{t-d}, ..., h_t: d + 1 states, so only a window of k >= d + 1 steps
    connects them (for the outputs at its end). With k <= d the gradient never links an output
    to what it must recall, and the test MSE stays at 1, the score of answering 0.

    Parameters
    ----------
    ks : sequence of int
        Window lengths; k = T is full BPTT.
    delay, T, hidden, n_train, epochs, batch_size, lr, seed
        The task and the runs.
    quick : bool
        A smoke run of seconds: ks (2, 4), delay 3, T = 20, 200 sequences, 1 epoch; too
        short for any k to learn, which its output says.
    out : str or None
        Directory for ``truncation.png`` (test MSE per epoch, one line per k).

    Returns
    -------
    dict
        ``rows`` (``k``, ``spans_delay`` (k >= d + 1), ``updates`` (one per window),
        ``test_mse`` after each epoch's
        training as ``history``, the final one as ``test_mse``, ``learned`` (< 0.1),
        ``seconds``), ``table``, ``histories``, ``figures``.
    """
    if quick:
        ks, delay, T, hidden, n_train, epochs = (2, 4), 3, 20, 8, 200, 1
    x, y = delayed_recall(n_train, T, delay, seed=seed)
    x_test, y_test = delayed_recall(200, T, delay, seed=seed + 1)
    rows, histories = [], {}
    for k in ks:
        start = time.perf_counter()
        model = Model(GRU(1, hidden, seed=seed), Linear(hidden, 1, seed=seed + 1))
        opt = optim.Adam(model.params, lr=lr)
        rng = np.random.default_rng(seed)
        hist, updates = [], 0
        for epoch in range(epochs):
            order = rng.permutation(n_train)
            for i in range(0, n_train, batch_size):
                idx = order[i:i + batch_size]
                r = train_sequence(model, opt, x[idx], y[idx], loss="mse", k1=k, k2=k,
                                   clip_norm=1.0)
                updates += r["updates"]
            pred, _ = model(x_test)
            mse = float(np.mean((pred[:, delay:] - y_test[:, delay:]) ** 2))
            hist.append({"epoch": epoch + 1, "test MSE": mse})
        label = f"k = {k}" + (" (full BPTT)" if k >= T else "")
        histories[label] = hist
        rows.append({"k": k, "spans_delay": "yes" if k >= delay + 1 else "no",
                     "updates": updates,
                     "test_mse": hist[-1]["test MSE"],
                     "learned": "yes" if hist[-1]["test MSE"] < 0.1 else "no",
                     "seconds": time.perf_counter() - start})
        print(f"k = {k:4d}  test MSE {rows[-1]['test_mse']:.4f}  "
              f"({rows[-1]['seconds']:.1f} s)", flush=True)
    table = format_table(rows, {"k": "d", "spans_delay": "s", "updates": "d", "test_mse": ".4f",
                                "learned": "s", "seconds": ".1f"})
    print(f"\nrecall the input from d = {delay} steps back, T = {T}, GRU({hidden}), BPTT(k, k);"
          f" answering 0 scores MSE 1; spans_delay = window holds h_(t-d)..h_t "
          f"(k >= d + 1)\n{table}")
    suffix = ""
    if quick:
        print(_smoke_note("truncation", f"d = {delay}, T = {T}, {hidden} units, {n_train} "
                                        f"sequences, {epochs} epoch",
                          "no k, not even one that spans the delay, can learn the recall on "
                          "this budget"))
        suffix = _SMOKE_TITLE
    figures = [_figure(diagnostics.plot_history, out, "truncation.png", histories,
                       key="test MSE", baseline=1.0, log=True,
                       title=f"Truncated BPTT(k, k), recall from d = {delay} steps "
                             f"back{suffix}")]
    return {"rows": rows, "table": table, "histories": histories,
            "figures": [f for f in figures if f]}


#: Name -> function, for the command line.
EXPERIMENTS = {"vanishing": vanishing, "exploding": exploding, "truncation": truncation}
