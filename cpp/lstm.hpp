// LSTM layer, forward and backward through time. Gate order is PyTorch's: i, f, g, o.
//   [a_i a_f a_g a_o] = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh
//   i, f, g, o = σ(a_i), σ(a_f), tanh(a_g), σ(a_o)
//   c_t = f ⊙ c_{t-1} + i ⊙ g
//   h_t = o ⊙ tanh(c_t)
// Letters as in views.hpp; G = 4.
//
// Backward needs x, h0, c0, y and, per step, the activated gates and c_t: 5 floats per
// (b, t, unit) beyond y. h_{t-1} is y at t-1 and c_{t-1} is c at t-1 (valid steps are a
// prefix, so the step before a valid one is valid too); tanh(c_t) is cheaper to recompute than
// to keep. Past a sequence's length the saved gates and c are zero.
// Both directions of a bidirectional layer run these loops: `reverse` walks time down (Walk),
// and then c_{t-1} means the cell state after step t + 1 (state_before).
//
// With a projection (proj_size P > 0, w.w_hr (P, H)): m_t = o ⊙ tanh(c_t) and h_t = W_hr m_t
// has P units, so h, y, W_hh's columns and dL/dh are P wide while the gates and c stay H wide.
// m_t is recomputed in backward from the saved o and c_t, as tanh(c_t) is.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>

#include "buffers.hpp"
#include "elementwise.hpp"
#include "helper.hpp"
#include "layer.hpp"
#include "products.hpp"
#include "staged.hpp"
#include "step_options.hpp"
#include "threads.hpp"
#include "views.hpp"
#include "window_grads.hpp"

namespace rnnfast::lstm {

// S = d.state(): P with a projection, else H.
template <typename T>
struct Workspace {  // backward's buffers, sized once per call before the loop
  T* dh_total;      // (B, S): dL/dh_t from both the loss at t and step t+1
  T* dc_total;      // (B, H): dL/dc_t from both h_t and c_{t+1}
  T* dh_prev;       // (B, S): dL/dh_{t-1} before the lengths mask picks its rows
  T* c_prev;        // (B, H): c_{t-1} where it mixes saved and initial rows (state_before)
  T* m = nullptr;   // (B, H): m_t = o ⊙ tanh(c_t), with a projection only
  T* dm = nullptr;  // (B, H): dL/dm_t = dL/dh_t W_hr, with a projection only
};

// Backward's sizes of those buffers, in elements, for B sequences.
inline Index workspace_size(const Dims& d, bool mixed_prev) {
  return d.B * (2 * d.state() + d.H + (mixed_prev ? d.H : 0) + (d.P > 0 ? 2 * d.H : 0));
}

template <typename T>
Workspace<T> workspace_at(T* s, const Dims& d, bool mixed_prev) {
  const Index BS = d.B * d.state(), BH = d.B * d.H;
  T* m = s + 2 * BS + BH + (mixed_prev ? BH : 0);
  return {s, s + 2 * BS, s + BS, mixed_prev ? s + 2 * BS + BH : nullptr,
          d.P > 0 ? m : nullptr, d.P > 0 ? m + BH : nullptr};
}

// One sequence's step of forward: the row a = [a_i a_f a_g a_o] of pre-activations, activated
// in place, c_{t-1} (c_prev) to c_t and h_t; and, unless h_run is nullptr, the running states
// h_run and c_run set to them, each unless nullptr (c_run may be c_prev). N elements from each
// pointer: a packet (N fixed, all in registers) or the rest of a row (N = Dynamic, n of them).
template <int N, typename T>
EIGEN_ALWAYS_INLINE void cell_step(Index n, T* a, Index H, const T* c_prev, T* c_t, T* h_t,
                                   T* h_run, T* c_run) {
  using A = Eigen::Array<T, N, 1>;
  using In = Eigen::Map<const A>;
  using Out = Eigen::Map<A>;
  const A i = sigmoid(In(a, n)), f = sigmoid(In(a + H, n)), g = In(a + 2 * H, n).tanh(),
          o = sigmoid(In(a + 3 * H, n));
  const A c = f * In(c_prev, n) + i * g;
  const A h = o * c.tanh();
  Out(a, n) = i;
  Out(a + H, n) = f;
  Out(a + 2 * H, n) = g;
  Out(a + 3 * H, n) = o;
  Out(c_t, n) = c;
  Out(h_t, n) = h;
  if (h_run != nullptr) Out(h_run, n) = h;
  if (c_run != nullptr) Out(c_run, n) = c;
}

// cell_step over every row of a step, a packet at a time: one pass over each row (elementwise.hpp
// by_packets). With `running`, the running states h (unless projected) and c_run are set too.
template <typename T, typename A, typename C, typename M>
RNNFAST_FLATTEN void cell_rows(A& a, C& c_t, M& m_t, MatrixMap<T>& h, MatrixMap<T>& c_run,
                               bool running, bool projected) {
  const Index B = a.rows(), H = c_t.cols(), S = h.cols();
  for (Index b = 0; b < B; ++b) {
    T *a_b = a.data() + b * a.outerStride(), *c_b = c_t.data() + b * c_t.outerStride(),
      *m_b = m_t.data() + b * m_t.outerStride(), *h_run = h.data() + b * S,
      *c_run_b = c_run.data() + b * H;
    by_packets<T>(H, [&](Index j, auto tag, Index n) RNNFAST_INLINE_LAMBDA {
      cell_step<decltype(tag)::value, T>(n, a_b + j, H, c_run_b + j, c_b + j, m_b + j,
                                         running && !projected ? h_run + j : nullptr,
                                         running ? c_run_b + j : nullptr);
    });
  }
}

// Outputs: y (B, T, S), h_n (B, S), c_n (B, H), gates (B, T, 4H) the activated i, f, g, o,
// c (B, T, H) the cell state after every step. Inputs: x (B, T, D), h0 (B, S), c0 (B, H).
template <typename T>
void forward_rows(T* y, T* h_n, T* c_n, T* gates, T* c, const T* x, const T* h0, const T* c0,
                  const LayerWeights<T>& w, const std::int64_t* lengths, bool reverse,
                  const Dims& d, Helper* helper) {
  const Index B = d.B, T_ = d.T, H = d.H, S = d.state();
  const bool projected = d.P > 0;
  // gates starts as a_t without its recurrent term (InputSide: all steps at once, or a chunk
  // ahead of the loop); the loop adds that term and activates in place, so the
  // pre-activations never need a buffer of their own.
  InputSide<T> input(gates, x, w.w_ih, summed_bias(w), d, helper, reverse);
  MatrixMap<T> h(h_n, B, S);       // the running states; after the loop they are h_n and c_n
  MatrixMap<T> c_run(c_n, B, H);
  h = ConstMatrixMap<T>(h0, B, S);
  c_run = ConstMatrixMap<T>(c0, B, H);
  ForwardRecurrent<T> recurrent(w.w_hh, B);
  // With a projection: m_t, and h_t = m_t W_hr^T with W_hr packed once.
  Buffer<T> m_buf(static_cast<std::size_t>(projected ? B * H : 0));
  std::optional<ForwardRecurrent<T>> project;
  if (projected) project.emplace(ConstMatrixMap<T>(w.w_hr, S, H), B);
  for (Index s = 0; s < T_; ++s) {
    const Index t = reverse ? T_ - 1 - s : s;
    input.reach(t);
    auto a = at_step(gates, B, T_, 4 * H, t);  // (B, 4H)
    recurrent.add(a, h);    // all four gates in one product
    auto c_t = at_step(c, B, T_, H, t);
    auto h_t = at_step(y, B, T_, S, t);
    // where o ⊙ tanh(c_t) goes: h_t itself, or m_t before its projection
    auto m_t = projected ? StepMap<T>(m_buf.data(), B, H, Eigen::OuterStride<>(H)) : h_t;
    if (H <= kPacketRowsUpTo) {
      cell_rows<T>(a, c_t, m_t, h, c_run, lengths == nullptr, projected);  // else set below
    } else {
      // The same as a chain of passes over the (B, H) blocks.
      sigmoid_in_place(a.leftCols(2 * H));        // i, f
      a.middleCols(2 * H, H) = a.middleCols(2 * H, H).array().tanh().matrix();  // g
      sigmoid_in_place(a.rightCols(H));           // o
      const auto i = a.leftCols(H), f = a.middleCols(H, H), g = a.middleCols(2 * H, H),
                 o = a.rightCols(H);
      c_t = f.cwiseProduct(c_run) + i.cwiseProduct(g);
      m_t = o.array() * c_t.array().tanh();
      if (lengths == nullptr) {
        if (!projected) h = h_t;
        c_run = c_t;
      }
    }
    if (projected) {
      project->assign(h_t, m_t);  // h_t = m_t W_hr^T
      if (lengths == nullptr) h = h_t;
    }
    if (lengths == nullptr) continue;
    // A finished sequence keeps both states and outputs zeros.
    for (Index b = 0; b < B; ++b) {
      if (is_valid(lengths, b, t)) {
        h.row(b) = h_t.row(b);
        c_run.row(b) = c_t.row(b);
      } else {
        h_t.row(b).setZero();
        c_t.row(b).setZero();
        a.row(b).setZero();
      }
    }
  }
}

// The whole forward, its batch split over threads (split_count): rows b0.. of every (B, ...)
// array are themselves a C-ordered (B', ...) array, so each chunk is forward_rows on offsets.
template <typename T>
void forward(T* y, T* h_n, T* c_n, T* gates, T* c, const T* x, const T* h0, const T* c0,
             const LayerWeights<T>& w, const std::int64_t* lengths, bool reverse,
             const Dims& d) {
  const int n = split_count(d, 4);
  if (n == 1) {
    forward_rows<T>(y, h_n, c_n, gates, c, x, h0, c0, w, lengths, reverse, d,
                    helper_for(d, 4));
    return;
  }
  const Index T_ = d.T, D = d.D, H = d.H, S = d.state();
  parallel_chunks(d.B, n, [&](Index b0, Index b1) {
    forward_rows<T>(y + b0 * T_ * S, h_n + b0 * S, c_n + b0 * H, gates + b0 * T_ * 4 * H,
                    c + b0 * T_ * H, x + b0 * T_ * D, h0 + b0 * S, c0 + b0 * H, w,
                    lengths == nullptr ? nullptr : lengths + b0, reverse,
                    d.with_batch(b1 - b0), nullptr);
  });
}

// One sequence's step of backward, from dL/dh_t (dh_total) and what step t+1 sends back to
// c_t (dc) to dc_total = dL/dc_t and da, the gradient of [a_i a_f a_g a_o]; and, unless
// dc_prev is nullptr, what this step sends back to c_{t-1} (it may be dc itself). gate, c_t
// and c_prev are the step's rows of gates and c. N elements from each pointer: a packet (N
// fixed, all in registers) or the rest of a row (N = Dynamic, n of them).
template <int N, typename T>
EIGEN_ALWAYS_INLINE void gate_grads(Index n, T* da_i, T* da_f, T* da_g, T* da_o, T* dc_total,
                                    T* dc_prev, const T* gate, Index H, const T* c_t,
                                    const T* c_prev, const T* dh_total, const T* dc) {
  using A = Eigen::Array<T, N, 1>;
  using In = Eigen::Map<const A>;
  using Out = Eigen::Map<A>;
  const In i(gate, n), f(gate + H, n), g(gate + 2 * H, n), o(gate + 3 * H, n);
  const In dh(dh_total, n), c_prev_(c_prev, n);
  const A tanh_c = In(c_t, n).tanh();
  // h_t = o ⊙ tanh(c_t): backprop into c_t (written from tanh's output), added to what
  // c_{t+1} sends back; and into o, then through σ.
  const A dc_t = In(dc, n) + dh * o * (T(1) - tanh_c.square());
  Out(da_o, n) = dh * tanh_c * o * (T(1) - o);
  // c_t = f ⊙ c_{t-1} + i ⊙ g: backprop into i, f, g, then through σ, σ, tanh.
  Out(da_i, n) = dc_t * g * i * (T(1) - i);
  Out(da_f, n) = dc_t * c_prev_ * f * (T(1) - f);
  Out(da_g, n) = dc_t * i * (T(1) - g.square());
  Out(dc_total, n) = dc_t;
  // c_t = f ⊙ c_{t-1} + i ⊙ g  =>  dc_{t-1} = dc_t ⊙ f
  if (dc_prev != nullptr) Out(dc_prev, n) = dc_t * f;
}

// gate_grads over every row of a step, a packet at a time: one pass over the step's data with
// every intermediate in registers, where a chain of Eigen expressions over the (B, H) blocks
// made one pass each (and the rows' first and last elements went through scalar code). With
// update_dc, dc becomes what the step sends back to c_{t-1}.
template <typename T, typename Da, typename Gates, typename C, typename CPrev>
void gate_grads_rows(Da&& da, MatrixMap<T> dc_total, const Gates& gates, const C& c_t,
                     const CPrev& c_prev, const MatrixMap<T>& dh_total, MatrixMap<T> dc,
                     bool update_dc) {
  const Index B = dc.rows(), H = dc.cols();
  for (Index b = 0; b < B; ++b) {
    T* da_b = da.data() + b * da.outerStride();
    const T* gate = gates.data() + b * gates.outerStride();
    const T* c_b = c_t.data() + b * c_t.outerStride();
    const T* c_prev_b = c_prev.data() + b * c_prev.outerStride();
    T *dc_total_b = dc_total.data() + b * H, *dc_b = dc.data() + b * H;
    const T* dh_b = dh_total.data() + b * H;
    by_packets<T>(H, [&](Index j, auto tag, Index n) RNNFAST_INLINE_LAMBDA {
      gate_grads<decltype(tag)::value, T>(
          n, da_b + j, da_b + H + j, da_b + 2 * H + j, da_b + 3 * H + j, dc_total_b + j,
          update_dc ? dc_b + j : nullptr, gate + j, H, c_b + j, c_prev_b + j, dh_b + j,
          dc_b + j);
    });
  }
}

// Outputs: dx (B, T, D), dh0 (B, S), dc0 (B, H), g, and opt.norms (B, T) when asked.
// Inputs: the forward's x, h0, c0, y, gates, c; dy (B, T, S); dh_n (B, S), dc_n (B, H), the
// gradients reaching the final states; opt, per-step clipping and norms of dL/dh_t only: the
// cell path dc is never clipped (see clip_rows_and_norms). With a projection g.dw_hr is
// written too.
template <typename T>
void backward_rows(T* dx, T* dh0, T* dc0, LayerGrads<T>& g, const T* x, const T* h0,
                   const T* c0, const T* y, const T* gates, const T* c,
                   const LayerWeights<T>& w, const std::int64_t* lengths, const T* dy,
                   const T* dh_n, const T* dc_n, const StepOptions<T>& opt, bool reverse,
                   const Workspace<T>& ws, const Dims& d, Helper* helper) {
  const Index B = d.B, T_ = d.T, H = d.H, S = d.state();
  const bool projected = d.P > 0;
  MatrixMap<T> dh(dh0, B, S);  // dL/dh_t and dL/dc_t flowing back in time; after the loop
  MatrixMap<T> dc(dc0, B, H);  // they are dL/dh0 and dL/dc0
  dh = ConstMatrixMap<T>(dh_n, B, S);
  dc = ConstMatrixMap<T>(dc_n, B, H);
  MatrixMap<T> dh_total(ws.dh_total, B, S), dc_total(ws.dc_total, B, H),
      dh_prev(ws.dh_prev, B, S);
  BackwardRecurrent<T> recurrent(w.w_hh, B);
  const Walk walk{reverse, lengths};
  WindowGrads<T> grads(d, 4 * H, x, y, h0, dx, w, g, helper, nullptr, walk);
  StagedSteps<T, 3> staged(B, T_, {gates, c, dy}, {4 * H, H, S}, reverse);
  // With a projection, h_t = m_t W_hr^T: the gate gradients start from dL/dm_t instead of
  // dL/dh_t, and dW_hr = Σ_t dL/dh_t^T m_t is summed step by step (its m_t is not kept).
  std::optional<BackwardRecurrent<T>> unproject;
  if (projected) {
    unproject.emplace(ConstMatrixMap<T>(w.w_hr, S, H), B);
    if (!g.accumulate) MatrixMap<T>(g.dw_hr, S, H).setZero();
  }
  MatrixMap<T> m(ws.m, projected ? B : 0, H), dm(ws.dm, projected ? B : 0, H);
  const MatrixMap<T>& dm_or_dh = projected ? dm : dh_total;  // dL/d(o ⊙ tanh c_t)
  for (Index s = 0; s < T_; ++s) {
    const Index t = reverse ? s : T_ - 1 - s;
    const auto gt = staged.at(0, t);
    const auto f = gt.middleCols(H, H);
    const auto c_t = staged.at(1, t);
    const auto c_prev =
        reverse ? state_before(c, c0, ws.c_prev, B, T_, H, t, walk)
                : t > 0 ? staged.below(1, t - 1)
                        : ConstStepMap<T>(c0, B, H, Eigen::OuterStride<>(H));
    auto da = grads.da(t);
    dh_total = dh + staged.at(2, t);  // h_t feeds both the loss at t and step t+1
    if (opt.active()) clip_rows_and_norms(dh_total, opt, lengths, t, T_);
    if (projected) {
      // h_t = m_t W_hr^T, m_t = o ⊙ tanh(c_t): dW_hr += dh_t^T m_t and dm_t = dh_t W_hr.
      // Rows past a sequence's length add nothing: their saved o and c_t are zero.
      m = (gt.rightCols(H).array() * c_t.array().tanh()).matrix();
      MatrixMap<T>(g.dw_hr, S, H).noalias() += dh_total.transpose() * m;
      unproject->assign(dm, dh_total);
    }
    if (H <= kPacketRowsUpTo) {
      gate_grads_rows<T>(da, dc_total, gt, c_t, c_prev, dm_or_dh, dc, lengths == nullptr);
    } else {  // the same as a chain of passes over the (B, H) blocks
      const auto i = gt.leftCols(H), g_ = gt.middleCols(2 * H, H), o = gt.rightCols(H);
      auto da_o = da.rightCols(H);
      da_o = c_t.array().tanh().matrix();  // tanh(c_t) for now, read by the next two lines
      dc_total = dc.array() + dm_or_dh.array() * o.array() * (T(1) - da_o.array().square());
      da_o = dm_or_dh.array() * da_o.array() * o.array() * (T(1) - o.array());
      da.leftCols(H) = dc_total.array() * g_.array() * i.array() * (T(1) - i.array());
      da.middleCols(H, H) =
          dc_total.array() * c_prev.array() * f.array() * (T(1) - f.array());
      da.middleCols(2 * H, H) = dc_total.array() * i.array() * (T(1) - g_.array().square());
      if (lengths == nullptr) dc = dc_total.cwiseProduct(f);
    }
    if (lengths == nullptr) {
      // a_t = ... + h_{t-1} W_hh^T  =>  dh_{t-1} = da_t W_hh
      recurrent.assign(dh, da);
      continue;
    }
    // A finished sequence gets no gradient at t, and dh, dc pass its frozen states unchanged.
    for (Index b = 0; b < B; ++b)
      if (!is_valid(lengths, b, t)) da.row(b).setZero();
    recurrent.assign(dh_prev, da);
    for (Index b = 0; b < B; ++b) {
      if (is_valid(lengths, b, t)) {
        dh.row(b) = dh_prev.row(b);
        dc.row(b) = dc_total.row(b).cwiseProduct(f.row(b));
      }
    }
  }
  grads.finish();
}

// The whole backward, its batch split over threads (split_backward).
template <typename T>
void backward(T* dx, T* dh0, T* dc0, LayerGrads<T>& g, const T* x, const T* h0, const T* c0,
              const T* y, const T* gates, const T* c, const LayerWeights<T>& w,
              const std::int64_t* lengths, const T* dy, const T* dh_n, const T* dc_n,
              const StepOptions<T>& opt, bool reverse, const Workspace<T>& ws, const Dims& d) {
  const Index T_ = d.T, D = d.D, H = d.H, S = d.state();
  split_backward<T>(d, 4, g, [&](Index b0, Index b1, LayerGrads<T>& g_k, Helper* helper) {
    StepOptions<T> o = opt;
    if (o.norms != nullptr) o.norms += b0 * T_;
    const Workspace<T> ws_k = {ws.dh_total + b0 * S, ws.dc_total + b0 * H,
                               ws.dh_prev + b0 * S, rows_from(ws.c_prev, b0 * H),
                               rows_from(ws.m, b0 * H), rows_from(ws.dm, b0 * H)};
    backward_rows<T>(dx + b0 * T_ * D, dh0 + b0 * S, dc0 + b0 * H, g_k, x + b0 * T_ * D,
                     h0 + b0 * S, c0 + b0 * H, y + b0 * T_ * S, gates + b0 * T_ * 4 * H,
                     c + b0 * T_ * H, w, lengths == nullptr ? nullptr : lengths + b0,
                     dy + b0 * T_ * S, dh_n + b0 * S, dc_n + b0 * H, o, reverse, ws_k,
                     d.with_batch(b1 - b0), helper);
  });
}

}  // namespace rnnfast::lstm
