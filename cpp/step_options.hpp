// Backward's options on dL/dh_t inside the time loop: clipping per step and per-step norms.
#pragma once

#include <cmath>
#include <cstdint>

#include "layer.hpp"
#include "sums.hpp"
#include "views.hpp"

namespace rnnfast {

// The two options of backward that act on dL/dh_t inside the time loop. Off by default.
template <typename T>
struct StepOptions {
  T clip = T(0);          // > 0: rescale each sequence's dL/dh_t to this norm when above it
  T* norms = nullptr;     // (B, T): ‖dL/dh_t‖ per sequence, before clipping; nullptr: not kept
  bool active() const { return clip > T(0) || norms != nullptr; }
};

// The per-step options on dh_total (B, H), the total dL/dh_t at step t (from the loss at t and
// from step t+1), one sequence (row) at a time, so a sequence's gradient does not depend on
// the rest of the batch. For every valid row: write its L2 norm to norms[b, t], then rescale
// it to norm opt.clip if it is larger. Rows past their sequence's length are left alone (their
// dh_total is not used) and get norm 0.
template <typename T, typename Block>
void clip_rows_and_norms(Block&& dh_total, const StepOptions<T>& opt,
                         const std::int64_t* lengths, Index t, Index T_) {
  for (Index b = 0; b < dh_total.rows(); ++b) {
    if (!is_valid(lengths, b, t)) {
      if (opt.norms != nullptr) opt.norms[b * T_ + t] = T(0);
      continue;
    }
    auto row = dh_total.row(b);
    const T norm = std::sqrt(sum_of_squares(row));
    if (opt.norms != nullptr) opt.norms[b * T_ + t] = norm;
    if (opt.clip > T(0) && norm > opt.clip) row *= opt.clip / norm;
  }
}

}  // namespace rnnfast
