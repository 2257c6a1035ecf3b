"""The console command and the synthetic tasks, on sizes small enough for CI."""

import subprocess
import sys

import numpy as np
import pytest

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


def test_resume_resumes_bit_identically(tmp_path):
    text = charlm.default_text()[:4000]
    kw = dict(hidden=8, batch=4, k1=10, sample_length=0, progress=False, log=lambda *a: None)
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
