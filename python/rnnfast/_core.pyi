"""Type stubs for rnnfast._core, the compiled time loops (cpp/bindings.cpp). Private: use the
rnnfast package.

Every function runs one layer over the whole sequence. Each is overloaded for float32 and
float64: all float arrays of one call share one dtype, C-contiguous (arguments are taken with
``noconvert()``: another dtype or layout raises TypeError, never a silent copy). Bad shapes
raise ValueError. ``lengths`` is int64 (B,), values in [0, T].

Letters: B = batch, T = timesteps, D = input features, H = hidden units.
The backward functions' ``clip_per_step > 0`` rescales each sequence's dL/dh_t to that norm
inside the loop whenever it is larger (0 or negative: off; NaN or Inf: ValueError). With
``grad_norms=True`` one more item is appended: norms (B, T), each sequence's ||dL/dh_t||
before clipping, 0 past its length.
"""

from typing import Any, overload

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
Lengths = npt.NDArray[np.int64]

# -- RNN: G = 1 ------------------------------------------------------------------------------

# x (B, T, D), h0 (B, H), weight_ih (H, D), weight_hh (H, H), biases (H,) or None,
# nonlinearity "tanh" or "relu" -> (y (B, T, H), h_n (B, H)).
@overload
def rnn_forward(x: F32, h0: F32, weight_ih: F32, weight_hh: F32, bias_ih: F32 | None,
                bias_hh: F32 | None, lengths: Lengths | None,
                nonlinearity: str) -> tuple[F32, F32]: ...
@overload
def rnn_forward(x: F64, h0: F64, weight_ih: F64, weight_hh: F64, bias_ih: F64 | None,
                bias_hh: F64 | None, lengths: Lengths | None,
                nonlinearity: str) -> tuple[F64, F64]: ...

# -> (dx (B, T, D), dh0 (B, H), dweight_ih, dweight_hh, dbias_ih, dbias_hh) (the biases'
# None without biases), then norms (B, T) when grad_norms.
@overload
def rnn_backward(x: F32, h0: F32, y: F32, weight_ih: F32, weight_hh: F32,
                 bias_ih: F32 | None, bias_hh: F32 | None, lengths: Lengths | None,
                 nonlinearity: str, dy: F32, dh_n: F32, clip_per_step: float = 0.0,
                 grad_norms: bool = False) -> tuple[Any, ...]: ...
@overload
def rnn_backward(x: F64, h0: F64, y: F64, weight_ih: F64, weight_hh: F64,
                 bias_ih: F64 | None, bias_hh: F64 | None, lengths: Lengths | None,
                 nonlinearity: str, dy: F64, dh_n: F64, clip_per_step: float = 0.0,
                 grad_norms: bool = False) -> tuple[Any, ...]: ...

# -- LSTM: G = 4, gates i, f, g, o -----------------------------------------------------------

# x (B, T, D), h0 and c0 (B, H), weight_ih (4H, D), weight_hh (4H, H), biases (4H,) or
# None -> (y (B, T, H), h_n (B, H), c_n (B, H), gates (B, T, 4H) activated i, f, g, o,
# c (B, T, H)); gates and c are for backward.
@overload
def lstm_forward(x: F32, h0: F32, c0: F32, weight_ih: F32, weight_hh: F32,
                 bias_ih: F32 | None, bias_hh: F32 | None,
                 lengths: Lengths | None) -> tuple[F32, F32, F32, F32, F32]: ...
@overload
def lstm_forward(x: F64, h0: F64, c0: F64, weight_ih: F64, weight_hh: F64,
                 bias_ih: F64 | None, bias_hh: F64 | None,
                 lengths: Lengths | None) -> tuple[F64, F64, F64, F64, F64]: ...

# -> (dx, dh0, dc0, dweight_ih, dweight_hh, dbias_ih, dbias_hh) (the biases' None
# without biases), then norms (B, T) when grad_norms. The cell path dc is not clipped.
@overload
def lstm_backward(x: F32, h0: F32, c0: F32, y: F32, gates: F32, c: F32, weight_ih: F32,
                  weight_hh: F32, bias_ih: F32 | None, bias_hh: F32 | None,
                  lengths: Lengths | None, dy: F32, dh_n: F32, dc_n: F32,
                  clip_per_step: float = 0.0, grad_norms: bool = False) -> tuple[Any, ...]: ...
@overload
def lstm_backward(x: F64, h0: F64, c0: F64, y: F64, gates: F64, c: F64, weight_ih: F64,
                  weight_hh: F64, bias_ih: F64 | None, bias_hh: F64 | None,
                  lengths: Lengths | None, dy: F64, dh_n: F64, dc_n: F64,
                  clip_per_step: float = 0.0, grad_norms: bool = False) -> tuple[Any, ...]: ...

# -- GRU: G = 3, gates r, z, n ---------------------------------------------------------------

# x (B, T, D), h0 (B, H), weight_ih (3H, D), weight_hh (3H, H), biases (3H,) or None ->
# (y (B, T, H), h_n (B, H), gates (B, T, 3H) activated r, z, n, a_hn (B, T, H) =
# W_hn h_{t-1} + b_hn); gates and a_hn are for backward.
@overload
def gru_forward(x: F32, h0: F32, weight_ih: F32, weight_hh: F32, bias_ih: F32 | None,
                bias_hh: F32 | None,
                lengths: Lengths | None) -> tuple[F32, F32, F32, F32]: ...
@overload
def gru_forward(x: F64, h0: F64, weight_ih: F64, weight_hh: F64, bias_ih: F64 | None,
                bias_hh: F64 | None,
                lengths: Lengths | None) -> tuple[F64, F64, F64, F64]: ...

# -> (dx, dh0, dweight_ih, dweight_hh, dbias_ih, dbias_hh) (the biases' None without
# biases), then norms (B, T) when grad_norms.
@overload
def gru_backward(x: F32, h0: F32, y: F32, gates: F32, a_hn: F32, weight_ih: F32,
                 weight_hh: F32, bias_ih: F32 | None, bias_hh: F32 | None,
                 lengths: Lengths | None, dy: F32, dh_n: F32, clip_per_step: float = 0.0,
                 grad_norms: bool = False) -> tuple[Any, ...]: ...
@overload
def gru_backward(x: F64, h0: F64, y: F64, gates: F64, a_hn: F64, weight_ih: F64,
                 weight_hh: F64, bias_ih: F64 | None, bias_hh: F64 | None,
                 lengths: Lengths | None, dy: F64, dh_n: F64, clip_per_step: float = 0.0,
                 grad_norms: bool = False) -> tuple[Any, ...]: ...
