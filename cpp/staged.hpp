// What backward reads at each step from forward's saved arrays: the states a step started
// from (state_before), and the arrays themselves, a few steps at a time (StagedSteps).
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>

#include "buffers.hpp"
#include "layer.hpp"
#include "views.hpp"

namespace rnnfast {

// Backward's view of the (B, W) states that step t started from (h_{t-1} or c_{t-1}, forward):
// those `saved` (B, T, W) by the step walked before it, or `initial` (B, W) where there is
// none: at the walk's first step and, in reverse, at a sequence's last valid step, where step
// t + 1 did not run and saved zeros. Rows of both kinds at one step are copied into `scratch`
// (B, W). Rows of sequences not running at t are whatever comes: their gradients are zero.
template <typename T>
ConstStepMap<T> state_before(const T* saved, const T* initial, T* scratch, Index B, Index T_,
                             Index W, Index t, const Walk& walk) {
  const Index before = walk.reverse ? t + 1 : t - 1;
  if (before < 0 || before >= T_) return ConstStepMap<T>(initial, B, W, Eigen::OuterStride<>(W));
  const ConstStepMap<T> prev = at_step(saved, B, T_, W, before);
  if (!walk.reverse || walk.lengths == nullptr) return prev;
  bool mixed = false;
  for (Index b = 0; b < B; ++b) mixed = mixed || walk.lengths[b] == t + 1;
  if (!mixed) return prev;
  MatrixMap<T> rows(scratch, B, W);
  for (Index b = 0; b < B; ++b) {
    if (walk.lengths[b] == t + 1)
      rows.row(b) = ConstMatrixMap<T>(initial + b * W, 1, W);
    else
      rows.row(b) = prev.row(b);
  }
  return ConstStepMap<T>(scratch, B, W, Eigen::OuterStride<>(W));
}

// What a backward reads at each step of (B, T, W) arrays (outputs, caches, dy), copied a few
// steps at a time into one time-major buffer: each step then reads one contiguous block instead
// of B rows T·W apart. It pays where those arrays have long left the caches and a step's rows
// are short. Paired A/B (bench/paired_steps.py), backward new/old at 1 and 2 threads: long
// RNN (16, 1000, 32, 64) 0.96, whose per-step reads were ~15 % of its backward (measured by
// leaving them out; prefetching the same rows 8-64 steps ahead gained nothing); long LSTM
// 0.91-0.95; (32, 500, 32, 64) RNN 0.99; but (32, 100, 64, 128) RNN 1.01-1.03, (32, 100, 64,
// 64) 1.00-1.03, and the long GRU 0.98-1.07 (not used there). So: arrays of at least
// kStagedFromBytes, a step's rows at most kStagedStepBytes; batch 1's rows are contiguous
// already, so it reads in place. A reverse layer's backward, whose steps go up, reads in place.
template <typename T, int N>
class StagedSteps {
 public:
  StagedSteps(Index B, Index steps_total, const std::array<const T*, N>& source,
              const std::array<Index, N>& width, bool reverse = false)
      : B_(B), T_(steps_total), next_(steps_total), source_(source), width_(width) {
    for (int k = 0; k < N; ++k) {
      offset_[k] = row_;
      row_ += width_[k];
    }
    const Index step_bytes = B_ * row_ * Index(sizeof(T));
    if (!reverse && B_ > 1 && step_bytes <= kStagedStepBytes &&
        step_bytes * T_ >= kStagedFromBytes)
      steps_ = std::min(T_, kStagedBytes / step_bytes);
    buffer_ = Buffer<T>(static_cast<std::size_t>(steps_ * B_ * row_));
  }

  // The (B, width[k]) block of array k at step t. Steps go down from T - 1, one at a time.
  ConstStepMap<T> at(int k, Index t) {
    if (steps_ == 0) return at_step(source_[k], B_, T_, width_[k], t);
    if (t < next_) copy_down_from(t);
    return block(k, t);
  }

  // Array k at a step below the current one (t - 1, for c_{t-1} or h_{t-1}): from the copy when
  // it holds that step, else in place.
  ConstStepMap<T> below(int k, Index t) {
    if (steps_ == 0 || t < next_) return at_step(source_[k], B_, T_, width_[k], t);
    return block(k, t);
  }

 private:
  static constexpr Index kStagedFromBytes = Index(4) << 20;
  static constexpr Index kStagedStepBytes = Index(32) << 10;
  static constexpr Index kStagedBytes = Index(256) << 10;

  ConstStepMap<T> block(int k, Index t) {
    return ConstStepMap<T>(buffer_.data() + (t - next_) * B_ * row_ + offset_[k], B_,
                           width_[k], Eigen::OuterStride<>(row_));
  }

  // Steps [t - steps + 1, t] (from 0 at the start of the sequence), row (s, b) holding every
  // array's row (b, s) side by side. Each array's rows of one sequence are read in order.
  void copy_down_from(Index t) {
    next_ = std::max<Index>(0, t - steps_ + 1);
    const Index n = t + 1 - next_;
    for (Index b = 0; b < B_; ++b)
      for (int k = 0; k < N; ++k) {
        const T* src = source_[k] + (b * T_ + next_) * width_[k];
        T* dst = buffer_.data() + b * row_ + offset_[k];
        for (Index s = 0; s < n; ++s)
          std::copy_n(src + s * width_[k], width_[k], dst + s * B_ * row_);
      }
  }

  Index B_, T_, next_, row_ = 0, steps_ = 0;
  std::array<const T*, N> source_;
  std::array<Index, N> width_, offset_{};
  Buffer<T> buffer_{0};
};

}  // namespace rnnfast
