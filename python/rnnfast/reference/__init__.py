"""The NumPy reference: every cell's forward and backward, written to be read.

Each function takes and returns exactly what its twin in ``rnnfast._core`` does, so a model
built with ``backend="numpy"`` runs on these instead of the compiled path. The tests hold the
compiled path to these results, and these to finite differences.
"""

from .gru import gru_backward, gru_forward
from .lstm import lstm_backward, lstm_forward
from .rnn import GradSum, rnn_backward, rnn_forward

__all__ = ["rnn_forward", "rnn_backward", "lstm_forward", "lstm_backward", "gru_forward",
           "gru_backward", "GradSum"]
