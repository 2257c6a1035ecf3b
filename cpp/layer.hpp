// One layer call as the time loops see it: its sizes, which way it walks time, and its
// parameters and their gradients. Letters as in views.hpp.
#pragma once

#include <cstdint>
#include <vector>

#include "views.hpp"

namespace rnnfast {

struct Dims {
  Index B, T, D, H;
  Index P = 0;  // the LSTM's proj_size: h_t has P units, c_t H; 0 for none
  // The call decides how it uses threads and how backward groups steps into windows as a call
  // of `plan` steps would (0: T). A checkpointed backward (python/rnnfast/_checkpointed.py)
  // runs segments of a T-step sequence with plan = T, so that each segment's products are
  // those of the whole call on the same rows, in the same order.
  Index plan = 0;
  Index offset = 0;  // the call's step 0 is step `offset` of the planned call
  Index state() const { return P > 0 ? P : H; }  // units of h_t, the state other steps read
  Index plan_steps() const { return plan > 0 ? plan : T; }
  Dims with_batch(Index rows) const {  // the same call on `rows` of the sequences
    Dims d = *this;
    d.B = rows;
    return d;
  }
};

// lengths == nullptr means every sequence runs all T steps.
inline bool is_valid(const std::int64_t* lengths, Index b, Index t) {
  return lengths == nullptr || t < lengths[b];
}

// Which way a layer walks time. Forward: t = 0, 1, ..., T - 1, each step starting from the
// state after step t - 1. Reverse (the second direction of a bidirectional layer): t = T - 1
// down to 0, each step starting from the state after step t + 1, and sequence b starting at its
// last valid step, lengths[b] - 1, from h0 (PyTorch's packed sequences). Either way a sequence
// is running at step t exactly when t < lengths[b], so the lengths masks are the same.
struct Walk {
  bool reverse = false;
  const std::int64_t* lengths = nullptr;  // the layer call's (B,) lengths, or nullptr
};

// One layer's parameters, with PyTorch's names and shapes; they travel together. S is the
// state's units: H, or P for an LSTM with a projection.
template <typename T>
struct LayerWeights {
  ConstMatrixMap<T> w_ih;  // (G*H, D)
  ConstMatrixMap<T> w_hh;  // (G*H, S)
  const T* b_ih;           // (G*H,), nullptr when the layer has no bias
  const T* b_hh;           // (G*H,), nullptr when the layer has no bias
  const T* w_hr = nullptr;  // (P, H): the LSTM's projection, nullptr for none
};

// Where the gradients of one layer's parameters go (same shapes as LayerWeights).
// Overwritten by a backward call, or with `accumulate` added to: a checkpointed backward sums
// its segments into the same arrays, step after step as one call over all T steps would.
template <typename T>
struct LayerGrads {
  MatrixMap<T> dw_ih;  // (G*H, D)
  MatrixMap<T> dw_hh;  // (G*H, S)
  T* db_ih;            // (G*H,), nullptr when the layer has no bias
  T* db_hh;            // (G*H,), nullptr when the layer has no bias
  T* dw_hr = nullptr;  // (P, H), nullptr for none
  bool accumulate = false;
  // With accumulate and the batch split over threads (threads.hpp split_backward): the sums
  // of chunks 1, 2, ..., kept across calls and added to the rest after the last one.
  std::vector<T>* partials = nullptr;
};

}  // namespace rnnfast
