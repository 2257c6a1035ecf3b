"""examples/text_classifier.py, end to end on its tiny setting (--quick), and its data."""

import importlib.util
import pathlib

import numpy as np
import pytest

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "text_classifier.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("text_classifier", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_example_trains_and_tests_against_the_baseline(example, capsys):
    result = example.main(["--quick", "--no-progress"])
    out = capsys.readouterr().out
    assert "bidirectional=True" in out and "pool='last'" in out
    assert len(result["history"]) == 2 and 0 <= result["test_accuracy"] <= 1
    assert 0 < result["baseline"] < 1
    assert "test accuracy per package: asyncio" in out
    assert f"test accuracy {result['test_accuracy']:.3f}" in out and "trained in" in out


def test_every_sample_has_one_package_and_appears_once(example):
    token_lists, labels = example.load_samples(max_tokens=24)
    assert len(token_lists) == len(labels) > 1000
    assert set(labels.tolist()) == set(range(len(example.PACKAGES)))
    # one sample per token sequence: no test sample is a training sample too
    assert len({tuple(seq) for seq in token_lists}) == len(token_lists)
    assert all(4 <= len(seq) <= 24 for seq in token_lists)
    ids, y, lengths = example.encode(token_lists[:3], labels[:3], {"return": 2})
    assert ids.shape == (3, lengths.max()) and (y == labels[:3]).all()
    assert (ids[np.arange(ids.shape[1]) >= lengths[:, None]] == example.PAD).all()
