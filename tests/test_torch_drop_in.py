"""examples/torch_drop_in.py, end to end on its tiny setting (--quick)."""

import importlib.util
import pathlib

import pytest

pytest.importorskip("torch")

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "torch_drop_in.py"


def test_both_cells_train_from_the_same_weights_to_close_losses(capsys):
    spec = importlib.util.spec_from_file_location("torch_drop_in", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = module.main(["--quick", "--epochs", "2", "--dropout", "0"])
    out = capsys.readouterr().out
    assert "torch.nn.LSTM  epoch 2" in out and "rnnfast.torch.LSTM  epoch 2" in out
    assert "as fast as torch.nn.LSTM" in out
    torch_losses, rnnfast_losses = results["torch"]["losses"], results["rnnfast"]["losses"]
    # Without dropout the two runs are the same computation in float32: equal but for rounding.
    assert rnnfast_losses == pytest.approx(torch_losses, rel=1e-3)
    assert rnnfast_losses[1] < rnnfast_losses[0]
