// GRU layer, forward and backward through time. Gate order is PyTorch's: r, z, n.
//   r = σ(W_ir x_t + b_ir + W_hr h_{t-1} + b_hr)
//   z = σ(W_iz x_t + b_iz + W_hz h_{t-1} + b_hz)
//   a_hn = W_hn h_{t-1} + b_hn
//   n = tanh(W_in x_t + b_in + r ⊙ a_hn)
//   h_t = (1 − z) ⊙ n + z ⊙ h_{t-1}
// Letters as in views.hpp; G = 3.
//
// The reset gate multiplies W_hn h + b_hn (PyTorch's and cuDNN's variant), not h before W_hn
// (Cho et al. 2014). So b_hn cannot join the input projection as the other biases do, and the
// gradient of the recurrent pre-activation differs from that of the input one in its n part:
// d(a_hn) = r ⊙ d(a_in), where a_in = W_in x_t + b_in.
//
// Backward needs x, h0, y and, per step, the activated r, z, n and a_hn: 4 floats per
// (b, t, unit) beyond y. h_{t-1} is y at t-1 (valid steps are a prefix, so the step before a
// valid one is valid too). Past a sequence's length the saved values are zero.
// Both directions of a bidirectional layer run these loops: `reverse` walks time down (Walk),
// and then h_{t-1} means the state after step t + 1 (state_before).
#pragma once

#include <cstdint>

#include "elementwise.hpp"
#include "helper.hpp"
#include "layer.hpp"
#include "products.hpp"
#include "staged.hpp"
#include "step_options.hpp"
#include "threads.hpp"
#include "views.hpp"
#include "window_grads.hpp"

namespace rnnfast::gru {

// The input side's bias: b_ih, plus b_hh for r and z only: b_hn sits inside r ⊙ (W_hn h + b_hn).
template <typename T>
Eigen::Matrix<T, 1, Eigen::Dynamic> input_bias(const LayerWeights<T>& w, Index H) {
  if (w.b_ih == nullptr) return {};
  Eigen::Matrix<T, 1, Eigen::Dynamic> bias = ConstRowVectorMap<T>(w.b_ih, 3 * H);
  bias.leftCols(2 * H) += ConstRowVectorMap<T>(w.b_hh, 2 * H);
  return bias;
}

template <typename T>
struct ForwardWorkspace {  // forward's buffer, sized once per call before the loop
  T* ah;                   // (B, 3H): h_{t-1} W_hh^T, the recurrent terms of all three gates
};

template <typename T>
struct Workspace {  // backward's buffers, sized once per call before the loop
  T* dah;           // (B, 3H): gradient of the recurrent pre-activation at the current step
  T* dh_total;      // (B, H): dL/dh_t from both the loss at t and step t+1
  T* dh_prev;       // (B, H): dL/dh_{t-1} before the lengths mask picks its rows
  T* h_prev;        // (B, H): h_{t-1} where it mixes saved and initial rows (state_before)
};

// One sequence's step of forward, N elements from each pointer (see elementwise.hpp by_packets):
// the row a = [a_r a_z a_in] of the input side, activated in place to [r z n], with ah the
// recurrent terms h_{t-1} W_hh^T of all three gates and b_hn that of n's bias (nullptr: none);
// writes a_hn and h_t, and h_run = h_t unless h_run is nullptr (h_run may be h_prev).
template <int N, typename T>
EIGEN_ALWAYS_INLINE void cell_step(Index n, T* a, const T* ah, Index H, const T* b_hn,
                                   const T* h_prev, T* a_hn, T* h_t, T* h_run) {
  using A = Eigen::Array<T, N, 1>;
  using In = Eigen::Map<const A>;
  using Out = Eigen::Map<A>;
  const A r = sigmoid(In(a, n) + In(ah, n)), z = sigmoid(In(a + H, n) + In(ah + H, n));
  const A hn = b_hn != nullptr ? A(In(ah + 2 * H, n) + In(b_hn, n)) : A(In(ah + 2 * H, n));
  const A n_ = (In(a + 2 * H, n) + r * hn).tanh();
  const A h = (T(1) - z) * n_ + z * In(h_prev, n);
  Out(a, n) = r;
  Out(a + H, n) = z;
  Out(a + 2 * H, n) = n_;
  Out(a_hn, n) = hn;
  Out(h_t, n) = h;
  if (h_run != nullptr) Out(h_run, n) = h;
}

// cell_step over every row of a step, a packet at a time: one pass over each row (elementwise.hpp
// by_packets, RNNFAST_FLATTEN). With `running`, the running state h is set to h_t too.
template <typename T, typename A, typename AHn, typename Ht>
RNNFAST_FLATTEN void cell_rows(A& a, const MatrixMap<T>& ah, const T* b_hn, AHn& a_hn_t, Ht& h_t,
                               MatrixMap<T>& h, bool running) {
  const Index B = a.rows(), H = h.cols();
  for (Index b = 0; b < B; ++b) {
    T *a_b = a.data() + b * a.outerStride(), *h_b = h_t.data() + b * h_t.outerStride(),
      *a_hn_b = a_hn_t.data() + b * a_hn_t.outerStride(), *h_run = h.data() + b * H;
    const T* ah_b = ah.data() + b * 3 * H;
    by_packets<T>(H, [&](Index j, auto tag, Index n) RNNFAST_INLINE_LAMBDA {
      cell_step<decltype(tag)::value, T>(n, a_b + j, ah_b + j, H,
                                         b_hn != nullptr ? b_hn + j : nullptr, h_run + j,
                                         a_hn_b + j, h_b + j, running ? h_run + j : nullptr);
    });
  }
}

// Outputs: y (B, T, H), h_n (B, H), gates (B, T, 3H) the activated r, z, n, a_hn (B, T, H).
// Inputs: x (B, T, D), h0 (B, H).
template <typename T>
void forward_rows(T* y, T* h_n, T* gates, T* a_hn, const T* x, const T* h0,
                  const LayerWeights<T>& w, const std::int64_t* lengths, bool reverse,
                  const ForwardWorkspace<T>& ws, const Dims& d, Helper* helper) {
  const Index B = d.B, T_ = d.T, H = d.H;
  // gates starts as the input side of the pre-activations (InputSide); the loop
  // adds the recurrent side and activates in place.
  InputSide<T> input(gates, x, w.w_ih, input_bias(w, H), d, helper, reverse);
  MatrixMap<T> h(h_n, B, H);  // the running state; after the loop it is h_n
  h = ConstMatrixMap<T>(h0, B, H);
  MatrixMap<T> ah(ws.ah, B, 3 * H);
  ForwardRecurrent<T> recurrent(w.w_hh, B);
  for (Index s = 0; s < T_; ++s) {
    const Index t = reverse ? T_ - 1 - s : s;
    input.reach(t);
    auto a = at_step(gates, B, T_, 3 * H, t);  // (B, 3H)
    auto a_hn_t = at_step(a_hn, B, T_, H, t);
    auto h_t = at_step(y, B, T_, H, t);
    recurrent.assign(ah, h);  // all three gates in one product
    if (H <= kPacketRowsUpTo) {
      const T* b_hn = w.b_hh != nullptr ? w.b_hh + 2 * H : nullptr;
      cell_rows<T>(a, ah, b_hn, a_hn_t, h_t, h, lengths == nullptr);  // else h is set below
    } else {
      // The same as a chain of passes over the (B, H) blocks.
      a.leftCols(2 * H) += ah.leftCols(2 * H);
      sigmoid_in_place(a.leftCols(2 * H));  // r, z
      a_hn_t = ah.rightCols(H);
      if (w.b_hh != nullptr) a_hn_t.rowwise() += ConstRowVectorMap<T>(w.b_hh + 2 * H, H);
      const auto r = a.leftCols(H), z = a.middleCols(H, H);
      auto n = a.rightCols(H);
      n = (n.array() + r.array() * a_hn_t.array()).tanh().matrix();
      h_t = (T(1) - z.array()) * n.array() + z.array() * h.array();
      if (lengths == nullptr) h = h_t;
    }
    if (lengths == nullptr) continue;
    // A finished sequence keeps its state and outputs zeros.
    for (Index b = 0; b < B; ++b) {
      if (is_valid(lengths, b, t)) {
        h.row(b) = h_t.row(b);
      } else {
        h_t.row(b).setZero();
        a.row(b).setZero();
        a_hn_t.row(b).setZero();
      }
    }
  }
}

// The whole forward, its batch split over threads as in lstm::forward (threads.hpp split_count).
template <typename T>
void forward(T* y, T* h_n, T* gates, T* a_hn, const T* x, const T* h0, const LayerWeights<T>& w,
             const std::int64_t* lengths, bool reverse, const ForwardWorkspace<T>& ws,
             const Dims& d) {
  const int n = split_count(d, 3);
  if (n == 1) {
    forward_rows<T>(y, h_n, gates, a_hn, x, h0, w, lengths, reverse, ws, d, helper_for(d, 3));
    return;
  }
  const Index T_ = d.T, D = d.D, H = d.H;
  parallel_chunks(d.B, n, [&](Index b0, Index b1) {
    const ForwardWorkspace<T> w_{ws.ah + b0 * 3 * H};
    forward_rows<T>(y + b0 * T_ * H, h_n + b0 * H, gates + b0 * T_ * 3 * H, a_hn + b0 * T_ * H,
                    x + b0 * T_ * D, h0 + b0 * H, w, lengths == nullptr ? nullptr : lengths + b0,
                    reverse, w_, d.with_batch(b1 - b0), nullptr);
  });
}

// One sequence's step of backward, N elements from each pointer (see elementwise.hpp by_packets):
// from dL/dh_t (dh_total) and the step's rows of gates ([r z n]) and a_hn, with h_prev =
// h_{t-1}, to da = [da_r da_z da_in], the gradient of the input side's pre-activations, and
// dah = [da_r da_z d(a_hn)], that of the recurrent side's.
template <int N, typename T>
EIGEN_ALWAYS_INLINE void gate_grads(Index n, T* da, T* dah, Index H, const T* gate,
                                    const T* a_hn, const T* h_prev, const T* dh_total) {
  using A = Eigen::Array<T, N, 1>;
  using In = Eigen::Map<const A>;
  using Out = Eigen::Map<A>;
  const In r(gate, n), z(gate + H, n), n_(gate + 2 * H, n), dh(dh_total, n);
  // h_t = (1 − z) ⊙ n + z ⊙ h_{t-1}, n = tanh(a_in + r ⊙ a_hn): backprop into n, then
  // through tanh (written from its output); this is d(a_in).
  const A da_n = dh * (T(1) - z) * (T(1) - n_.square());
  // h_t = (1 − z) ⊙ n + z ⊙ h_{t-1}, z = σ(a_z): backprop into z, then through σ.
  const A da_z = dh * (In(h_prev, n) - n_) * z * (T(1) - z);
  // n = tanh(a_in + r ⊙ a_hn), r = σ(a_r): backprop into r, then through σ.
  const A da_r = da_n * In(a_hn, n) * r * (T(1) - r);
  Out(da, n) = da_r;
  Out(da + H, n) = da_z;
  Out(da + 2 * H, n) = da_n;
  // r and z see h_{t-1} W_hh^T as they see the input side; n sees it through r ⊙ a_hn.
  Out(dah, n) = da_r;
  Out(dah + H, n) = da_z;
  Out(dah + 2 * H, n) = r * da_n;
}

// Outputs: dx (B, T, D), dh0 (B, H), g, and opt.norms (B, T) when asked. Inputs: the
// forward's x, h0, y, gates, a_hn; dy (B, T, H); dh_n (B, H), the gradient reaching the final
// state; opt, per-step clipping and norms of dL/dh_t (see clip_rows_and_norms).
template <typename T>
void backward_rows(T* dx, T* dh0, LayerGrads<T>& g, const T* x, const T* h0, const T* y,
                   const T* gates, const T* a_hn, const LayerWeights<T>& w,
                   const std::int64_t* lengths, const T* dy, const T* dh_n,
                   const StepOptions<T>& opt, bool reverse, const Workspace<T>& ws,
                   const Dims& d, Helper* helper) {
  const Index B = d.B, T_ = d.T, H = d.H;
  BackwardRecurrent<T> recurrent(w.w_hh, B);
  // da is the gradient of the input side's pre-activations a_r, a_z, a_in. Once a window's
  // dx and dW_ih are done, its n part becomes the recurrent side's, as dah's in the loop:
  // d(a_hn) = r ⊙ d(a_in); b_hh enters with the recurrent side.
  const Walk walk{reverse, lengths};
  WindowGrads<T> grads(d, 3 * H, x, y, h0, dx, w, g, helper,
                       [gates, T_, H](MatrixMap<T> da_w, Index t0, Index steps) {
                         for (Index b = 0; b < da_w.rows() / steps; ++b)
                           da_w.block(b * steps, 2 * H, steps, H).array() *=
                               ConstStepMap<T>(gates + (b * T_ + t0) * 3 * H, steps, H,
                                               Eigen::OuterStride<>(3 * H))
                                   .array();
                       },
                       walk);
  MatrixMap<T> dh(dh0, B, H);  // dL/dh_t flowing back in time; after the loop it is dL/dh0
  dh = ConstMatrixMap<T>(dh_n, B, H);
  MatrixMap<T> dah(ws.dah, B, 3 * H), dh_total(ws.dh_total, B, H), dh_prev(ws.dh_prev, B, H);
  for (Index s = 0; s < T_; ++s) {
    const Index t = reverse ? s : T_ - 1 - s;
    const auto gt = at_step(gates, B, T_, 3 * H, t);
    const auto r = gt.leftCols(H), z = gt.middleCols(H, H), n = gt.rightCols(H);
    const auto a_hn_t = at_step(a_hn, B, T_, H, t);
    const auto h_prev = state_before(y, h0, ws.h_prev, B, T_, H, t, walk);
    auto da = grads.da(t);
    dh_total = dh + at_step(dy, B, T_, H, t);  // h_t feeds both the loss at t and step t+1
    if (opt.active()) clip_rows_and_norms(dh_total, opt, lengths, t, T_);
    if (H <= kPacketRowsUpTo) {
      // One pass over each row, a packet at a time (elementwise.hpp by_packets).
      for (Index b = 0; b < B; ++b) {
        T *da_b = da.data() + b * da.outerStride(), *dah_b = dah.data() + b * 3 * H;
        const T *gate = gt.data() + b * gt.outerStride(),
                *a_hn_b = a_hn_t.data() + b * a_hn_t.outerStride(),
                *h_prev_b = h_prev.data() + b * h_prev.outerStride(),
                *dh_b = dh_total.data() + b * H;
        by_packets<T>(H, [&](Index j, auto tag, Index n) {
          gate_grads<decltype(tag)::value, T>(n, da_b + j, dah_b + j, H, gate + j, a_hn_b + j,
                                              h_prev_b + j, dh_b + j);
        });
      }
    } else {  // the same as a chain of passes over the (B, H) blocks
      auto da_n = da.rightCols(H);
      da_n = dh_total.array() * (T(1) - z.array()) * (T(1) - n.array().square());
      da.middleCols(H, H) =
          dh_total.array() * (h_prev.array() - n.array()) * z.array() * (T(1) - z.array());
      da.leftCols(H) = da_n.array() * a_hn_t.array() * r.array() * (T(1) - r.array());
      dah.leftCols(2 * H) = da.leftCols(2 * H);
      dah.rightCols(H) = r.cwiseProduct(da_n);
    }
    if (lengths != nullptr) {  // a finished sequence gets no gradient at t
      for (Index b = 0; b < B; ++b) {
        if (is_valid(lengths, b, t)) continue;
        da.row(b).setZero();
        dah.row(b).setZero();
      }
    }
    // [a_r a_z a_hn] = ... + h_{t-1} W_hh^T and h_t = ... + z ⊙ h_{t-1}
    //   =>  dh_{t-1} = dah_t W_hh + dh_t ⊙ z
    if (lengths == nullptr) {
      recurrent.assign(dh, dah);
      dh += dh_total.cwiseProduct(z);
      continue;
    }
    recurrent.assign(dh_prev, dah);
    dh_prev += dh_total.cwiseProduct(z);
    for (Index b = 0; b < B; ++b)  // a frozen state passes its gradient through unchanged
      if (is_valid(lengths, b, t)) dh.row(b) = dh_prev.row(b);
  }
  grads.finish();
}

// The whole backward, its batch split over threads (split_backward).
template <typename T>
void backward(T* dx, T* dh0, LayerGrads<T>& g, const T* x, const T* h0, const T* y,
              const T* gates, const T* a_hn, const LayerWeights<T>& w,
              const std::int64_t* lengths, const T* dy, const T* dh_n,
              const StepOptions<T>& opt, bool reverse, const Workspace<T>& ws, const Dims& d) {
  const Index T_ = d.T, D = d.D, H = d.H;
  split_backward<T>(d, 3, g, [&](Index b0, Index b1, LayerGrads<T>& g_k, Helper* helper) {
    StepOptions<T> o = opt;
    if (o.norms != nullptr) o.norms += b0 * T_;
    const Workspace<T> ws_k = {ws.dah + b0 * 3 * H, ws.dh_total + b0 * H, ws.dh_prev + b0 * H,
                               rows_from(ws.h_prev, b0 * H)};
    backward_rows<T>(dx + b0 * T_ * D, dh0 + b0 * H, g_k, x + b0 * T_ * D, h0 + b0 * H,
                     y + b0 * T_ * H, gates + b0 * T_ * 3 * H, a_hn + b0 * T_ * H, w,
                     lengths == nullptr ? nullptr : lengths + b0, dy + b0 * T_ * H,
                     dh_n + b0 * H, o, reverse, ws_k, d.with_batch(b1 - b0), helper);
  });
}

}  // namespace rnnfast::gru
