// Backward's products outside the recurrence, done on windows of steps while the loop goes on.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <functional>
#include <memory>
#include <utility>

#include "buffers.hpp"
#include "helper.hpp"
#include "layer.hpp"
#include "products.hpp"
#include "sums.hpp"
#include "views.hpp"

namespace rnnfast {

// Backward's products outside the recurrence, for B sequences:
//   dx = da W_ih,  dW_ih = Σ da^T x,  db_ih = Σ da,  dW_hh = Σ dah^T h_{t-1},
// where da is the gradient of a layer's pre-activations and dah that of their recurrent term
// (the same except in the GRU's n part, which to_recurrent turns into it; it then sums db_hh
// too). They run on windows of steps while the time loop goes on: the loop writes the da of
// each step to da(t), and when t leaves a window the window's products are done. So the
// (B, T, G·H) da is never held whole (memory: the window, not T), and a window's products
// of about 128 rows run faster than larger ones (their operands stay in L2). Windows are
// aligned in time (steps [q·W, (q+1)·W)) and W, a power of two, depends on B alone past
// short sequences, so a segment of a checkpointed call that starts at a multiple of W has the
// whole call's windows. The window's x and h_{t-1}
// are copied side by side into one buffer in da's row order, a few percent of the products'
// traffic.
// Rows past a sequence's length must have da = 0: they then add nothing.
// A reverse layer (walk.reverse) runs its backward loop from t = 0 up, and step t started from
// the state after step t+1 (h0 at T - 1, and at each sequence's last valid step).
template <typename T>
class WindowGrads {
 public:
  using ToRecurrent = std::function<void(MatrixMap<T> da_w, Index t0, Index steps)>;

  // x (B, T, D), y (B, T, S) and h0 (B, S) as the forward saw them (S = d.state()); dx
  // (B, T, D) is written; g's arrays are overwritten with the sums (dw_hr excepted).
  WindowGrads(const Dims& d, Index GH, const T* x, const T* y, const T* h0, T* dx,
              const LayerWeights<T>& w, LayerGrads<T>& g, Helper* helper,
              ToRecurrent to_recurrent = nullptr, const Walk& walk = Walk{})
      : d_(d), GH_(GH), W_(window_steps(d, GH, helper != nullptr)), windows_((d.T + W_ - 1) / W_),
        buffers_(helper != nullptr ? kHelperBuffers : 1), x_(x), y_(y), h0_(h0), dx_(dx),
        w_(w), g_(g), to_recurrent_(std::move(to_recurrent)), walk_(walk), helper_(helper),
        separate_dx_(helper != nullptr && d.B == 1),
        in_place_(!walk.reverse && reads_in_place(GH, d, W_)),
        da_(static_cast<std::size_t>(buffers_ * d.B * W_ * GH)),
        xh_(in_place_ ? 0 : static_cast<std::size_t>(d.B * W_ * (d.D + d.state()))),
        dx_w_(d.B > 1 ? static_cast<std::size_t>(d.B * W_ * d.D) : 0),
        dw_(column_major_sums(GH, d, W_) ? static_cast<std::size_t>(GH * (d.D + d.state())) : 0),
        h_prev_(in_place_ && d.offset > 0 ? static_cast<std::size_t>(W_ * d.state()) : 0) {
    if (!g_.accumulate) {
      g_.dw_ih.setZero();
      g_.dw_hh.setZero();
      if (g_.db_ih != nullptr) RowVectorMap<T>(g_.db_ih, GH).setZero();
      if (g_.db_hh != nullptr) RowVectorMap<T>(g_.db_hh, GH).setZero();
    }
    if (helper_ == nullptr) return;
    if (separate_dx_) {
      dx_done_ = std::make_unique<std::atomic<bool>[]>(static_cast<std::size_t>(windows_));
      for (Index j = 0; j < windows_; ++j) dx_done_[j].store(false, std::memory_order_relaxed);
    } else {
      dx_claimed_.store(windows_, std::memory_order_relaxed);  // none to claim
    }
    task_.assign([this] {  // the ordered sums first, dx when they must wait
      SpinWait wait;
      while (claimed_.load(std::memory_order_acquire) < windows_ ||
             dx_claimed_.load(std::memory_order_acquire) < windows_) {
        if (claim_and_flush(claimed_.load(std::memory_order_acquire)) || claim_dx())
          wait.reset();
        else
          wait();
      }
    });
    helper_->offer(task_);
  }

  ~WindowGrads() {
    if (helper_ == nullptr) return;
    // After an exception: stop the helper. It reads this object's members until it stops.
    abandoned_.store(true, std::memory_order_release);
    claimed_.store(windows_, std::memory_order_release);
    dx_claimed_.store(windows_, std::memory_order_release);
    helper_->settle(task_);
  }
  WindowGrads(const WindowGrads&) = delete;
  WindowGrads& operator=(const WindowGrads&) = delete;

  // Where the loop writes da of step t, (B, G·H). t goes down from T-1 to 0 (up from 0 when
  // reverse), one step at a time.
  StepMap<T> da(Index t) {
    const Index j = walk_.reverse ? t / W_ : windows_ - 1 - t / W_;  // its window
    if (j != current_) {
      if (current_ >= 0) hand_over(current_);
      current_ = j;
      // With the helper, window j's da overwrites that of window j - buffers_.
      if (helper_ != nullptr) flush_until(j - buffers_ + 1);
    }
    const auto [t0, t1] = window(j);
    return at_step(window_da(j), d_.B, t1 - t0, GH_, t - t0);
  }

  // After the loop: the last windows, and db_hh where b_hh enters as b_ih does.
  void finish() {
    if (current_ >= 0) hand_over(current_);
    if (helper_ != nullptr) {
      flush_until(windows_);
      helper_->finish(task_);  // rethrows what the helper's flushes threw
    }
    if (!to_recurrent_ && g_.db_hh != nullptr)
      RowVectorMap<T>(g_.db_hh, GH_) = RowVectorMap<T>(g_.db_ih, GH_);
  }

  // The largest power of two W with B·W ≤ kWindowRows (at least 1), or all T steps; but
  // where that one window would be the whole (B, T, G·H) da and over kHalvedFrom bytes, two
  // windows of half the steps: at batch 1 and 1 thread, the online LSTM's da is 100 KiB of a
  // 0.39 MiB step, and products of 50 rows instead of 100 cost nothing measurable. With the
  // helper, kHelperWindow steps: the loop's wait for the last window's products is the part
  // the helper cannot take, and shorter windows shorten it.
  static Index window_steps(const Dims& d, Index GH, bool helper) {
    const Index T_ = d.plan_steps();
    if (helper) return std::max<Index>(1, std::min(T_, kHelperWindow));
    Index want = T_;
    if (d.B > 0)
      for (want = 1; 2 * want * d.B <= kWindowRows;) want *= 2;
    if (want >= T_ && d.B * T_ * GH * Index(sizeof(T)) > kHalvedFrom) return (T_ + 1) / 2;
    return std::max<Index>(1, std::min(T_, want));
  }

 private:
  // Backward's time at 1 thread, LSTM and GRU, H = 32-256, B = 1-64, T = 100-1000, windows
  // of 64 to 1024 rows interleaved in one process: 128 rows as fast as 64 and up to 17 % faster
  // than 1024 (B = 4-16), where a window's da, x and h no longer stay in L2.
  static constexpr Index kWindowRows = 128;
  static constexpr Index kHalvedFrom = Index(64) << 10;
  static constexpr Index kHelperWindow = 16;
  // With the helper, the loop writes one window's da while up to two earlier ones wait for or
  // go through their products: the loop only waits when the helper is two windows behind.
  static constexpr Index kHelperBuffers = 3;

  // Windows are steps [q·W, (q+1)·W), numbered in the loop's order: window j is q = j when
  // reverse, else the j-th from the last. (In time rather than from the walk's start, so that
  // a segment of a longer call starting at a multiple of W has that call's windows.)
  std::pair<Index, Index> window(Index j) const {
    const Index q = walk_.reverse ? j : windows_ - 1 - j;
    return {q * W_, std::min(d_.T, (q + 1) * W_)};
  }
  T* window_da(Index j) { return da_.data() + (j % buffers_) * d_.B * W_ * GH_; }

  // Window j is complete: its products now, or with the helper, by whichever thread claims it
  // first (claim_and_flush).
  void hand_over(Index j) {
    if (helper_ == nullptr) {
      flush(j);
      return;
    }
    ready_.store(j + 1, std::memory_order_release);
  }

  // With the helper: windows are flushed one at a time and in order, whoever does it, so the
  // sums keep the same order and a result never depends on which thread ran what. Window j
  // can be claimed once it is complete (ready_) and window j - 1 is flushed.
  bool claim_and_flush(Index j) {
    if (j >= ready_.load(std::memory_order_acquire) ||
        flushed_.load(std::memory_order_acquire) != j ||
        !claimed_.compare_exchange_strong(j, j + 1, std::memory_order_acq_rel))
      return false;
    flush(j);
    flushed_.store(j + 1, std::memory_order_release);
    return true;
  }

  // With separate_dx_: a complete window's dx = da W_ih, by either thread and in any order
  // (its rows are the window's own), so the thread that would wait for the ordered sums works
  // meanwhile: the loop's thread waited 75-170 k cycles per online LSTM backward without it.
  bool claim_dx() {
    if (!separate_dx_) return false;
    Index j = dx_claimed_.load(std::memory_order_acquire);
    if (j >= ready_.load(std::memory_order_acquire) ||
        !dx_claimed_.compare_exchange_strong(j, j + 1, std::memory_order_acq_rel))
      return false;
    const auto [t0, t1] = window(j);
    MatrixMap<T>(dx_ + t0 * d_.D, t1 - t0, d_.D).noalias() =
        MatrixMap<T>(window_da(j), t1 - t0, GH_) * w_.w_ih;
    dx_done_[j].store(true, std::memory_order_release);
    return true;
  }

  // With the helper: returns once windows 0 .. n-1 are done (their sums and their dx), doing
  // what the helper has not claimed here, dx first.
  void flush_until(Index n) {
    SpinWait wait;
    for (;;) {
      while (separate_dx_ && dx_checked_ < n &&
             dx_done_[dx_checked_].load(std::memory_order_acquire))
        ++dx_checked_;
      if (flushed_.load(std::memory_order_acquire) >= n && (!separate_dx_ || dx_checked_ >= n))
        return;
      if (claim_dx() || claim_and_flush(claimed_.load(std::memory_order_acquire))) continue;
      if (task_.done()) helper_->finish(task_);  // the helper stopped: rethrow its error
      wait();
    }
  }

  // With separate_dx_ and to_recurrent_: window j's dx reads its da, which to_recurrent_ is
  // about to rewrite. Its dx is claimed or claimable (the window is complete), so this ends,
  // unless the object is being destroyed after an exception: the sums no longer matter then.
  void await_dx(Index j) {
    SpinWait wait;
    while (!dx_done_[j].load(std::memory_order_acquire) &&
           !abandoned_.load(std::memory_order_acquire)) {
      if (!claim_dx()) wait();
    }
  }

  void flush(Index j) {
    const auto [t0, t1] = window(j);
    T* const da = window_da(j);
    const Index steps = t1 - t0;
    if (steps == 0) return;
    const Index B = d_.B, T_ = d_.T, D = d_.D, H = d_.state(), rows = B * steps;
    MatrixMap<T> da_w(da, rows, GH_);  // row b·steps + (t − t0) is (b, t)
    const bool in_place = in_place_;
    MatrixMap<T> xh(xh_.data(), in_place ? 0 : rows, D + H);  // [x_t  h_{t-1}]: h0 at t = 0
    for (Index b = 0; b < B && !in_place; ++b) {
      xh.block(b * steps, 0, steps, D) = ConstMatrixMap<T>(x_ + (b * T_ + t0) * D, steps, D);
      auto h_b = xh.block(b * steps, D, steps, H);
      if (walk_.reverse) {
        // [x_t  h_{t+1}]: y at t + 1, but h0 at T - 1 and at the sequence's last valid step
        // (y there is zero: that step did not run). Later steps have da = 0.
        const Index from_y = std::min(t1, T_ - 1) - t0;
        if (from_y > 0)
          h_b.topRows(from_y) = ConstMatrixMap<T>(y_ + (b * T_ + t0 + 1) * H, from_y, H);
        const Index first = walk_.lengths != nullptr ? walk_.lengths[b] - 1 : T_ - 1;
        if (from_y < steps) h_b.row(steps - 1) = ConstMatrixMap<T>(h0_ + b * H, 1, H);
        if (first >= t0 && first < t1)
          h_b.row(first - t0) = ConstMatrixMap<T>(h0_ + b * H, 1, H);
      } else if (t0 == 0) {
        h_b.row(0) = ConstMatrixMap<T>(h0_ + b * H, 1, H);
        h_b.bottomRows(steps - 1) = ConstMatrixMap<T>(y_ + b * T_ * H, steps - 1, H);
      } else {
        h_b = ConstMatrixMap<T>(y_ + (b * T_ + t0 - 1) * H, steps, H);
      }
    }
    if (B == 1) {  // one sequence: the window's rows of dx are contiguous, written in place
      if (!separate_dx_)  // else claim_dx writes them
        MatrixMap<T>(dx_ + t0 * D, rows, D).noalias() = da_w * w_.w_ih;
    } else {
      MatrixMap<T> dx_w(dx_w_.data(), rows, D);
      dx_w.noalias() = da_w * w_.w_ih;
      for (Index b = 0; b < B; ++b)
        MatrixMap<T>(dx_ + (b * T_ + t0) * D, steps, D) = dx_w.middleRows(b * steps, steps);
    }
    if (g_.db_ih != nullptr) add_rows(g_.db_ih, da_w);
    // [dW_ih dW_hh] += da^T [x h]. With full windows and the (G·H, D + H) result in L2
    // (column_major_sums): one product, so Eigen packs da once, into a column-major buffer,
    // so da is its left operand, whose packing reads da's rows whole; as the right operand of
    // a row-major result it is packed 4 columns at a time, twice (7 % of the long LSTM step
    // in perf). Larger (6 MB at the large LSTM), zeroing, writing and adding the buffer is 3
    // passes over it per window, for a packing that is there a small part of the products:
    // each sum is then added in place.
    if (dw_.size() == 0) {  // not column_major_sums
      if (in_place)
        g_.dw_ih.noalias() += da_w.transpose() * ConstMatrixMap<T>(x_ + t0 * D, steps, D);
      else
        g_.dw_ih.noalias() += da_w.transpose() * xh.leftCols(D);
      if (to_recurrent_) {
        if (separate_dx_) await_dx(j);
        to_recurrent_(da_w, t0, steps);
        if (g_.db_hh != nullptr) add_rows(g_.db_hh, da_w);
      }
      if (!in_place) {
        g_.dw_hh.noalias() += da_w.transpose() * xh.rightCols(H);
      } else if (t0 > 0) {
        g_.dw_hh.noalias() += da_w.transpose() * ConstMatrixMap<T>(y_ + (t0 - 1) * H, steps, H);
      } else if (d_.offset == 0) {  // h_{t-1} is h0 at step 0, then y
        g_.dw_hh.noalias() += da_w.topRows(1).transpose() * ConstMatrixMap<T>(h0_, 1, H);
        g_.dw_hh.noalias() +=
            da_w.bottomRows(steps - 1).transpose() * ConstMatrixMap<T>(y_, steps - 1, H);
      } else {  // a later segment (Dims::offset): one product, as the whole call has here
        MatrixMap<T> h_prev(h_prev_.data(), steps, H);
        h_prev.row(0) = ConstMatrixMap<T>(h0_, 1, H);
        h_prev.bottomRows(steps - 1) = ConstMatrixMap<T>(y_, steps - 1, H);
        g_.dw_hh.noalias() += da_w.transpose() * h_prev;
      }
      return;
    }
    Eigen::Map<Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>> dw(dw_.data(), GH_, D + H);
    if (!to_recurrent_) {
      dw.noalias() = da_w.transpose() * xh;
    } else {
      dw.leftCols(D).noalias() = da_w.transpose() * xh.leftCols(D);
      if (separate_dx_) await_dx(j);
      to_recurrent_(da_w, t0, steps);
      if (g_.db_hh != nullptr) add_rows(g_.db_hh, da_w);
      dw.rightCols(H).noalias() = da_w.transpose() * xh.rightCols(H);
    }
    // Eigen adds a column-major block to a row-major matrix one scalar at a time.
    transpose_into<true>(g_.dw_ih.data(), dw_.data(), D, GH_);
    transpose_into<true>(g_.dw_hh.data(), dw_.data() + D * GH_, H, GH_);
  }

  // Whether flush reads x and h_{t-1} where they are rather than copying them side by side
  // into xh_: with one sequence the window's rows of each are already contiguous (h_{t-1}:
  // y's, after h0 at step 0), and without the column-major buffer they go into two products
  // anyway. Saves the copy and xh_ (51 KB of the online LSTM step's 0.5 MB at 1 thread).
  static bool reads_in_place(Index GH, const Dims& d, Index W) {
    return d.B == 1 && !column_major_sums(GH, d, W);
  }

  // Whether the window's weight gradients go through the column-major buffer dw_ (flush):
  // when it fits in L2 and a window has ≥ 1024 rows (batches of 1024 or more, one step per
  // window; with fewer rows, packing da twice is cheap, and the buffer would be a third of
  // the online step's memory).
  static bool column_major_sums(Index GH, const Dims& d, Index W) {
    return d.B * W >= 1024 && GH * (d.D + d.state()) * Index(sizeof(T)) <= (Index(256) << 10);
  }

  Dims d_;
  Index GH_, W_, windows_, buffers_;
  const T *x_, *y_, *h0_;
  T* dx_;
  const LayerWeights<T>& w_;
  LayerGrads<T>& g_;
  ToRecurrent to_recurrent_;
  Walk walk_;
  Helper* helper_;
  Index current_ = -1;  // the window the loop is in
  // With the helper:
  Task task_;                      // flushes windows as they are ready, until none is left
  std::atomic<Index> ready_{0};    // windows 0 .. ready_-1 are complete
  std::atomic<Index> claimed_{0};  // ... claimed_-1 are claimed by one thread or the other
  std::atomic<Index> flushed_{0};  // ... flushed_-1 are flushed
  // With the helper, at batch 1: dx of each window is a task of its own (claim_dx); a flush
  // that rewrites da (to_recurrent) waits for it first (await_dx).
  bool separate_dx_;
  bool in_place_;  // reads_in_place, never when reverse
  std::atomic<bool> abandoned_{false};           // set by the destructor: stop waiting
  std::atomic<Index> dx_claimed_{0};             // windows 0 .. dx_claimed_-1 have their dx claimed
  std::unique_ptr<std::atomic<bool>[]> dx_done_;  // per window: its dx is written
  Index dx_checked_ = 0;                         // the loop's thread: dx done below this
  Buffer<T> da_;    // (buffers, B, W, G·H): da of the last windows' steps
  Buffer<T> xh_;    // (B·W, D + H): x_t and h_{t-1} of the window's steps, in da's row
                    // order; none when reads_in_place
  Buffer<T> dx_w_;  // (B·W, D): dx of the window's steps, in da's row order; B > 1 only
  Buffer<T> dw_;    // (G·H, D + H) column-major: the window's [dW_ih dW_hh], when used
  Buffer<T> h_prev_;  // (W, H): h0 and y's first rows, for a later segment's first window
};

}  // namespace rnnfast
