"""What a new user meets in the first hour: mistakes are refused before any training, with
errors that name the argument, what was expected and what was given (the user's own path,
never a temporary file), and output that says what it is."""

import os

import numpy as np
import pytest

import rnnfast
from rnnfast import charlm, checkpoint, cli, experiments, optim

TINY = ["--max-chars", "3000", "--hidden", "8", "--batch", "4", "--k1", "10",
        "--sample-length", "0", "--no-progress"]
TEXT = charlm.default_text()[:3000]
QUIET = dict(hidden=8, batch=4, k1=10, sample_length=0, progress=False)


def cli_error(capsys, argv):
    """cli.main's argparse-style refusal of ``argv``: exit status 2 and the message."""
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    out, err = capsys.readouterr()
    assert "epoch 1" not in out, "refused only after training"
    return err


# -- the checkpoint's place ------------------------------------------------------------------

def test_a_checkpoint_in_a_missing_directory_is_refused_before_training(tmp_path, capsys):
    path = str(tmp_path / "missing" / "dir" / "ck.npz")
    err = cli_error(capsys, ["train", *TINY, "--checkpoint", path])
    assert "argument --checkpoint:" in err and repr(path) in err
    assert "does not exist" in err and ".rnnfast-" not in err

    lines = []
    with pytest.raises(FileNotFoundError, match="checkpoint_path must be a file in an existing "
                                                "directory") as info:
        charlm.train(TEXT, epochs=1, checkpoint_path=path, log=lines.append, **QUIET)
    assert repr(path) in str(info.value)
    assert not any(line.startswith("epoch") for line in lines), "an epoch was trained first"


def test_a_checkpoint_path_that_is_a_directory_is_refused(tmp_path, capsys):
    err = cli_error(capsys, ["train", *TINY, "--checkpoint", str(tmp_path)])
    assert "argument --checkpoint: must name a file" in err and str(tmp_path) in err


def test_save_names_the_users_path_not_its_temporary_file(tmp_path, monkeypatch):
    model = rnnfast.Model(rnnfast.RNN(2, 3, seed=0), rnnfast.Linear(3, 2, seed=1))
    missing = tmp_path / "nope" / "ck.npz"
    with pytest.raises(FileNotFoundError) as info:
        rnnfast.save(missing, model)
    assert str(missing) in str(info.value) and ".tmp" not in str(info.value)

    # a failure after the temporary file exists (here the rename) names the path too, and
    # leaves neither the temporary file nor a partial checkpoint behind
    def refuse(src, dst):
        raise PermissionError(13, "Permission denied", src)

    monkeypatch.setattr(checkpoint.os, "replace", refuse)
    target = tmp_path / "ck.npz"
    with pytest.raises(PermissionError) as info:
        rnnfast.save(target, model)
    message = str(info.value)
    assert str(target) in message and "Permission denied" in message and ".tmp" not in message
    assert info.value.errno == 13
    assert os.listdir(tmp_path) == []


def test_resume_without_a_checkpoint_to_resume_is_refused_up_front(tmp_path, capsys):
    err = cli_error(capsys, ["train", *TINY, "--resume"])
    assert "argument --resume: needs --checkpoint" in err
    path = str(tmp_path / "none.npz")
    err = cli_error(capsys, ["train", *TINY, "--resume", "--checkpoint", path])
    assert "argument --resume: expected a checkpoint" in err and repr(path) in err
    with pytest.raises(ValueError, match="resume=True needs checkpoint_path"):
        charlm.train(TEXT, resume=True, log=lambda *a: None, **QUIET)


# -- the other arguments, checked before the text is read -------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["--k1", "32", "--k2", "16"], "argument --k2: must be >= --k1 32"),
    (["--epochs", "0"], "argument --epochs: expected an integer >= 1, got 0"),
    (["--epochs", "two"], "argument --epochs: expected an integer >= 1, got 'two'"),
    (["--k1", "0"], "argument --k1: expected an integer >= 1, got 0"),
    (["--lr", "nan"], "argument --lr: expected a number > 0, got nan"),
    (["--dropout", "1"], "argument --dropout: expected a number >= 0 and < 1, got 1"),
    (["--batch", "-3"], "argument --batch: expected an integer >= 1, got -3"),
])
def test_bad_arguments_are_refused_before_the_text_is_read(argv, message, tmp_path, capsys):
    # the text does not exist: reading it would fail with another message
    err = cli_error(capsys, ["train", "--text", str(tmp_path / "absent.txt"), *argv])
    assert message in err and "No such file" not in err


@pytest.mark.parametrize("kw, error, message", [
    ({"k1": 32, "k2": 16}, ValueError, "k2 must be >= k1 = 32"),
    ({"epochs": 0}, ValueError, "epochs must be at least 1, got 0"),
    ({"batch": 0}, ValueError, "batch must be at least 1, got 0"),
])
def test_the_python_api_refuses_them_before_training_too(kw, error, message):
    lines = []
    with pytest.raises(error, match=message):
        charlm.train(TEXT, log=lines.append, **{**QUIET, **kw})
    assert lines == [], "it had started"


def test_help_shows_defaults_and_what_epochs_means_with_resume(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for default in ("hidden units per layer (default: 128)", "(default: lstm)",
                    "update every k1 characters (default: 32)", "(default: 0.003)",
                    "(default: adam)", "(default: 16)", "(default: 0.8)", "(default: k1)"):
        assert default in text, default
    assert "(default: None)" not in text and "(default: False)" not in text
    assert "with --resume, N more after the checkpoint's" in text and "(default: 2)" in text
    assert "bits per character" in text


def test_resume_says_which_epochs_it_trains(tmp_path):
    ck = tmp_path / "ck.npz"
    charlm.train(TEXT, epochs=1, checkpoint_path=ck, log=lambda *a: None, **QUIET)
    lines = []
    _, _, history = charlm.train(TEXT, epochs=2, checkpoint_path=ck, resume=True,
                                 log=lines.append, **QUIET)
    assert [h["epoch"] for h in history] == [2, 3]
    assert any("after epoch 1; training epochs 2 to 3" in line for line in lines), lines


def test_the_progress_bar_shows_bits_per_char_like_the_summary(capsys):
    pytest.importorskip("tqdm")
    vocab = charlm.Vocabulary(TEXT)
    data = charlm.streams(vocab.encode(TEXT), 4)
    model = charlm.build_model("rnn", len(vocab), 8, 1, np.float32, 0)
    loss, _ = charlm.epoch(model, optim.Adam(model.params), data, k1=10, k2=None,
                           progress=True)
    bar = capsys.readouterr().err
    assert f"bits/char={charlm.bits(loss):.3f}" in bar, bar[-300:]
    assert "loss=" not in bar


# -- fit and train_sequence ----------------------------------------------------------------

B, T, D = 4, 5, 2


def small_model(out=2, dtype=np.float32):
    return rnnfast.Model(rnnfast.RNN(D, 3, dtype=dtype, seed=0),
                         rnnfast.Linear(3, out, dtype=dtype, seed=1))


def features(dtype=np.float32):
    return np.random.default_rng(0).standard_normal((B, T, D)).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_integer_mse_targets_name_the_models_dtype(dtype):
    model = small_model(dtype=dtype)
    name = np.dtype(dtype).name
    with pytest.raises(TypeError, match=f"converted to the model's {name}\\), got int64"):
        rnnfast.fit(model, optim.SGD(model.params), (features(), np.zeros((B, T, 2), int)),
                    loss="mse", progress=False)
    with pytest.raises(TypeError, match=f"converted to the model's {name}\\), got int64"):
        rnnfast.train_sequence(model, optim.SGD(model.params), features(),
                               np.zeros((B, T, 2), int), loss="mse")


def test_targets_as_a_list_are_refused_as_x_is():
    model = small_model()
    labels = np.zeros((B, T), np.int64).tolist()
    with pytest.raises(TypeError, match="data: targets must be a numpy.ndarray, like x, got "
                                        "list; convert it first"):
        rnnfast.fit(model, optim.SGD(model.params), (features(), labels), progress=False)
    with pytest.raises(TypeError, match=r"targets must be a numpy.ndarray, got list; convert "
                                        r"it first, e.g. np.asarray\(targets"):
        rnnfast.train_sequence(model, optim.SGD(model.params), features(), labels)
    with pytest.raises(TypeError, match="x must be a numpy.ndarray, got list"):
        rnnfast.train_sequence(model, optim.SGD(model.params), features().tolist(),
                               np.zeros((B, T), np.int64))


def test_fit_with_x_as_a_list_names_x():
    model = small_model()
    with pytest.raises(TypeError, match="data: x must be a numpy.ndarray, got list"):
        rnnfast.fit(model, optim.SGD(model.params),
                    (features().tolist(), np.zeros((B, T), np.int64)), progress=False)
    with pytest.raises(TypeError, match="validation: x must be a numpy.ndarray, got list"):
        rnnfast.fit(model, optim.SGD(model.params), (features(), np.zeros((B, T), np.int64)),
                    validation=(features().tolist(), np.zeros((B, T), np.int64)),
                    progress=False)
    # a tuple of batches is still read as batches
    batch = (features(), np.zeros((B, T), np.int64))
    history = rnnfast.fit(model, optim.SGD(model.params), (batch, batch), progress=False)
    assert history[0]["updates"] == 2


def test_one_label_per_sequence_with_the_per_step_loss_points_to_the_last_step_loss():
    model = small_model()
    labels = np.zeros(B, np.int64)
    hint = "use loss='cross_entropy_last'"
    with pytest.raises(ValueError, match=r"targets must have shape \(B, T\) = \(4, 5\), got "
                                         rf"\(4,\); .*{hint}"):
        rnnfast.fit(model, optim.SGD(model.params), (features(), labels), progress=False)
    with pytest.raises(ValueError, match=hint):
        rnnfast.evaluate(model, (features(), labels))
    with pytest.raises(ValueError, match="use loss='mse_last'"):
        rnnfast.train_sequence(model, optim.SGD(model.params), features(),
                               np.zeros((B, 2), np.float32), loss="mse")
    with pytest.raises(ValueError, match="use loss='cross_entropy'"):
        rnnfast.train_sequence(model, optim.SGD(model.params), features(),
                               np.zeros((B, T), np.int64), loss="cross_entropy_last")
    # and the hinted loss is the one that works
    history = rnnfast.fit(model, optim.SGD(model.params), (features(), labels),
                          loss="cross_entropy_last", progress=False)
    assert history[0]["updates"] == 1


# -- experiments --------------------------------------------------------------------------

def test_a_quick_experiment_says_it_is_a_smoke_run(capsys):
    out = experiments.vanishing(quick=True, out=None)
    printed = capsys.readouterr().out
    assert "quick: a smoke run" in printed and "This table is not the result" in printed
    # more than one epoch, so that its history figure is a curve rather than a point
    assert all(len(h) > 1 for h in out["histories"][20].values())
    for name in ("exploding", "truncation"):
        experiments.EXPERIMENTS[name](quick=True, out=None)
        assert "quick: a smoke run" in capsys.readouterr().out
    experiments.vanishing(Ts=(10,), n_train=20, n_test=20, epochs=1, out=None)
    assert "smoke run" not in capsys.readouterr().out


def test_experiment_help_says_quick_is_a_smoke_run(capsys):
    with pytest.raises(SystemExit):
        cli.main(["experiment", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--quick a smoke run in seconds" in text and "not the result" in text
    assert "(default: experiment_figures)" in text
