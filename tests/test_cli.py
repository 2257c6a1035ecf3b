"""The console command and the synthetic tasks, on sizes small enough for CI."""

import subprocess
import sys

import numpy as np
import pytest

import rnnfast
from rnnfast import charlm, cli
from rnnfast.tasks import ADDING_BASELINE_MSE, adding_problem

SMALL = ["--max-chars", "6000", "--hidden", "16", "--batch", "4", "--k1", "20",
         "--sample-length", "40", "--no-progress"]


def test_train_prints_losses_and_samples_and_resumes(tmp_path, capsys):
    ck = tmp_path / "lm.npz"
    assert cli.main(["train", *SMALL, "--epochs", "2", "--checkpoint", str(ck)]) == 0
    out = capsys.readouterr().out
    losses = [float(line.split("train ")[1].split(" bits")[0])
              for line in out.splitlines() if line.startswith("epoch ")]
    assert len(losses) == 2 and losses[1] < losses[0]
    assert out.count("sample:") == 2 and ck.exists()
    assert cli.main(["train", *SMALL, "--checkpoint", str(ck), "--resume"]) == 0
    out = capsys.readouterr().out
    assert "resumed" in out and "epoch 3:" in out


@pytest.mark.parametrize("model", [{}, {"layers": 2, "dropout": 0.3}],
                         ids=["one-layer", "two-layers-dropout"])
def test_resume_resumes_bit_identically(tmp_path, model):
    # with dropout, the masks of the resumed epoch must be the uninterrupted run's
    text = charlm.default_text()[:4000]
    kw = dict(hidden=8, batch=4, k1=10, sample_length=0, progress=False, log=lambda *a: None,
              **model)
    straight, _, _ = charlm.train(text, epochs=2, **kw)
    ck = tmp_path / "a.npz"
    charlm.train(text, epochs=1, checkpoint_path=ck, **kw)
    resumed, _, hist = charlm.train(text, epochs=1, checkpoint_path=ck, resume=True, **kw)
    assert hist[0]["epoch"] == 2
    for k in straight.params:
        np.testing.assert_array_equal(resumed.params[k], straight.params[k])


def test_train_errors_are_messages_not_tracebacks(tmp_path, capsys):
    assert cli.main(["train", "--text", str(tmp_path / "missing.txt")]) == 2
    assert "No such file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["train", "--resume"])
    other = tmp_path / "other.txt"
    other.write_text("zzzz yyyy " * 200)
    ck = tmp_path / "c.npz"
    assert cli.main(["train", *SMALL, "--checkpoint", str(ck)]) == 0
    assert cli.main(["train", *SMALL, "--text", str(other), "--checkpoint", str(ck),
                     "--resume"]) == 2
    assert "another text" in capsys.readouterr().err


def test_the_model_reads_characters_through_an_embedding(capsys):
    assert cli.main(["train", *SMALL, "--epochs", "1", "--embedding-dim", "8", "--layers", "2",
                     "--dropout", "0.2"]) == 0
    out = capsys.readouterr().out
    assert "embedding=Embedding(" in out and "num_layers=2" in out and "dropout=0.2" in out


@pytest.mark.parametrize("argv, reason", [
    (["--bidirectional"], "cannot be bidirectional: the reverse direction reads the text"),
    (["--dropout", "0.2"], "dropout acts between stacked layers, so it needs layers >= 2"),
])
def test_options_no_language_model_can_use_are_refused_with_the_reason(argv, reason, capsys):
    assert cli.main(["train", *SMALL, *argv]) == 2
    assert reason in capsys.readouterr().err
    with pytest.raises(ValueError, match="cannot be bidirectional"):
        charlm.build_model("gru", 10, 8, 2, np.float32, 0, bidirectional=True)


def test_a_checkpoint_of_the_one_hot_model_still_resumes(tmp_path, capsys):
    """A checkpoint of the model `rnnfast train` built before the embedding (one-hot input, and
    a configuration without the recurrent options added since) resumes as that model."""
    vocab = charlm.Vocabulary(charlm.default_text()[:6000])  # the text of SMALL
    V = len(vocab)
    old = rnnfast.Model(rnnfast.LSTM(V, 16, seed=0), rnnfast.Linear(16, V, seed=1))
    config = old.recurrent.config()
    del config["bidirectional"], config["dropout"]
    old.recurrent.config = lambda: config
    ck = tmp_path / "one_hot.npz"
    rnnfast.save(ck, old, rnnfast.optim.Adam(old.params, lr=3e-3), epoch=1,
                 metadata={"vocabulary": vocab.chars})
    assert cli.main(["train", *SMALL, "--epochs", "1", "--checkpoint", str(ck), "--resume"]) == 0
    out = capsys.readouterr().out
    assert "one-hot input" in out and "epoch 2:" in out and "sample:" in out
    model = rnnfast.load(ck).model
    assert model.embedding is None and model.recurrent.input_size == V


def test_python_dash_m_runs():
    out = subprocess.run([sys.executable, "-m", "rnnfast", "--help"], capture_output=True,
                         text=True, check=True).stdout
    assert "train" in out


def test_adding_problem_data():
    x, y = adding_problem(500, 20, seed=0)
    assert x.shape == (500, 20, 2) and y.shape == (500, 1)
    assert (x[..., 1].sum(1) == 2).all()
    assert (x[:, :10, 1].sum(1) == 1).all()  # one marker in each half
    np.testing.assert_allclose(y[:, 0], (x[..., 0] * x[..., 1]).sum(1), rtol=1e-6)
    assert abs(((y - 1.0) ** 2).mean() - ADDING_BASELINE_MSE) < 0.03
    with pytest.raises(ValueError, match="T must be at least 2"):
        adding_problem(3, 1)


def test_bench_subcommand_is_the_benchmark(capsys):
    assert cli.main(["bench", "--quick", "--impls", "rnnfast", "--cells", "RNN"]) == 0
    assert "RNN" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["bench", "--help"])
    assert "--configs" in capsys.readouterr().out


def test_resume_names_the_options_the_checkpoint_overrides(tmp_path, capsys):
    ck = tmp_path / "lm.npz"
    assert cli.main(["train", *SMALL, "--checkpoint", str(ck)]) == 0
    capsys.readouterr()
    assert cli.main(["train", *SMALL, "--checkpoint", str(ck), "--resume", "--hidden", "32",
                     "--cell", "gru", "--lr", "0.1"]) == 0
    captured = capsys.readouterr()
    assert ("--resume continues the checkpoint's model and optimiser; not used: --cell gru, "
            "--hidden 32, --lr 0.1") in captured.err
    assert "LSTM(32, 16" in captured.out and "betas=(0.9, 0.999)" in captured.out


def test_resume_with_another_max_chars_says_which_options_must_match(tmp_path, capsys):
    ck = tmp_path / "lm.npz"
    assert cli.main(["train", *SMALL, "--checkpoint", str(ck)]) == 0
    assert cli.main(["train", *SMALL, "--max-chars", "900", "--checkpoint", str(ck),
                     "--resume"]) == 2
    assert "pass the same --text and --max-chars" in capsys.readouterr().err


def test_bptt_checkpoint_option_names_auto_in_its_error(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", *SMALL, "--bptt-checkpoint", "half"])
    assert "expected 'auto' or an integer >= 1, got 'half'" in capsys.readouterr().err
