// Vanilla RNN layer, forward and backward through time.
//   h_t = f(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh),  f = tanh or relu
// Letters as in views.hpp; G = 1.
//
// What backward needs is x, h0 and the outputs y: h_t = y[:, t] on every valid step and
// f'(a_t) is a function of h_t. So the layer keeps no cache of its own.
// Both directions of a bidirectional layer run these loops: `reverse` walks time down (Walk).
#pragma once

#include <cstdint>
#include <type_traits>

#include "helper.hpp"
#include "layer.hpp"
#include "products.hpp"
#include "staged.hpp"
#include "step_options.hpp"
#include "threads.hpp"
#include "views.hpp"
#include "window_grads.hpp"

namespace rnnfast::rnn {

enum class Activation { Tanh, Relu };

template <typename T>
struct Workspace {  // backward's buffer, sized once per call before the loop
  T* dh_prev;       // (B, H): dL/dh_{t-1} before the lengths mask picks its rows
};

// h_t = f(a_t): da = dL/dh_t ⊙ f'(a_t), with f' written from the output h_t.
template <typename Da, typename DhTotal, typename Ht>
void backprop_through_f(Da&& da, const DhTotal& dh_total, const Ht& h_t, Activation f) {
  using T = typename std::decay_t<Da>::Scalar;
  if (f == Activation::Tanh)
    da = dh_total.array() * (T(1) - h_t.array().square());
  else
    da = dh_total.array() * (h_t.array() > T(0)).template cast<T>();
}

// Outputs: y (B, T, H), h_n (B, H). Inputs: x (B, T, D), h0 (B, H).
template <typename T>
void forward_rows(T* y, T* h_n, const T* x, const T* h0, const LayerWeights<T>& w,
                  const std::int64_t* lengths, Activation f, bool reverse, const Dims& d,
                  Helper* helper) {
  const Index B = d.B, T_ = d.T, H = d.H;
  // y starts as a_t without its recurrent term (InputSide); the loop adds it in place.
  InputSide<T> input(y, x, w.w_ih, summed_bias(w), d, helper, reverse);
  MatrixMap<T> h(h_n, B, H);  // the running state; after the loop it is h_n
  h = ConstMatrixMap<T>(h0, B, H);
  ForwardRecurrent<T> recurrent(w.w_hh, B);
  for (Index s = 0; s < T_; ++s) {
    const Index t = reverse ? T_ - 1 - s : s;
    input.reach(t);
    auto a = at_step(y, B, T_, H, t);
    recurrent.add(a, h);
    if (f == Activation::Tanh)
      a = a.array().tanh();
    else
      a = a.array().max(T(0));
    if (lengths == nullptr) {
      h = a;
      continue;
    }
    // A finished sequence keeps its state and outputs zeros.
    for (Index b = 0; b < B; ++b) {
      if (is_valid(lengths, b, t))
        h.row(b) = a.row(b);
      else
        a.row(b).setZero();
    }
  }
}

// The whole forward, its batch split over threads as in lstm::forward (threads.hpp split_count).
template <typename T>
void forward(T* y, T* h_n, const T* x, const T* h0, const LayerWeights<T>& w,
             const std::int64_t* lengths, Activation f, bool reverse, const Dims& d) {
  const int n = split_count(d, 1);
  if (n == 1) {
    forward_rows<T>(y, h_n, x, h0, w, lengths, f, reverse, d, helper_for(d, 1));
    return;
  }
  const Index T_ = d.T, D = d.D, H = d.H;
  parallel_chunks(d.B, n, [&](Index b0, Index b1) {
    forward_rows<T>(y + b0 * T_ * H, h_n + b0 * H, x + b0 * T_ * D, h0 + b0 * H, w,
                    lengths == nullptr ? nullptr : lengths + b0, f, reverse,
                    d.with_batch(b1 - b0), nullptr);
  });
}

// Outputs: dx (B, T, D), dh0 (B, H), g, and opt.norms (B, T) when asked. Inputs: the
// forward's x, h0, y; dy (B, T, H); dh_n (B, H), the gradient reaching the final state;
// opt, per-step clipping and norms of dL/dh_t (see clip_rows_and_norms).
template <typename T>
void backward_rows(T* dx, T* dh0, LayerGrads<T>& g, const T* x, const T* h0, const T* y,
                   const LayerWeights<T>& w, const std::int64_t* lengths, Activation f,
                   const T* dy, const T* dh_n, const StepOptions<T>& opt, bool reverse,
                   const Workspace<T>& ws, const Dims& d, Helper* helper) {
  const Index B = d.B, T_ = d.T, H = d.H;
  MatrixMap<T> dh(dh0, B, H);  // dL/dh_t flowing back in time; after the loop it is dL/dh0
  dh = ConstMatrixMap<T>(dh_n, B, H);
  MatrixMap<T> dh_prev(ws.dh_prev, B, H);
  BackwardRecurrent<T> recurrent(w.w_hh, B);
  WindowGrads<T> grads(d, H, x, y, h0, dx, w, g, helper, nullptr, Walk{reverse, lengths});
  StagedSteps<T, 2> staged(B, T_, {y, dy}, {H, H}, reverse);
  for (Index s = 0; s < T_; ++s) {
    const Index t = reverse ? s : T_ - 1 - s;
    auto da = grads.da(t);
    const auto h_t = staged.at(0, t);
    const auto dy_t = staged.at(1, t);
    // h_t feeds both the loss at t and step t+1: dL/dh_t = dh + dy_t. The per-step options
    // need it on its own, so then da holds it for a moment; without them it stays fused.
    if (opt.active()) {
      da = dh + dy_t;
      clip_rows_and_norms(da, opt, lengths, t, T_);
      backprop_through_f(da, da, h_t, f);
    } else {
      backprop_through_f(da, dh + dy_t, h_t, f);
    }
    if (lengths == nullptr) {
      // a_t = ... + h_{t-1} W_hh^T  =>  dh_{t-1} = da_t W_hh
      recurrent.assign(dh, da);
      continue;
    }
    // A finished sequence gets no gradient at t, and dh passes its frozen state unchanged.
    for (Index b = 0; b < B; ++b)
      if (!is_valid(lengths, b, t)) da.row(b).setZero();
    recurrent.assign(dh_prev, da);
    for (Index b = 0; b < B; ++b)
      if (is_valid(lengths, b, t)) dh.row(b) = dh_prev.row(b);
  }
  grads.finish();
}

// The whole backward, its batch split over threads (split_backward).
template <typename T>
void backward(T* dx, T* dh0, LayerGrads<T>& g, const T* x, const T* h0, const T* y,
              const LayerWeights<T>& w, const std::int64_t* lengths, Activation f, const T* dy,
              const T* dh_n, const StepOptions<T>& opt, bool reverse, const Workspace<T>& ws,
              const Dims& d) {
  const Index T_ = d.T, D = d.D, H = d.H;
  split_backward<T>(d, 1, g, [&](Index b0, Index b1, LayerGrads<T>& g_k, Helper* helper) {
    StepOptions<T> o = opt;
    if (o.norms != nullptr) o.norms += b0 * T_;
    backward_rows<T>(dx + b0 * T_ * D, dh0 + b0 * H, g_k, x + b0 * T_ * D, h0 + b0 * H,
                     y + b0 * T_ * H, w, lengths == nullptr ? nullptr : lengths + b0, f,
                     dy + b0 * T_ * H, dh_n + b0 * H, o, reverse, Workspace<T>{ws.dh_prev + b0 * H},
                     d.with_batch(b1 - b0), helper);
  });
}

}  // namespace rnnfast::rnn
